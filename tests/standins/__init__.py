"""Tests of the local stand-ins and tools in devhost: ClientTrack, Key Vault and the sender."""
