"""Start-up benchmark: what importing each function module costs a fresh interpreter.

For `webhook_ingest` and `event_processor`:

- `python -X importtime -c "import <module>"` lists every module the import loads. The
  third-party packages that our own modules import directly are the module's dependencies.
- Fresh interpreters time `import <module>` and, separately, an import of only those
  dependencies, alternating, and the medians are compared. The difference is the module's
  own cost: our code and the standard-library modules it pulls in.
- `bench.startup_probe` imports the module, then serves one real request through it while
  a profile hook records which modules run code. Modules loaded at import whose code never
  ran are listed as not needed on the request path, with their cumulative import time.

The function modules call `get_settings()` at import, so the children get the settings
they need (Azurite's connection string and a ClientTrack URL) in their environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.corpus import Customer, all_secrets
from bench.environment import BenchEnvironment, StorageNames
from bench.stats import median
from devhost.azurite import PROJECT_ROOT

FUNCTION_MODULES = ("webhook_ingest", "event_processor")
OUR_PACKAGES = frozenset({"shared", *FUNCTION_MODULES})
PROBE_TIMEOUT_SECONDS = 120.0
# `-X importtime` runs whose per-module medians are listed; a single run is noisy.
IMPORTTIME_RUNS_MIN = 3
LISTED_IMPORTS = 25
_TIMER = "import time; started = time.perf_counter(); import {modules}; " + (
    "print(time.perf_counter() - started)"
)


@dataclass
class ImportNode:
    """One line of `-X importtime` output with the modules it imported first."""

    name: str
    self_us: int
    cumulative_us: int
    children: list[ImportNode] = field(default_factory=list)

    @property
    def top_level(self) -> str:
        return self.name.partition(".")[0]


def parse_importtime(stderr: str) -> list[ImportNode]:
    """Build the import tree from `-X importtime` output.

    Python prints a module after the modules it imported, one level deeper, so each line
    adopts the deeper lines collected since the previous line at its own level.
    """
    pending: dict[int, list[ImportNode]] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        head, cumulative_text, name_text = line.split("|", 2)
        self_text = head.removeprefix("import time:")
        name = name_text.rstrip()
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        node = ImportNode(name.strip(), int(self_text), int(cumulative_text))
        node.children = pending.pop(depth + 1, [])
        pending.setdefault(depth, []).append(node)
    return pending.get(0, [])


def direct_dependencies(roots: Sequence[ImportNode]) -> list[str]:
    """Return the third-party modules that our own modules import directly."""
    found: list[str] = []

    def visit(node: ImportNode) -> None:
        if node.top_level in OUR_PACKAGES:
            for child in node.children:
                if _is_third_party(child.top_level) and child.name not in found:
                    found.append(child.name)
                visit(child)

    for root in roots:
        visit(root)
    # A namespace package such as `azure` is printed next to the module that needs it.
    return [name for name in found if not any(other.startswith(name + ".") for other in found)]


def _is_third_party(top_level: str) -> bool:
    return top_level not in sys.stdlib_module_names and top_level not in OUR_PACKAGES


def run_startup(
    environment: BenchEnvironment, customers: Sequence[Customer], *, repeats: int
) -> dict[str, Any]:
    """Measure each function module against its dependencies and probe the request path."""
    names = StorageNames.for_run("startup")
    values = environment.app_settings(
        names,
        all_secrets(customers),
        clienttrack_url="http://127.0.0.1:9/api/integration/queue",
    )
    env = {**os.environ, **values, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    modules = {}
    for module in FUNCTION_MODULES:
        modules[module] = _measure_module(module, env, repeats, customers[0])
    return {"repeats": repeats, "modules": modules}


def startup_failures(result: Mapping[str, Any]) -> list[str]:
    return [
        f"start-up {module}: {summary['probe_error']}"
        for module, summary in result["modules"].items()
        if summary.get("probe_error")
    ]


def _measure_module(
    module: str, env: Mapping[str, str], repeats: int, customer: Customer
) -> dict[str, Any]:
    traces = [
        parse_importtime(
            _run([sys.executable, "-X", "importtime", "-c", f"import {module}"], env).stderr
        )
        for _ in range(max(IMPORTTIME_RUNS_MIN, repeats // 3))
    ]
    roots = _median_tree(traces)
    dependencies = direct_dependencies(roots)

    module_seconds: list[float] = []
    dependency_seconds: list[float] = []
    for _ in range(repeats):
        module_seconds.append(_time_import([module], env))
        dependency_seconds.append(_time_import(dependencies, env))
    module_median = median(module_seconds)
    dependency_median = median(dependency_seconds)

    probe_command = [sys.executable, "-m", "bench.startup_probe", module, customer.customer_id]
    probe_env = {**env, "BENCH_PROBE_SECRET_HEX": customer.webhook_secret_hex}
    probe = _run(probe_command, probe_env)
    timed = _run([*probe_command, "--timed"], probe_env)
    report: dict[str, Any] = {
        "dependencies": dependencies,
        "import_ms": round(module_median * 1000, 1),
        "dependencies_ms": round(dependency_median * 1000, 1),
        "own_ms": round((module_median - dependency_median) * 1000, 1),
        "ratio": round(module_median / dependency_median, 3) if dependency_median else None,
        "import_ms_runs": [round(value * 1000, 1) for value in module_seconds],
        "dependencies_ms_runs": [round(value * 1000, 1) for value in dependency_seconds],
        "our_imports": _our_imports(roots),
    }
    for completed in (probe, timed):
        if completed.returncode != 0:
            last_lines = completed.stderr.strip().splitlines()[-3:]
            report["probe_error"] = " | ".join(last_lines) or "no output"
            return report
    traced_requests = json.loads(probe.stdout)
    timed_requests = json.loads(timed.stdout)
    report["requests"] = {
        "status": timed_requests["status"],
        "first_request_ms": timed_requests["first_request_ms"],
        "second_request_ms": timed_requests["second_request_ms"],
        "imported_by_first_request": traced_requests["imported_by_request"],
    }
    report["not_run_on_request_path"] = _not_run(roots, set(traced_requests["ran"]))
    return report


def _median_tree(traces: Sequence[list[ImportNode]]) -> list[ImportNode]:
    """Return the first trace's tree with each module's median times over all traces."""
    samples: dict[str, list[tuple[int, int]]] = {}

    def collect(node: ImportNode) -> None:
        samples.setdefault(node.name, []).append((node.self_us, node.cumulative_us))
        for child in node.children:
            collect(child)

    for roots in traces:
        for root in roots:
            collect(root)

    def rebuild(node: ImportNode) -> ImportNode:
        values = samples[node.name]
        return ImportNode(
            node.name,
            round(median([value[0] for value in values])),
            round(median([value[1] for value in values])),
            [rebuild(child) for child in node.children],
        )

    return [rebuild(root) for root in traces[0]]


def _time_import(modules: Sequence[str], env: Mapping[str, str]) -> float:
    program = _TIMER.format(modules=", ".join(modules))
    completed = _run([sys.executable, "-c", program], env)
    if completed.returncode != 0:
        raise RuntimeError(f"Importing {', '.join(modules)} failed: {completed.stderr.strip()}")
    return float(completed.stdout.strip())


def _run(command: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_SECONDS,
        check=False,
    )


def _our_imports(roots: Sequence[ImportNode]) -> list[dict[str, Any]]:
    """List what our own modules import first (standard library and our code)."""
    rows: list[dict[str, Any]] = []

    def visit(node: ImportNode, under_ours: bool) -> None:
        ours = node.top_level in OUR_PACKAGES
        if under_ours and not _is_third_party(node.top_level):
            rows.append(
                {"module": node.name, "self_us": node.self_us, "cumulative_us": node.cumulative_us}
            )
        for child in node.children:
            visit(child, ours or (under_ours and not _is_third_party(node.top_level)))

    for root in roots:
        visit(root, False)
    rows.sort(key=lambda row: row["cumulative_us"], reverse=True)
    return rows[:LISTED_IMPORTS]


def _not_run(roots: Sequence[ImportNode], ran: set[str]) -> list[dict[str, Any]]:
    """List the outermost imported modules whose code, and whose submodules' code, never ran.

    A module counts as used when any function defined in it, or in a module imported
    below it, was called while the requests were served. `owner` names whose import
    loaded it: "ours" below our own modules, else "dependency" (below a third-party one).
    """
    unused: list[dict[str, Any]] = []

    def used(node: ImportNode) -> bool:
        return node.name in ran or any(used(child) for child in node.children)

    def visit(node: ImportNode, importer: str, owner: str) -> None:
        if node.top_level in OUR_PACKAGES:
            owner = "ours"
        elif _is_third_party(node.top_level):
            owner = "dependency"
        if not used(node):
            unused.append(
                {
                    "module": node.name,
                    "cumulative_us": node.cumulative_us,
                    "imported_by": importer,
                    "owner": owner,
                }
            )
            return
        for child in node.children:
            visit(child, node.name, owner)

    for root in roots:
        visit(root, "-", "interpreter")
    unused.sort(key=lambda row: row["cumulative_us"], reverse=True)
    ours = [row for row in unused if row["owner"] == "ours"]
    others = [row for row in unused if row["owner"] != "ours"]
    return ours[:LISTED_IMPORTS] + others[:LISTED_IMPORTS]
