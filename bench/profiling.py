"""Profile devhost under benchmark load with pyinstrument and sum up where its CPU goes.

`profiled_devhost` starts devhost as `python -m pyinstrument -m devhost ...`; pyinstrument
writes its session file when devhost stops on SIGTERM. `summarize_session` reads that file
and adds up the samples taken inside the event loop's `_run_once` (so start-up imports are
left out) by component: our code, devhost, each SDK, the standard library, and idle time
spent waiting in the selector. pyinstrument samples the main thread only, which is where
devhost runs its event loop.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pyinstrument.frame import Frame
from pyinstrument.renderers import ConsoleRenderer
from pyinstrument.session import Session

from bench.corpus import Customer, Delivery, QueuedEvent, all_secrets
from bench.cpu import CpuMeter
from bench.delivery import BATCH_EVENTS, STAND_IN_DELAY_MS, preload, watch_stand_in
from bench.environment import DISABLED_SETTING, BenchEnvironment, StorageNames
from bench.ingest import UNUSED_CLIENTTRACK_URL, post_over_http
from devhost.azurite import PROJECT_ROOT, free_port
from devhost.processes import ManagedProcess

IDLE = "idle (waiting for I/O)"
# Path fragments checked in order; the first match names the component of a frame.
COMPONENTS: tuple[tuple[str, str], ...] = (
    (str(PROJECT_ROOT / "shared") + "/", "shared (the app)"),
    (str(PROJECT_ROOT / "webhook_ingest") + "/", "shared (the app)"),
    (str(PROJECT_ROOT / "event_processor") + "/", "shared (the app)"),
    (str(PROJECT_ROOT / "devhost") + "/", "devhost (runner)"),
    ("/azure/functions/", "azure-functions types"),
    ("/azure/core/", "azure-core pipeline"),
    ("/azure/storage/", "azure-storage SDK"),
    ("/azure/data/tables/", "azure-data-tables SDK"),
    ("/azure/keyvault/", "azure-keyvault SDK"),
    ("/httpx/", "httpx + httpcore + anyio"),
    ("/httpcore/", "httpx + httpcore + anyio"),
    ("/anyio/", "httpx + httpcore + anyio"),
    ("/h11/", "httpx + httpcore + anyio"),
    ("/aiohttp/", "aiohttp"),
    ("/multidict/", "aiohttp"),
    ("/yarl/", "aiohttp"),
    ("/logging/", "logging"),
    ("/json/", "json"),
    ("/asyncio/", "asyncio"),
    ("/hmac.py", "hashing"),
    ("/hashlib.py", "hashing"),
    ("/importlib/", "imports at run time"),
    ("<frozen importlib", "imports at run time"),
)
TOP_FUNCTIONS = 15
PROFILE_CONCURRENCY = 16
# pyinstrument slows devhost down several times over, so a profiled drain gets long.
PROFILE_TIMEOUT_SECONDS = 600.0


def profiled_devhost(
    environment: BenchEnvironment, label: str, values: Mapping[str, str], session_path: Path
) -> ManagedProcess:
    """Start devhost under pyinstrument, which saves its session to `session_path` at stop."""
    settings_file = environment.write_settings(label, values)
    port = free_port()
    session_path.parent.mkdir(parents=True, exist_ok=True)
    process = ManagedProcess(
        f"devhost-{label}",
        "pyinstrument",
        [
            "--renderer", "pyisession", "--outfile", str(session_path),
            "-m", "devhost", "--port", str(port), "--settings", str(settings_file),
        ],
        log_path=settings_file.parent / f"devhost-{label}.log",
        env=values,
        port=port,
    )  # fmt: skip
    environment.processes.append(process)
    process.start()
    return process


def summarize_session(session_path: Path, text_path: Path | None = None) -> dict[str, Any]:
    """Add up a session's samples inside the event loop by component and by function.

    Also writes pyinstrument's own text rendering to `text_path` when given.
    """
    session = Session.load(str(session_path))
    if text_path is not None:
        renderer = ConsoleRenderer(unicode=True, color=False, short_mode=False)
        text_path.write_text(renderer.render(session), encoding="utf-8")

    root = session.root_frame(trim_stem=False)
    loops = list(_find_all(root, "_run_once")) if root is not None else []
    if not loops:
        return {"error": f"No event-loop samples in {session_path}."}

    by_component: defaultdict[str, float] = defaultdict(float)
    by_function: defaultdict[str, float] = defaultdict(float)
    for loop in loops:
        for frame, component in _walk(loop, "asyncio"):
            if frame.total_self_time <= 0:
                continue
            by_component[component] += frame.total_self_time
            if component != IDLE:
                by_function[f"{frame.function} ({_short_path(frame)})"] += frame.total_self_time

    busy = sum(seconds for component, seconds in by_component.items() if component != IDLE)
    return {
        "loop_seconds": round(sum(loop.time for loop in loops), 3),
        "busy_seconds": round(busy, 3),
        "idle_seconds": round(by_component.get(IDLE, 0.0), 3),
        "by_component": {
            component: {
                "seconds": round(seconds, 3),
                "share_of_busy": round(seconds / busy, 3) if busy and component != IDLE else None,
            }
            for component, seconds in _largest(by_component)
        },
        "top_functions_self": [
            {
                "function": name,
                "seconds": round(seconds, 3),
                "share_of_busy": round(seconds / busy, 3),
            }
            for name, seconds in _largest(by_function)[:TOP_FUNCTIONS]
        ]
        if busy
        else [],
    }


def _largest(seconds_by_name: Mapping[str, float]) -> list[tuple[str, float]]:
    return sorted(seconds_by_name.items(), key=lambda item: item[1], reverse=True)


def _find_all(frame: Frame, function: str) -> Iterator[Frame]:
    """Yield the outermost frames of `function` below `frame`."""
    stack = [frame]
    while stack:
        current = stack.pop()
        if current.function == function:
            yield current
        else:
            stack.extend(current.children)


def _walk(frame: Frame, inherited: str) -> Iterator[tuple[Frame, str]]:
    """Yield every frame below `frame` with its component.

    Built-in functions have no file of their own and count toward their caller's
    component, except the selector's poll, which is the loop waiting for I/O. Synthetic
    frames (pyinstrument's "[self]") are skipped, because their parent's
    `total_self_time` already contains them.
    """
    stack = [(frame, inherited)]
    while stack:
        current, parent_component = stack.pop()
        component = _component(current, parent_component)
        yield current, component
        stack.extend((child, component) for child in current.children if not child.is_synthetic)


def _component(frame: Frame, parent_component: str) -> str:
    path = frame.file_path or ""
    if path.endswith("selectors.py") and frame.function == "select":
        return IDLE
    if parent_component == IDLE:
        return IDLE
    if not path or path.startswith("<built-in"):
        return parent_component
    for fragment, component in COMPONENTS:
        if fragment in path:
            return component
    if "site-packages" in path:
        return "other packages"
    if path.startswith(sys.base_prefix) or path.startswith(sys.prefix):
        return "other standard library"
    return "other"


def _short_path(frame: Frame) -> str:
    path = frame.file_path or "<built-in>"
    marker = "site-packages/"
    if marker in path:
        return path.split(marker, 1)[1]
    root = str(PROJECT_ROOT) + "/"
    if path.startswith(root):
        return path[len(root) :]
    return path.rsplit("/lib/python", 1)[-1]


async def run_profiles(
    environment: BenchEnvironment,
    customers: Sequence[Customer],
    deliveries: Sequence[Delivery],
    events: Sequence[QueuedEvent],
    output_dir: Path,
    stamp: str,
) -> dict[str, Any]:
    """Profile devhost serving the ingest load at concurrency 16, then draining a queue.

    Profiling slows devhost down, so these runs are separate from the measured ones and
    their throughput is not reported. The drain uses two batches' worth of envelopes, few
    enough that Azurite's per-message cost stays low.
    """
    events = events[: BATCH_EVENTS * 2]
    secrets = all_secrets(customers)
    summaries: dict[str, Any] = {}

    names = StorageNames.for_run("profile-ingest")
    values = environment.app_settings(
        names,
        secrets,
        clienttrack_url=UNUSED_CLIENTTRACK_URL,
        extra={DISABLED_SETTING.format(name="event_processor"): "true"},
    )
    session = output_dir / f"profile-ingest-{stamp}.pyisession"
    devhost = profiled_devhost(environment, "profile-ingest", values, session)
    try:
        assert devhost.process is not None
        await post_over_http(
            devhost, deliveries, PROFILE_CONCURRENCY, CpuMeter({"devhost": devhost.process.pid})
        )
    finally:
        environment.stop(devhost)
    summaries["ingest"] = summarize_session(session, session.with_suffix(".txt"))

    names = StorageNames.for_run("profile-delivery")
    stand_in_settings = environment.write_settings("profile-delivery-clienttrack", secrets)
    stand = environment.start_clienttrack(stand_in_settings, "--delay-ms", str(STAND_IN_DELAY_MS))
    try:
        await preload(environment.connection_string, names, events)
        values = environment.app_settings(
            names,
            secrets,
            clienttrack_url=stand.url,
            extra={DISABLED_SETTING.format(name="webhook_ingest"): "true"},
        )
        session = output_dir / f"profile-delivery-{stamp}.pyisession"
        devhost = profiled_devhost(environment, "profile-delivery", values, session)
        try:
            assert devhost.process is not None
            await watch_stand_in(
                environment,
                stand,
                {"devhost": devhost.process.pid},
                len(events),
                PROFILE_TIMEOUT_SECONDS,
                devhost_alive=devhost,
            )
        finally:
            environment.stop(devhost)
    finally:
        environment.stop(stand.process)
    summaries["delivery"] = summarize_session(session, session.with_suffix(".txt"))
    return summaries
