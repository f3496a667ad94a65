"""Per-camera depth: combine the pairwise depths of one reference camera.

**Rule** (:func:`combine_pair_depths`), per pixel, over the pairs ``i`` of the camera:

1. *candidates*: pair depths that are valid with confidence ``>= min_pair_confidence``;
2. *anchor*: the candidate that agrees (world-Z distance ``<= agreement_tol_mm``) with the most
   candidates, ties broken by the summed confidence of those it agrees with;
3. *consensus*: the candidates that agree with the anchor; the depth is their mean weighted by
   ``confidence × px_per_mm²`` (``combine_method="weighted_mean"``, the default: ``px_per_mm`` is the
   pair's depth resolution, so this is an inverse-variance weighting for a matching noise of fixed
   size in pixels; outliers beyond the tolerance are already excluded), or their plain or weighted
   median. All pairs share the reference ray, so averaging ray depths averages world Z;
4. the pixel is kept when at least two pairs agree (``support >= 2``), or when a single pair
   supports it with confidence ``>= single_pair_min_confidence`` (areas seen by only two cameras
   have a single pair per camera and must not be lost);
5. confidence: ``(1 − Π_consensus (1 − c_i)) × support / n_candidates`` — high when several
   confident pairs agree, reduced when other confident pairs disagree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from aquamvs_core.camera.calibration import CameraCalibration, Interface
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.camera.sampling import ArrayLike
from aquamvs_core.camera.undistortion import build_undistortion_map, undistort_image
from aquamvs_core.runtime import map_in_threads
from aquamvs_core.stages.depth_map import CameraDepth
from aquamvs_core.stages.stereo.config import PlaneSweepConfig
from aquamvs_core.stages.stereo.plane_sweep import PairDepth, sweep_pair
from aquamvs_core.stages.stereo.pyramid import prepare_image


@torch.no_grad()
def combine_pair_depths(
    pairs: Sequence[PairDepth], config: PlaneSweepConfig | None = None, camera: str | None = None
) -> CameraDepth:
    """Combine pair depths of one reference camera (see the module docstring for the rule).

    Args:
        pairs: :class:`PairDepth` maps of the same reference camera (same (H, W)).
        config: thresholds (``agreement_tol_mm``, ``min_pair_confidence``, ``single_pair_min_confidence``).
        camera: name of the camera (default: ``pairs[0].ref``).

    Returns:
        :class:`CameraDepth` with ray depth (NaN: none), confidence in [0, 1], support and candidates.
    """
    config = config or PlaneSweepConfig()
    if not pairs:
        raise ValueError("no pair depths to combine")
    shape = pairs[0].depth.shape
    if any(p.depth.shape != shape for p in pairs):
        raise ValueError(f"pair depths differ in shape: {[tuple(p.depth.shape) for p in pairs]}")
    # Bands of rows: the (h, W, P, P) agreement tests stay in the CPU cache (the same values).
    rows = max(1, _COMBINE_BAND // max(1, shape[-1] * len(pairs) ** 2))
    bands = [_combine_rows(pairs, slice(r0, r0 + rows), config) for r0 in range(0, shape[0], rows)]
    return CameraDepth(
        camera=camera if camera is not None else pairs[0].ref,
        **{k: torch.cat([b[k] for b in bands]) for k in ("depth", "confidence", "support", "candidates")},
    )


#: Agreement tests (pixels × pairs²) per band of rows of :func:`combine_pair_depths`.
_COMBINE_BAND = 1 << 18


def _combine_rows(
    pairs: Sequence[PairDepth], rows: slice, config: PlaneSweepConfig
) -> dict[str, torch.Tensor]:
    """The rule of the module docstring on rows ``rows`` of the pairs' maps."""
    n_pairs = len(pairs)
    # Pairs along the last (contiguous) dimension: (h, W, P).
    depth = torch.stack([p.depth[rows] for p in pairs], dim=-1)
    z = torch.stack([p.world_z[rows] for p in pairs], dim=-1)
    conf = torch.stack([p.confidence[rows] for p in pairs], dim=-1)
    res = torch.stack([p.px_per_mm[rows] for p in pairs], dim=-1)
    shape = depth.shape[:-1]
    cand = torch.isfinite(depth) & torch.isfinite(z) & (conf >= config.min_pair_confidence)
    tol = config.agreement_tol_mm * 1e-3

    zc = torch.where(cand, z, 0.0)
    agree = (zc.unsqueeze(-1) - zc.unsqueeze(-2)).abs() <= tol  # (h, W, P, P): [..., i, j]
    agree &= cand.unsqueeze(-1) & cand.unsqueeze(-2)
    count = agree.sum(dim=-1)  # (h, W, P): how many candidates i agrees with (itself included)
    weight = (agree * conf.unsqueeze(-2)).sum(dim=-1)
    score = count.to(conf.dtype) * (n_pairs + 1) + weight / (n_pairs + 1.0)
    score = torch.where(cand, score, -1.0)
    anchor = score.argmax(dim=-1, keepdim=True)  # (h, W, 1)
    consensus = torch.gather(agree, -2, anchor.unsqueeze(-1).expand(*shape, 1, n_pairs)).squeeze(-2)

    support = consensus.sum(dim=-1)
    n_cand = cand.sum(dim=-1)
    value = _consensus_value(depth, consensus, support, conf * res.square(), config.combine_method)
    best_conf = torch.where(consensus, conf, 0.0).amax(dim=-1)
    keep = (support >= 2) | ((support == 1) & (best_conf >= config.single_pair_min_confidence))
    miss = torch.where(consensus, 1.0 - conf, 1.0).prod(dim=-1)
    combined_conf = (1.0 - miss) * support.to(conf.dtype) / n_cand.clamp_min(1).to(conf.dtype)
    return {
        "depth": torch.where(keep, value, math.nan),
        "confidence": torch.where(keep, combined_conf.clamp(0.0, 1.0), 0.0),
        "support": torch.where(keep, support, 0).to(torch.int32),
        "candidates": n_cand.to(torch.int32),
    }


def _consensus_value(
    depth: torch.Tensor, consensus: torch.Tensor, support: torch.Tensor, weight: torch.Tensor, method: str
) -> torch.Tensor:
    """(H, W) value of the consensus among depths (H, W, P) (see ``PlaneSweepConfig.combine_method``)."""
    if method == "weighted_mean":
        w = torch.where(consensus, weight, 0.0)
        total = w.sum(dim=-1)
        d0 = torch.where(consensus, depth, 0.0)
        mean = (d0 * w).sum(dim=-1) / total.clamp_min(1e-30)
        plain = d0.sum(dim=-1) / support.clamp_min(1)
        return torch.where(total > 0, mean, plain)
    values = torch.where(consensus, depth, math.inf)
    ordered, order = values.sort(dim=-1)
    if method == "median":
        lo = ((support - 1).clamp_min(0) // 2).unsqueeze(-1)
        hi = (support // 2).clamp(max=depth.shape[-1] - 1).unsqueeze(-1)
        return (0.5 * (torch.gather(ordered, -1, lo) + torch.gather(ordered, -1, hi))).squeeze(-1)
    # Weighted median: the first sorted value whose cumulative weight reaches half the total.
    w = torch.gather(torch.where(consensus, weight, 0.0), -1, order)
    cum = w.cumsum(dim=-1)
    half = 0.5 * cum[..., -1:]
    idx = (cum < half).sum(dim=-1, keepdim=True).clamp(max=depth.shape[-1] - 1)
    return torch.gather(ordered, -1, idx).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# Convenience: all pairs of one camera
# ---------------------------------------------------------------------------------------------


@dataclass
class StereoView:
    """One camera's undistorted image, its validity mask and its refractive camera.

    Attributes:
        name: camera name.
        image: (H, W, 3) / (H, W) undistorted image (uint8, or float in [0, 1]).
        camera: :class:`~aquamvs_core.camera.refraction.RefractiveCamera` of the undistorted image.
        mask: (H, W) bool validity of the undistorted image (None: all valid).
    """

    name: str
    image: ArrayLike
    camera: RefractiveCamera
    mask: ArrayLike | None = None

    @classmethod
    def from_distorted(
        cls, calibration: CameraCalibration, interface: Interface, image: np.ndarray
    ) -> StereoView:
        """Undistort an original (H, W, 3) uint8 image of ``calibration`` (default ``K_new`` policy of
        :func:`~aquamvs_core.camera.distortion.undistorted_intrinsics`)."""
        umap = build_undistortion_map(calibration)
        camera = RefractiveCamera.from_calibration(calibration, interface, umap.K_new)
        return cls(calibration.name, undistort_image(image, umap), camera, umap.valid.numpy())


def depth_for_camera(
    ref: str,
    views: dict[str, StereoView],
    sources: Sequence[str],
    config: PlaneSweepConfig | None = None,
    z_range: tuple[float, float] | None = None,
    workers: int = 1,
) -> tuple[CameraDepth, list[PairDepth]]:
    """Sweep ``ref`` against every camera of ``sources`` and combine the pair depths.

    ``workers > 1`` runs that many pairs at once in threads, each with one torch thread (on small
    CPUs this beats torch's intra-op parallelism on these tensor sizes); torch's thread count is
    restored afterwards. Not reentrant: do not call it from several threads at once with ``workers > 1``.
    """
    config = config or PlaneSweepConfig()
    t0 = time.perf_counter()
    prepared = {n: prepare_image(views[n].image, views[n].mask, config) for n in (ref, *sources)}
    t_prepare = time.perf_counter() - t0
    rv = views[ref]

    def one(src: str) -> PairDepth:
        sv = views[src]
        return sweep_pair(
            prepared[ref], prepared[src], rv.camera, sv.camera, None, None, config, z_range, names=(ref, src)
        )

    pairs = [pair for _, pair in map_in_threads(one, list(sources), workers, in_order=True)]
    t0 = time.perf_counter()
    combined = combine_pair_depths(pairs, config, camera=ref)
    combined.timings = {"prepare": t_prepare, "combine": time.perf_counter() - t0}
    return combined, pairs
