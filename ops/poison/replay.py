"""The `replay` subcommand: move selected poison messages back to the main queue.

Each message is sent to the main queue first and deleted from the poison queue only after the
send succeeded. An interrupted replay can therefore leave a message in both queues, but never
in neither. A replayed envelope has `attempt` 0 and no `failure` record, and is stored without
expiry, as parked messages are.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING

from azure.core.exceptions import AzureError, HttpResponseError

from ops.poison.commands import CommandContext, to_poison_message
from ops.poison.errors import CliError
from ops.poison.messages import PoisonMessage, Selection
from ops.poison.output import Progress, RateLimiter, write_table
from ops.poison.scan import HoldLost, QueueScan

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

# A time to live of -1 keeps a queue message until something deletes it.
NEVER_EXPIRES = -1
# After this many failed moves in a row the cause is likely shared (an outage, a revoked
# key), so the rest are left in the poison queue instead of each failing in turn.
MAX_CONSECUTIVE_FAILURES = 5


class Outcome(Enum):
    MOVED = "moved"
    FAILED = "failed"


def run_replay(
    context: CommandContext,
    selection: Selection,
    *,
    dry_run: bool,
    rate_per_second: float | None,
    include_unreadable: bool,
) -> int:
    """Move the selected messages to the main queue; return 1 if any move failed."""
    poison_name = context.options.poison_queue
    main_name = context.options.queue
    main = context.storage.queue(main_name)
    context.storage.ensure_queue(main)

    with context.scan(poison_name) as scan:
        messages = [to_poison_message(message) for message in scan.messages()]
        check_ids_found(selection, messages, poison_name)
        selected = selection.apply(messages)
        movable = [m for m in selected if include_unreadable or m.kind != "unreadable"]
        skipped = len(selected) - len(movable)

        if dry_run:
            context.stdout.write(
                f"Dry run: would move {len(movable)} message{'' if len(movable) == 1 else 's'} "
                f"from {poison_name} to {main_name}; "
                f"skipped as unreadable: {skipped}.\n"
            )
            write_table(movable, context.stdout)
            return 0

        moved, failed = _move_all(context, scan, main, movable, rate_per_second)

    if skipped:
        context.stderr.write(
            f"Skipped {skipped} unreadable messages; pass --include-unreadable to send their "
            "text to the main queue unchanged.\n"
        )
    context.stdout.write(f"Replay finished: moved {moved}, skipped {skipped}, failed {failed}.\n")
    return 1 if failed else 0


def check_ids_found(
    selection: Selection, messages: Sequence[PoisonMessage], queue_name: str
) -> None:
    """Raise `CliError` if an `--id` names no message of the queue, before anything changes."""
    missing = selection.ids - {message.id.lower() for message in messages}
    if missing:
        raise CliError(
            f"Message ids not found in queue {queue_name}: {', '.join(sorted(missing))}; "
            "`list` shows the ids of its messages."
        )


def _move_all(
    context: CommandContext,
    scan: QueueScan,
    main: QueueClient,
    movable: Sequence[PoisonMessage],
    rate_per_second: float | None,
) -> tuple[int, int]:
    limiter = RateLimiter(rate_per_second)
    progress = Progress("replay", len(movable), context.stderr)
    moved = failed = consecutive_failures = 0
    try:
        for index, message in enumerate(movable):
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                remaining = len(movable) - index
                _error(
                    context,
                    f"stopped after {consecutive_failures} failures in a row; {remaining} "
                    f"messages were not attempted and stay in {scan.client.queue_name}.",
                )
                failed += remaining
                break
            limiter.wait()
            outcome = _move_one(context, scan, main, message)
            progress.advance()
            if outcome is Outcome.MOVED:
                moved += 1
                consecutive_failures = 0
            else:
                failed += 1
                consecutive_failures += 1
    finally:
        progress.finish()
    return moved, failed


def _move_one(
    context: CommandContext, scan: QueueScan, main: QueueClient, message: PoisonMessage
) -> Outcome:
    poison_name = scan.client.queue_name
    try:
        scan.renew(message.id)
    except HoldLost as error:
        _error(context, f"message {message.id} was not replayed: {error}")
        return Outcome.FAILED
    except AzureError as error:
        _error(context, f"could not extend the hold on message {message.id}: {describe(error)}.")
        return Outcome.FAILED

    try:
        main.send_message(message.replay_text(), time_to_live=NEVER_EXPIRES)
    except AzureError as error:
        _error(
            context,
            f"could not send message {message.id} to {main.queue_name} ({describe(error)}); "
            f"it stays in {poison_name}.",
        )
        return Outcome.FAILED

    try:
        scan.delete(message.id)
    except (HoldLost, AzureError) as error:
        cause = str(error) if isinstance(error, HoldLost) else describe(error)
        _error(
            context,
            f"message {message.id} was copied to {main.queue_name} but not deleted from "
            f"{poison_name} ({cause}); it is now in both queues, so delete the poison copy "
            "once the replayed one is processed.",
        )
        return Outcome.FAILED
    return Outcome.MOVED


def describe(error: AzureError) -> str:
    """Summarize an Azure SDK error in a few words, without its URL or headers."""
    if isinstance(error, HttpResponseError):
        code = getattr(error, "error_code", None)
        return f"HTTP {error.status_code} {getattr(code, 'value', code) or ''}".strip()
    return type(error).__name__


def _error(context: CommandContext, text: str) -> None:
    # A progress bar may be on the current line, so start a fresh one.
    prefix = "\n" if context.stderr.isatty() else ""
    context.stderr.write(f"{prefix}error: {text}\n")
