"""Entry point of `python -m ops.poison`."""

from __future__ import annotations

import signal
import sys
from types import FrameType

from ops.poison.cli import main


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Raising SystemExit runs the `finally` blocks that make held messages visible again,
    # which the default SIGTERM action would skip.
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
