"""The lens as part of a camera: its model with the fold guard, and fast exact inversion on a pixel
grid. :class:`~aquamvs_core.camera.refraction.RefractiveCamera` uses a :class:`Lens` to work on the
*original* (distorted) pixel grid: rays are cast through the exact inverse of the model and world
points are projected through the forward model, never beyond the model's fold.

**Fold guard.** Beyond :func:`~aquamvs_core.camera.distortion.fold_limit` a polynomial lens model maps
far-off directions back *into* the image (e.g. a real 12-camera rig with k1 ≈ −0.5: points 49–59° off
axis land inside images whose corners are 45° off axis). :meth:`Lens.distort` reports every ideal
coordinate beyond the fold (or where the rational denominator or the Jacobian determinant is not
positive) as invalid, so a projection never "sees" such a point at a wrong pixel.

**Fast inversion** (:class:`PixelInverse`): the inverse is solved exactly (Newton to a few ulps, see
:func:`~aquamvs_core.camera.distortion.undistort_normalized`) on a coarse lattice of pixels once per
camera, interpolated bilinearly as the starting point of the same Newton iteration at any pixel,
which then converges in one or two steps instead of five to ten. The result is the exact inverse
either way; only the cost changes. The solved grid of a whole image (about 0.3 s for 1600×1200 on one
CPU core) is kept in a process-wide cache of at most :data:`GRID_CACHE_MB`, keyed by the exact
intrinsics, lens coefficients and image size, so every step of a run that rebuilds its cameras from
the same calibration reuses it.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from aquamvs_core.camera.calibration import CameraCalibration
from aquamvs_core.camera.distortion import (
    K_tensor,
    coefficient_tensor,
    distort_with,
    fold_limit,
    normalized_to_pixels,
    pinhole_parts,
    pinhole_with_jacobian,
    pixels_to_normalized,
    undistort_normalized,
    working_tensor,
)
from aquamvs_core.runtime import SingleFlight

#: Plain Newton steps from an interpolated starting point: its error, ~1e-5 of the normalized
#: coordinates, falls to the float64 floor in two quadratically convergent steps (measured on the
#: 1600×1200 rig's k1 ≈ −0.5 lenses: every pixel within 7e-16 of three steps' result, none left over).
#: Points a polish leaves unconverged go through the safeguarded solver, so the result is exact anyway.
_POLISH_STEPS = 2
#: Fewer pixels than this are inverted without the lattice of starting points.
_DIRECT_BELOW = 2048
#: Requests of this many integer pixels or more use (and the first one solves) the whole pixel grid.
_GRID_FROM = 16384
#: Pixels per band of rows when the whole grid is solved.
_GRID_BAND = 65536


@dataclass(frozen=True, eq=False)
class Lens:
    """A lens model: OpenCV radial-tangential (pinhole) or equidistant fisheye coefficients.

    Attributes:
        dist_coeffs: (4,), (5,) or (8,) float64 coefficients (see :mod:`~aquamvs_core.camera.distortion`).
        fisheye: equidistant fisheye model.
        fold: :func:`~aquamvs_core.camera.distortion.fold_limit`: the largest undistorted normalized
            radius (pinhole) or incidence angle in radians (fisheye) where the model is invertible.
    """

    dist_coeffs: np.ndarray
    fisheye: bool
    fold: float = field(init=False)

    def __post_init__(self) -> None:
        coeffs = np.asarray(self.dist_coeffs, dtype=np.float64).reshape(-1).copy()
        object.__setattr__(self, "dist_coeffs", coeffs)
        object.__setattr__(self, "fold", fold_limit(coeffs, self.fisheye))

    @classmethod
    def of(cls, camera: CameraCalibration) -> Lens:
        """The lens of a calibrated camera."""
        return cls(camera.dist_coeffs, camera.is_fisheye)

    @functools.cached_property
    def fold_ring(self) -> tuple[float, float]:
        """(smallest, largest) distorted normalized radius of the fold circle over the azimuths
        (inf, inf without a fold): a distorted point beyond the largest has no inverse within the
        fold, one inside the smallest always has one."""
        if not math.isfinite(self.fold) or (self.fisheye and self.fold >= math.pi / 2):
            return math.inf, math.inf
        radius = math.tan(self.fold) if self.fisheye else self.fold
        az = torch.linspace(0.0, 2 * math.pi, 721, dtype=torch.float64)
        ring, _ = self.distort(radius * torch.stack([torch.cos(az), torch.sin(az)], dim=-1))
        r = ring.norm(dim=-1)
        return float(r.min()), float(r.max())

    @property
    def fold_angle_deg(self) -> float:
        """Incidence angle of the fold, degrees off axis (90 when the model never folds)."""
        return math.degrees(self.fold if self.fisheye else math.atan(self.fold))

    def distort(self, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ideal normalized coords (..., 2) → distorted normalized coords (..., 2) and ``unfolded`` (...):
        False beyond the fold (see the module docstring). Computed in the working precision
        (:func:`~aquamvs_core.camera.distortion.working_tensor`), returned in ``xy``'s dtype."""
        xw = working_tensor(xy)
        k = coefficient_tensor(self.dist_coeffs, self.fisheye, xw)
        r = xw.norm(dim=-1)
        if self.fisheye:
            xy_d = distort_with(xw, k, fisheye=True)
            unfolded = torch.atan(r) < self.fold
        else:
            xy_d, jac, den = pinhole_with_jacobian(xw, k)
            det = jac[..., 0, 0] * jac[..., 1, 1] - jac[..., 0, 1] * jac[..., 1, 0]
            unfolded = (r < self.fold) & (den > 0) & (det > 0)
        unfolded = unfolded & torch.isfinite(xy_d).all(dim=-1)
        return xy_d.to(xy.dtype), unfolded

    def undistort(
        self, xy_d: torch.Tensor, initial: torch.Tensor | None = None, polish_steps: int = _POLISH_STEPS
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact inverse of :meth:`distort` (see
        :func:`~aquamvs_core.camera.distortion.undistort_normalized`); ``converged`` (...) is False
        beyond the fold.

        With ``initial`` (..., 2) close to the answer (pinhole model), ``polish_steps`` plain Newton
        steps polish it first; only the points they leave unconverged (residual above a few ulps)
        go through the safeguarded solver."""
        if initial is None or self.fisheye:
            return self._solve(xy_d, initial)
        xw = working_tensor(xy_d)
        k = coefficient_tensor(self.dist_coeffs, False, xw)
        xy = working_tensor(initial)
        start = torch.isfinite(xy).all(dim=-1)
        xy = torch.where(start.unsqueeze(-1), xy, xw)
        # Newton on the two coordinate maps separately (no (..., 2, 2) Jacobians: on a whole image
        # building them cost as much as the model).
        tx, ty = xw[..., 0], xw[..., 1]
        tol = 8 * torch.finfo(xw.dtype).eps * (1 + torch.maximum(tx.abs(), ty.abs()))
        x, y = xy[..., 0], xy[..., 1]
        for _ in range(polish_steps):
            fx, fy, a, b, d, _ = pinhole_parts(x, y, k)  # the Jacobian is symmetric: b = c
            rx, ry = fx - tx, fy - ty
            det = a * d - b * b
            det = torch.where(det.abs() > 1e-12, det, torch.ones_like(det))
            x, y = x - (d * rx - b * ry) / det, y - (a * ry - b * rx) / det
        fx, fy, a, b, d, den = pinhole_parts(x, y, k)
        ok = start & (torch.hypot(fx - tx, fy - ty) < tol) & (torch.hypot(x, y) < self.fold)
        ok = ok & (den > 0) & (a * d - b * b > 0) & torch.isfinite(x) & torch.isfinite(y)
        xy = torch.stack([x, y], dim=-1)
        rest = torch.nonzero(~ok.reshape(-1)).squeeze(1)
        if rest.numel():
            flat_xy = xy.reshape(-1, 2).clone()
            flat_ok = ok.reshape(-1).clone()
            sub, sub_ok = self._solve(xw.reshape(-1, 2)[rest], None)
            flat_xy[rest] = sub
            flat_ok[rest] = sub_ok
            xy, ok = flat_xy.reshape(xy.shape), flat_ok.reshape(ok.shape)
        return xy.to(xy_d.dtype), ok

    def _solve(self, xy_d: torch.Tensor, initial: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The safeguarded solver, skipping points beyond :attr:`fold_ring` (they have no inverse
        within the fold and would only exhaust the iteration budget)."""
        outer = self.fold_ring[1]
        if not math.isfinite(outer):
            return undistort_normalized(xy_d, self.dist_coeffs, self.fisheye, initial=initial)
        flat = xy_d.reshape(-1, 2)
        inside = flat.norm(dim=-1) <= outer * (1 + 1e-9)
        xy = flat.clone()
        ok = torch.zeros(flat.shape[0], dtype=torch.bool, device=flat.device)
        sel = torch.nonzero(inside).squeeze(1)
        if sel.numel():
            init = None if initial is None else initial.reshape(-1, 2)[sel]
            xy[sel], ok[sel] = undistort_normalized(flat[sel], self.dist_coeffs, self.fisheye, initial=init)
        return xy.reshape(xy_d.shape), ok.reshape(xy_d.shape[:-1])


#: Solved pixel grids (and the small lattices of starting points) kept for reuse across cameras
#: built from the same calibration, MB (16 bytes a pixel: 29 MB for 1600×1200; the default holds a
#: 12-camera rig of that size and then some).
GRID_CACHE_MB = 512.0

_GRID_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_GRID_LOCK = threading.Lock()
_GRID_SOLVING = SingleFlight()


def _cached_grid(key: tuple, solve) -> torch.Tensor:
    """The grid (or lattice) under ``key``, solved by ``solve()`` when missing; least recently used
    ones are dropped beyond :data:`GRID_CACHE_MB`."""
    with _GRID_SOLVING.hold(key):  # threads wanting the same grid wait for one solve
        with _GRID_LOCK:
            if key in _GRID_CACHE:
                _GRID_CACHE.move_to_end(key)
                return _GRID_CACHE[key]
        grid = solve()
        with _GRID_LOCK:
            _GRID_CACHE[key] = grid
            held = sum(g.nbytes for g in _GRID_CACHE.values())
            while len(_GRID_CACHE) > 1 and held > GRID_CACHE_MB * 2**20:
                held -= _GRID_CACHE.popitem(last=False)[1].nbytes
    return grid


def clear_grid_cache() -> None:
    """Forget every cached pixel grid (e.g. to measure a cold start)."""
    with _GRID_LOCK:
        _GRID_CACHE.clear()


class PixelInverse:
    """Pixels of the original image → ideal normalized coordinates, exactly, with a cached lattice of
    starting points (see the module docstring).

    Args:
        K: (3, 3) calibrated intrinsics of the original image.
        lens: its lens model.
        image_size: (width, height) of the original image.
        stride: lattice step, pixels.
        margin: the lattice extends this far beyond the image on every side, pixels.
    """

    def __init__(
        self, K: np.ndarray, lens: Lens, image_size: tuple[int, int], stride: int = 8, margin: int = 64
    ):
        self.K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        self.lens = lens
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.stride = int(stride)
        self.margin = int(margin)
        self._tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._grid: dict[torch.device, torch.Tensor] = {}

    def _table(self, like: torch.Tensor) -> torch.Tensor:
        """(1, 2, Nv, Nu) ideal normalized coords of the lattice nodes (NaN where there is none)."""
        key = (like.device, like.dtype)
        if key not in self._tables:
            # Shared by the cameras built from the same calibration (each stage builds its own; a
            # lattice costs ~75 ms at 1600×1200 with k1 ≈ -0.5).
            cache_key = ("lattice", *self._cache_key(), str(like.device), str(like.dtype))
            self._tables[key] = _cached_grid(cache_key, lambda: self._solve_table(like.device, like.dtype))
        return self._tables[key]

    def _cache_key(self) -> tuple:
        """What the lattice and the grid depend on."""
        lens = self.lens
        return (
            self.K.tobytes(),
            lens.dist_coeffs.tobytes(),
            lens.fisheye,
            self.image_size,
            self.stride,
            self.margin,
        )

    def _solve_table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        w, h = self.image_size
        s, m = self.stride, self.margin
        us = torch.arange(-m, w - 1 + m + s, s, dtype=torch.float64)
        vs = torch.arange(-m, h - 1 + m + s, s, dtype=torch.float64)
        vv, uu = torch.meshgrid(vs, us, indexing="ij")
        pix = torch.stack([uu, vv], dim=-1)
        xy_d = pixels_to_normalized(pix, K_tensor(self.K, pix))
        xy, ok = self.lens.undistort(xy_d)
        xy = torch.where(ok.unsqueeze(-1), xy, torch.full_like(xy, math.nan))
        return xy.permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=dtype)

    def initial(self, pixels: torch.Tensor) -> torch.Tensor:
        """(..., 2) bilinear interpolation of the lattice at ``pixels`` (..., 2) (NaN outside it or
        next to a node beyond the fold)."""
        table = self._table(pixels)
        s, m = self.stride, self.margin
        nu, nv = table.shape[-1], table.shape[-2]
        flat = pixels.reshape(-1, 2)
        # Lattice node i sits at pixel -m + i s; grid_sample with align_corners=True maps -1..1 onto nodes.
        gx = (flat[:, 0] + m) / s / (nu - 1) * 2 - 1
        gy = (flat[:, 1] + m) / s / (nv - 1) * 2 - 1
        grid = torch.stack([gx, gy], dim=-1).view(1, 1, -1, 2)
        out = F.grid_sample(table, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out = out[0, :, 0].T
        inside = (gx >= -1) & (gx <= 1) & (gy >= -1) & (gy <= 1)
        out = torch.where(inside.unsqueeze(-1), out, torch.full_like(out, math.nan))
        return out.reshape(pixels.shape)

    def ideal(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ideal normalized coords (..., 2) of original pixels (..., 2) and ``converged`` (...) (False
        beyond the fold or where the model cannot produce the pixel).

        Requests of at least :data:`_GRID_FROM` pixels (or a quarter of the image) that are all
        integers inside the image (depth maps, fusion's chunks) are served from the cached solution
        of the whole pixel grid (:meth:`grid`); others start at the lattice and are polished by
        Newton steps."""
        xy_d = pixels_to_normalized(pixels, K_tensor(self.K, pixels))
        if pixels.numel() == 0:
            return xy_d, torch.zeros(pixels.shape[:-1], dtype=torch.bool, device=pixels.device)
        if pixels.numel() < 2 * _DIRECT_BELOW:  # a few points: the lattice would cost more than it saves
            return self.lens.undistort(xy_d)
        pw = working_tensor(pixels)
        w, h = self.image_size
        if pixels.numel() < 2 * min(_GRID_FROM, w * h // 4):
            return self.lens.undistort(xy_d, initial=self.initial(pw))
        flat = pw.reshape(-1, 2)
        rounded = torch.round(flat)
        on_grid = (flat == rounded).all(dim=-1)
        on_grid &= (rounded[:, 0] >= 0) & (rounded[:, 0] <= w - 1) & (rounded[:, 1] >= 0)
        on_grid &= rounded[:, 1] <= h - 1
        if not bool(on_grid.all()):
            return self.lens.undistort(xy_d, initial=self.initial(pw))
        idx = rounded[:, 1].long() * w + rounded[:, 0].long()
        xy = self.grid(pixels.device).reshape(-1, 2).index_select(0, idx)
        ok = torch.isfinite(xy).all(dim=-1)
        xy = torch.where(ok.unsqueeze(-1), xy, flat.new_zeros(()).to(xy.dtype))
        return xy.to(pixels.dtype).reshape(pixels.shape), ok.reshape(pixels.shape[:-1])

    def grid(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(H, W, 2) float64 (the working precision) ideal normalized coords of every integer pixel
        of the image, NaN where there is none; solved once per device and shared through the
        process-wide cache (16 bytes a pixel)."""
        device = torch.device(device)
        if device not in self._grid:
            key = (*self._cache_key(), str(device))
            self._grid[device] = _cached_grid(key, lambda: self._solve_grid(device))
        return self._grid[device]

    def _solve_grid(self, device: torch.device) -> torch.Tensor:
        """The whole grid, solved in bands of rows of about :data:`_GRID_BAND` pixels: the model's
        few hundred element-wise steps then work on arrays that stay in the CPU cache (the same
        values; measured 0.60 → 0.27 s for 1600×1200 on one core)."""
        w, h = self.image_size
        u = torch.arange(w, dtype=torch.float64)
        out = torch.empty((h, w, 2), dtype=working_tensor(u.to(device)).dtype, device=device)
        band = max(1, _GRID_BAND // w)
        for r0 in range(0, h, band):
            v, uu = torch.meshgrid(torch.arange(r0, min(h, r0 + band), dtype=torch.float64), u, indexing="ij")
            pix = working_tensor(torch.stack([uu, v], dim=-1).to(device))
            xy_d = pixels_to_normalized(pix, K_tensor(self.K, pix))
            xy, ok = self.lens.undistort(xy_d, initial=self.initial(pix))
            out[r0 : r0 + band] = torch.where(ok.unsqueeze(-1), xy, torch.full_like(xy, math.nan))
        return out

    def pixels(self, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Original pixels (..., 2) of ideal normalized coords (..., 2), and ``unfolded`` (...)."""
        xy_d, unfolded = self.lens.distort(xy)
        return normalized_to_pixels(xy_d, K_tensor(self.K, xy_d)), unfolded
