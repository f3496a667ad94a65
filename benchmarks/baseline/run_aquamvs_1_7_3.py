#!/usr/bin/env python3
"""Baseline: speed and accuracy of the earlier ``aquamvs`` 1.7.3 (PyPI, MIT) plane-sweep pipeline
on frame 0 of our synthetic demo survey, evaluated against the survey's ground truth.

Nothing of aquamvs 1.7.3 is copied here: this script only *runs* the installed package (in its
own virtual environment) and measures it; the evaluation then runs in our own environment with
``aquamvs_core.evaluation.metrics``.

Environment of the old package (kept apart from our ``.venv``)
--------------------------------------------------------------
::

    python3.11 -m venv /tmp/oldvenv
    /tmp/oldvenv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    /tmp/oldvenv/bin/pip install aquamvs==1.7.3

(``torch==2.13.0`` from the CPU index; any 2.13 build works.) aquamvs 1.7.3 additionally
*requires at import time* the git-only packages ``lightglue`` (cvg/LightGlue@edb2b83) and
``romav2`` (Parskatt/RoMaV2), whose networks download their weights on first use. Offline,
neither is installable nor usable, so this script does **not** install them: it puts two empty
placeholder packages (``lightglue``, ``romav2`` - classes that raise if ever instantiated) on
``PYTHONPATH`` only for the benchmark process, so that ``import aquamvs`` succeeds.

What is run
-----------
aquamvs 1.7.3's own ``matcher_type="lightglue"``, ``pipeline_mode="full"`` pathway, stage by
stage exactly as ``aquamvs.pipeline.runner.process_frame`` does it, with ONE substitution:

* **sparse matching** (``run_lightglue_path``: ALIKED keypoints + LightGlue, needing network
  weights) is replaced by OpenCV SIFT (``max_keypoints`` of the preset) + brute-force L2 matching
  with Lowe's ratio test (0.8) and a mutual (cross) check, on the same undistorted images and the
  same camera pairs (``ctx.pairs``: 4 nearest ring cameras + the auxiliary camera, each unordered
  pair matched once). The matches feed aquamvs' own refractive triangulation, sparse-cloud filter
  and per-camera depth ranges (2-98 % quantiles +- ``depth_margin``), i.e. the sparse stage only
  sets the plane-sweep depth range.

Everything else is aquamvs 1.7.3 unchanged: calibration loading (AquaCal JSON), OpenCV
undistortion (pinhole + fisheye aux), refractive plane sweep (NCC, ``num_depths`` hypotheses,
``window_size``) for each ring camera with its 5 sources, WTA + parabola depth extraction,
geometric-consistency filtering (``min_consistent_views=3``, 5 mm), depth-map fusion with a voxel
grid (``voxel_size``), statistical outlier removal, Poisson meshing (``poisson_depth``) and
best-view mesh colouring. Presets are its ``balanced`` (128 depths) and ``fast`` (64 depths)
values applied with ``PipelineConfig.apply_preset`` (as ``aquamvs init --preset`` does).

Timing: wall clock (``time.perf_counter``) after imports; aquamvs' own ``timed_stage`` log lines
(undistortion, sparse_matching, depth_estimation, fusion, surface_reconstruction) are captured,
plus context setup, video decode of the frame, and triangulation + depth ranges (not wrapped by
aquamvs, timed here). Torch threads are set to ``--threads`` (OMP/MKL/OpenCV likewise).

Evaluation (our environment, ``aquamvs_core.evaluation.metrics``)
-------------------------------------------------------
Points are already in the AquaCal world frame (metres, Z down; the same ``calibration.json`` as
our store) - checked by the signed bias and Z range. For the fused cloud (as saved,
``point_cloud/fused.ply``, i.e. before outlier removal; and after its statistical outlier removal,
which is what its mesh is built from) and the Poisson mesh (``mesh_metrics``: area-uniform surface
samples + vertex errors): median / p90 of |Z - Z_gt(x, y)| (bilinear GT), outlier fraction
(> 10 mm), completeness (a 3-D point within 5 mm) over the GT cells (~2 mm spacing) seen by >= 2
cameras (``visibility_count`` with occlusion test against the exact GT depth maps).

Usage
-----
::

    /work/main/.venv/bin/python benchmarks/baseline/run_aquamvs_1_7_3.py \
        [--presets balanced fast] [--frame 0] [--threads 2] [--work /tmp/aquamvs173_bench]

drives both halves (``run-old`` under ``--old-python``, ``evaluate`` under ``--our-python``)
and prints a markdown table plus a JSON summary (``<work>/summary.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
DEFAULT_SURVEY = REPO / ".data" / "demo"
DEFAULT_WORK = Path("/tmp/aquamvs173_bench")
DEFAULT_OLD_PY = "/tmp/oldvenv/bin/python"
DEFAULT_OUR_PY = str(REPO / ".venv" / "bin" / "python")

_STUB_LIGHTGLUE = '''"""Offline placeholder for cvg/LightGlue (benchmark only): importable, never usable."""
class _Unavailable:
    def __init__(self, *a, **k):
        raise RuntimeError("LightGlue is not available offline (benchmark placeholder)")
ALIKED = DISK = SuperPoint = SIFT = LightGlue = _Unavailable
'''
_STUB_ROMAV2 = '''"""Offline placeholder for RoMaV2 (benchmark only): importable, never usable."""
class RoMaV2:
    def __init__(self, *a, **k):
        raise RuntimeError("RoMa v2 is not available offline (benchmark placeholder)")
'''
_STUB_ROMAV2_GEOMETRY = """def to_pixel(*a, **k):
    raise RuntimeError("RoMa v2 is not available offline (benchmark placeholder)")
"""


def _write_stubs(root: Path) -> Path:
    (root / "lightglue").mkdir(parents=True, exist_ok=True)
    (root / "lightglue" / "__init__.py").write_text(_STUB_LIGHTGLUE)
    (root / "romav2").mkdir(parents=True, exist_ok=True)
    (root / "romav2" / "__init__.py").write_text(_STUB_ROMAV2)
    (root / "romav2" / "geometry.py").write_text(_STUB_ROMAV2_GEOMETRY)
    return root


def _complete_calibration(path: Path) -> None:
    """Make the *copied* calibration.json loadable by ``aquacal.io.serialization.load_calibration``
    (aquacal 2.1.0, used by aquamvs 1.7.3), which insists on the calibration-run bookkeeping
    sections ``board``, ``diagnostics`` and ``metadata.{calibration_date, software_version,
    config_hash, num_frames_used, num_frames_holdout}``. Our synthetic survey writes the same
    version-"1.0" cameras/interface layout but not that bookkeeping (there was no board
    calibration). Placeholders are added; no geometric field (K, distortion, R, t, water_z,
    interface normal, n_air, n_water, is_fisheye, is_auxiliary) is touched."""
    data = json.loads(path.read_text())
    data.setdefault(
        "board",
        {"squares_x": 1, "squares_y": 1, "square_size": 0.0, "marker_size": 0.0, "dictionary": "none"},
    )
    data.setdefault(
        "diagnostics",
        {
            "reprojection_error_rms": 0.0,
            "reprojection_error_per_camera": {n: 0.0 for n in data["cameras"]},
            "validation_3d_error_mean": 0.0,
            "validation_3d_error_std": 0.0,
        },
    )
    meta = data.setdefault("metadata", {})
    for k, v in (
        ("calibration_date", "synthetic"),
        ("software_version", "synthetic"),
        ("config_hash", "synthetic"),
        ("num_frames_used", 0),
        ("num_frames_holdout", 0),
    ):
        meta.setdefault(k, v)
    path.write_text(json.dumps(data, indent=2))


# ==============================================================================================
# Part 1: runs under the old package's interpreter (/tmp/oldvenv)
# ==============================================================================================


def run_old(args: argparse.Namespace) -> None:
    threads = str(args.threads)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[k] = threads

    import logging
    import re

    import cv2
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)

    import aquamvs
    from aquacal.io.video import VideoSet
    from aquamvs.config import PipelineConfig, QualityPreset, RuntimeConfig
    from aquamvs.pipeline import runner
    from aquamvs.pipeline.builder import build_pipeline_context

    work = Path(args.work)
    out_dir = work / f"out_{args.preset}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    timings: dict[str, float] = {}

    # --- capture aquamvs' own per-stage timings ("<stage>: <ms> ms" from timed_stage) ---
    pat = re.compile(r"^(\w+): ([0-9.]+) ms$")

    class _StageTimes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            m = pat.match(record.getMessage())
            if m:
                timings[m.group(1)] = float(m.group(2)) / 1e3

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    aq_log = logging.getLogger("aquamvs")
    aq_log.setLevel(logging.INFO)
    aq_log.addHandler(_StageTimes())
    info_log = logging.FileHandler(out_dir.parent / f"aquamvs_{args.preset}.log", mode="w")
    info_log.setLevel(logging.INFO)
    info_log.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    aq_log.addHandler(info_log)

    # --- SIFT stand-in for the LightGlue sparse matcher (same return contract) ---
    sift_stats: dict[str, int] = {}

    def sift_matching_path(undistorted_tensors, ctx, frame_dir, frame_idx):
        from aquamvs.profiling import timed_stage

        with timed_stage("sparse_matching", logging.getLogger("aquamvs.pipeline.stages.sparse_matching")):
            sift = cv2.SIFT_create(nfeatures=ctx.config.sparse_matching.max_keypoints)
            feats = {}
            for name, img in undistorted_tensors.items():
                gray = cv2.cvtColor(img.numpy(), cv2.COLOR_BGR2GRAY)
                mask = None
                if ctx.masks and name in ctx.masks:
                    mask = (np.asarray(ctx.masks[name]) > 0).astype(np.uint8) * 255
                kps, desc = sift.detectAndCompute(gray, mask)
                xy = np.array([k.pt for k in kps], dtype=np.float32).reshape(-1, 2)
                feats[name] = (xy, desc)
                sift_stats[f"kp_{name}"] = len(kps)
            bf = cv2.BFMatcher(cv2.NORM_L2)
            all_matches, seen = {}, set()
            for ref, srcs in ctx.pairs.items():
                for src in srcs:
                    a, b = min(ref, src), max(ref, src)
                    if (a, b) in seen:
                        continue
                    seen.add((a, b))
                    (xa, da), (xb, db) = feats[a], feats[b]
                    ia, ib, sc = [], [], []
                    if da is not None and db is not None and len(da) >= 2 and len(db) >= 2:
                        fwd = bf.knnMatch(da, db, k=2)
                        back = {m.queryIdx: m.trainIdx for m in bf.match(db, da)}
                        for m, n in (p for p in fwd if len(p) == 2):
                            ratio = m.distance / max(n.distance, 1e-9)
                            if ratio < 0.8 and back.get(m.trainIdx) == m.queryIdx:
                                ia.append(m.queryIdx)
                                ib.append(m.trainIdx)
                                sc.append(1.0 - ratio)
                    all_matches[(a, b)] = {
                        "ref_keypoints": torch.from_numpy(xa[ia].reshape(-1, 2)),
                        "src_keypoints": torch.from_numpy(xb[ib].reshape(-1, 2)),
                        "scores": torch.tensor(sc, dtype=torch.float32),
                    }
                    sift_stats[f"matches_{a}_{b}"] = len(ia)
            return {"all_matches": all_matches}

    runner.run_lightglue_path = sift_matching_path

    # --- time triangulation + depth ranges (not wrapped by aquamvs) ---
    orig_tri = runner.run_triangulation
    tri_info: dict = {}

    def timed_triangulation(all_matches, ctx, frame_dir, frame_idx):
        t = time.perf_counter()
        cloud, ranges = orig_tri(all_matches, ctx, frame_dir, frame_idx)
        timings["triangulation_depth_ranges"] = time.perf_counter() - t
        tri_info["sparse_points"] = int(cloud["points_3d"].shape[0])
        tri_info["depth_ranges"] = {k: [float(v[0]), float(v[1])] for k, v in ranges.items()}
        return cloud, ranges

    runner.run_triangulation = timed_triangulation

    # --- keep the cloud after statistical outlier removal (what the mesh is built from) ---
    orig_fusion = runner.run_fusion_stage
    post_sor: dict = {}

    def fusion_keep(*a, **k):
        pcd = orig_fusion(*a, **k)
        post_sor["points"] = np.asarray(pcd.points).copy()
        return pcd

    runner.run_fusion_stage = fusion_keep

    survey = Path(args.survey_copy)
    cams = sorted(p.stem for p in (survey / "videos").glob("*.mp4"))
    config = PipelineConfig(
        calibration_path=str(survey / "calibration.json"),
        output_dir=str(out_dir),
        camera_input_map={c: str(survey / "videos" / f"{c}.mp4") for c in cams},
        matcher_type="lightglue",
        pipeline_mode="full",
        runtime=RuntimeConfig(device="cpu", quiet=True, keep_intermediates=True),
    )
    config.apply_preset(QualityPreset(args.preset))

    t_all = time.perf_counter()
    t = time.perf_counter()
    ctx = build_pipeline_context(config)
    timings["setup_context"] = time.perf_counter() - t

    t = time.perf_counter()
    with VideoSet(config.camera_input_map) as videos:
        raw = videos.get_frame(args.frame)
    timings["decode_frame"] = time.perf_counter() - t

    t = time.perf_counter()
    runner.process_frame(args.frame, raw, ctx)  # raises on failure (run_pipeline would swallow it)
    timings["process_frame"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all

    frame_dir = out_dir / f"frame_{args.frame:06d}"
    np.save(work / f"points_post_sor_{args.preset}.npy", post_sor.get("points", np.zeros((0, 3))))
    rc = config.reconstruction
    result = {
        "preset": args.preset,
        "aquamvs_version": aquamvs.__version__ if hasattr(aquamvs, "__version__") else "1.7.3",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cameras": cams,
        "ring_cameras": ctx.ring_cameras,
        "auxiliary_cameras": ctx.auxiliary_cameras,
        "pairs": ctx.pairs,
        "config": {
            "num_depths": rc.num_depths,
            "window_size": rc.window_size,
            "depth_batch_size": rc.depth_batch_size,
            "voxel_size": rc.voxel_size,
            "poisson_depth": rc.poisson_depth,
            "min_consistent_views": rc.min_consistent_views,
            "depth_tolerance": rc.depth_tolerance,
            "max_keypoints (SIFT)": config.sparse_matching.max_keypoints,
        },
        "timings_s": timings,
        "sift": sift_stats,
        "triangulation": tri_info,
        "fused_ply": str(frame_dir / "point_cloud" / "fused.ply"),
        "mesh_ply": str(frame_dir / "mesh" / "surface.ply"),
        "post_sor_npy": str(work / f"points_post_sor_{args.preset}.npy"),
    }
    (work / f"run_{args.preset}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["timings_s"], indent=2))


# ==============================================================================================
# Part 2: runs under our interpreter (/work/main/.venv)
# ==============================================================================================


def evaluate(args: argparse.Namespace) -> None:
    import numpy as np
    import open3d as o3d

    from aquamvs_core.evaluation.metrics import mesh_metrics, reconstruction_metrics, visibility_count
    from aquamvs_core.steps import StoreCameras
    from aquamvs_core.store.survey_store import SurveyStore
    from aquamvs_core.synthetic import load_ground_truth
    from aquamvs_core.synthetic.ground_truth_views import gt_depth_maps

    work = Path(args.work)
    gt = load_ground_truth(Path(args.survey_copy) / "ground_truth.npz")
    seen_path = work / f"seen_mask_frame{args.frame}.npy"
    if seen_path.exists():
        seen = np.load(seen_path)
    else:
        store = SurveyStore(args.store or str(Path(args.survey) / "store.zarr"), read_only=True)
        cams = StoreCameras.load(store)
        rig = store.read_rig()
        t = time.perf_counter()
        seen = (
            visibility_count(gt, args.frame, cams.cameras, cams.masks, gt_depth_maps(rig, gt, args.frame))
            >= 2
        )
        print(
            f"visibility mask: {time.perf_counter() - t:.1f} s, {int(seen.sum())} cells seen by >= 2 cameras"
        )
        np.save(seen_path, seen)

    results = {}
    for preset in args.presets:
        run_json = work / f"run_{preset}.json"
        if not run_json.exists():
            continue
        run = json.loads(run_json.read_text())
        ev = {}
        pts_pre = np.asarray(o3d.io.read_point_cloud(run["fused_ply"]).points)
        pts_post = np.load(run["post_sor_npy"])
        zg = gt.heights(args.frame)
        for key, pts in (("cloud_fused", pts_pre), ("cloud_after_sor", pts_post)):
            m = reconstruction_metrics(pts, gt, args.frame, seen_mask=seen)
            m["z_range"] = [float(pts[:, 2].min()), float(pts[:, 2].max())] if len(pts) else None
            ev[key] = m
        if Path(run["mesh_ply"]).exists():
            mesh = o3d.io.read_triangle_mesh(run["mesh_ply"])
            ev["mesh"] = mesh_metrics(mesh, gt, args.frame, seen_mask=seen)
        ev["gt_z_range"] = [float(zg.min()), float(zg.max())]
        results[preset] = {"run": run, "eval": ev}
    (work / "summary.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({p: r["eval"] for p, r in results.items()}, indent=2))


# ==============================================================================================
# Driver
# ==============================================================================================


def _table(work: Path) -> str:
    res = json.loads((work / "summary.json").read_text())
    stages = [
        "setup_context",
        "decode_frame",
        "undistortion",
        "sparse_matching",
        "triangulation_depth_ranges",
        "depth_estimation",
        "fusion",
        "surface_reconstruction",
    ]
    head = (
        "| preset | depths | " + " | ".join(stages) + " | total (s) | output | median (mm) | p90 (mm) "
        "| outliers >10 mm | completeness (seen>=2, 5 mm) | points |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for preset, r in res.items():
        t = r["run"]["timings_s"]
        for out, label in (
            ("cloud_fused", "fused cloud"),
            ("cloud_after_sor", "cloud after SOR"),
            ("mesh", "Poisson mesh"),
        ):
            m = r["eval"].get(out)
            if m is None:
                continue
            pts = f"{int(m['n_points'])}" if out != "mesh" else f"{int(m['n_vertices'])} vertices"
            lines.append(
                f"| {preset} | {r['run']['config']['num_depths']} | "
                + " | ".join(f"{t.get(s, float('nan')):.1f}" for s in stages)
                + f" | {t['total']:.1f} | {label} | {m['median_abs_error_mm']:.2f} | {m['p90_abs_error_mm']:.2f} "
                f"| {100 * m['outlier_fraction']:.1f} % | {100 * m['completeness']:.1f} % | {pts} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", nargs="?", default="all", choices=["all", "run-old", "evaluate", "table"])
    ap.add_argument("--survey", default=str(DEFAULT_SURVEY))
    ap.add_argument("--work", default=str(DEFAULT_WORK))
    ap.add_argument("--survey-copy", default=None, help="(internal) copy of the survey inputs under --work")
    ap.add_argument(
        "--store",
        default=None,
        help="(evaluate) a store with the survey's cameras (default: SURVEY/store.zarr)",
    )
    ap.add_argument(
        "--presets", nargs="+", default=["balanced", "fast"], choices=["fast", "balanced", "quality"]
    )
    ap.add_argument("--preset", default="balanced", help="(run-old) the preset to run")
    ap.add_argument("--frame", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--old-python", default=DEFAULT_OLD_PY)
    ap.add_argument("--our-python", default=DEFAULT_OUR_PY)
    args = ap.parse_args()
    work = Path(args.work)
    if args.survey_copy is None:
        args.survey_copy = str(work / "survey")

    if args.mode == "run-old":
        run_old(args)
        return
    if args.mode == "evaluate":
        evaluate(args)
        return
    if args.mode == "table":
        print(_table(work))
        return

    # --- all: copy the inputs (the survey itself is never written), run each preset, evaluate ---
    work.mkdir(parents=True, exist_ok=True)
    src, dst = Path(args.survey), Path(args.survey_copy)
    if not dst.exists():
        (dst / "videos").mkdir(parents=True)
        for f in ("calibration.json", "ground_truth.npz", "survey.yaml"):
            shutil.copy2(src / f, dst / f)
        for v in (src / "videos").glob("*.mp4"):
            shutil.copy2(v, dst / "videos" / v.name)
        _complete_calibration(dst / "calibration.json")
    stubs = _write_stubs(work / "stubs")
    env = dict(os.environ, PYTHONPATH=str(stubs))
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(args.threads)
    common = [
        "--work",
        str(work),
        "--survey",
        args.survey,
        "--survey-copy",
        args.survey_copy,
        "--frame",
        str(args.frame),
        "--threads",
        str(args.threads),
    ]
    for preset in args.presets:
        with open("/proc/loadavg") as f:
            print(f"[{preset}] load before: {f.read().strip()}", flush=True)
        t = time.perf_counter()
        subprocess.run(
            [args.old_python, str(HERE), "run-old", "--preset", preset, *common], env=env, check=True
        )
        with open("/proc/loadavg") as f:
            print(
                f"[{preset}] process wall incl. imports {time.perf_counter() - t:.1f} s; load after: {f.read().strip()}",
                flush=True,
            )
    env_our = dict(os.environ)
    env_our["OMP_NUM_THREADS"] = str(args.threads)
    subprocess.run(
        [args.our_python, str(HERE), "evaluate", "--presets", *args.presets, *common], env=env_our, check=True
    )
    print(_table(work))


if __name__ == "__main__":
    main()
