"""Benchmark of the refractive plane sweep on the default synthetic survey (640×480, 8 ring cameras +
fisheye auxiliary): per-stage timings and per-camera depth error against the ray-traced ground truth.

Usage::

    python benchmarks/stereo_bench.py [--survey-dir .data/demo] [--presets fast balanced]
                                      [--cameras all|cam0,cam3] [--workers 1] [--threads 1]
                                      [--z-range sparse|gt|LO,HI] [--k 4]

* the survey is generated with :func:`generate_survey` if the directory does not hold it yet;
* frame 0 of every camera is undistorted (:meth:`StereoView.from_distorted`);
* the sweep range per camera comes from the sparse stage (SIFT + triangulation of neighbour pairs,
  :func:`camera_depth_ranges`; ``--z-range sparse``, the default), from the ground truth (1st–99th
  percentile ± 1 cm; ``gt``) or is given;
* every ring camera is swept against its ``k`` nearest ring cameras and the auxiliary camera
  (:func:`select_pairs`), and its pair depths are combined (:func:`depth_for_camera`);
* errors are vertical (world Z), in mm, over the pixels whose ray hits the ground-truth bed;
  "valid" is the fraction of those pixels with a depth.

Wall-clock and CPU times are printed (the CPU time of this process is less sensitive to other
processes on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from aquamvs_core.camera.calibration import load_calibration
from aquamvs_core.camera.distortion import distort_pixels
from aquamvs_core.camera.sampling import pixel_grid
from aquamvs_core.stages.pairs import select_pairs
from aquamvs_core.stages.sparse.depth_ranges import DepthRangeConfig, camera_depth_ranges
from aquamvs_core.stages.sparse.matching import SparseMatchConfig
from aquamvs_core.stages.sparse.pair_matching import match_and_triangulate
from aquamvs_core.stages.sparse.triangulation import TriangulationConfig
from aquamvs_core.stages.stereo import PRESETS, PlaneSweepConfig, StereoView, depth_for_camera
from aquamvs_core.survey import open_source
from aquamvs_core.synthetic import Terrain, generate_survey, load_ground_truth, trace_pixels

STAGES = ("prepare", "warp", "sweep", "refine", "finish")


def _stats(err_mm: np.ndarray, hit: np.ndarray) -> dict[str, float]:
    """Error statistics over ground-truth pixels ``hit``; ``err_mm`` is NaN where no depth."""
    e = err_mm[hit & np.isfinite(err_mm)]
    if e.size == 0:
        return {
            "valid": 0.0,
            "median": float("nan"),
            "p90": float("nan"),
            "gt2": float("nan"),
            "gt10": float("nan"),
        }
    return {
        "valid": e.size / max(1, int(hit.sum())),
        "median": float(np.median(e)),
        "p90": float(np.percentile(e, 90)),
        "gt2": float(np.mean(e > 2.0) * 100),
        "gt10": float(np.mean(e > 10.0) * 100),
    }


def _fmt(s: dict[str, float]) -> str:
    return (
        f"valid {s['valid']:.3f}  median {s['median']:.3f} mm  p90 {s['p90']:.3f} mm  "
        f">2mm {s['gt2']:.2f}%  >10mm {s['gt10']:.3f}%"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--survey-dir", default=".data/demo")
    ap.add_argument("--presets", nargs="+", default=["fast", "balanced"], choices=sorted(PRESETS))
    ap.add_argument("--cameras", default="all", help="ring cameras to compute, comma separated, or 'all'")
    ap.add_argument(
        "--workers", type=int, default=1, help="pairs swept at once (threads, 1 torch thread each)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads when --workers 1")
    ap.add_argument("--z-range", default="sparse", help="sparse | gt | LO,HI (world Z, m)")
    ap.add_argument("--k", type=int, default=4, help="ring neighbours per camera")
    ap.add_argument("--frame", type=int, default=0)
    ap.add_argument(
        "--override", default="{}", help="JSON dict of PlaneSweepConfig fields applied to every preset"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    survey = Path(generate_survey(args.survey_dir)).parent
    rig = load_calibration(survey / "calibration.json")
    print(f"survey {survey} ready ({time.perf_counter() - t0:.1f} s): cameras {rig.camera_names}")

    t0 = time.perf_counter()
    views = {}
    for name in rig.camera_names:
        src = open_source(survey / "videos" / f"{name}.mp4")
        try:
            image = src.read(args.frame)
        finally:
            src.close()
        views[name] = StereoView.from_distorted(rig[name], rig.interface, image)
    print(f"decode + undistort {len(views)} views: {time.perf_counter() - t0:.2f} s")

    ring = rig.primary_names if args.cameras == "all" else args.cameras.split(",")
    pairs = [p for p in select_pairs(rig, k=args.k) if p.ref in ring]
    sources = {r: [p.src for p in pairs if p.ref == r] for r in ring}

    # Ground truth: ray depth of every undistorted pixel (traced from its distorted position).
    t0 = time.perf_counter()
    gt = load_ground_truth(survey / "ground_truth.npz")
    terrain = Terrain(
        x=gt.x,
        y=gt.y,
        z=gt.z,
        frame_indices=gt.frame_indices,
        texture=np.zeros((2, 2, 3), np.float32),
        texture_origin=(0.0, 0.0),
        texel_size=1.0,
    )
    w, h = rig.image_size
    grid = pixel_grid(w, h, dtype=torch.float64).reshape(-1, 2)
    gt_depth, d_z, gt_z = {}, {}, {}
    for name in ring:
        cam = views[name].camera
        distorted = distort_pixels(grid, rig[name], cam.K)
        hits = trace_pixels(rig[name], rig.interface, terrain, args.frame, distorted)
        gt_depth[name] = hits.ray_depth.reshape(h, w)
        gt_z[name] = hits.points[:, 2].reshape(h, w)
        d_z[name] = cam.cast_ray(grid.reshape(h, w, 2))[1][..., 2].numpy()
    print(f"ground truth traced for {len(ring)} cameras: {time.perf_counter() - t0:.1f} s")

    # Sweep range per camera.
    t0 = time.perf_counter()
    if args.z_range == "sparse":
        nearest = [p for p in select_pairs(rig, k=1, include_auxiliary=False)]
        pts = []
        for p in nearest:
            sp = match_and_triangulate(
                views[p.ref].image,
                views[p.src].image,
                views[p.ref].camera,
                views[p.src].camera,
                SparseMatchConfig(method="sift"),
                TriangulationConfig(),
            )
            pts.append(sp.points[sp.keep])
        points = np.concatenate(pts)
        ranges = camera_depth_ranges(
            points, {n: views[n].camera for n in rig.camera_names}, DepthRangeConfig()
        )
        z_ranges = {n: (ranges[n]["z_min"], ranges[n]["z_max"]) for n in ring}
        print(
            f"sparse ranges from {len(points)} SIFT points "
            f"({time.perf_counter() - t0:.1f} s, not included below)"
        )
    elif args.z_range == "gt":
        z_ranges = {}
        for n in ring:
            z = gt_z[n][np.isfinite(gt_z[n])]
            lo, hi = np.percentile(z, [1, 99])
            z_ranges[n] = (float(lo) - 0.01, float(hi) + 0.01)
    else:
        lo, hi = (float(v) for v in args.z_range.split(","))
        z_ranges = dict.fromkeys(ring, (lo, hi))
    for n in ring:
        zr = z_ranges[n]
        print(f"  {n}: Z in [{zr[0]:.4f}, {zr[1]:.4f}] m ({(zr[1] - zr[0]) * 1e3:.0f} mm)")

    for preset in args.presets:
        cfg = PlaneSweepConfig.model_validate({**PRESETS[preset].model_dump(), **json.loads(args.override)})
        print(
            f"\n=== preset {preset}: {cfg.num_depths} planes at level {cfg.coarse_level}, "
            f"schedule {cfg.refine_schedule}, window {cfg.window}, workers {args.workers}, "
            f"override {args.override} ==="
        )
        stage = dict.fromkeys((*STAGES, "combine"), 0.0)
        pooled_err, pooled_hit = [], []
        wall_all, cpu_all = time.perf_counter(), time.process_time()
        for ref in ring:
            tw, tc = time.perf_counter(), time.process_time()
            combined, pair_depths = depth_for_camera(
                ref, views, sources[ref], cfg, z_range=z_ranges[ref], workers=args.workers
            )
            tw, tc = time.perf_counter() - tw, time.process_time() - tc
            for p in pair_depths:
                for k in STAGES:
                    stage[k] += p.timings.get(k, 0.0)
            stage["prepare"] += combined.timings.get("prepare", 0.0)
            stage["combine"] += combined.timings.get("combine", 0.0)
            hit = np.isfinite(gt_depth[ref])
            err = np.abs(combined.depth.double().numpy() - gt_depth[ref]) * d_z[ref] * 1e3
            pooled_err.append(err)
            pooled_hit.append(hit)
            print(
                f"{ref}: {len(pair_depths)} pairs, {tw:.2f} s wall / {tc:.2f} s CPU | "
                f"combined {_fmt(_stats(err, hit))}"
            )
            for p in pair_depths:
                e = np.abs(p.depth.double().numpy() - gt_depth[ref]) * d_z[ref] * 1e3
                print(f"    {p.ref}-{p.src:5s} {_fmt(_stats(e, hit))}  ({p.timings['total']:.2f} s)")
        wall_all, cpu_all = time.perf_counter() - wall_all, time.process_time() - cpu_all
        total = _stats(
            np.concatenate([e.ravel() for e in pooled_err]), np.concatenate([m.ravel() for m in pooled_hit])
        )
        print(f"--- {preset}: all {len(ring)} cameras {_fmt(total)}")
        print(
            f"--- {preset}: depth for {len(ring)} cameras ({len(pairs)} pairs): {wall_all:.2f} s wall, "
            f"{cpu_all:.2f} s CPU; per-stage sums (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stage.items())
        )


if __name__ == "__main__":
    main()
