"""Time :func:`aquamvs_core.stages.fusion.fuse_views` on one frame of a survey store, by part, with its
peak memory, and score the cloud against the ground truth.

Usage (from the repository root)::

    python benchmarks/fusion_bench.py --store OUT/.aquamvs/store.zarr --gt .data/demo/ground_truth.npz \
        [--frame f000000] [--preset balanced] [--set chunk_size=32768 ...] [--save-points out.npy]

The views are streamed from the store as in the ``fused_cloud`` step. Parts are timed by wrapping
the fusion modules' functions (consistency per source camera, voxel grid, outliers and normals); the
visibility mask of the ground truth is cached in /tmp (it does not depend on the fusion).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aquamvs_core import steps  # noqa: E402
from aquamvs_core.config import build_config  # noqa: E402
from aquamvs_core.evaluation.lens_visibility import original_visibility_count  # noqa: E402
from aquamvs_core.evaluation.metrics import reconstruction_metrics  # noqa: E402
from aquamvs_core.evaluation.profiling import Profiler  # noqa: E402
from aquamvs_core.stages.fusion import cleanup, fuse  # noqa: E402
from aquamvs_core.store import SurveyStore  # noqa: E402
from aquamvs_core.synthetic import load_ground_truth  # noqa: E402

TIMES: dict[str, float] = defaultdict(float)
CPU: dict[str, float] = defaultdict(float)


def _timed(name: str, fn):
    def wrapper(*args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - t0
            CPU[name] += time.process_time() - c0

    return wrapper


def seen_mask(store: SurveyStore, cams: steps.StoreCameras, gt_path: str, frame: str) -> np.ndarray:
    """Ground-truth cells seen by two or more cameras in their original images, as the quality report
    counts them (cached in /tmp)."""
    key = hashlib.sha1(f"original:{Path(store.root).resolve()}:{frame}:{gt_path}".encode()).hexdigest()[:12]
    cache = Path(f"/tmp/fusion_bench_seen_{key}.npy")
    if cache.is_file():
        return np.load(cache)
    gt = load_ground_truth(gt_path)
    index = int(frame.lstrip("f"))
    seen = original_visibility_count(gt, index, store.read_rig()) >= 2
    np.save(cache, seen)
    return seen


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--frame", default="f000000")
    ap.add_argument("--gt", default=None, help="ground_truth.npz: score the cloud")
    ap.add_argument("--preset", default="balanced")
    ap.add_argument("--set", nargs="*", default=[], help="fusion fields, e.g. pixel_stride=2")
    ap.add_argument("--save-points", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    store = SurveyStore(args.store, read_only=True)
    overrides = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    config = build_config(args.preset, overrides={"fusion": overrides} if overrides else None)
    cams = steps.StoreCameras.load(store)
    fuse.source_points = _timed("consistency: source points", fuse.source_points)
    fuse.tiles_seen = _timed("consistency: witness tiles", fuse.tiles_seen)
    fuse.check_witness = _timed("consistency: witness tests", fuse.check_witness)
    fuse.VoxelGrid.add = _timed("voxel grid", fuse.VoxelGrid.add)
    fuse.outliers_and_normals = _timed("outliers and normals", cleanup.outliers_and_normals)
    profiler = Profiler()
    t0 = time.perf_counter()
    with profiler.stage("fused_cloud"):
        cloud = steps.fuse_frame(store, args.frame, cams, config)
    TIMES["total"] = time.perf_counter() - t0
    rec = profiler.records[-1]
    print(f"load {os.getloadavg()[0]:.2f}; fusion config: {config.fusion.model_dump(exclude_defaults=True)}")
    print("wall (s):", {k: round(v, 2) for k, v in TIMES.items()})
    print("cpu (s):", {k: round(v, 2) for k, v in CPU.items()})
    print(f"cpu {rec.cpu_s:.2f} s, peak RSS {rec.peak_rss_mb:.0f} MB (before {rec.rss_before_mb:.0f} MB)")
    print("stats:", cloud.stats, "points:", len(cloud))
    if args.gt:
        gt = load_ground_truth(args.gt)
        seen = seen_mask(store, cams, args.gt, args.frame)
        metrics = reconstruction_metrics(cloud.points, gt, int(args.frame.lstrip("f")), seen_mask=seen)
        print("metrics:", {k: round(float(v), 4) for k, v in metrics.items()})
    if args.save_points:
        np.save(args.save_points, cloud.points)


if __name__ == "__main__":
    main()
