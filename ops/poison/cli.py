"""Command-line parsing and dispatch of `python -m ops.poison`.

Exit codes: 0 on success; 1 when `status` finds parked messages or when `replay`, `export
--delete` or `import` could not handle some messages; 2 on an error that stops the command
(bad option, queue or message not found, credentials rejected), reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from ops.poison.archive import run_export, run_import
from ops.poison.commands import CommandContext, run_list, run_show, run_status
from ops.poison.connection import Storage, read_app_settings, resolve_connection
from ops.poison.errors import CliError, storage_errors
from ops.poison.messages import FilterError, build_selection
from ops.poison.replay import run_replay
from ops.poison.scan import DEFAULT_VISIBILITY_TIMEOUT_SECONDS, MAX_VISIBILITY_TIMEOUT_SECONDS

PROGRAM = "python -m ops.poison"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors become one-line `CliError`s instead of usage dumps."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see {self.prog} --help)")


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one subcommand and return its exit code; errors never escape as tracebacks."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    with _silenced_azure_logging():
        try:
            arguments = build_parser().parse_args(argv)
            return _dispatch(arguments, out, err)
        except CliError as error:
            err.write(f"error: {error}\n")
            return EXIT_ERROR
        except KeyboardInterrupt:
            err.write("error: interrupted; held messages were made visible again.\n")
            return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    connection = _Parser(add_help=False)
    group = connection.add_argument_group("storage account")
    group.add_argument(
        "--connection-string",
        help="Storage connection string (default: the AzureWebJobsStorage app setting from the "
        "environment or ./local.settings.json)",
    )
    group.add_argument(
        "--account-url",
        help="queue service URL such as https://myaccount.queue.core.windows.net, "
        "authenticated with DefaultAzureCredential",
    )
    group.add_argument(
        "--blob-account-url",
        help="Blob service URL for claim-checked bodies with --account-url (default: derived "
        "from --account-url)",
    )
    group.add_argument(
        "--queue",
        help="main queue name; its poison queue is <queue>-poison (default: ONFLEET_EVENTS_QUEUE "
        "or onfleet-events)",
    )
    group.add_argument(
        "--visibility-timeout",
        type=_visibility_timeout,
        default=DEFAULT_VISIBILITY_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="how long received messages stay hidden while the command runs; also how long "
        "they stay hidden if the command is killed (default: %(default)s)",
    )

    filters = _Parser(add_help=False)
    group = filters.add_argument_group("filters (a message must match every filter given)")
    group.add_argument(
        "--customer", action="append", default=[], help="customerId; repeat for several"
    )
    group.add_argument(
        "--trigger", action="append", default=[], help="Onfleet triggerName; repeat for several"
    )
    group.add_argument(
        "--reason",
        action="append",
        default=[],
        help="failure reason, host-retries-exhausted, unreadable, or a kind (parked, "
        "host-moved); repeat for several",
    )
    group.add_argument(
        "--id", action="append", default=[], dest="ids", help="message id; repeat for several"
    )
    group.add_argument(
        "--since",
        help="inserted at or after this time: a duration ago (30m, 2h, 3d) or ISO 8601 "
        "(UTC unless an offset is given)",
    )
    group.add_argument("--until", help="inserted at or before this time, in the same forms")
    group.add_argument(
        "--limit", type=int, help="at most this many messages, oldest first (default: all)"
    )

    parser = _Parser(
        prog=PROGRAM,
        description="Inspect and replay the Onfleet events poison queue.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    list_parser = commands.add_parser(
        "list", parents=[connection, filters], help="list poison messages as a table"
    )
    list_parser.add_argument("--json", action="store_true", help="print one JSON array instead")

    show_parser = commands.add_parser(
        "show", parents=[connection], help="print one message with its failure record and body"
    )
    show_parser.add_argument("message_id", metavar="ID", help="message id, as shown by list")
    show_parser.add_argument(
        "--container",
        help="claim-check Blob container (default: CLAIM_CHECK_CONTAINER or onfleet-payloads)",
    )
    show_parser.add_argument("--json", action="store_true", help="print one JSON object instead")

    replay_parser = commands.add_parser(
        "replay",
        parents=[connection, filters],
        help="move messages back to the main queue with attempt 0",
    )
    replay_parser.add_argument(
        "--dry-run", action="store_true", help="print what would move and change nothing"
    )
    replay_parser.add_argument(
        "--rate", type=_rate, metavar="N", help="at most N messages per second (default: no limit)"
    )
    replay_parser.add_argument(
        "--include-unreadable",
        action="store_true",
        help="also send unreadable messages to the main queue, unchanged",
    )

    export_parser = commands.add_parser(
        "export", parents=[connection, filters], help="write messages to a JSON Lines file"
    )
    export_parser.add_argument("--out", type=Path, required=True, metavar="FILE")
    export_parser.add_argument(
        "--delete",
        action="store_true",
        help="delete the exported messages after the file is written and synced to disk",
    )
    export_parser.add_argument("--force", action="store_true", help="replace an existing FILE")

    import_parser = commands.add_parser(
        "import", parents=[connection], help="send the messages of an export file to a queue"
    )
    import_parser.add_argument("file", type=Path, metavar="FILE")
    import_parser.add_argument(
        "--queue-target", metavar="QUEUE", help="queue to import into (default: the poison queue)"
    )
    import_parser.add_argument(
        "--create-queue", action="store_true", help="create the target queue if it is missing"
    )

    status_parser = commands.add_parser(
        "status",
        parents=[connection],
        help="print queue depths; exit code 1 if the poison queue is not empty",
    )
    status_parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    return parser


def _dispatch(arguments: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    options = resolve_connection(
        connection_string=arguments.connection_string,
        account_url=arguments.account_url,
        blob_account_url=arguments.blob_account_url,
        queue=arguments.queue,
        container=getattr(arguments, "container", None),
        settings=read_app_settings(),
    )
    storage = Storage(options)
    context = CommandContext(
        storage=storage,
        options=options,
        visibility_timeout_seconds=arguments.visibility_timeout,
        stdout=stdout,
        stderr=stderr,
    )

    with storage_errors(storage.account):
        command = arguments.command
        if command == "status":
            return run_status(context, as_json=arguments.json)
        if command == "show":
            return run_show(context, arguments.message_id, as_json=arguments.json)
        if command == "import":
            return run_import(
                context,
                arguments.file,
                target=arguments.queue_target,
                create_queue=arguments.create_queue,
            )

        try:
            selection = build_selection(
                customers=arguments.customer,
                triggers=arguments.trigger,
                reasons=arguments.reason,
                ids=arguments.ids,
                since=arguments.since,
                until=arguments.until,
                limit=arguments.limit,
            )
        except FilterError as error:
            raise CliError(str(error)) from None
        if command == "list":
            return run_list(context, selection, as_json=arguments.json)
        if command == "replay":
            return run_replay(
                context,
                selection,
                dry_run=arguments.dry_run,
                rate_per_second=arguments.rate,
                include_unreadable=arguments.include_unreadable,
            )
        return run_export(
            context,
            selection,
            out_path=arguments.out,
            delete=arguments.delete,
            force=arguments.force,
        )


def _visibility_timeout(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_VISIBILITY_TIMEOUT_SECONDS:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected whole seconds from 1 to "
            f"{MAX_VISIBILITY_TIMEOUT_SECONDS}"
        )
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected messages per second above 0, such as 5 or 0.5"
        )
    return value


@contextlib.contextmanager
def _silenced_azure_logging() -> Iterator[None]:
    """Keep the Azure SDK's log records off stderr while the block runs.

    Without a handler, Python prints the SDK's warnings (multi-line credential reports,
    retry notices) on stderr, but the CLI reports each failure itself in one line. The
    previous state is restored, because tests call `main` inside a larger process.
    """
    azure_logger = logging.getLogger("azure")
    silencer = logging.NullHandler()
    propagate = azure_logger.propagate
    azure_logger.addHandler(silencer)
    azure_logger.propagate = False
    try:
        yield
    finally:
        azure_logger.removeHandler(silencer)
        azure_logger.propagate = propagate
