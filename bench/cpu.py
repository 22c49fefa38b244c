"""CPU accounting for one benchmark run: our processes, and everything else on the machine.

The benchmark shares its cores with whatever else runs. Reading `/proc/stat` (all CPUs)
and `/proc/<pid>/stat` (each process we started) before and after a run shows how many
cores each of our processes used and how many went to other work. A figure measured on a
busy machine can then be distinguished from one measured on a quiet one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

_CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
# Fields of the `cpu` line of /proc/stat that count busy time: user, nice, system, irq,
# softirq and steal. Idle and iowait are left out; guest time is already inside user.
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


@dataclass(frozen=True)
class _Snapshot:
    at: float
    machine_busy_ticks: int
    process_ticks: dict[str, int]


class CpuMeter:
    """Measure the cores used by named processes and by the rest of the machine.

    A process that exits during the run counts only up to its last reading.
    """

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: _Snapshot | None = None

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> dict[str, float]:
        """Return the average cores used since `start`: per process, by all other work
        (`other`) and by the whole machine (`machine`), with the wall time (`seconds`)."""
        if self._start is None:
            raise RuntimeError("CpuMeter.stop() was called before start().")
        end = self._snapshot()
        wall = max(end.at - self._start.at, 1e-9)

        def cores(ticks: int) -> float:
            return round(ticks / _CLOCK_TICKS_PER_SECOND / wall, 2)

        usage = {
            name: cores(end.process_ticks.get(name, 0) - self._start.process_ticks.get(name, 0))
            for name in self.pids
        }
        machine = cores(end.machine_busy_ticks - self._start.machine_busy_ticks)
        usage["other"] = round(max(machine - sum(usage.values()), 0.0), 2)
        usage["machine"] = machine
        usage["seconds"] = round(wall, 3)
        return usage

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(
            at=time.monotonic(),
            machine_busy_ticks=_machine_busy_ticks(),
            process_ticks={
                name: ticks
                for name, pid in self.pids.items()
                if (ticks := _process_ticks(pid)) is not None
            },
        )


def load_average() -> float:
    """Return the one-minute load average: runnable tasks, all processes included."""
    return round(os.getloadavg()[0], 2)


def _machine_busy_ticks() -> int:
    with open("/proc/stat", encoding="ascii") as stat:
        fields = stat.readline().split()[1:]
    return sum(int(fields[index]) for index in _BUSY_FIELDS if index < len(fields))


def _process_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name in brackets may contain spaces, so the fields start after its ")".
    fields = text.rpartition(")")[2].split()
    # utime and stime are fields 14 and 15 of the file, 12 and 13 after the name.
    return int(fields[11]) + int(fields[12])
