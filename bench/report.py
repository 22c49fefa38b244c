"""The printed tables and the target check of a benchmark run.

Targets are read from the results and reported as met or missed; nothing here fails a
run. Only errors, non-200 responses and undelivered events do that, in `bench.__main__`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The performance targets the figures are held to.
INGEST_THROUGHPUT_MIN_RATIO = 0.85
INGEST_P99_MAX_RATIO = 1.5
DELIVERY_MIN_RATIO = 0.85
KEYVAULT_MAX_READS_PER_CUSTOMER_PERIOD = 3.0
IMPORT_MAX_RATIO = 1.2


def check_targets(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Compare the medians of a run with each target; return one row per target."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, higher_is_better: bool) -> None:
        if value is None:
            met = None
        elif higher_is_better:
            met = value >= limit
        else:
            met = value <= limit
        bound = ">=" if higher_is_better else "<="
        rows.append({"target": name, "value": value, "limit": f"{bound} {limit:g}", "met": met})

    ingest = result.get("ingest")
    if ingest:
        for concurrency, level in ingest["concurrency"].items():
            ratios = level["ratios"]
            add(
                f"ingest throughput / baseline at concurrency {concurrency}",
                ratios["http_throughput_vs_baseline"],
                INGEST_THROUGHPUT_MIN_RATIO,
                True,
            )
            add(
                f"ingest p99 / baseline p99 at concurrency {concurrency}",
                ratios["http_p99_vs_baseline"],
                INGEST_P99_MAX_RATIO,
                False,
            )
    delivery = result.get("delivery")
    if delivery:
        for mode, summary in delivery["modes"].items():
            add(
                f"delivery drain rate / baseline ({mode})",
                summary["ratio_devhost_vs_baseline"],
                DELIVERY_MIN_RATIO,
                True,
            )
    keyvault = result.get("keyvault")
    if keyvault:
        for label, summary in keyvault["passes"].items():
            add(
                f"Key Vault reads per customer per cache period ({label} cache)",
                summary["reads_per_customer_per_period_max"],
                KEYVAULT_MAX_READS_PER_CUSTOMER_PERIOD,
                False,
            )
    startup = result.get("startup")
    if startup:
        for module, summary in startup["modules"].items():
            add(f"import {module} / its dependencies", summary["ratio"], IMPORT_MAX_RATIO, False)
    return rows


def render(result: Mapping[str, Any]) -> str:
    """Format the run as plain-text tables, one per benchmark, then the targets."""
    meta = result["meta"]
    machine = meta["machine"]
    lines = [
        f"Benchmarks of {meta['commit'][:12]} at {meta['started_at']} "
        f"({'smoke run' if meta['smoke'] else 'full run'})",
        f"{machine['cpu_model']}, {machine['cpu_count']} cores, Python {machine['python']}, "
        f"Azurite {machine['azurite']}; load average before {meta['load_average_before']}",
    ]
    for section, renderer in (
        ("ingest", _ingest),
        ("delivery", _delivery),
        ("keyvault", _keyvault),
        ("startup", _startup),
        ("profile", _profile),
    ):
        if result.get(section):
            lines += ["", *renderer(result[section])]
    lines += ["", "Targets"]
    for row in result.get("targets", []):
        verdict = {True: "met", False: "MISSED", None: "n/a"}[row["met"]]
        lines.append(f"  {verdict:<7} {row['target']}: {row['value']} (target {row['limit']})")
    if result.get("failures"):
        lines += ["", "Failures"]
        lines += [f"  {failure}" for failure in result["failures"]]
    return "\n".join(lines)


def _ingest(ingest: Mapping[str, Any]) -> list[str]:
    lines = [
        f"Ingest: {ingest['requests']} signed POSTs ({ingest['claim_checked']} claim-checked, "
        f"{ingest['customers']} customers), median of {ingest['rounds']} round(s)",
        f"  {'conc':>4}  {'variant':<11}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'CPU ms/req':>12}{'other cores':>13}",
    ]
    for concurrency, level in ingest["concurrency"].items():
        for variant, figures in level["median"].items():
            lines.append(
                f"  {concurrency:>4}  {variant:<11}{figures['per_second']:>8.1f}"
                f"{figures['p50_ms']:>9.1f}{figures['p95_ms']:>9.1f}{figures['p99_ms']:>9.1f}"
                f"{figures['cpu_ms_per_request']:>12.2f}{figures['other_cores']:>13.2f}"
            )
        ratios = level["ratios"]
        lines.append(
            f"        http/baseline: throughput {ratios['http_throughput_vs_baseline']:.2f}, "
            f"p99 {ratios['http_p99_vs_baseline']:.2f}; in-process/baseline: throughput "
            f"{ratios['in_process_throughput_vs_baseline']:.2f}, "
            f"p99 {ratios['in_process_p99_vs_baseline']:.2f}"
        )
    memory = ingest["devhost_memory_kib"]
    lines.append(
        f"  devhost resident memory: {memory['rss_after_start'] / 1024:.1f} MiB after start, "
        f"peak {memory['peak_rss'] / 1024:.1f} MiB during the ingest runs"
    )
    reads = ingest["sdk_environment_reads"]["median"]
    lines.append(
        "  raw queue writes, client CPU per write: SDK default transport "
        f"{reads['sdk_default']['client_cpu_ms_per_write']:.2f} ms "
        f"({reads['sdk_default']['per_second']:.0f}/s), app's options "
        f"{reads['app_options']['client_cpu_ms_per_write']:.2f} ms "
        f"({reads['app_options']['per_second']:.0f}/s)"
    )
    return lines


def _delivery(delivery: Mapping[str, Any]) -> list[str]:
    lines = [
        f"Delivery: {delivery['events']} envelopes ({delivery['claim_checked']} claim-checked), "
        f"stand-in delay {delivery['stand_in_delay_ms']} ms, at most {delivery['max_in_flight']} "
        f"in flight, median of {delivery['rounds']} round(s); deep = all preloaded, batched = "
        f"{delivery['batch_events']} at a time",
        f"  {'scenario':<15}{'consumer':<19}{'events/s':>9}{'CPU ms/event: consumer':>24}"
        f"{'Azurite':>9}{'all':>7}{'other cores':>13}",
    ]
    for mode, summary in delivery["modes"].items():
        for consumer, figures in summary["median"].items():
            lines.append(
                f"  {mode:<15}{consumer:<19}{figures['per_second']:>9.1f}"
                f"{figures['consumer_cpu_ms_per_event']:>24.2f}"
                f"{figures['azurite_cpu_ms_per_event']:>9.2f}{figures['all_cpu_ms_per_event']:>7.2f}"
                f"{figures['other_cores']:>13.2f}"
            )
        line = f"  {'':<15}devhost/baseline: {summary['ratio_devhost_vs_baseline']}"
        if "ratio_no_dedupe_vs_baseline" in summary:
            line += f"; without the dedupe ledger: {summary['ratio_no_dedupe_vs_baseline']}"
        lines.append(line)
    return lines


def _keyvault(keyvault: Mapping[str, Any]) -> list[str]:
    lines = [
        f"Key Vault reads: events ingested and delivered, {keyvault['customers']} customers",
        f"  {'cache':<8}{'events':>7}{'period s':>9}{'run s':>8}{'periods':>9}{'reads':>7}"
        f"{'per 10k events':>16}{'per customer per period (max)':>31}",
    ]
    for label, summary in keyvault["passes"].items():
        lines.append(
            f"  {label:<8}{summary['events']:>7}{summary['cache_seconds']:>9g}"
            f"{summary['seconds']:>8.1f}"
            f"{summary['cache_periods']:>9}{summary['total_reads']:>7}"
            f"{summary['reads_per_10000_events']:>16.1f}"
            f"{summary['reads_per_customer_per_period_max']:>31.2f}"
        )
    return lines


def _startup(startup: Mapping[str, Any]) -> list[str]:
    lines = [
        f"Start-up: median of {startup['repeats']} fresh interpreters",
        f"  {'module':<17}{'import ms':>10}{'deps ms':>9}{'own ms':>8}{'ratio':>7}"
        f"{'1st request ms':>16}{'2nd request ms':>16}  dependencies",
    ]
    for module, summary in startup["modules"].items():
        requests = summary.get("requests", {})
        lines.append(
            f"  {module:<17}{summary['import_ms']:>10.1f}{summary['dependencies_ms']:>9.1f}"
            f"{summary['own_ms']:>8.1f}{summary['ratio']:>7.2f}"
            f"{requests.get('first_request_ms', float('nan')):>16.1f}"
            f"{requests.get('second_request_ms', float('nan')):>16.1f}"
            f"  {', '.join(summary['dependencies'])}"
        )
        unused = [
            row for row in summary.get("not_run_on_request_path", []) if row["owner"] == "ours"
        ][:5]
        if unused:
            listed = ", ".join(
                f"{row['module']} ({row['cumulative_us'] / 1000:.1f} ms)" for row in unused
            )
            lines.append(f"      loaded at import, never run by a request: {listed}")
    return lines


def _profile(profile: Mapping[str, Any]) -> list[str]:
    lines = ["Profile of devhost's event loop (pyinstrument), share of busy time"]
    for label, summary in profile.items():
        if "error" in summary:
            lines.append(f"  {label}: {summary['error']}")
            continue
        components = [
            f"{name} {figures['share_of_busy'] * 100:.0f}%"
            for name, figures in summary["by_component"].items()
            if figures["share_of_busy"] is not None and figures["share_of_busy"] >= 0.03
        ]
        busy, idle = summary["busy_seconds"], summary["idle_seconds"]
        lines.append(f"  {label}: busy {busy:.1f} s, idle {idle:.1f} s; " + ", ".join(components))
    return lines
