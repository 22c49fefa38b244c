"""Counting what reached ClientTrack and what the bridge logged, and printing the fault matrix.

The ClientTrack stand-in writes one JSON line per request that passed its checks, with the
status of its response (null for a dropped connection). `RecordReader` reads that file as it
grows, so the run can take one snapshot before the replay and one after it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Log lines of shared.processor (one per delivery attempt, written after the dedupe mark),
# shared.dedupe (a claim or mark that could not be written), devhost.queue_trigger (the
# host's move to the poison queue) and shared.ingest (one per webhook request).
DELIVERY_LINE = re.compile(
    r"Delivery customer=\S+ event=(?P<event>[0-9a-f]{64}) .*outcome=(?P<outcome>[a-z-]+)"
)
LEDGER_FAILED_LINE = re.compile(
    r"Dedupe (?P<step>claim|mark) for customer \S+ event (?P<event>[0-9a-f]{64}) failed"
)
HOST_MOVE_LINE = re.compile(r"Moved message \S+ from queue \S+ to \S+ because")
ENQUEUED_LINE = re.compile(r"Webhook customer=\S+ event=[0-9a-f]{64} .*outcome=enqueued")


@dataclass
class ClientTrackRecords:
    """Requests that reached ClientTrack: responses by status, and 2xx responses per event id."""

    requests: int = 0
    dropped: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    deliveries_by_event_id: Counter[str] = field(default_factory=Counter)
    payload_by_event_id: dict[str, Any] = field(default_factory=dict)

    @property
    def delivered_event_ids(self) -> set[str]:
        return set(self.deliveries_by_event_id)

    @property
    def duplicates(self) -> int:
        """2xx responses for an event id that had already received a 2xx."""
        return sum(count - 1 for count in self.deliveries_by_event_id.values())


class RecordReader:
    """Reads the stand-in's record file incrementally into one `ClientTrackRecords`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records = ClientTrackRecords()
        self._offset = 0

    def read(self) -> ClientTrackRecords:
        """Add the lines written since the last call and return the totals."""
        try:
            with self.path.open("rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return self.records
        # A line still being written has no newline yet, so it is read next time.
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            self._add(json.loads(line))
        return self.records

    def _add(self, record: dict[str, Any]) -> None:
        records = self.records
        records.requests += 1
        status = record.get("status")
        if status is None:
            records.dropped += 1
            return
        records.statuses[status] += 1
        body = record.get("body")
        if 200 <= status <= 299 and isinstance(body, dict):
            event_id = str(body.get("eventId"))
            records.deliveries_by_event_id[event_id] += 1
            records.payload_by_event_id.setdefault(event_id, body.get("payload"))


@dataclass(frozen=True)
class DevhostLogCounts:
    """Outcomes the processor logged, host moves to the poison queue and ingest enqueues."""

    outcomes: dict[str, int]
    host_moves: int
    enqueued: int
    delivered_lines: Counter[str]
    claim_failed: set[str]
    mark_failed: set[str]


def count_devhost_log(text: str) -> DevhostLogCounts:
    outcomes: Counter[str] = Counter()
    delivered_lines: Counter[str] = Counter()
    ledger_failures: dict[str, set[str]] = {"claim": set(), "mark": set()}
    for match in LEDGER_FAILED_LINE.finditer(text):
        ledger_failures[match["step"]].add(match["event"])
    for match in DELIVERY_LINE.finditer(text):
        outcomes[match["outcome"]] += 1
        if match["outcome"] == "delivered":
            delivered_lines[match["event"]] += 1
    return DevhostLogCounts(
        outcomes=dict(sorted(outcomes.items())),
        host_moves=len(HOST_MOVE_LINE.findall(text)),
        enqueued=len(ENQUEUED_LINE.findall(text)),
        delivered_lines=delivered_lines,
        claim_failed=ledger_failures["claim"],
        mark_failed=ledger_failures["mark"],
    )


def classify_duplicates(records: ClientTrackRecords, log: DevhostLogCounts) -> dict[str, int]:
    """Sort the extra 2xx responses by the cause the logs show.

    - `claim-failed`: the dedupe claim could not be written (Storage was down), and the
      processor delivers without the ledger rather than hold the event back.
    - `mark-failed`: the mark after a 2xx could not be written, so a later copy found no
      mark once the claim had expired.
    - `crash-before-mark`: ClientTrack sent a 2xx more often than the processor logged a
      delivery. The delivery line follows the mark, so the process died between the two.
    - `concurrent-copies`: every 2xx was logged and marked, so two copies of the event were
      delivered, neither finding the other's claim or mark.
    """
    causes: Counter[str] = Counter()
    for event_id, count in records.deliveries_by_event_id.items():
        if count < 2:
            continue
        if event_id in log.claim_failed:
            cause = "claim-failed"
        elif event_id in log.mark_failed:
            cause = "mark-failed"
        elif log.delivered_lines[event_id] < count:
            cause = "crash-before-mark"
        else:
            cause = "concurrent-copies"
        causes[cause] += count - 1
    return dict(sorted(causes.items()))


def format_matrix(result: dict[str, Any]) -> str:
    """Return the fault matrix of a run's result as an aligned plain-text table."""
    matrix = result["matrix"]
    faults = result["faultsInjected"]
    rows = [
        ("sent (deliveries)", matrix["sent"]),
        ("requests sent, resends included", matrix["requestsSent"]),
        ("accepted (200 from ingest)", matrix["accepted"]),
        ("resent after 503", matrix["resentAfter503"]),
        ("resent after a connection error", matrix["resentAfterConnectionError"]),
        ("resent after no response in 10 s", matrix["resentAfterTimeout"]),
        ("resent after another status", matrix["resentAfterOtherStatus"]),
        ("never accepted", matrix["neverAccepted"]),
        ("delivered before replay", matrix["deliveredBeforeReplay"]),
        ("parked before replay", matrix["parkedBeforeReplay"]),
        ("neither, before replay", matrix["unaccountedBeforeReplay"]),
        ("replayed (messages moved)", matrix["replayed"]),
        ("replay rounds", matrix["replayRounds"]),
        ("delivered after replay", matrix["deliveredAfterReplay"]),
        ("lost", matrix["lost"]),
        ("duplicated (extra ClientTrack 2xx)", matrix["duplicated"]),
        ("copies skipped by the dedupe ledger", matrix["dedupeSkips"]),
        ("copies deferred while another was in delivery", matrix["deferredCopies"]),
        ("payloads differing from the sent body", matrix["payloadMismatches"]),
    ]
    fault_rows = [
        ("ClientTrack 500", faults["clienttrack500"]),
        ("ClientTrack 503 with Retry-After", faults["clienttrack503"]),
        ("ClientTrack 429 with Retry-After", faults["clienttrack429"]),
        ("ClientTrack timeout (response after the read timeout)", faults["clienttrackTimeout"]),
        ("ClientTrack dropped connection", faults["clienttrackDropped"]),
        ("ClientTrack requests in all", faults["clienttrackRequests"]),
        ("devhost killed with SIGKILL", faults["devhostKills"]),
        ("Azurite stopped and restarted", faults["azuriteRestarts"]),
    ]
    rows += [(f"  of which {cause}", count) for cause, count in matrix["duplicateCauses"].items()]
    width = max(len(label) for label, _ in rows + fault_rows)
    lines = ["Fault matrix"]
    lines += [f"  {label:<{width}}  {value:>8}" for label, value in rows]
    lines.append("Faults injected")
    lines += [f"  {label:<{width}}  {value:>8}" for label, value in fault_rows]
    return "\n".join(lines)
