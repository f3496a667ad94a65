"""Time :func:`aquamvs_core.stages.fusion.fuse_depth_maps` on one frame of a survey store, by part, and score it.

Usage::

    python benchmarks/fusion_bench.py --store /tmp/prof.zarr --frame f000000 \
        --gt .data/demo/ground_truth.npz [--repeat 1] [--save-points out.npy]

Parts are timed by wrapping the module's helpers (consistency per camera, voxel reduction, outlier
removal, normals); the visibility mask of the ground truth is cached next to the store's name in
/tmp (it does not depend on the fusion).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from aquamvs_core import steps as R
from aquamvs_core.config import build_config
from aquamvs_core.evaluation.metrics import reconstruction_metrics, visibility_count
from aquamvs_core.stages import fusion as F
from aquamvs_core.store import SurveyStore
from aquamvs_core.synthetic import load_ground_truth
from aquamvs_core.synthetic.ground_truth_views import gt_depth_maps

TIMES: dict[str, float] = defaultdict(float)


def _timed(name: str, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - t0

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="/tmp/prof.zarr")
    ap.add_argument("--frame", default="f000000")
    ap.add_argument("--gt", default=".data/demo/ground_truth.npz")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--save-points", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    st = SurveyStore(args.store, read_only=True)
    cfg = build_config(args.preset)
    maps = R.camera_depth_maps(st, args.frame)
    cams = R.StoreCameras.load(st)
    images = st.read_frame(args.frame, list(maps))
    gt = load_ground_truth(args.gt)
    frame_index = int(args.frame.lstrip("f"))
    key = hashlib.sha1(f"{Path(args.store).resolve()}:{args.frame}:{args.gt}".encode()).hexdigest()[:12]
    cache = Path(f"/tmp/fusion_bench_seen_{key}.npy")
    if cache.is_file():
        seen = np.load(cache)
    else:
        rig = st.read_rig()
        depth = gt_depth_maps(rig, gt, frame_index)
        seen = visibility_count(gt, frame_index, cams.cameras, cams.masks, depth) >= 2
        np.save(cache, seen)

    F._camera_points = _timed("consistency", F._camera_points)
    F._voxel_reduce = _timed("voxel", F._voxel_reduce)
    F._outlier_mask = _timed("outliers", F._outlier_mask)
    F.estimate_normals = _timed("normals", F.estimate_normals)

    best = None
    for _ in range(args.repeat):
        TIMES.clear()
        t0 = time.perf_counter()
        cloud = F.fuse_depth_maps(maps, cams.cameras, images, cfg.fusion)
        TIMES["total"] = time.perf_counter() - t0
        if best is None or TIMES["total"] < best["total"]:
            best = dict(TIMES)
    print("times (s):", {k: round(v, 2) for k, v in best.items()})
    print("stats:", cloud.stats, "points:", len(cloud))
    print("metrics:", reconstruction_metrics(cloud.points, gt, frame_index, seen_mask=seen))
    if args.save_points:
        np.save(args.save_points, cloud.points)


if __name__ == "__main__":
    main()
