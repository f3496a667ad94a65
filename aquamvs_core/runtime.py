"""Process-level runtime settings shared by the stages."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Annotated, TypeVar

import torch
from pydantic import AfterValidator


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: unchanged), then restore the setting.

    On small, shared CPUs one thread is often several times faster than two for the many small
    element-wise ops of these stages. The setting is process-wide: do not enter this from several
    threads at once.
    """
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask (taskset, a container's cpuset), else
    the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: The most workers :func:`default_workers` chooses (each holds one item's working memory).
MAX_DEFAULT_WORKERS = 4


def default_workers(device: str = "cpu") -> int:
    """Workers for items that run side by side (:func:`map_in_threads`): the cores this process may
    use, at most :data:`MAX_DEFAULT_WORKERS`, on the CPU; one on a GPU (the device is shared)."""
    if torch.device(device).type != "cpu":
        return 1
    return min(available_cores(), MAX_DEFAULT_WORKERS)


def map_in_threads(
    fn: Callable[[T], R], items: Sequence[T], workers: int, in_order: bool = False
) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` for every item, ``workers`` items at a time, in the order they finish
    (``in_order``: in the order of ``items``, each as soon as it and those before it are done).

    With ``workers > 1`` each item runs in a worker thread with one torch intra-op thread: torch
    releases the GIL inside its kernels, so independent items (the pairs of a frame) run side by
    side, and a busy CPU slows them down gracefully instead of stalling torch's thread barriers
    (``benchmarks/results/threads_under_load_cpu.md``). The torch setting is process-wide and is
    restored afterwards: do not nest this or run it from several threads at once. With one worker
    (or one item) the items run here, in order, under the caller's torch setting.

    The first failure cancels the items not yet started, waits for the running ones and is raised.
    """
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield item, fn(item)
        return
    with torch_threads(1), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aquamvs") as pool:
        futures = [pool.submit(fn, item) for item in items]
        pending = dict(zip(futures, range(len(items)), strict=True))
        finished: dict[int, R] = {}
        next_out = 0
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    finished[pending.pop(future)] = future.result()
                ready = sorted(finished) if not in_order else []
                while in_order and next_out in finished:
                    ready.append(next_out)
                    next_out += 1
                for i in ready:
                    yield items[i], finished.pop(i)
        finally:  # a failure, or the caller stopped early: start nothing more
            for future in pending:
                future.cancel()


class SingleFlight:
    """Per-key locks for caches shared by threads: callers that miss the same key at the same time
    wait for one computation instead of each doing it. Locks exist only while someone holds them."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Hashable, list] = {}  # key → [lock, callers holding or waiting]

    @contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        """Hold ``key``'s lock for the block (look the cache up again inside it)."""
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]


def check_device(name: str) -> str:
    """``name`` if torch accepts it as a device ("cpu", "cuda", "cuda:1", ...), else ValueError."""
    try:
        torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"invalid torch device {name!r}: {exc}") from None
    return name


#: A pydantic field type for torch device names, validated.
TorchDevice = Annotated[str, AfterValidator(check_device)]


#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX")


def _glibc_malloc() -> ctypes.CDLL | None:
    """glibc (with ``mallopt`` and ``malloc_trim``) when it is this process's allocator; None on other
    C libraries and under a preloaded allocator (jemalloc, tcmalloc: they manage this themselves)."""
    if not sys.platform.startswith("linux") or "malloc" in os.environ.get("LD_PRELOAD", ""):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (both must exist)
    except (OSError, AttributeError):
        return None
    return libc


def tune_allocator(
    trim_threshold_mb: int = 1024, mmap_threshold_mb: int = 32, top_pad_mb: int = 64, arena_max: int = 1
) -> bool:
    """Make glibc's malloc keep the memory of freed tensors for the next ones (process-wide).

    The stages allocate and free tensors of a few to a few tens of MB many thousand times a frame.
    By default glibc serves such blocks with ``mmap`` or returns them to the system when freed, so
    every new tensor's pages fault in again. Blocks up to ``mmap_threshold_mb`` now come from the
    heap, which keeps up to ``trim_threshold_mb`` of free memory instead of trimming it. Measured on
    a 1600×1200 frame (``benchmarks/results/frame_profile_rig1600_ab_cpu.md``, with the session's
    other changes): system time 38–45 s → 15–17 s, peak RSS +180–240 MB, wall time within the
    host's noise.

    ``arena_max`` heaps at most: by default glibc gives threads (the pair workers of
    :func:`map_in_threads`) heaps of their own, and each would keep its freed memory for itself
    (a 1600×1200 frame with two workers peaked at 6.3 GB instead of 3.4 GB). With one heap the
    threads reuse each other's memory; they allocate few, large blocks, so its lock costs nothing.

    Does nothing (returns False) on other C libraries, when the process already sets glibc's
    ``MALLOC_*`` variables, or under another allocator (``LD_PRELOAD``). Returns True when applied.
    """
    libc = _glibc_malloc()
    if libc is None or any(k in os.environ for k in _MALLOC_ENV):
        return False
    mb = 1 << 20
    return all(
        libc.mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, mmap_threshold_mb * mb),
            (_M_TRIM_THRESHOLD, trim_threshold_mb * mb),
            (_M_TOP_PAD, top_pad_mb * mb),
            (_M_ARENA_MAX, arena_max),
        )
    )


def release_free_memory() -> bool:
    """Hand the memory that glibc's malloc holds free back to the system (``malloc_trim(0)``).

    :func:`tune_allocator` makes the heap keep up to 1 GB of freed tensors for the next ones, which
    is right inside a stage but wrong between stages: the next stage's peak would sit on top of the
    last one's leftovers. The plane sweep of a frame's pairs calls this when it finishes (its two
    workers leave the most behind). Pages given back fault in again when they are used, so this is
    not free: on a 1600×1200 frame, trimming after every large step cost ~7 s of system time.
    Returns True when glibc released anything; False elsewhere (another C library or allocator).
    """
    libc = _glibc_malloc()
    if libc is None:
        return False
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return bool(libc.malloc_trim(0))
