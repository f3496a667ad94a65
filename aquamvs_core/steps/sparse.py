"""Sparse steps: match and triangulate each pair of a frame (``sparse_matches``), then pool the
frame's points and derive each camera's depth search range (``sparse_cloud``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from aquamvs_core.config import ReconstructionConfig
from aquamvs_core.runtime import default_workers, map_in_threads, torch_threads
from aquamvs_core.stages.pairs import CameraPair
from aquamvs_core.stages.sparse.depth_ranges import camera_depth_ranges
from aquamvs_core.stages.sparse.matching import sift_features
from aquamvs_core.stages.sparse.pair_matching import SparsePair, match_and_triangulate
from aquamvs_core.steps.common import (
    StoreCameras,
    fingerprint,
    frame_fingerprint,
    product_fingerprint,
    provenance,
    reusable,
    worker_config,
)
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Product, product_path


def _sparse_product(
    store: SurveyStore, frame: str, pair: CameraPair, config: ReconstructionConfig
) -> tuple[str, str]:
    """The path of a pair's ``sparse_matches`` product and the fingerprint it must carry."""
    path = product_path(Product.SPARSE_MATCHES, frame, pair.key)
    expected = fingerprint(
        Product.SPARSE_MATCHES,
        frame_fingerprint(store, frame),
        pair.key,
        config.matching,
        config.triangulation,
    )
    return path, expected


def sparse_matches_step(
    store: SurveyStore,
    frame: str,
    pair: CameraPair,
    config: ReconstructionConfig,
    cams: StoreCameras | None = None,
    model_cache: dict | None = None,
    feature_cache: dict | None = None,
    images: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Match and triangulate one pair of a frame; writes ``sparse_matches/<frame>/<pair>`` (reused
    when its fingerprint is current: the summary then has ``reused: True``). Pass the same
    ``feature_cache`` dict for the pairs of a frame to detect each image's features once, and the
    same ``images`` dict (camera → image of the frame) to read each image once."""
    path, expected = _sparse_product(store, frame, pair, config)
    if (stored := reusable(store, path, expected)) is not None:
        return {**stored["summary"], "reused": True}
    cams = cams or StoreCameras.load(store)
    t0 = time.perf_counter()
    images = {} if images is None else images
    if missing := [c for c in (pair.ref, pair.src) if c not in images]:
        images.update(store.read_frame(frame, missing))
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
        path,
        result.as_arrays(),
        provenance(cams, frame, config, expected, summary, ref=pair.ref, src=pair.src),
    )
    return summary


def match_workers(config: ReconstructionConfig) -> int:
    """How many pairs are matched at once: ``config.pair_workers``, else
    :func:`~aquamvs_core.runtime.default_workers` of the matcher's device for SIFT, and one for the
    LightGlue matchers (one model)."""
    if config.pair_workers is not None:
        return config.pair_workers
    return default_workers(config.matching.device) if config.matching.method == "sift" else 1


def match_frame_pairs(
    store: SurveyStore,
    frame: str,
    pairs: Sequence[CameraPair],
    config: ReconstructionConfig,
    cams: StoreCameras | None = None,
    on_done: Callable[[CameraPair, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`sparse_matches_step` of every pair of ``frame``, :func:`match_workers` at a time (in
    threads, see :func:`~aquamvs_core.runtime.map_in_threads`), sharing each image's features. A pair
    and its reverse run one after the other in the same worker, so the reverse reuses the matches.
    ``on_done(pair, summary)`` is called in the caller's thread as each pair finishes. Returns pair
    key → summary, in the order of ``pairs``; each pair's product is written atomically by its step."""
    cams = cams or StoreCameras.load(store)
    model_cache: dict = {}  # LightGlue's networks, loaded once for the frame
    features: dict = {}
    images: dict[str, np.ndarray] = {}  # the frame's images, each read once (~6 MB at 1600×1200)
    groups: dict[frozenset[str], list[CameraPair]] = {}
    for p in pairs:
        groups.setdefault(frozenset((p.ref, p.src)), []).append(p)
    workers = min(match_workers(config), max(len(groups), 1))
    config = worker_config(config, workers)
    summaries: dict[str, dict[str, Any]] = {}
    if workers > 1 and config.matching.method == "sift":
        # Each image's features first, side by side (the pairs would otherwise wait for each other's).
        todo = [p for p in pairs if reusable(store, *_sparse_product(store, frame, p, config)) is None]
        cameras = list(dict.fromkeys(n for p in todo for n in (p.ref, p.src)))

        def detect(camera: str) -> None:
            images[camera] = store.read_frame(frame, [camera])[camera]
            sift_features(images[camera], config.matching, features, (frame, camera))

        for _ in map_in_threads(detect, cameras, workers):
            pass

    def match_group(group: list[CameraPair]) -> list[dict[str, Any]]:
        return [
            sparse_matches_step(store, frame, p, config, cams, model_cache, features, images) for p in group
        ]

    for group, results in map_in_threads(match_group, list(groups.values()), workers):
        for pair, summary in zip(group, results, strict=True):
            summaries[pair.key] = summary
            if on_done is not None:
                on_done(pair, summary)
    return {p.key: summaries[p.key] for p in pairs}


def sparse_cloud_step(
    store: SurveyStore, frame: str, pairs: Sequence[CameraPair], config: ReconstructionConfig
) -> dict[str, Any]:
    """Pool the kept points of every pair of ``frame`` and derive each camera's depth range;
    writes ``sparse_cloud/<frame>`` (reused when current). Missing pair products are an error
    (materialize them first)."""
    missing = [
        p.key for p in pairs if not store.has_product(product_path(Product.SPARSE_MATCHES, frame, p.key))
    ]
    if missing:
        raise FileNotFoundError(f"{store.root}: frame {frame} has no sparse matches for pairs {missing}")
    path = product_path(Product.SPARSE_CLOUD, frame)
    inputs = [product_fingerprint(store, product_path(Product.SPARSE_MATCHES, frame, p.key)) for p in pairs]
    expected = fingerprint(Product.SPARSE_CLOUD, inputs, config.depth_range)
    if (stored := reusable(store, path, expected)) is not None:
        return {**stored["summary"], "reused": True}
    cams = StoreCameras.load(store)
    chunks = []
    for p in pairs:
        sp = SparsePair.from_arrays(store.read_product(product_path(Product.SPARSE_MATCHES, frame, p.key)))
        chunks.append(sp.points[sp.keep])
    points = np.concatenate(chunks) if chunks else np.zeros((0, 3))
    ranges = camera_depth_ranges(points, cams.cameras, config.depth_range, cams.masks)
    summary = {"points": len(points), "depth_ranges": ranges}
    store.write_product(
        path,
        {"points": points},
        provenance(cams, frame, config, expected, summary, depth_ranges=ranges, n_points=len(points)),
    )
    return summary


def depth_range(store: SurveyStore, frame: str, camera: str) -> tuple[float, float] | None:
    """The camera's world-Z sweep range from ``sparse_cloud/<frame>``, or None without a sparse cloud."""
    if not store.has_product(product_path(Product.SPARSE_CLOUD, frame)):
        return None
    r = store.product_attrs(product_path(Product.SPARSE_CLOUD, frame))["depth_ranges"][camera]
    return float(r["z_min"]), float(r["z_max"])
