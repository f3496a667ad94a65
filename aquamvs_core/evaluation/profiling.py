"""Per-stage profiling of the real pipeline: wall time, process CPU time, peak resident memory, and
CUDA time and memory when the work runs on a GPU.

Peak RSS is sampled by a background thread (``psutil``) while a stage runs, so it includes memory
that torch, Open3D and NumPy allocate outside Python's heap.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import psutil
import torch


@dataclass(frozen=True)
class StageProfile:
    """One stage's cost. Times in seconds, memory in MB; CUDA fields are None without a GPU."""

    stage: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    rss_before_mb: float
    cuda_s: float | None = None
    cuda_peak_mb: float | None = None


class _RssSampler:
    """Polls the process's resident set size every ``interval`` seconds and keeps the maximum."""

    def __init__(self, interval: float):
        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


class Profiler:
    """Collects :class:`StageProfile` records: ``with profiler.stage("fusion"): ...``."""

    def __init__(self, interval_s: float = 0.02, cuda: bool | None = None):
        self.records: list[StageProfile] = []
        self.interval_s = interval_s
        self.cuda = torch.cuda.is_available() if cuda is None else cuda

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        rss_before = psutil.Process().memory_info().rss
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start_event = torch.cuda.Event(enable_timing=True)
            end_event = torch.cuda.Event(enable_timing=True)
            start_event.record()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        with _RssSampler(self.interval_s) as sampler:
            yield
        cuda_s = cuda_peak = None
        if self.cuda:
            end_event.record()
            torch.cuda.synchronize()
            cuda_s = start_event.elapsed_time(end_event) / 1000.0
            cuda_peak = torch.cuda.max_memory_allocated() / 2**20
        self.records.append(
            StageProfile(
                stage=name,
                wall_s=time.perf_counter() - wall0,
                cpu_s=time.process_time() - cpu0,
                peak_rss_mb=sampler.peak / 2**20,
                rss_before_mb=rss_before / 2**20,
                cuda_s=cuda_s,
                cuda_peak_mb=cuda_peak,
            )
        )

    def table(self) -> pd.DataFrame:
        """One row per stage, with each stage's share of the total wall time."""
        df = pd.DataFrame([asdict(r) for r in self.records])
        if not df.empty:
            df["wall_share"] = df["wall_s"] / df["wall_s"].sum()
            df["rss_growth_mb"] = df["peak_rss_mb"] - df["rss_before_mb"]
        return df

    def bottlenecks(self, n: int = 3) -> list[str]:
        """The ``n`` slowest stages, with their share of time and their memory, as sentences."""
        df = self.table()
        if df.empty:
            return []
        lines = []
        for _, row in df.sort_values("wall_s", ascending=False).head(n).iterrows():
            lines.append(
                f"{row['stage']}: {row['wall_s']:.2f} s ({100 * row['wall_share']:.0f} % of the time), "
                f"CPU {row['cpu_s']:.2f} s, peak RSS {row['peak_rss_mb']:.0f} MB "
                f"(+{row['rss_growth_mb']:.0f} MB during the stage)"
            )
        return lines


def machine_info() -> dict[str, object]:
    """The processor model (``/proc/cpuinfo``), core count, memory, Python and torch versions, the
    torch thread count and the current load averages: what every benchmark table states."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor()
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load": [round(x, 2) for x in os.getloadavg()],
    }
