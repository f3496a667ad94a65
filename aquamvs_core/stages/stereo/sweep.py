"""The full-range sweep at the coarse pyramid level: winner-take-all over every plane in batches,
a parabola through the best plane and its neighbours, and the second-peak margin (distinctiveness)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aquamvs_core.stages.stereo.config import PlaneSweepConfig
from aquamvs_core.stages.stereo.plane_warp import WarpField
from aquamvs_core.stages.stereo.pyramid import PyramidLevel, level_ncc


def parabola_peak(
    left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertex of the parabola through ``(-1, left), (0, centre), (1, right)`` (same shapes).

    Returns the offset in [-0.5, 0.5] (0 where a neighbour is missing/NaN or the samples are not
    concave) and the interpolated peak value.
    """
    denom = left - 2 * centre + right
    ok = torch.isfinite(left) & torch.isfinite(right) & (denom < 0)
    off = torch.where(ok, 0.5 * (left - right) / torch.where(ok, denom, -torch.ones_like(denom)), 0.0)
    off = off.clamp(-0.5, 0.5)
    peak = torch.where(ok, centre - 0.25 * (left - right) * off, centre)
    return off, peak


def gather_planes(volume: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``volume[index[h, w], h, w]`` for (B, H, W) and (H, W) long ``index`` (clamped to [0, B-1])."""
    return torch.gather(volume, 0, index.clamp(0, volume.shape[0] - 1).unsqueeze(0))[0]


# ---------------------------------------------------------------------------------------------
# Sweep
# ---------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    z: torch.Tensor  # (H_l, W_l) world Z, NaN where no hypothesis was valid
    ncc: torch.Tensor  # (H_l, W_l) peak NCC
    margin: torch.Tensor  # (H_l, W_l) best − second-best distinct peak (inf: none; NaN: no best)


def plane_count(lv: PyramidLevel, z_lo: float, z_hi: float, config: PlaneSweepConfig) -> int:
    """Planes of the full-range sweep over world Z ``[z_lo, z_hi]`` at level ``lv``.

    ``config.num_depths``, or fewer when that many planes would lie closer together than
    ``config.plane_step_px``: the source sample of the pair's most sensitive pixel (largest
    ``|dw/dz|`` at the range's ends and middle) travels ``T`` level pixels over the range, and
    ``ceil(T / plane_step_px) + 1`` planes step it by at most ``plane_step_px`` (never fewer than
    ``config.min_depths``). A range from sparse points is often a few level pixels deep: 128 planes
    would then be ~0.02 px apart, far finer than the refinement that follows can use.
    """
    if config.plane_step_px is None:
        return config.num_depths
    h, w = lv.ref.x.shape
    device, dtype = lv.ref.x.device, lv.ref.x.dtype
    travel = 0.0
    for z in (z_lo, 0.5 * (z_lo + z_hi), z_hi):
        sens = lv.warp.sensitivity(torch.full((h, w), z, dtype=dtype, device=device))
        finite = sens[torch.isfinite(sens)]
        if finite.numel():
            travel = max(travel, float(finite.max()) * (z_hi - z_lo))
    if travel == 0.0:  # no pixel of the reference reaches the source: nothing to save
        return config.num_depths
    needed = math.ceil(travel / config.plane_step_px) + 1
    return int(min(config.num_depths, max(config.min_depths, needed)))


def sweep_planes(
    lv: PyramidLevel, field_: WarpField, z_planes: torch.Tensor, config: PlaneSweepConfig
) -> SweepResult:
    """Winner-take-all over all planes in batches, then the parabola (see the module docstring)."""
    h, w = lv.ref.x.shape
    device, dtype = lv.ref.x.device, lv.ref.x.dtype
    d = z_planes.numel()
    t_planes = field_.t_of_z(z_planes.double()).to(dtype)
    dz = float(z_planes[1] - z_planes[0])
    # Bins for the second peak: about peak_exclusion_px wide (median sensitivity of this level).
    z_mid = torch.full((h, w), float(z_planes[d // 2]), dtype=dtype, device=device)
    sens = lv.warp.sensitivity(z_mid)
    sens_med = float(sens[torch.isfinite(sens)].median()) if bool(torch.isfinite(sens).any()) else 1.0
    group = max(1, math.ceil(config.peak_exclusion_px / max(sens_med * dz, 1e-12)))
    n_bins = math.ceil(d / group)

    neg_inf = torch.tensor(-math.inf, dtype=dtype, device=device)
    best = torch.full((h, w), -math.inf, dtype=dtype, device=device)
    idx = torch.zeros((h, w), dtype=torch.long, device=device)
    left = torch.full((h, w), math.nan, dtype=dtype, device=device)
    right = torch.full((h, w), math.nan, dtype=dtype, device=device)
    bins = torch.full((n_bins, h, w), -math.inf, dtype=dtype, device=device)
    prev: torch.Tensor | None = None
    for k0 in range(0, d, config.hypothesis_batch):
        k1 = min(d, k0 + config.hypothesis_batch)
        tb = t_planes[k0:k1]
        c = level_ncc(
            lv,
            lambda sl, rows, tb=tb: lv.warp.planes(tb[sl], rows),
            k1 - k0,
            config,
            config.sweep_min_valid_fraction,
            "bilinear",
        )  # (b, H, W)
        b = k1 - k0
        if prev is not None:  # the right neighbour of a best found at the end of the previous batch
            right = torch.where(idx == k0 - 1, c[0], right)
        cf = torch.where(torch.isnan(c), neg_inf, c)
        bmax, barg = cf.max(dim=0)
        upd = bmax > best
        lft = gather_planes(c, barg - 1)
        if prev is not None:
            lft = torch.where(barg == 0, prev, lft)
        else:
            lft = torch.where(barg == 0, torch.full_like(lft, math.nan), lft)
        rgt = torch.where(barg == b - 1, torch.full_like(lft, math.nan), gather_planes(c, barg + 1))
        best = torch.where(upd, bmax, best)
        idx = torch.where(upd, barg + k0, idx)
        left = torch.where(upd, lft, left)
        right = torch.where(upd, rgt, right)
        for bi in range(k0 // group, (k1 - 1) // group + 1):
            a, e = max(k0, bi * group) - k0, min(k1, (bi + 1) * group) - k0
            bins[bi] = torch.maximum(bins[bi], cf[a:e].amax(dim=0))
        prev = c[-1]

    off, peak = parabola_peak(left, best, right)
    found = torch.isfinite(best)
    z = z_planes.to(dtype)[idx] + off * dz
    z = torch.where(found, z, torch.full_like(z, math.nan))
    bin_of_best = idx // group
    far = (torch.arange(n_bins, device=device).view(-1, 1, 1) - bin_of_best.unsqueeze(0)).abs() >= 2
    second = torch.where(far, bins, neg_inf).amax(dim=0)
    margin = torch.where(torch.isfinite(second), best - second, torch.full_like(best, math.inf))
    margin = torch.where(found, margin, torch.full_like(margin, math.nan))
    peak = torch.where(found, peak, torch.full_like(peak, math.nan))
    return SweepResult(z=z, ncc=peak, margin=margin)
