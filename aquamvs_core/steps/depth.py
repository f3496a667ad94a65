"""Dense depth steps: each pair's depth of its reference camera (``pairwise_depths``: the
refractive plane sweep, or RoMa's dense warp on the ``roma`` pathway), then each camera's pairs
combined (``camera_depths``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from aquamvs_core.config import ReconstructionConfig
from aquamvs_core.runtime import default_workers, map_in_threads, release_free_memory, torch_threads
from aquamvs_core.stages.dense.correspondence_depth import (
    DenseMatcher,
    WarpPairDepth,
    combine_warp_depths,
    warp_to_pair_depth,
)
from aquamvs_core.stages.dense.roma import RomaSettings
from aquamvs_core.stages.depth_map import DepthMap
from aquamvs_core.stages.pairs import CameraPair
from aquamvs_core.stages.stereo.combine import combine_pair_depths
from aquamvs_core.stages.stereo.plane_sweep import PairDepth, sweep_pair
from aquamvs_core.stages.stereo.pyramid import PREPARED_VIEWS_MB, PreparedViews
from aquamvs_core.steps.common import (
    StoreCameras,
    fingerprint,
    frame_fingerprint,
    product_fingerprint,
    provenance,
    reusable,
    worker_config,
)
from aquamvs_core.steps.sparse import depth_range
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Product, product_path

PAIR_DEPTH_ARRAYS = ("depth", "confidence", "ncc", "world_z", "px_per_mm")


def pairwise_depths_step(
    store: SurveyStore,
    frame: str,
    pair: CameraPair,
    config: ReconstructionConfig,
    cams: StoreCameras | None = None,
    views: PreparedViews | None = None,
) -> dict[str, Any]:
    """Refractive plane sweep of ``pair.ref`` against ``pair.src``; writes
    ``pairwise_depths/<frame>/<pair>`` (:data:`PAIR_DEPTH_ARRAYS`), reused when current. ``views``
    (:func:`frame_views`) shares the frame's prepared images between its pairs (the same result)."""
    path = product_path(Product.PAIRWISE_DEPTHS, frame, pair.key)
    expected = fingerprint(
        Product.PAIRWISE_DEPTHS, _dense_inputs(store, frame, pair), "sweep", config.plane_sweep
    )
    if (stored := reusable(store, path, expected)) is not None:
        return {**stored["summary"], "reused": True}
    cams = cams or StoreCameras.load(store)
    views = views or frame_views(store, frame, cams, config, budget_mb=0.0)
    z_range = depth_range(store, frame, pair.ref)
    with torch.no_grad(), torch_threads(config.torch_threads):
        result = sweep_pair(
            views.get(pair.ref),
            views.get(pair.src),
            cams.cameras[pair.ref],
            cams.cameras[pair.src],
            config=config.plane_sweep,
            z_range=z_range,
            names=(pair.ref, pair.src),
        )
    arrays = {k: getattr(result, k).cpu().numpy().astype(np.float32) for k in PAIR_DEPTH_ARRAYS}
    valid = float(np.isfinite(arrays["depth"]).mean())
    summary = {
        "valid_fraction": round(valid, 4),
        "z_range": list(z_range) if z_range else None,
        "planes": result.planes,
        "seconds": round(result.timings["total"], 3),
    }
    store.write_product(
        path,
        arrays,
        provenance(
            cams, frame, config, expected, summary, ref=pair.ref, src=pair.src, timings=result.timings
        ),
    )
    return summary


def frame_views(
    store: SurveyStore,
    frame: str,
    cams: StoreCameras,
    config: ReconstructionConfig,
    budget_mb: float = PREPARED_VIEWS_MB,
) -> PreparedViews:
    """The frame's images, read from the store and prepared for the sweep on first use
    (:class:`~aquamvs_core.stages.stereo.pyramid.PreparedViews`, within ``budget_mb``)."""

    def load(camera: str) -> tuple[np.ndarray, np.ndarray]:
        return store.read_frame(frame, [camera])[camera], cams.masks[camera]

    return PreparedViews(load, config.plane_sweep, budget_mb)


def pair_workers(config: ReconstructionConfig) -> int:
    """How many plane-sweep pairs run at once: ``config.pair_workers``, else
    :func:`~aquamvs_core.runtime.default_workers` of the sweep's device, and one on the roma
    pathway (one model)."""
    if config.pair_workers is not None:
        return config.pair_workers
    return 1 if config.pathway == "roma" else default_workers(config.plane_sweep.device)


def sweep_frame_pairs(
    store: SurveyStore,
    frame: str,
    pairs: Sequence[CameraPair],
    config: ReconstructionConfig,
    cams: StoreCameras | None = None,
    on_done: Callable[[CameraPair, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`pairwise_depths_step` of every pair of ``frame``, :func:`pair_workers` at a time (in
    threads, see :func:`~aquamvs_core.runtime.map_in_threads`). ``on_done(pair, summary)`` is called
    here, in the caller's thread, as each pair finishes (progress). Returns pair key → summary, in the
    order of ``pairs``. Each pair's product is written atomically by its own step: a failure leaves
    the finished pairs in the store and nothing half-written."""
    cams = cams or StoreCameras.load(store)
    workers = min(pair_workers(config), max(len(pairs), 1))
    config = worker_config(config, workers)
    views = frame_views(store, frame, cams, config)  # a camera read and prepared once for a run of pairs
    summaries = {}
    for pair, summary in map_in_threads(
        lambda p: pairwise_depths_step(store, frame, p, config, cams, views), list(pairs), workers
    ):
        summaries[pair.key] = summary
        if on_done is not None:
            on_done(pair, summary)
    # The workers' leftovers (up to 1 GB that the tuned heap keeps) go back to the system, so that the
    # camera depths' peak does not stack on them (a 1600×1200 frame: 3.6-3.9 -> 3.3 GB). Only here:
    # pages given back fault in again when used, and trimming after the later steps as well cost
    # ~7 s of system time on that frame (frame_profile_rig1600_ab_db606ca_cpu.md).
    views.clear()
    release_free_memory()
    return {p.key: summaries[p.key] for p in pairs}


def _dense_inputs(store: SurveyStore, frame: str, pair: CameraPair) -> list[str]:
    """Fingerprints a pair depth is made from: the frame, the pair, and the sparse cloud (the depth
    range) when there is one."""
    cloud = product_path(Product.SPARSE_CLOUD, frame)
    sparse = product_fingerprint(store, cloud) if store.has_product(cloud) else ""
    return [frame_fingerprint(store, frame), pair.key, sparse]


def roma_pairwise_depths_step(
    store: SurveyStore,
    frame: str,
    pair: CameraPair,
    config: ReconstructionConfig,
    matcher: DenseMatcher,
    roma: RomaSettings | None = None,
    cams: StoreCameras | None = None,
) -> dict[str, Any]:
    """Dense-warp depth of ``pair.ref`` against ``pair.src``; writes ``pairwise_depths/<frame>/<pair>``
    (:class:`WarpPairDepth` arrays, on the warp grid).
    ``roma`` gives the certainty threshold, sample budget and seed (default: :class:`RomaSettings`).

    The warp is converted at once (no_grad) and dropped before this returns: a loop over pairs holds
    one warp at a time. Images go to the matcher as RGB, as the store holds them. Reused when current
    (same frame, depth range, conversion settings and matcher settings).
    """
    roma = roma or RomaSettings()
    path = product_path(Product.PAIRWISE_DEPTHS, frame, pair.key)
    matcher_settings = roma.model_dump(mode="json", exclude={"device"})
    expected = fingerprint(
        Product.PAIRWISE_DEPTHS, _dense_inputs(store, frame, pair), "roma", config.roma, matcher_settings
    )
    if (stored := reusable(store, path, expected)) is not None:
        return {**stored["summary"], "reused": True}
    cams = cams or StoreCameras.load(store)
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
        path,
        result.as_arrays(),
        provenance(
            cams,
            frame,
            config,
            expected,
            summary,
            ref=pair.ref,
            src=pair.src,
            image_size=list(result.image_size),
        ),
    )
    return summary


def _read_pairwise(store: SurveyStore, frame: str, pair: CameraPair, pathway: str) -> dict:
    """Arrays of the stored ``pairwise_depths/<frame>/<pair>`` product, which must come from ``pathway``
    (a plane sweep's and a RoMa warp's depths are different products of the same asset)."""
    key = product_path(Product.PAIRWISE_DEPTHS, frame, pair.key)
    written_by = store.product_attrs(key).get("pathway")
    if (written_by == "roma") != (pathway == "roma"):
        raise ValueError(
            f"{store.root}: {key} was written by the {written_by!r} pathway, not {pathway!r}: "
            "materialize pairwise_depths again with this pathway"
        )
    return store.read_product(key)


def read_roma_pair_depth(store: SurveyStore, frame: str, pair: CameraPair) -> WarpPairDepth:
    """The stored ``pairwise_depths/<frame>/<pair>`` product of the ``roma`` pathway."""
    arrays = _read_pairwise(store, frame, pair, "roma")
    size = store.product_attrs(product_path(Product.PAIRWISE_DEPTHS, frame, pair.key))["image_size"]
    return WarpPairDepth(
        *(torch.from_numpy(arrays[k]) for k in ("depth", "certainty", "world_z")), image_size=tuple(size)
    )


def read_pair_depth(store: SurveyStore, frame: str, pair: CameraPair) -> PairDepth:
    """The stored ``pairwise_depths/<frame>/<pair>`` product of a plane-sweep pathway."""
    arrays = _read_pairwise(store, frame, pair, "sift")
    return PairDepth(pair.ref, pair.src, *(torch.from_numpy(arrays[k]) for k in PAIR_DEPTH_ARRAYS))


def camera_depths_step(
    store: SurveyStore, frame: str, pairs: Sequence[CameraPair], config: ReconstructionConfig
) -> dict[str, dict[str, Any]]:
    """Combine each reference camera's pair depths (plane-sweep ones, or the RoMa pathway's warp
    depths when ``config.pathway == "roma"``); writes ``camera_depths/<frame>/<camera>``, each reused
    when current. Returns camera → summary."""
    missing = [
        p.key for p in pairs if not store.has_product(product_path(Product.PAIRWISE_DEPTHS, frame, p.key))
    ]
    if missing:
        raise FileNotFoundError(f"{store.root}: frame {frame} has no pairwise_depths products for {missing}")
    cams = StoreCameras.load(store)
    by_ref: dict[str, list[CameraPair]] = {}
    for p in pairs:
        by_ref.setdefault(p.ref, []).append(p)

    def one_camera(ref: str) -> dict[str, Any]:
        ref_pairs = by_ref[ref]
        path = product_path(Product.CAMERA_DEPTHS, frame, ref)
        inputs = [
            product_fingerprint(store, product_path(Product.PAIRWISE_DEPTHS, frame, p.key)) for p in ref_pairs
        ]
        method = ("roma", config.roma) if config.pathway == "roma" else ("sweep", config.plane_sweep)
        expected = fingerprint(Product.CAMERA_DEPTHS, inputs, *method)
        if (stored := reusable(store, path, expected)) is not None:
            return {**stored["summary"], "reused": True}
        if config.pathway == "roma":
            combined = combine_warp_depths(
                [read_roma_pair_depth(store, frame, p) for p in ref_pairs],
                cams.cameras[ref],
                torch.from_numpy(cams.masks[ref]),
                config.roma,
            )
        else:
            combined = combine_pair_depths(
                [read_pair_depth(store, frame, p) for p in ref_pairs], config.plane_sweep, ref
            )
        arrays = {
            "depth": combined.depth.cpu().numpy().astype(np.float32),
            "confidence": combined.confidence.cpu().numpy().astype(np.float32),
            "support": combined.support.cpu().numpy().astype(np.int32),
        }
        del combined
        summary = {"valid_fraction": round(float(np.isfinite(arrays["depth"]).mean()), 4)}
        store.write_product(
            path,
            arrays,
            provenance(cams, frame, config, expected, summary, camera=ref, pairs=[p.key for p in ref_pairs]),
        )
        return summary

    refs = list(by_ref)
    return dict(map_in_threads(one_camera, refs, pair_workers(config), in_order=True))


def camera_depth_maps(store: SurveyStore, frame: str) -> dict[str, DepthMap]:
    """The combined depth maps of ``frame`` (cameras that have one)."""
    out = {}
    for cam in store.list_products(product_path(Product.CAMERA_DEPTHS, frame)):
        a = store.read_product(product_path(Product.CAMERA_DEPTHS, frame, cam), ["depth", "confidence"])
        out[cam] = DepthMap(cam, torch.from_numpy(a["depth"]), torch.from_numpy(a["confidence"]))
    return out
