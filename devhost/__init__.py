"""Local runner for this Azure Functions app, plus the tools around it.

`python -m devhost` runs the functions as the Functions host would, `devhost.clienttrack` is a
ClientTrack integration queue stand-in, `devhost.send` signs and posts Onfleet samples, and
`devhost.azurite` starts the Azurite storage emulator.
"""
