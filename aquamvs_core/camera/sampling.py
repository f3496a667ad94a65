"""Pixel sampling: the pixel grid, sampling of (H, W, C) maps at sub-pixel positions, and image
tensors. Pixels are ``(u, v)`` = (column, row) with integer values at pixel centres (see
:mod:`aquamvs_core.camera.calibration`)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

__all__ = [
    "ArrayLike",
    "SampleMode",
    "image_tensor",
    "pixel_grid",
    "sample_flat_bilinear",
    "sample_map",
]

#: Arrays accepted by the camera and stage functions: numpy arrays or torch tensors.
ArrayLike = np.ndarray | torch.Tensor
SampleMode = Literal["bilinear", "nearest"]


def pixel_grid(
    width: int, height: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(H, W, 2) pixel centres (u, v) of a ``width`` × ``height`` image."""
    u = torch.arange(width, device=device, dtype=dtype)
    v = torch.arange(height, device=device, dtype=dtype)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], dim=-1)


def _taps(
    flat: torch.Tensor, h: int, w: int, uv: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four bilinear neighbours of finite pixels ``uv`` (N, 2) in a flattened (H·W, C) map.

    Returns the tap values (4, N, C) in ``uv``'s dtype (order 00, 10, 01, 11: x first), whether each
    tap is inside the map (4, N), the fractional offsets ``fx``, ``fy`` (N, 1) and the index (N,)
    of the tap that is the nearest pixel (``torch.round``, which is always one of the four)."""
    u, v = uv[:, 0], uv[:, 1]
    # Clamp far-away pixels before the integer conversion (they stay outside).
    x0, y0 = torch.floor(u).clamp(-2, w + 1), torch.floor(v).clamp(-2, h + 1)
    fx, fy = (u - x0).unsqueeze(1), (v - y0).unsqueeze(1)
    xi, yi = x0.long(), y0.long()
    in_x0, in_x1 = (xi >= 0) & (xi <= w - 1), (xi >= -1) & (xi <= w - 2)
    in_y0, in_y1 = (yi >= 0) & (yi <= h - 1), (yi >= -1) & (yi <= h - 2)
    cx0, cx1 = xi.clamp(0, w - 1), (xi + 1).clamp(0, w - 1)
    row0, row1 = yi.clamp(0, h - 1) * w, (yi + 1).clamp(0, h - 1) * w
    idx = torch.cat([row0 + cx0, row0 + cx1, row1 + cx0, row1 + cx1])
    vals = flat.index_select(0, idx).to(uv.dtype).view(4, -1, flat.shape[1])
    inside = torch.stack([in_x0 & in_y0, in_x1 & in_y0, in_x0 & in_y1, in_x1 & in_y1])
    nearest = (torch.round(u) > x0).long() + 2 * (torch.round(v) > y0).long()
    return vals, inside, fx, fy, nearest


def _pick(taps: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """``taps[which[i], i]`` for taps (4, N, ...) and which (N,)."""
    return taps.gather(0, which.view(1, -1, *([1] * (taps.ndim - 2))).expand(1, *taps.shape[1:]))[0]


def _bilinear(vals: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    v00, v10, v01, v11 = vals
    return (v00 * (1 - fx) + v10 * fx) * (1 - fy) + (v01 * (1 - fx) + v11 * fx) * fy


def sample_map(
    values: torch.Tensor,
    uv: torch.Tensor,
    mode: SampleMode = "bilinear",
    max_twist: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a (H, W, C) map at pixels ``uv`` (N, 2) in (u, v) order (integers at pixel centres).

    A map pixel is *valid* when its channel 0 is finite (e.g. a depth). ``"bilinear"`` interpolates
    where all four neighbours are inside the map and valid, and otherwise falls back to the nearest
    pixel; ``"nearest"`` takes the nearest pixel only.

    ``max_twist`` (scalar or (N,)) also makes bilinear fall back to the nearest pixel where the four
    neighbours of channel 0 are not close to a plane: ``|v00 - v10 - v01 + v11| > max_twist`` (the
    twist is second order on a smooth surface, but a wrong neighbour or a depth edge shows in it in
    full), so that one bad depth is not blended into its neighbours' interpolated values.

    Returns:
        samples: (N, C) in ``uv``'s dtype; NaN where not valid.
        valid: (N,) bool.
    """
    h, w, c = values.shape
    flat = values.reshape(-1, c)
    finite_uv = torch.isfinite(uv).all(dim=-1)
    uv = torch.where(finite_uv.unsqueeze(-1), uv, torch.full_like(uv, -10.0))
    if mode == "nearest":
        u, v = torch.round(uv[:, 0]), torch.round(uv[:, 1])
        inside = finite_uv & (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
        idx = v.clamp(0, h - 1).long() * w + u.clamp(0, w - 1).long()
        out = flat.index_select(0, idx).to(uv.dtype)
        ok = inside & torch.isfinite(out[:, 0])
    else:
        out, ok, _ = sample_flat_bilinear(flat, h, w, uv, max_twist)
    return torch.where(ok.unsqueeze(1), out, torch.full_like(out, math.nan)), ok


def sample_flat_bilinear(
    flat: torch.Tensor,
    h: int,
    w: int,
    uv: torch.Tensor,
    max_twist: float | torch.Tensor | None,
    plain: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Bilinear sampling of :func:`sample_map` (without the final NaN fill) on a flattened map.

    Channels from ``plain`` on (if given) are read with plain bilinear interpolation wherever the four
    neighbours are inside the map (the validity of channel 0 and the twist do not apply to them),
    else at the nearest pixel, as :func:`sample_map` would read them from a separate map whose
    channel 0 is always finite; their validity is returned third (None without ``plain``). One
    gather serves both."""
    vals, inside, fx, fy, nearest = _taps(flat, h, w, uv)
    valid = inside & torch.isfinite(vals[..., 0])
    near = _pick(vals, nearest)
    near_ok = _pick(valid, nearest)
    all_ok = valid.all(dim=0)
    if max_twist is not None:
        twist = (vals[0, :, 0] - vals[1, :, 0] - vals[2, :, 0] + vals[3, :, 0]).abs()
        all_ok = all_ok & (twist <= max_twist)
    bil = _bilinear(vals, fx, fy)
    out = torch.where(all_ok.unsqueeze(1), bil, near)
    plain_ok = None
    if plain is not None:
        all_in = inside.all(dim=0)
        out[:, plain:] = torch.where(all_in.unsqueeze(1), bil[:, plain:], near[:, plain:])
        plain_ok = all_in | _pick(inside, nearest)
    return out, all_ok | near_ok, plain_ok


def image_tensor(image: np.ndarray, size: tuple[int, int], what: str) -> torch.Tensor:
    """(H, W, 3) float32 tensor of an (H, W, 3) uint8 RGB image, checked against ``size`` = (H, W)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{what}: expected an (H, W, 3) uint8 RGB image, got {arr.shape} {arr.dtype}")
    if arr.shape[:2] != size:
        raise ValueError(f"{what}: image is {arr.shape[:2]} (H, W) but its depth map is {size}")
    return torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float32)
