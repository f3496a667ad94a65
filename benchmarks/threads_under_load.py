"""Plane-sweep time of one camera pair with one and with several torch threads, on an idle machine
and with busy processes beside it: why ``torch_threads`` stays 1 by default.

Reads the pair's images, cameras, masks and depth range from a reconstructed store (``aquamvs
reconstruct`` or ``aquamvs demo`` make one), runs :func:`sweep_pair` ``--repeat`` times per setting
(after one warm-up run per setting, which also solves the lens inverse), and writes a Markdown table::

    python benchmarks/threads_under_load.py --store OUT/.aquamvs/store.zarr --pair cam0-cam1 \\
        --threads 1 2 --busy 0 6 --out benchmarks/results/threads_under_load_cpu.md

``--busy N`` starts N processes that spin on the CPU for the duration of that setting (the load of
other users on a shared workstation) and stops them afterwards.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aquamvs_core.evaluation.profiling import machine_info  # noqa: E402
from aquamvs_core.stages.stereo.config import PlaneSweepConfig  # noqa: E402
from aquamvs_core.stages.stereo.plane_sweep import sweep_pair  # noqa: E402
from aquamvs_core.steps.common import StoreCameras  # noqa: E402
from aquamvs_core.steps.sparse import depth_range  # noqa: E402
from aquamvs_core.store import SurveyStore  # noqa: E402


def _spin(stop: mp.Event) -> None:
    while not stop.is_set():
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="a reconstructed store (OUT/.aquamvs/store.zarr)")
    ap.add_argument("--frame", default="f000000")
    ap.add_argument("--pair", default="cam0-cam1", help="REF-SRC")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 6], help="busy processes beside the sweep")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    store = SurveyStore(args.store, read_only=True)
    cams = StoreCameras.load(store)
    ref, src = args.pair.split("-")
    images = store.read_frame(args.frame, [ref, src])
    z_range = depth_range(store, args.frame, ref)
    config = PlaneSweepConfig()
    h, w = cams.masks[ref].shape

    def sweep() -> float:
        t0 = time.perf_counter()
        sweep_pair(
            images[ref],
            images[src],
            cams.cameras[ref],
            cams.cameras[src],
            cams.masks[ref],
            cams.masks[src],
            config,
            z_range=z_range,
        )
        return time.perf_counter() - t0

    machine = machine_info()  # before the busy processes start
    rows = []
    for busy in args.busy:
        stop = mp.Event()
        spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            for n in args.threads:
                torch.set_num_threads(n)
                sweep()  # warm-up
                times = [sweep() for _ in range(args.repeat)]
                load = os.getloadavg()[0]
                rows.append((busy, n, times, load))
                print(f"busy {busy}, threads {n}: {', '.join(f'{t:.2f}' for t in times)} s (load {load:.1f})")
        finally:
            stop.set()
            for p in spinners:
                p.join()
        time.sleep(2)

    lines = [
        "# Plane sweep of one pair: torch threads, idle and under load (CPU)",
        "",
        f"[`benchmarks/threads_under_load.py`](../threads_under_load.py) on `{args.store}`, frame "
        f"{args.frame}, pair {args.pair} ({w}×{h}), balanced sweep settings; {args.repeat} runs per "
        f"setting after a warm-up. Machine: **{machine['cpu']}**, {machine['cores']} cores; "
        f'{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "busy": processes spinning on the CPU beside the '
        "sweep (other users of a shared workstation); load: 1-minute load average at the end.",
        "",
        "| busy processes | torch threads | runs, s | median, s | load |",
        "|---|---|---|---|---|",
    ]
    for busy, n, times, load in rows:
        lines.append(
            f"| {busy} | {n} | {', '.join(f'{t:.2f}' for t in times)} | {statistics.median(times):.2f} | {load:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
