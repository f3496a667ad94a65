"""Process-level runtime settings shared by the stages."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

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
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX")


def tune_allocator(trim_threshold_mb: int = 1024, mmap_threshold_mb: int = 32, top_pad_mb: int = 64) -> bool:
    """Make glibc's malloc keep the memory of freed tensors for the next ones (process-wide).

    The stages allocate and free tensors of a few to a few tens of MB many thousand times a frame.
    By default glibc serves such blocks with ``mmap`` or returns them to the system when freed, so
    every new tensor's pages fault in again. Blocks up to ``mmap_threshold_mb`` now come from the
    heap, which keeps up to ``trim_threshold_mb`` of free memory instead of trimming it. Measured on
    a 1600×1200 frame (``benchmarks/results/frame_profile_rig1600_ab_cpu.md``, with the session's
    other changes): system time 38–45 s → 15–17 s, peak RSS +180–240 MB, wall time within the
    host's noise.

    Does nothing (returns False) on other C libraries, when the process already sets glibc's
    ``MALLOC_*`` variables, or under another allocator (``LD_PRELOAD``). Returns True when applied.
    """
    if not sys.platform.startswith("linux") or any(k in os.environ for k in _MALLOC_ENV):
        return False
    if "malloc" in os.environ.get("LD_PRELOAD", ""):  # jemalloc, tcmalloc: they manage this themselves
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mb = 1 << 20
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, mmap_threshold_mb * mb),
            (_M_TRIM_THRESHOLD, trim_threshold_mb * mb),
            (_M_TOP_PAD, top_pad_mb * mb),
        )
    )
