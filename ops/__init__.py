"""Command-line tools for the people who run the bridge; `python -m ops.poison` is the first."""
