"""Reconstruction steps on a survey's store: each reads its inputs from the store, runs one stage,
and writes one product (atomically). The Dagster assets, the CLI and the Python API call these.

Products (under ``products/`` in the store, see :mod:`aquamvs_core.store.survey_store`)::

    sparse/<frame>/<ref>-<src>      matches and triangulated points of a pair (SparsePair arrays)
    sparse_cloud/<frame>            kept points of all pairs; attrs: per-camera depth ranges
    depth/<frame>/<ref>-<src>       plane-sweep depth of ref against src (PairDepth arrays)
    roma_depth/<frame>/<ref>-<src>  RoMa pathway: depth of ref on the warp grid (WarpPairDepth arrays)
    camera_depth/<frame>/<camera>   a camera's combined depth: depth, confidence, support
    cloud/<frame>                   fused cloud: points, colors, normals, support
    mesh/<frame>                    mesh: vertices, triangles, colors, normals
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open3d as o3d
import torch

from aquamvs_core.config import ReconstructionConfig
from aquamvs_core.stages.dense.roma import RomaSettings
from aquamvs_core.stages.dense.correspondence_depth import DenseMatcher, WarpPairDepth, combine_warp_depths, warp_to_pair_depth
from aquamvs_core.stages.depth_map import DepthMap
from aquamvs_core.stages.fusion import FusedCloud, fuse_depth_maps
from aquamvs_core.stages.mesh import build_mesh, export_mesh
from aquamvs_core.stages.pairs import CameraPair
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.runtime import torch_threads
from aquamvs_core.stages.sparse.pair_matching import SparsePair, camera_depth_ranges, match_and_triangulate
from aquamvs_core.stages.stereo.combine import combine_pair_depths
from aquamvs_core.stages.stereo.plane_sweep import PairDepth, sweep_pair
from aquamvs_core.store.survey_store import SurveyStore

log = logging.getLogger("aquamvs.reconstruct")

PAIR_DEPTH_ARRAYS = ("depth", "confidence", "ncc", "world_z", "px_per_mm")


@dataclass(frozen=True)
class StoreCameras:
    """The refractive cameras of a store's undistorted images, and their validity masks."""

    cameras: dict[str, RefractiveCamera]
    masks: dict[str, np.ndarray]
    calibration_hash: str

    @classmethod
    def load(cls, store: SurveyStore) -> StoreCameras:
        rig = store.read_rig()
        Ks = store.read_undistorted_K()
        cams = {n: RefractiveCamera.from_calibration(rig[n], rig.interface, Ks[n]) for n in rig.camera_names}
        return cls(cams, store.read_valid_masks(), rig.content_hash)


def dense_pairs(
    store: SurveyStore, pairs: Sequence[CameraPair], config: ReconstructionConfig
) -> list[CameraPair]:
    """The pairs the plane sweep uses: all of them, or without auxiliary sources when
    ``config.use_auxiliary_sources`` is off."""
    if config.use_auxiliary_sources:
        return list(pairs)
    aux = set(store.read_rig().auxiliary_names)
    return [p for p in pairs if p.src not in aux]


def _provenance(store_cams: StoreCameras, frame: str, config: ReconstructionConfig, **extra: Any) -> dict:
    return {
        "frame": frame,
        "calibration_hash": store_cams.calibration_hash,
        "preset": config.preset,
        "pathway": config.pathway,
        **extra,
    }


# --------------------------------------------------------------------------------------------
# Sparse
# --------------------------------------------------------------------------------------------


def sparse_step(
    store: SurveyStore,
    frame: str,
    pair: CameraPair,
    config: ReconstructionConfig,
    cams: StoreCameras | None = None,
    model_cache: dict | None = None,
    feature_cache: dict | None = None,
) -> dict[str, Any]:
    """Match and triangulate one pair of a frame; writes ``sparse/<frame>/<pair>``. Pass the same
    ``feature_cache`` dict for the pairs of a frame to detect each image's features once."""
    cams = cams or StoreCameras.load(store)
    t0 = time.perf_counter()
    images = store.read_frame(frame, [pair.ref, pair.src])
    with torch_threads(config.torch_threads):
        result = match_and_triangulate(
            images[pair.ref],
            images[pair.src],
            cams.cameras[pair.ref],
            cams.cameras[pair.src],
            config.matching,
            config.triangulation,
            model_cache=model_cache,
            feature_cache=feature_cache,
            keys=((frame, pair.ref), (frame, pair.src)),
        )
    kept = int(result.keep.sum())
    summary = {
        "matches": len(result.keep),
        "kept": kept,
        "median_reprojection_px": float(np.median(result.reprojection_px[result.keep])) if kept else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    store.write_product(
        f"sparse/{frame}/{pair.key}",
        result.as_arrays(),
        _provenance(cams, frame, config, ref=pair.ref, src=pair.src, **summary),
    )
    return summary


def sparse_cloud_step(
    store: SurveyStore, frame: str, pairs: Sequence[CameraPair], config: ReconstructionConfig
) -> dict[str, Any]:
    """Pool the kept points of every pair of ``frame`` and derive each camera's depth range;
    writes ``sparse_cloud/<frame>``. Missing pair products are an error (materialize them first)."""
    missing = [p.key for p in pairs if not store.has_product(f"sparse/{frame}/{p.key}")]
    if missing:
        raise FileNotFoundError(f"{store.root}: frame {frame} has no sparse matches for pairs {missing}")
    cams = StoreCameras.load(store)
    chunks = []
    for p in pairs:
        sp = SparsePair.from_arrays(store.read_product(f"sparse/{frame}/{p.key}"))
        chunks.append(sp.points[sp.keep])
    points = np.concatenate(chunks) if chunks else np.zeros((0, 3))
    ranges = camera_depth_ranges(points, cams.cameras, config.depth_range)
    store.write_product(
        f"sparse_cloud/{frame}",
        {"points": points},
        _provenance(cams, frame, config, depth_ranges=ranges, n_points=len(points)),
    )
    return {"points": len(points), "depth_ranges": ranges}


def depth_range(store: SurveyStore, frame: str, camera: str) -> tuple[float, float] | None:
    """The camera's world-Z sweep range from ``sparse_cloud/<frame>``, or None without a sparse cloud."""
    if not store.has_product(f"sparse_cloud/{frame}"):
        return None
    r = store.product_attrs(f"sparse_cloud/{frame}")["depth_ranges"][camera]
    return float(r["z_min"]), float(r["z_max"])


# --------------------------------------------------------------------------------------------
# Dense depth
# --------------------------------------------------------------------------------------------


def pair_depth_step(
    store: SurveyStore,
    frame: str,
    pair: CameraPair,
    config: ReconstructionConfig,
    cams: StoreCameras | None = None,
) -> dict[str, Any]:
    """Refractive plane sweep of ``pair.ref`` against ``pair.src``; writes ``depth/<frame>/<pair>``."""
    cams = cams or StoreCameras.load(store)
    images = store.read_frame(frame, [pair.ref, pair.src])
    z_range = depth_range(store, frame, pair.ref)
    with torch.no_grad(), torch_threads(config.torch_threads):
        result = sweep_pair(
            images[pair.ref],
            images[pair.src],
            cams.cameras[pair.ref],
            cams.cameras[pair.src],
            cams.masks[pair.ref],
            cams.masks[pair.src],
            config.plane_sweep,
            z_range=z_range,
            names=(pair.ref, pair.src),
        )
    arrays = {k: getattr(result, k).cpu().numpy().astype(np.float32) for k in PAIR_DEPTH_ARRAYS}
    valid = float(np.isfinite(arrays["depth"]).mean())
    summary = {
        "valid_fraction": round(valid, 4),
        "z_range": list(z_range) if z_range else None,
        "seconds": round(sum(result.timings.values()), 3),
    }
    store.write_product(
        f"depth/{frame}/{pair.key}",
        arrays,
        _provenance(cams, frame, config, ref=pair.ref, src=pair.src, timings=result.timings, **summary),
    )
    return summary


def roma_pair_depth_step(
    store: SurveyStore,
    frame: str,
    pair: CameraPair,
    config: ReconstructionConfig,
    matcher: DenseMatcher,
    roma: RomaSettings | None = None,
    cams: StoreCameras | None = None,
) -> dict[str, Any]:
    """Dense-warp depth of ``pair.ref`` against ``pair.src``; writes ``roma_depth/<frame>/<pair>``.
    ``roma`` gives the certainty threshold, sample budget and seed (default: :class:`RomaSettings`).

    The warp is converted at once (no_grad) and dropped before this returns: a loop over pairs holds
    one warp at a time. Images go to the matcher as RGB, as the store holds them.
    """
    cams = cams or StoreCameras.load(store)
    roma = roma or RomaSettings()
    images = store.read_frame(frame, [pair.ref, pair.src])
    t0 = time.perf_counter()
    with torch.no_grad(), torch_threads(config.torch_threads):
        match = matcher.match(images[pair.ref], images[pair.src], names=(pair.ref, pair.src))
        t_match = time.perf_counter() - t0
        result = warp_to_pair_depth(
            match,
            matcher,
            cams.cameras[pair.ref],
            cams.cameras[pair.src],
            images[pair.ref].shape[1::-1],
            images[pair.src].shape[1::-1],
            config.roma,
            certainty_threshold=roma.certainty_threshold,
            sample_budget=roma.sample_budget,
            z_range=depth_range(store, frame, pair.ref),
            seed=roma.seed,
        )
        grid, warp_cells = match.grid_shape, int(match.certainty.numel())
        del match
    valid = float(torch.isfinite(result.depth).float().mean())
    summary = {
        "valid_fraction": round(valid, 4),
        "grid": list(grid),
        "warp_cells": warp_cells,
        "seconds": round(time.perf_counter() - t0, 3),
        "match_seconds": round(t_match, 3),
    }
    store.write_product(
        f"roma_depth/{frame}/{pair.key}",
        result.as_arrays(),
        _provenance(
            cams, frame, config, ref=pair.ref, src=pair.src, image_size=list(result.image_size), **summary
        ),
    )
    return summary


def read_roma_pair_depth(store: SurveyStore, frame: str, pair: CameraPair) -> WarpPairDepth:
    """The stored ``roma_depth/<frame>/<pair>`` product."""
    key = f"roma_depth/{frame}/{pair.key}"
    arrays = store.read_product(key)
    size = store.product_attrs(key)["image_size"]
    return WarpPairDepth(
        *(torch.from_numpy(arrays[k]) for k in ("depth", "certainty", "world_z")), image_size=tuple(size)
    )


def _pair_depth(store: SurveyStore, frame: str, pair: CameraPair) -> PairDepth:
    arrays = store.read_product(f"depth/{frame}/{pair.key}")
    return PairDepth(pair.ref, pair.src, *(torch.from_numpy(arrays[k]) for k in PAIR_DEPTH_ARRAYS))


def camera_depth_step(
    store: SurveyStore, frame: str, pairs: Sequence[CameraPair], config: ReconstructionConfig
) -> dict[str, dict[str, Any]]:
    """Combine each reference camera's pair depths (plane-sweep ones, or the RoMa pathway's warp
    depths when ``config.pathway == "roma"``); writes ``camera_depth/<frame>/<camera>``."""
    product = "roma_depth" if config.pathway == "roma" else "depth"
    missing = [p.key for p in pairs if not store.has_product(f"{product}/{frame}/{p.key}")]
    if missing:
        raise FileNotFoundError(f"{store.root}: frame {frame} has no {product} products for {missing}")
    cams = StoreCameras.load(store)
    by_ref: dict[str, list[CameraPair]] = {}
    for p in pairs:
        by_ref.setdefault(p.ref, []).append(p)
    summary = {}
    for ref, ref_pairs in by_ref.items():
        if config.pathway == "roma":
            combined = combine_warp_depths(
                [read_roma_pair_depth(store, frame, p) for p in ref_pairs],
                cams.cameras[ref],
                torch.from_numpy(cams.masks[ref]),
                config.roma,
            )
        else:
            combined = combine_pair_depths(
                [_pair_depth(store, frame, p) for p in ref_pairs], config.plane_sweep, ref
            )
        arrays = {
            "depth": combined.depth.cpu().numpy().astype(np.float32),
            "confidence": combined.confidence.cpu().numpy().astype(np.float32),
            "support": combined.support.cpu().numpy().astype(np.int32),
        }
        summary[ref] = {"valid_fraction": round(float(np.isfinite(arrays["depth"]).mean()), 4)}
        store.write_product(
            f"camera_depth/{frame}/{ref}",
            arrays,
            _provenance(cams, frame, config, camera=ref, pairs=[p.key for p in ref_pairs], **summary[ref]),
        )
    return summary


def camera_depth_maps(store: SurveyStore, frame: str) -> dict[str, DepthMap]:
    """The combined depth maps of ``frame`` (cameras that have one)."""
    out = {}
    for cam in store.list_products(f"camera_depth/{frame}"):
        a = store.read_product(f"camera_depth/{frame}/{cam}", ["depth", "confidence"])
        out[cam] = DepthMap(cam, torch.from_numpy(a["depth"]), torch.from_numpy(a["confidence"]))
    return out


# --------------------------------------------------------------------------------------------
# Fusion and mesh
# --------------------------------------------------------------------------------------------


def fusion_step(store: SurveyStore, frame: str, config: ReconstructionConfig) -> FusedCloud:
    """Fuse the frame's camera depth maps; writes ``cloud/<frame>``."""
    depth_maps = camera_depth_maps(store, frame)
    if not depth_maps:
        raise FileNotFoundError(f"{store.root}: frame {frame} has no camera depth maps")
    cams = StoreCameras.load(store)
    images = store.read_frame(frame, list(depth_maps))
    t0 = time.perf_counter()
    cloud = fuse_depth_maps(depth_maps, cams.cameras, images, config.fusion)
    store.write_product(
        f"cloud/{frame}",
        cloud.as_arrays(),
        _provenance(cams, frame, config, stats=cloud.stats, seconds=round(time.perf_counter() - t0, 3)),
    )
    return cloud


def read_cloud(store: SurveyStore, frame: str) -> FusedCloud:
    return FusedCloud.from_arrays(store.read_product(f"cloud/{frame}"))


def mesh_to_arrays(mesh: o3d.geometry.TriangleMesh) -> dict[str, np.ndarray]:
    return {
        "vertices": np.asarray(mesh.vertices, dtype=np.float64),
        "triangles": np.asarray(mesh.triangles, dtype=np.int32),
        "colors": (np.clip(np.asarray(mesh.vertex_colors), 0, 1) * 255).round().astype(np.uint8),
        "normals": np.asarray(mesh.vertex_normals, dtype=np.float32),
    }


def arrays_to_mesh(arrays: dict[str, np.ndarray]) -> o3d.geometry.TriangleMesh:
    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(arrays["vertices"]), o3d.utility.Vector3iVector(arrays["triangles"])
    )
    if len(arrays["colors"]):
        mesh.vertex_colors = o3d.utility.Vector3dVector(arrays["colors"].astype(np.float64) / 255.0)
    if len(arrays["normals"]):
        mesh.vertex_normals = o3d.utility.Vector3dVector(arrays["normals"].astype(np.float64))
    return mesh


def mesh_step(store: SurveyStore, frame: str, config: ReconstructionConfig) -> o3d.geometry.TriangleMesh:
    """Mesh the frame's fused cloud, colour vertices from the best view; writes ``mesh/<frame>``."""
    cloud = read_cloud(store, frame)
    cams = StoreCameras.load(store)
    depth_maps = camera_depth_maps(store, frame)
    images = store.read_frame(frame, list(depth_maps))
    t0 = time.perf_counter()
    mesh = build_mesh(cloud, config.mesh, cams.cameras, images, depth_maps, cams.masks)
    store.write_product(
        f"mesh/{frame}",
        mesh_to_arrays(mesh),
        _provenance(
            cams, frame, config, method=config.mesh.method, seconds=round(time.perf_counter() - t0, 3)
        ),
    )
    return mesh


def read_mesh(store: SurveyStore, frame: str) -> o3d.geometry.TriangleMesh:
    return arrays_to_mesh(store.read_product(f"mesh/{frame}"))


def export_frame(
    store: SurveyStore, frame: str, out_dir: str | Path, mesh_formats: Sequence[str] = ("ply",)
) -> list[Path]:
    """Write ``<out_dir>/<frame_NNNNNN>/fused_cloud.ply`` and ``mesh.<fmt>`` (world frame, metres,
    Z down) from the store; each file is written atomically."""
    from aquamvs_core.survey.spec import frame_index

    folder = Path(out_dir) / f"frame_{frame_index(frame):06d}"
    folder.mkdir(parents=True, exist_ok=True)
    written = [read_cloud(store, frame).write_ply(folder / "fused_cloud.ply")]
    mesh = read_mesh(store, frame)
    written += [export_mesh(mesh, folder / f"mesh.{fmt.lstrip('.').lower()}") for fmt in mesh_formats]
    return written


# --------------------------------------------------------------------------------------------
# Quality against ground truth
# --------------------------------------------------------------------------------------------


def quality_report(
    store: SurveyStore, frame: str, ground_truth: str | Path, config: ReconstructionConfig
) -> dict[str, Any]:
    """Fused cloud and mesh of ``frame`` against the synthetic ground truth, with completeness over
    the cells seen by at least ``config.quality.min_views`` cameras (occlusion-aware), and whether
    every target of ``config.quality`` is met."""
    from aquamvs_core.evaluation.metrics import gt_depth_maps, mesh_metrics, reconstruction_metrics, visibility_count
    from aquamvs_core.survey.spec import frame_index
    from aquamvs_core.synthetic import load_ground_truth

    gt = load_ground_truth(ground_truth)
    index = frame_index(frame)
    q = config.quality
    cams = StoreCameras.load(store)
    rig = store.read_rig()
    gt_maps = gt_depth_maps(rig, gt, index)
    views = visibility_count(gt, index, cams.cameras, cams.masks, gt_maps)
    seen = views >= q.min_views
    kwargs = {"completeness_radius_mm": q.completeness_radius_mm, "outlier_mm": q.outlier_mm}
    cloud = reconstruction_metrics(read_cloud(store, frame).points, gt, index, seen_mask=seen, **kwargs)

    surface = mesh_metrics(read_mesh(store, frame), gt, index, seen_mask=seen, **kwargs)
    by_views = {}
    for lo, hi in ((2, 3), (4, 99)):
        band = (views >= lo) & (views <= hi)
        if band.any():
            m = reconstruction_metrics(read_cloud(store, frame).points, gt, index, seen_mask=band, **kwargs)
            by_views[f"completeness_{lo}_to_{hi}_views" if hi < 99 else f"completeness_{lo}plus_views"] = (
                round(m["completeness"], 4)
            )
    passed = (
        cloud["median_abs_error_mm"] <= q.median_abs_error_mm
        and cloud["p90_abs_error_mm"] <= q.p90_abs_error_mm
        and cloud["outlier_fraction"] <= q.outlier_fraction
        and cloud["completeness"] >= q.completeness
    )
    return {
        "passed": bool(passed),
        "cloud_median_abs_error_mm": round(cloud["median_abs_error_mm"], 4),
        "cloud_p90_abs_error_mm": round(cloud["p90_abs_error_mm"], 4),
        "cloud_outlier_fraction": round(cloud["outlier_fraction"], 6),
        "cloud_completeness": round(cloud["completeness"], 4),
        "cloud_points": int(cloud["n_points"]),
        "mesh_median_abs_error_mm": round(surface["median_abs_error_mm"], 4),
        "mesh_p90_abs_error_mm": round(surface["p90_abs_error_mm"], 4),
        "mesh_outlier_fraction": round(surface["outlier_fraction"], 6),
        "mesh_completeness": round(surface["completeness"], 4),
        "cells_seen_by_2plus": int(seen.sum()),
        **by_views,
    }
