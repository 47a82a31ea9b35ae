"""``bench capacity``'s pieces: the late-packet target, caller voices, process-tree usage."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from pipeline.bench.capacity import Children, cpu_list, meets_target, run_ramp
from pipeline.bench.load_caller import noise_turns, voice_variants
from pipeline.bench.process_usage import tree_cpu_seconds, tree_memory_mb


def step(**fields: object) -> dict[str, object]:
    row: dict[str, object] = {
        "calls_placed": 10,
        "calls_answered": 10,
        "packets_dropped": 0,
        "voice_to_voice_p95_ms_with_unanswered": 900.0,
        "late_packets_pct": 0.2,
    }
    return row | fields


def test_late_packets_over_the_limit_miss_the_target() -> None:
    assert meets_target(step(), 1.5, 0, max_late_pct=1.0) == (True, [])
    met, misses = meets_target(step(late_packets_pct=4.5), 1.5, 0, max_late_pct=1.0)
    assert not met
    assert misses == ["4.50% packets late > 1%"]
    assert meets_target(step(late_packets_pct=4.5), 1.5, 0)[0], "no limit given: not checked"


def test_voices_are_the_turns_at_different_speeds() -> None:
    turns = noise_turns(2, seed=1)
    (single,) = voice_variants(turns, 1)
    assert [len(t) for t in single] == [len(t) for t in turns]
    voices = voice_variants(turns, 3)
    lengths = [len(voice[0]) for voice in voices]
    assert lengths == sorted(lengths, reverse=True), "slowest voice first: longest turns"
    assert lengths[0] > len(turns[0]) > lengths[-1]
    with pytest.raises(ValueError, match="at least 1"):
        voice_variants(turns, 0)


def test_process_tree_usage_counts_children_live_and_exited() -> None:
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    before = tree_cpu_seconds(os.getpid())
    subprocess.run([sys.executable, "-c", burn], check=True)  # exited and reaped
    assert tree_cpu_seconds(os.getpid()) - before >= 0.25
    hold = "import time\nblock = bytes(range(256)) * 2**18\nprint(flush=True)\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        child.stdout.readline()  # its 64 MB are allocated
        memory = tree_memory_mb(os.getpid())
        assert memory is not None
        assert memory["processes"] >= 2
        assert memory["uss"] >= 64
        assert memory["rss"] >= memory["pss"] >= memory["uss"] * 0.99
    finally:
        child.kill()
        child.wait()
    assert tree_memory_mb(child.pid) is None
    assert tree_cpu_seconds(child.pid, default=-1.0) == -1.0


def test_core_lists_read_like_taskset_and_must_exist() -> None:
    cores = sorted(os.sched_getaffinity(0))
    assert cpu_list(str(cores[0])) == {cores[0]}
    assert cpu_list(f"{cores[0]}-{cores[0]}") == {cores[0]}
    if len(cores) > 1:
        assert cpu_list(f"{cores[0]},{cores[1]}") == {cores[0], cores[1]}
    for bad in ("", "a", "1-x", f"{os.cpu_count()}", "3-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            cpu_list(bad)


def test_children_start_on_the_cores_asked_and_default_to_ours() -> None:
    core = min(os.sched_getaffinity(0))
    show = [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"]
    ours = str(sorted(os.sched_getaffinity(0)))
    children = Children()
    try:
        pinned = children.start(show, frozenset({core}), stdout=subprocess.PIPE)
        free = children.start(show, stdout=subprocess.PIPE)
        assert pinned.communicate(timeout=30)[0].decode().strip() == str([core])
        assert free.communicate(timeout=30)[0].decode().strip() == ours
    finally:
        children.stop_all()


def test_a_ramp_refuses_cores_this_machine_lacks() -> None:
    with pytest.raises(SystemExit):
        run_ramp(["--bot", "parrot", "--server-cpus", str(os.cpu_count())])
