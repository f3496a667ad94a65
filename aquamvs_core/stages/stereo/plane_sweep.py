"""Refractive plane-sweep stereo of one (reference, source) camera pair.

**Hypotheses.** Every pixel of the reference (undistorted) image has a fixed refracted ray
``o + s d`` (:meth:`~aquamvs_core.camera.refraction.RefractiveCamera.cast_ray`). Hypothesis ``k`` is the
horizontal world plane ``Z = z_k`` (``z_k`` uniform in ``[z_min, z_max]``), i.e. the per-pixel ray
depth ``s_k(u, v) = (z_k − water_z) / d_z(u, v)``. Why planes of constant world Z:

* they are parallel to the water surface and to the nominal bed, so for a bed that is roughly
  horizontal the correlation windows of the two views see nearly the same patch (fronto-parallel
  to the *bed*, which the refracted rays are not);
* uniform steps in world Z are uniform steps in ray depth for every pixel (``ds = dz / d_z``), so
  the same hypothesis count resolves every pixel alike;
* under refraction no homography maps one view of a plane to another, so "plane-induced
  homographies" are not an option anyway: the warp is computed exactly on a lattice and
  interpolated (:mod:`aquamvs_core.stages.stereo.plane_warp`).

**Pipeline** (:func:`sweep_pair`):

1. images → grey in [0, 1], Gaussian prefilter (normalized by the validity mask; it reduces the
   aliasing noise of the sub-pixel matching), NaN where invalid; a pyramid by ``2^L`` block
   averaging (:class:`PreparedImage`, cached per view);
2. the warp field (exact projections on a lattice,
   :func:`~aquamvs_core.stages.stereo.plane_warp.build_warp_field`) over
   ``[z_min − range_margin, z_max + range_margin]``;
3. **sweep** at pyramid level ``coarse_level`` over all ``num_depths`` planes, in batches of
   ``hypothesis_batch`` planes: windowed NCC (:mod:`aquamvs_core.stages.stereo.ncc`); only the running best
   score, its plane, the scores of its two neighbouring planes and the per-bin maxima (for the second
   peak) are kept. Winner-take-all, then a parabola through the best plane and its neighbours gives
   the sub-plane depth;
4. **refinement** (``refine_schedule``: a list of ``(level, step_px)``): the depth map is upsampled
   to ``level`` when needed (world Z, bilinear, after filling small holes) and searched again at
   ``2 refine_radius + 1`` offsets ``j δ`` around it, ``δ = step_px / |∂w/∂z|`` (the world-Z step
   that moves the source sample by ``step_px`` pixels at this pixel). Offset ``j`` is the *surface*
   ``z(u, v) + j δ(u, v)``, so the windows follow the current depth estimate (slanted and curved
   beds included) instead of a fronto-parallel plane; a parabola through the best offset and its
   neighbours gives the new depth. A best offset at the band edge only moves the estimate and marks
   it unconverged; the next iteration re-centres on it. The surface is the previous depth
   box-filtered over ``surface_smoothing`` pixels (NaN-aware): without it each iteration would add
   its pixel-level noise to the last one's (measured: repeating iterations made the error grow),
   with it they converge;
5. validity: a finite depth whose last iteration converged (best offset strictly inside the band),
   with NCC ``>= min_ncc``, world Z within ``range_margin / 2`` of ``[z_min, z_max]``, a valid
   reference pixel and confidence ``>= min_confidence`` (confidence: see :class:`PairDepth`).

**Memory.** Hypotheses are evaluated in tiles of at most ``tile_elements`` samples (a slice of
``hypothesis_batch`` planes, or of the ``2 refine_radius + 1`` offsets, times a band of rows plus
the window halo); a tile needs about ``4 bytes × 12 × tile_elements`` (13 MB at the default
262 144; at 1600×1200 about 5 % faster than 65 536, whose smaller tiles pay more per-call overhead).
Everything else is a set of per-level (H_l, W_l) maps: the warp coefficients
(``2 (warp_degree + 1)`` maps, briefly twice while they are built), the refinement's Taylor maps and
their padded copies (~20), the reference window statistics (7), the running best / neighbours /
second-peak bins of the sweep (``nbins ≤ num_depths`` at the coarse level; bins are about
``peak_exclusion_px`` wide, a handful for a sparse range) and work maps. Peak ≈ 100 full-resolution
float32 maps, ``≈ 400 × H × W`` bytes: measured 140 MB at 640×480 and 740 MB at 1600×1200 above
the process baseline (balanced preset). No (D, H, W) volume is ever stored; ``tile_elements`` and
``hypothesis_batch`` do not change the result (tested).

All computation runs under ``torch.no_grad()`` on ``config.device`` in ``config.dtype`` (float32 by
default; the warp fit is float64).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from dataclasses import dataclass, field

import torch

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.camera.sampling import ArrayLike, pixel_grid
from aquamvs_core.runtime import SingleFlight
from aquamvs_core.stages.depth_map import fallback_z_range
from aquamvs_core.stages.stereo.config import PlaneSweepConfig
from aquamvs_core.stages.stereo.plane_warp import build_warp_field
from aquamvs_core.stages.stereo.pyramid import PreparedImage, as_prepared, make_level
from aquamvs_core.stages.stereo.refine import fill_nan, refine_surface, upsample
from aquamvs_core.stages.stereo.sweep import plane_count, sweep_planes


@dataclass
class PairDepth:
    """Depth of the reference camera of one pair, on its undistorted full-resolution pixel grid.

    Attributes:
        ref, src: camera names (may be empty).
        depth: (H, W) ray depth, metres (:mod:`aquamvs_core.stages.depth_map` convention); NaN where invalid.
        confidence: (H, W) in [0, 1]; 0 where ``depth`` is NaN. The product of an NCC term
            ``(ncc − min_ncc) / (1 − min_ncc)`` and a distinctiveness term
            ``min(1, margin / margin_scale)`` (``margin``: best sweep NCC minus the best NCC at least
            ``peak_exclusion_px`` away).
        ncc: (H, W) final NCC at the depth (NaN where none could be computed).
        world_z: (H, W) world Z of the depth, metres; NaN where invalid.
        px_per_mm: (H, W) how far (full-resolution source pixels) the source sample moves per mm of
            world Z at this depth: the pair's depth resolution (its precision scales with it).
        timings: seconds per stage.
        warp_fit_residual_px: largest residual of the warp polynomial at its fit nodes, pixels.
        planes: planes of the full-range sweep (:func:`~aquamvs_core.stages.stereo.sweep.plane_count`).
    """

    ref: str
    src: str
    depth: torch.Tensor
    confidence: torch.Tensor
    ncc: torch.Tensor
    world_z: torch.Tensor
    px_per_mm: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)
    warp_fit_residual_px: float = 0.0
    planes: int = 0

    @property
    def valid(self) -> torch.Tensor:
        return torch.isfinite(self.depth)


def resolve_z_range(
    config: PlaneSweepConfig, water_z: float, z_range: tuple[float, float] | None = None
) -> tuple[float, float]:
    """World-Z range of the sweep: ``z_range`` if given (e.g. from sparse points), else the config's
    ``z_min``/``z_max``, else ``water_z + fallback_depth_below_water``. Must lie below the water."""
    if z_range is not None:
        lo, hi = float(z_range[0]), float(z_range[1])
    elif config.z_min is not None and config.z_max is not None:
        lo, hi = config.z_min, config.z_max
    else:
        lo, hi = fallback_z_range(water_z, config.fallback_depth_below_water)
    if not water_z < lo < hi:
        raise ValueError(f"invalid depth range [{lo}, {hi}] for water at Z={water_z}")
    return lo, hi


_DZ_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_DZ_LOCK = threading.Lock()
_DZ_CASTING = SingleFlight()


def _ray_dz(
    cam: RefractiveCamera, w: int, h: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``d_z`` (H, W) of the refracted rays of every pixel and their validity (cached per camera)."""
    key = (w, h, str(device), dtype)
    with _DZ_CASTING.hold((id(cam), key)):  # pairs of one camera in threads: one cast
        with _DZ_LOCK:
            hit = _DZ_CACHE.get(cam, {}).get(key)
        if hit is None:
            _, directions, ok = cam.cast_ray(pixel_grid(w, h, device, dtype))
            hit = (directions[..., 2].contiguous(), ok)
            with _DZ_LOCK:
                _DZ_CACHE.setdefault(cam, {})[key] = hit
    return hit


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


def _to_full(
    level: int,
    z: torch.Tensor,
    ncc: torch.Tensor,
    converged: torch.Tensor,
    px_per_m: torch.Tensor,
    full: tuple[int, int],
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A level's (z, ncc, converged, px_per_m) on the full-resolution grid."""
    if level == 0:
        return z, ncc, converged, px_per_m
    return (
        upsample(z, level, 0, full),
        upsample(ncc, level, 0, full),
        upsample(converged.to(dtype), level, 0, full) > 0.999,
        upsample(px_per_m, level, 0, full),
    )


@torch.no_grad()
def sweep_pair(
    ref_img: ArrayLike | PreparedImage,
    src_img: ArrayLike | PreparedImage,
    ref_cam: RefractiveCamera,
    src_cam: RefractiveCamera,
    ref_mask: ArrayLike | None = None,
    src_mask: ArrayLike | None = None,
    config: PlaneSweepConfig | None = None,
    z_range: tuple[float, float] | None = None,
    names: tuple[str, str] = ("", ""),
) -> PairDepth:
    """Depth of ``ref_cam``'s view from the pair (ref, src) by refractive plane sweep.

    Args:
        ref_img, src_img: *undistorted* images, (H, W, 3) / (H, W) uint8 or float in [0, 1]
            (numpy or torch; they may differ in size), or :class:`PreparedImage` (then the mask
            arguments are ignored): prepare a view used in several pairs once.
        ref_cam, src_cam: refractive cameras of the undistorted images (``image_size`` set).
        ref_mask, src_mask: (H, W) bool validity of the undistorted images
            (:attr:`~aquamvs_core.camera.undistortion.UndistortionMap.valid`); None: all valid.
        config: parameters (default :class:`PlaneSweepConfig`).
        z_range: world-Z range to sweep (overrides the config; see :func:`resolve_z_range`).
        names: (ref, src) camera names stored in the result.

    Returns:
        :class:`PairDepth` on the reference's full-resolution undistorted pixel grid.
    """
    config = config or PlaneSweepConfig()
    timings: dict[str, float] = {}
    t_start = t0 = time.perf_counter()
    if ref_cam.image_size is None:
        raise ValueError("ref_cam needs image_size")
    z_lo, z_hi = resolve_z_range(config, ref_cam.water_z, z_range)
    ref_p = as_prepared(ref_img, ref_mask, config)
    src_p = as_prepared(src_img, src_mask, config)
    h, w = ref_p.grey.shape
    if (w, h) != tuple(ref_cam.image_size):
        raise ValueError(f"reference image {w}x{h} does not match ref_cam.image_size {ref_cam.image_size}")
    timings["prepare"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    field_ = build_warp_field(
        ref_cam,
        src_cam,
        z_lo - config.range_margin,
        z_hi + config.range_margin,
        stride=config.warp_stride,
        degree=config.warp_degree,
        device=config.device,
    )
    levels = {config.coarse_level} | {lvl for lvl, _ in config.refine_schedule}
    lvs = {lvl: make_level(lvl, ref_p, src_p, field_, config) for lvl in sorted(levels)}
    timings["warp"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    dtype, device = config.torch_dtype, torch.device(config.device)
    n_planes = plane_count(lvs[config.coarse_level], z_lo, z_hi, config)
    z_planes = torch.linspace(z_lo, z_hi, n_planes, dtype=torch.float64, device=device)
    sw = sweep_planes(lvs[config.coarse_level], field_, z_planes, config)
    timings["sweep"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    z, ncc, margin = sw.z, sw.ncc, sw.margin
    converged = torch.isfinite(z)
    px_per_m = torch.zeros_like(z)
    level = config.coarse_level
    full = (w, h)
    coarser: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    schedule = config.refine_schedule
    for i, (lvl, step) in enumerate(schedule):
        if lvl != level:
            # Pixels next to the area the sweep could evaluate (its windows reach further at coarse
            # levels) get the depth and margin of their neighbours, to be searched at finer levels.
            fill = config.window // 2 + 2
            z = upsample(fill_nan(z, fill), level, lvl, full)
            margin = upsample(fill_nan(margin.clamp(max=10.0), fill), level, lvl, full)
            level = lvl
        res = refine_surface(lvs[lvl], field_, z, step, config)
        z, ncc, converged, px_per_m = res.z, res.ncc, res.converged, res.px_per_m * 2.0**lvl
        if config.multiscale_fallback and i + 1 < len(schedule) and schedule[i + 1][0] != lvl:
            coarser.append((lvl, z, ncc, converged, px_per_m))
    if level != 0:
        z, ncc, converged, px_per_m = _to_full(level, z, ncc, converged, px_per_m, full, dtype)
        margin = upsample(margin.clamp(max=10.0), level, 0, full)
    # Multi-scale fallback: where the finest level's correlation fails (weak texture: a textureless
    # or low-NCC window), keep the depth of the finest coarser level that matched (its windows
    # cover 2^L times more of the bed, and its pixels average 4^L times more samples).
    for lvl, zc, nc, cc, pc in reversed(coarser):
        zc, nc, cc, pc = _to_full(lvl, zc, nc, cc, pc, full, dtype)
        good = torch.isfinite(z) & converged & (ncc >= config.min_ncc)
        take = ~good & torch.isfinite(zc) & cc & (nc >= config.min_ncc)
        z, ncc = torch.where(take, zc, z), torch.where(take, nc, ncc)
        converged, px_per_m = converged | take, torch.where(take, pc, px_per_m)
    timings["refine"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ncc_term = ((ncc - config.min_ncc) / (1.0 - config.min_ncc)).clamp(0.0, 1.0)
    distinct = (margin / config.margin_scale).clamp(0.0, 1.0)
    conf = torch.nan_to_num(ncc_term * distinct, nan=0.0)
    tol = 0.5 * config.range_margin
    valid = (
        torch.isfinite(z)
        & converged
        & (ncc >= config.min_ncc)
        & (z >= z_lo - tol)
        & (z <= z_hi + tol)
        & torch.isfinite(ref_p.grey)
        & (conf >= config.min_confidence)
    )
    d_z, ray_ok = _ray_dz(ref_cam, w, h, device, dtype)
    depth = (z - ref_cam.water_z) / d_z
    valid = valid & ray_ok
    nan = torch.full_like(z, math.nan)
    timings["finish"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    return PairDepth(
        ref=names[0],
        src=names[1],
        depth=torch.where(valid, depth, nan),
        confidence=torch.where(valid, conf, torch.zeros_like(conf)),
        ncc=ncc,
        world_z=torch.where(valid, z, nan),
        px_per_mm=px_per_m * 1e-3,
        timings=timings,
        warp_fit_residual_px=field_.fit_residual_px,
        planes=n_planes,
    )
