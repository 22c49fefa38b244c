"""Operators' CLI for the poison queue: list, show, replay, export, import and status.

Run it as `python -m ops.poison --help`. The modules split by concept:

- `connection` finds the storage account, and `errors` translates Azure errors;
- `scan` receives a whole queue while holding its messages invisible;
- `messages` decodes and filters the messages, and `output` formats tables and progress;
- `commands`, `replay` and `archive` implement the subcommands that `cli` dispatches.
"""

from ops.poison.cli import main

__all__ = ["main"]
