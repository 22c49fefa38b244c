"""The `export` and `import` subcommands: a JSON Lines archive of poison messages.

Each line of an archive is one JSON object: the source `queue`, the message's `id`,
`insertedOn`, `expiresOn`, `dequeueCount`, the decoded summary (`kind`, `eventId`,
`customerId`, `triggerName`, `taskId`, `attempts`, `reason`, `status`, `detail`) and `text`,
the message text exactly as stored. Import sends `text` back unchanged, so an export followed
by an import restores each message's text byte for byte (with a new id and insertion time,
which the service assigns).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from azure.core.exceptions import AzureError

from ops.poison.commands import CommandContext, to_poison_message
from ops.poison.connection import check_queue_name
from ops.poison.errors import CliError
from ops.poison.messages import PoisonMessage, Selection
from ops.poison.output import Progress
from ops.poison.replay import MAX_CONSECUTIVE_FAILURES, NEVER_EXPIRES, check_ids_found, describe
from ops.poison.scan import HoldLost, QueueScan


def run_export(
    context: CommandContext,
    selection: Selection,
    *,
    out_path: Path,
    delete: bool,
    force: bool,
) -> int:
    """Write the selected messages to `out_path`; with `delete`, then remove them from the queue."""
    if out_path.exists() and not force:
        raise CliError(
            f"{out_path} already exists; choose another file or pass --force to replace it."
        )
    if not out_path.parent.is_dir():
        raise CliError(f"Folder {out_path.parent} does not exist; create it first.")

    queue = context.options.poison_queue
    with context.scan(queue) as scan:
        messages = [to_poison_message(message) for message in scan.messages()]
        check_ids_found(selection, messages, queue)
        selected = selection.apply(messages)
        write_archive(out_path, selected, queue=queue)
        context.stdout.write(f"Exported {len(selected)} messages from {queue} to {out_path}.\n")
        if not delete:
            return 0
        deleted, failed = _delete_exported(context, scan, selected)

    context.stdout.write(f"Deleted {deleted} exported messages from {queue}; {failed} failed.\n")
    return 1 if failed else 0


def write_archive(path: Path, messages: Sequence[PoisonMessage], *, queue: str) -> None:
    """Write messages as JSON Lines and make the file durable before returning.

    The lines go to a temporary file that is flushed, fsynced and then renamed over `path`,
    so `path` never contains a partial archive, and `--delete` runs only after this returns.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with temporary.open("w", encoding="utf-8", newline="\n") as archive:
            for message in messages:
                line = {"queue": queue, **message.summary(), "text": message.text}
                # ASCII escapes keep any character of the text intact through the round trip.
                archive.write(json.dumps(line, ensure_ascii=True) + "\n")
            archive.flush()
            os.fsync(archive.fileno())
        temporary.replace(path)
        _fsync_directory(path.parent)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise CliError(f"Could not write {path}: {error.strerror or error}.") from None


def run_import(
    context: CommandContext, path: Path, *, target: str | None, create_queue: bool
) -> int:
    """Send each archived message text to the target queue unless an equal one is there."""
    texts = read_archive(path)
    target_name = target or context.options.poison_queue
    check_queue_name(target_name, option="--queue-target")
    client = context.storage.queue(target_name)
    context.storage.ensure_queue(client, create=create_queue)

    # Counting equal texts, not only their presence, keeps duplicates in an archive. Two
    # identical lines import twice into an empty queue, and not at all into a queue that
    # already contains both.
    with QueueScan(
        client,
        visibility_timeout_seconds=context.visibility_timeout_seconds,
        warn=lambda text: print(f"warning: {text}", file=context.stderr),
    ) as scan:
        present = Counter(
            message.content if isinstance(message.content, str) else ""
            for message in scan.messages()
        )

    imported = skipped = failed = consecutive_failures = 0
    progress = Progress("import", len(texts), context.stderr)
    try:
        for index, text in enumerate(texts):
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                remaining = len(texts) - index
                context.stderr.write(
                    f"error: stopped after {consecutive_failures} failures in a row; "
                    f"{remaining} lines were not imported.\n"
                )
                failed += remaining
                break
            progress.advance()
            if present[text] > 0:
                present[text] -= 1
                skipped += 1
                continue
            try:
                client.send_message(text, time_to_live=NEVER_EXPIRES)
            except AzureError as error:
                context.stderr.write(
                    f"error: could not send line {index + 1} of {path} to {target_name} "
                    f"({describe(error)}).\n"
                )
                failed += 1
                consecutive_failures += 1
                continue
            imported += 1
            consecutive_failures = 0
    finally:
        progress.finish()

    context.stdout.write(
        f"Imported {imported} messages into {target_name}; skipped {skipped} already present; "
        f"{failed} failed.\n"
    )
    return 1 if failed else 0


def read_archive(path: Path) -> list[str]:
    """Return the `text` of every line; raise `CliError` naming the first invalid line."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise CliError(f"Archive {path} was not found.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CliError(f"Could not read archive {path}: {error}.") from None

    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise CliError(
                f"Line {number} of {path} is not JSON; an archive has one exported message "
                "per line."
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise CliError(
                f"Line {number} of {path} has no string field 'text'; is the file an export "
                "of this tool?"
            )
        texts.append(record["text"])
    return texts


def _delete_exported(
    context: CommandContext, scan: QueueScan, messages: Sequence[PoisonMessage]
) -> tuple[int, int]:
    deleted = failed = 0
    for message in messages:
        try:
            scan.renew(message.id)
            scan.delete(message.id)
        except (HoldLost, AzureError) as error:
            cause = str(error) if isinstance(error, HoldLost) else describe(error)
            context.stderr.write(
                f"error: exported message {message.id} was not deleted ({cause}); it stays in "
                "the queue.\n"
            )
            failed += 1
            continue
        deleted += 1
    return deleted, failed


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is; Windows cannot open a folder.
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
