"""Surface-following refinement: a local search of a few offsets around the current depth surface
at one pyramid level, with the hole filling, smoothing and resampling between levels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aquamvs_core.stages.stereo.config import PlaneSweepConfig
from aquamvs_core.stages.stereo.ncc import window_sum
from aquamvs_core.stages.stereo.plane_warp import OUTSIDE, WarpField
from aquamvs_core.stages.stereo.pyramid import PyramidLevel, level_ncc
from aquamvs_core.stages.stereo.sweep import gather_planes, parabola_peak


def fill_nan(z: torch.Tensor, iterations: int) -> torch.Tensor:
    """Fill non-finite pixels of an (H, W) map next to finite ones with the mean of their finite 3×3
    neighbours, ``iterations`` times (grows the finite region by one pixel per iteration): each
    iteration is ``where(finite, z, smooth_surface(z, 3))``.

    Only the front of the finite region changes, so each iteration is computed there alone (the
    pixels without a finite value and with a finite neighbour), with the window sums of
    :func:`smooth_surface` taken in the same order: the same values, bit for bit, at about a quarter
    of the cost of whole-map iterations on the rig's level-1 maps
    (``benchmarks/results/parts_rig1600_9d0ebca_cpu.md``)."""
    finite = torch.isfinite(z)
    if iterations <= 0 or bool(finite.all()) or not bool(finite.any()):
        return z
    h, w = z.shape
    wp = w + 2
    # A padded working copy: the NaN border is missing, as smooth_surface's zero padding; the first
    # iteration turns every non-finite pixel it cannot fill (an infinity too) into NaN.
    zp = F.pad(torch.where(finite, z, math.nan), (1, 1, 1, 1), value=math.nan)
    flat = zp.view(-1)
    near = window_sum(F.pad(finite.to(z.dtype), (1, 1, 1, 1)), 3) > 0
    rows, cols = torch.nonzero(near & ~finite, as_tuple=True)
    front = (rows + 1) * wp + cols + 1  # padded flat indices
    offsets = torch.tensor(
        [dr * wp + dc for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc], device=z.device
    )
    for _ in range(iterations):
        if front.numel() == 0:
            break
        sums, counts = [], []
        for dc in (-1, 0, 1):  # window_sum's order: down the rows, then along them
            taps = [flat.index_select(0, front + dr * wp + dc) for dr in (-1, 0, 1)]
            ok = [torch.isfinite(t) for t in taps]
            v = [torch.where(o, t, torch.zeros_like(t)) for o, t in zip(ok, taps, strict=True)]
            f = [o.to(z.dtype) for o in ok]
            sums.append(v[0] + (v[1] + v[2]))
            counts.append(f[0] + (f[1] + f[2]))
        total = sums[0] + (sums[1] + sums[2])
        count = counts[0] + (counts[1] + counts[2])
        filled = count > 0
        flat[front] = torch.where(filled, total / count.clamp_min(1.0), torch.full_like(total, math.nan))
        # The next front: the still missing neighbours of the pixels just filled.
        grown = front[filled]
        if grown.numel() == 0:
            break
        nxt = torch.unique((grown.unsqueeze(1) + offsets).reshape(-1))
        r, c = nxt // wp, nxt % wp
        inside = (r >= 1) & (r <= h) & (c >= 1) & (c <= w)
        nxt = nxt[inside]
        front = nxt[~torch.isfinite(flat.index_select(0, nxt))]
    return zp[1:-1, 1:-1].contiguous()


def smooth_surface(z: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of the finite values of ``z`` (H, W) over ``size × size`` windows (NaN where none; the
    window is clipped at the image border). ``size <= 1``: ``z`` unchanged."""
    if size <= 1:
        return z
    r = size // 2
    finite = torch.isfinite(z)
    stack = torch.stack([torch.where(finite, z, torch.zeros_like(z)), finite.to(z.dtype)])
    sums = window_sum(F.pad(stack, (r, r, r, r)), size)
    return torch.where(sums[1] > 0, sums[0] / sums[1].clamp_min(1.0), torch.full_like(z, math.nan))


def upsample(x: torch.Tensor, from_level: int, to_level: int, full_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of an (H_a, W_a) level-``from_level`` map onto level ``to_level``'s pixel
    centres (border values extend outwards; NaN spreads to the samples that touch it)."""
    if from_level == to_level:
        return x
    w_full, h_full = full_size
    f_to, f_from = 2**to_level, 2**from_level
    h_b, w_b = h_full // f_to, w_full // f_to
    h_a, w_a = x.shape
    dev, dt = x.device, x.dtype
    u = ((torch.arange(w_b, device=dev, dtype=dt) + 0.5) * f_to / f_from) * 2 / w_a - 1
    v = ((torch.arange(h_b, device=dev, dtype=dt) + 0.5) * f_to / f_from) * 2 / h_a - 1
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    grid = torch.stack([uu, vv], dim=-1)[None]
    out = F.grid_sample(x[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, 0]


@dataclass
class RefineResult:
    z: torch.Tensor  # (H, W) new world Z (NaN where nothing could be evaluated)
    ncc: torch.Tensor  # (H, W) peak NCC (NaN: none)
    converged: torch.Tensor  # (H, W) bool: best offset strictly inside the band
    px_per_m: torch.Tensor  # (H, W) source pixels (of this level) per metre of world Z at the input z


def refine_surface(
    lv: PyramidLevel, field_: WarpField, z: torch.Tensor, step_px: float, config: PlaneSweepConfig
) -> RefineResult:
    """One local search around the surface ``z`` (H_l, W_l) (see the module docstring, step 4)."""
    rad = config.refine_radius
    # The surface of the offsets: the depth, box-smoothed (NaN-aware; this also fills pixels next to
    # depths, so that a pixel without a result does not spoil its neighbours' windows).
    z = smooth_surface(z, max(config.surface_smoothing, config.window))
    seeded = torch.isfinite(z)
    zs = torch.where(seeded, z, torch.full_like(z, 0.5 * (field_.z_lo + field_.z_hi)))
    # Source position of the offset j δ: second-order Taylor expansion in j of the (polynomial) warp
    # around z; over a band of a few pixels its error is far below 1e-3 px.
    w0, d1, d2 = lv.warp.taylor(zs, order=2)
    sens = lv.warp.speed(d1)
    span = field_.z_hi - field_.z_lo
    delta = torch.where(sens > 0, step_px / sens.clamp_min(1e-12), torch.full_like(sens, span))
    delta = delta.clamp(max=span / (2 * rad))
    dd = delta.unsqueeze(-1)
    bw = config.window // 2
    h, w = z.shape
    # The Taylor terms on the reference grid padded by the window radius (border: OUTSIDE, 0, 0),
    # each written once into its padded map.
    padded = (h + 2 * bw, w + 2 * bw, 2)
    inner = (slice(bw, bw + h), slice(bw, bw + w))
    pad_w0 = torch.full(padded, OUTSIDE, dtype=z.dtype, device=z.device)
    torch.where(seeded.unsqueeze(-1), w0, w0.new_tensor(OUTSIDE), out=pad_w0[inner])
    pad_lin = torch.zeros(padded, dtype=z.dtype, device=z.device)
    torch.mul(d1, dd, out=pad_lin[inner])
    pad_quad = torch.zeros(padded, dtype=z.dtype, device=z.device)
    torch.mul(d2, 0.5 * dd * dd, out=pad_quad[inner])
    j = torch.arange(-rad, rad + 1, device=z.device, dtype=z.dtype).view(-1, 1, 1, 1)

    def grid_fn(sl: slice, rows: slice) -> torch.Tensor:
        js = j[sl]
        return torch.addcmul(torch.addcmul(pad_w0[rows], js, pad_lin[rows]), js * js, pad_quad[rows])

    mode = config.interpolation if lv.level <= config.interpolation_max_level else "bilinear"
    c = level_ncc(lv, grid_fn, 2 * rad + 1, config, config.min_valid_fraction, mode)  # (2R+1, H, W)
    cf = torch.nan_to_num(c, nan=-math.inf)
    bmax, barg = cf.max(dim=0)
    found = torch.isfinite(bmax)
    lft = torch.where(barg == 0, torch.full_like(bmax, math.nan), gather_planes(c, barg - 1))
    rgt = torch.where(barg == 2 * rad, torch.full_like(bmax, math.nan), gather_planes(c, barg + 1))
    off, peak = parabola_peak(lft, bmax, rgt)
    converged = found & (barg > 0) & (barg < 2 * rad)
    shift = (barg - rad).to(z.dtype) + torch.where(converged, off, torch.zeros_like(off))
    z_new = torch.where(found, zs + shift * delta, torch.full_like(z, math.nan))
    ncc = torch.where(found, peak, torch.full_like(peak, math.nan))
    return RefineResult(z=z_new, ncc=ncc, converged=converged, px_per_m=sens)
