"""Text output of the CLI: the message table, ages, a progress bar and a rate limiter."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from ops.poison.messages import PoisonMessage

TABLE_COLUMNS = ("ID", "AGE", "CUSTOMER", "TRIGGER", "TASK", "ATTEMPTS", "REASON", "STATUS")
MISSING = "-"
PROGRESS_BAR_WIDTH = 30


def format_age(moment: datetime | None, now: datetime) -> str:
    """Format the time since `moment` in its two largest units, such as `3d4h` or `12m05s`."""
    if moment is None:
        return MISSING
    seconds = max(0, int((now - moment).total_seconds()))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


def table_rows(messages: Sequence[PoisonMessage], now: datetime) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for message in messages:
        envelope = message.envelope
        rows.append(
            (
                message.id,
                format_age(message.inserted_on, now),
                _text(envelope.customer_id if envelope else None),
                _text(envelope.trigger_name if envelope else None),
                _text(envelope.task_id if envelope else None),
                _text(message.attempts),
                message.reason,
                _text(message.status),
            )
        )
    return rows


def write_table(
    messages: Sequence[PoisonMessage], stream: TextIO, *, now: datetime | None = None
) -> None:
    """Write one aligned row per message under a header row."""
    rows = [TABLE_COLUMNS, *table_rows(messages, now or datetime.now(UTC))]
    widths = [max(len(row[column]) for row in rows) for column in range(len(TABLE_COLUMNS))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        stream.write("  ".join(cells).rstrip() + "\n")


class Progress:
    """A one-line progress bar on a terminal; silent when the stream is not a terminal."""

    def __init__(self, label: str, total: int, stream: TextIO) -> None:
        self.label = label
        self.total = total
        self.stream = stream
        self.enabled = total > 0 and stream.isatty()
        self.done = 0

    def advance(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        filled = PROGRESS_BAR_WIDTH * self.done // self.total
        bar = "#" * filled + "-" * (PROGRESS_BAR_WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total}")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()


class RateLimiter:
    """Spaces calls to `wait()` so that at most `per_second` of them pass each second."""

    def __init__(self, per_second: float | None) -> None:
        self.interval_seconds = 1.0 / per_second if per_second else 0.0
        self._next = time.monotonic()

    def wait(self) -> None:
        if not self.interval_seconds:
            return
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        # Schedule from the later of the plan and now, so a slow call does not earn a burst.
        self._next = max(self._next, now) + self.interval_seconds


def _text(value: object) -> str:
    return MISSING if value is None or value == "" else str(value)
