"""RoMa pathway: streaming (each warp converted to depth and dropped at once) against a deliberately
accumulating variant (every warp held, then converted; what the earlier project did), over a growing
number of directed pairs of the demo survey's frame 0.

Two matchers:

* ``roma112``: romatch's real RoMa outdoor model with seeded *random* weights (no trained weights
  are available offline here) at coarse resolution 112 on the CPU: time per pair and peak RSS of the
  actual model path. No accuracy is claimed.
* ``exact560``: the exact warp of the synthetic survey on RoMa's default 560 × 560 grid (the size of
  a real RoMa warp at ``coarse_res=560``): the memory that warps cost. (The conversion's accuracy
  against ground truth is asserted in ``tests/stages/dense/test_roma.py``.)

Peak RSS is sampled (:class:`aquamvs_core.evaluation.profiling.Profiler`); the Python heap peak comes from
``tracemalloc`` (it sees the numpy-backed exact warps, not torch's allocations). CUDA columns appear
when a GPU is present.

    .venv/bin/python benchmarks/roma_bench.py --out benchmarks/results/roma_cpu.md
"""

from __future__ import annotations

import argparse
import gc
import platform
import time
import tracemalloc
from pathlib import Path

import pandas as pd
import torch

from aquamvs_assets.project import DEMO_SURVEY_DIR
from aquamvs_core import steps as steps
from aquamvs_core.config import build_config
from aquamvs_core.evaluation.profiling import Profiler
from aquamvs_core.stages.dense.correspondence_depth import warp_to_pair_depth
from aquamvs_core.stages.dense.roma import RomaSession, RomaSettings, build_roma, random_checkpoints
from aquamvs_core.stages.pairs import survey_pairs
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import load_survey_spec
from aquamvs_core.synthetic import load_ground_truth
from aquamvs_core.synthetic.exact_matches import GroundTruthMatcher

FRAME = "f000000"


def streaming(store, pairs, config, matcher, cams) -> None:
    for p in pairs:
        steps.roma_pairwise_depths_step(store, FRAME, p, config, matcher, cams=cams)


def accumulating(store, pairs, config, matcher, cams) -> None:
    """Every warp first, then every conversion: holds all warps at once (the design to avoid)."""
    warps = []
    for p in pairs:
        images = store.read_frame(FRAME, [p.ref, p.src])
        warps.append(matcher.match(images[p.ref], images[p.src], names=(p.ref, p.src)))
    for p, match in zip(pairs, warps, strict=True):
        size_ref, size_src = cams.cameras[p.ref].image_size, cams.cameras[p.src].image_size
        warp_to_pair_depth(
            match, matcher, cams.cameras[p.ref], cams.cameras[p.src], size_ref, size_src, config.roma
        )


def measure(fn, store, pairs, config, matcher, cams, matcher_name: str) -> dict:
    """One run of ``fn`` (streaming or accumulating) over ``pairs``: a table row."""
    gc.collect()
    profiler = Profiler(interval_s=0.01)
    tracemalloc.start()
    with profiler.stage(fn.__name__):
        fn(store, pairs, config, matcher, cams)
    heap_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    r = profiler.records[-1]
    row = {
        "matcher": matcher_name,
        "variant": fn.__name__,
        "pairs": len(pairs),
        "seconds_per_pair": round(r.wall_s / len(pairs), 2),
        "peak_rss_growth_mb": round(r.peak_rss_mb - r.rss_before_mb, 1),
        "peak_rss_mb": round(r.peak_rss_mb, 0),
        "python_heap_peak_mb": round(heap_peak / 2**20, 1),
    }
    if r.cuda_peak_mb is not None:
        row["cuda_peak_mb"] = round(r.cuda_peak_mb, 0)
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survey", default=str(DEMO_SURVEY_DIR / "survey.yaml"))
    parser.add_argument("--pairs", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--exact-grid", type=int, default=560)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/roma_cpu.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    spec = load_survey_spec(args.survey)
    store = SurveyStore(spec.store)
    cams = steps.StoreCameras.load(store)
    rig = store.read_rig()
    pairs = [p for p in survey_pairs(rig, spec) if p.src not in rig.auxiliary_names]
    config = build_config("balanced", "roma")
    rows = []

    t0 = time.perf_counter()
    settings = RomaSettings(device="auto", coarse_res=112)
    session = RomaSession(build_roma(*random_checkpoints(seed=0), settings), settings)
    print(f"random-weight RoMa built in {time.perf_counter() - t0:.1f} s on {session.device}", flush=True)
    for n in args.pairs:
        for fn in (streaming, accumulating):
            rows.append(measure(fn, store, pairs[:n], config, session, cams, "roma112"))
    gt = load_ground_truth(spec.ground_truth)
    grid = (args.exact_grid, args.exact_grid)
    exact = GroundTruthMatcher(rig, gt, 0, cams.cameras, grid, session)  # romatch's pixel conversion
    for n in args.pairs[1:]:
        for fn in (streaming, accumulating):
            rows.append(measure(fn, store, pairs[:n], config, exact, cams, f"exact{grid[0]}"))
    session.close()

    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out.with_suffix(".csv"), index=False)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or 'x86_64'})"
    )
    args.out.write_text(
        "# RoMa pathway: streaming against accumulating warps\n\n"
        f"Device: {device}, torch {torch.__version__}, 1 thread. Frame 0 of the demo survey "
        f"(640 × 480, ring pairs). Generated by `benchmarks/roma_bench.py`.\n\n"
        "`roma112`: romatch's RoMa outdoor with seeded random weights at coarse resolution 112 (timing and "
        "memory of the real model path; no accuracy claim). "
        f"`exact{grid[0]}`: the exact synthetic warp on a {grid[0]} × {grid[0]} grid, RoMa's default "
        "warp size.\n\n" + table.to_markdown(index=False) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
