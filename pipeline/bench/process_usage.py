"""CPU time and memory of a server and every process under it (``serve --workers N``).

A supervised server is a parent and N workers, and a worker may be restarted during
a step, so both figures cover the whole process tree: CPU is the parent's own time,
what its exited children used (``cutime``/``cstime``, counted once the parent reaped
them) and the live children's time. Memory is reported three ways, because the
workers share pages: RSS counts shared pages once per process (the LLM weights,
memory-mapped, N times), PSS divides each shared page among the processes mapping
it (sums to what the tree really takes), USS is what each process alone holds.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

__all__ = ["tree_cpu_seconds", "tree_memory_mb"]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def tree_cpu_seconds(pid: int, default: float = 0.0) -> float:
    """CPU seconds of ``pid``, its reaped children and its live descendants; ``default``
    once ``pid`` is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return default
    total = sum(int(value) for value in fields[11:15]) / CLK_TCK  # utime stime cutime cstime
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return total
    for child in children:
        child_fields = _stat_fields(child.pid)
        if child_fields is not None:
            total += (int(child_fields[11]) + int(child_fields[12])) / CLK_TCK
    return total


def tree_memory_mb(pid: int) -> dict[str, float] | None:
    """RSS, PSS and USS in MB summed over ``pid`` and its descendants (None: it is gone)."""
    try:
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return None
    totals = {"rss": 0.0, "pss": 0.0, "uss": 0.0}
    for process in processes:
        try:
            info = process.memory_full_info()
        except psutil.Error:  # exited meanwhile
            continue
        for key in totals:
            totals[key] += getattr(info, key, 0) / 2**20
    return {key: round(value, 1) for key, value in totals.items()} | {"processes": len(processes)}
