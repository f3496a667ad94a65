"""Process-level runtime settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROBE = r"""
import json, resource, sys
import torch
from aquamvs_core.runtime import tune_allocator
applied = tune_allocator() if sys.argv[1] == "tuned" else False
def cycle():
    a = torch.empty(1200, 1600).fill_(1.0)  # 7.7 MB, touched
    b = a * 2.0
    return float(b[0, 0])
for _ in range(5):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    cycle()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, env={**clean, **env}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_allocator_stops_page_faults_of_recycled_tensors():
    """100 cycles of two 7.7 MB tensors: with the setting their pages are reused (faulting them in
    every cycle is ~3,750 faults a cycle, 375,000 in all). Measured on these machines: tuned 0, or
    9,375 once (five tensors' first touch, not per cycle); by default 0 to 372,000 (glibc's dynamic
    threshold sometimes adapts by itself)."""
    tuned = _probe("tuned")
    assert tuned["applied"] is True
    assert tuned["faults"] < 18_750, tuned  # < 5 % of the pages the cycles touch
    # The user's own glibc settings win: nothing is changed then.
    assert _probe("tuned", MALLOC_ARENA_MAX="2")["applied"] is False


_ARENAS = r"""
import ctypes, sys, threading
import torch
from aquamvs_core.runtime import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
if sys.argv[1] == "package":  # what the CLI, code servers and step workers import first
    import aquamvs_assets  # noqa: F401
def work():
    for _ in range(20):
        a = torch.empty(1200, 1600).fill_(1.0)
        b = a * 2.0
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" block per heap, on stderr
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_stats")
def test_tune_allocator_keeps_threads_on_one_heap():
    """Four threads cycling 7.7 MB tensors: one heap when tuned, also by importing aquamvs_assets
    (their freed memory is shared), a heap a thread by default (measured: 9 here, each keeping its
    own free memory)."""

    def arenas(mode: str) -> int:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        out = subprocess.run(
            [sys.executable, "-c", _ARENAS, mode], capture_output=True, text=True, check=True, env=clean
        )
        return sum(line.startswith("Arena ") for line in out.stderr.splitlines())

    assert arenas("tuned") == 1
    assert arenas("package") == 1
    assert arenas("default") >= 3


_RELEASE = r"""
import json, sys
import torch
from aquamvs_core.runtime import release_free_memory, tune_allocator
assert tune_allocator()
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
base = rss_mb()
held = [torch.empty(1200, 1600).fill_(1.0) for _ in range(60)]  # 460 MB of 7.7 MB tensors, touched
peak = rss_mb()
del held
freed = rss_mb()
released = release_free_memory()
print(json.dumps({"base": base, "peak": peak, "freed": freed, "after": rss_mb(), "released": released}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_free_memory_hands_the_tuned_heaps_leftovers_back():
    """The tuned heap keeps freed tensors (up to 1 GB) for the next ones; between steps
    ``release_free_memory`` gives them back, so the next step's peak does not sit on them."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _RELEASE], capture_output=True, text=True, check=True, env=clean
    )
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["peak"] - m["base"] > 400, m
    assert m["freed"] - m["base"] > 400, m  # the heap kept them
    assert m["released"] is True and m["after"] - m["base"] < 50, m


# ---------------------------------------------------------------------------------------------
# Threads: map_in_threads, SingleFlight
# ---------------------------------------------------------------------------------------------


def test_map_in_threads_runs_items_side_by_side_with_one_torch_thread():
    import threading

    import torch

    from aquamvs_core.runtime import map_in_threads

    barrier = threading.Barrier(2, timeout=10)  # passes only if two items run at the same time
    before = torch.get_num_threads()

    def work(x: int) -> tuple[int, int, str]:
        barrier.wait()
        return x * x, torch.get_num_threads(), threading.current_thread().name

    out = dict(map_in_threads(work, list(range(6)), workers=2))
    assert {k: v[0] for k, v in out.items()} == {x: x * x for x in range(6)}
    assert {v[1] for v in out.values()} == {1}
    assert all(v[2].startswith("aquamvs") for v in out.values())
    assert torch.get_num_threads() == before


def test_map_in_threads_in_order_waits_for_the_earlier_items():
    import time

    from aquamvs_core.runtime import map_in_threads

    def work(x: int) -> int:
        time.sleep(0.02 * (5 - x))  # the last items finish first
        return 10 * x

    assert list(map_in_threads(work, list(range(5)), workers=3, in_order=True)) == [
        (x, 10 * x) for x in range(5)
    ]
    finished = [x for x, _ in map_in_threads(work, list(range(5)), workers=5)]
    assert sorted(finished) == list(range(5)) and finished != list(range(5))  # as they finish


def test_map_in_threads_with_one_worker_runs_here_in_order():
    import threading

    from aquamvs_core.runtime import map_in_threads

    seen = []
    out = list(map_in_threads(lambda x: seen.append(threading.current_thread()) or -x, [3, 1, 2], 1))
    assert out == [(3, -3), (1, -1), (2, -2)]
    assert set(seen) == {threading.current_thread()}


def test_map_in_threads_raises_the_first_failure_and_starts_nothing_more():
    import threading
    import time

    from aquamvs_core.runtime import map_in_threads

    started, lock = [], threading.Lock()

    def work(x: int) -> int:
        with lock:
            started.append(x)
        if x == 1:
            raise ValueError("pair 1 failed")
        time.sleep(0.05)
        return x

    with pytest.raises(ValueError, match="pair 1 failed"):
        list(map_in_threads(work, list(range(40)), workers=2))
    assert 2 <= len(started) < 10  # the queue behind the failure never ran


def test_single_flight_computes_a_missing_key_once():
    import threading
    import time

    from aquamvs_core.runtime import SingleFlight

    flight, cache, calls = SingleFlight(), {}, []

    def get(key: str) -> int:
        with flight.hold(key):
            if key not in cache:
                calls.append(key)
                time.sleep(0.05)  # everyone else arrives while this one computes
                cache[key] = len(key)
        return cache[key]

    threads = [threading.Thread(target=get, args=(k,)) for k in ["ab", "ab", "ab", "xyz", "xyz"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == ["ab", "xyz"]
    assert cache == {"ab": 2, "xyz": 3}
    assert flight._locks == {}  # no lock outlives its callers
