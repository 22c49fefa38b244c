"""Benchmarks and the fault-injection run for the bridge, all on 127.0.0.1."""
