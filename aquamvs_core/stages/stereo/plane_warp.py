"""The refractive stereo warp: reference pixel and world-Z hypothesis → source pixel.

Under refraction at a flat interface there is no homography between two views of a plane, but the
map ``w(u, v, z)`` — the source pixel that sees the point at world Z ``z`` on the refracted ray of
reference pixel ``(u, v)`` — is very smooth in all three arguments. :class:`WarpField` computes it
*exactly* (:meth:`~aquamvs_core.camera.refraction.RefractiveCamera.cast_ray` of the reference pixel, the
point ``o + s d`` at the ray depth ``s`` of plane ``z``,
:meth:`~aquamvs_core.camera.refraction.RefractiveCamera.project` into the source) on a coarse lattice
of reference pixels and a few planes, and represents it as

* in ``z``: a polynomial of degree ``degree`` in the normalized *inverse apparent depth*
  ``t(z) = (τ_c − τ(z)) / τ_h`` with ``τ(z) = 1 / (h + (z − water_z) n_air / n_water)`` (``h``: the
  reference camera's height above the water), least-squares fitted on ``2 degree + 1`` Chebyshev
  nodes of ``t ∈ [−1, 1]``. A perspective view of a plane moves like ``1 / depth``, so ``w`` is
  almost linear in ``t``: degree 5 fits a 0.2 m range to ~1e-8 px and a 2 m range to ~1e-3 px;
* in ``(u, v)``: the polynomial coefficients live on a uniform lattice of step ``stride`` pixels that
  extends one node beyond the image on every side, and are upsampled to any pixel grid by separable
  4-point (cubic) Lagrange interpolation. Measured against the exact per-pixel warp on the default
  synthetic rig (640×480, ``cam0`` against a neighbour, the opposite camera and the fisheye): max
  error 7e-5 px at stride 16, 1e-3 px at stride 32, versus 0.014 px / 0.05 px for plain bilinear
  interpolation of the pixel map at stride 8 / 16. The exact projections cost
  ``(2 degree + 1) × (W / stride + 4) × (H / stride + 4)`` refraction solves (16 k at the defaults).

:meth:`WarpField.level` evaluates the lattice on a pyramid level's pixel grid once (two small matrix
products); then a hypothesis plane costs ``degree`` multiply-adds per sample
(:meth:`LevelWarp.planes`), and the refinement's offsets around a per-pixel depth 2 multiply-adds
per sample (a second-order expansion, :meth:`LevelWarp.taylor`): no refraction solve per pixel.

Pixel conventions are :mod:`aquamvs_core.camera.calibration`'s; pyramid level ``L`` (scale ``2^-L``) pixel
``p`` covers the full-resolution pixels around ``(p + 0.5) 2^L − 0.5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aquamvs_core.camera.refraction import RefractiveCamera, point_at_ray_depth, world_z_to_ray_depth


def lagrange_matrix(positions: torch.Tensor, stride: float, n_nodes: int) -> torch.Tensor:
    """(N, n_nodes) cubic Lagrange interpolation weights from nodes ``(i − 1) * stride`` to ``positions``.

    Each row has the 4 weights of the nodes around the position (two on each side); positions must
    lie in ``[0, (n_nodes − 3) * stride]`` for those nodes to exist (else the end cubic extrapolates).
    """
    idx, w = _cubic_taps(positions, stride, n_nodes)
    m = torch.zeros(positions.shape[0], n_nodes, dtype=positions.dtype, device=positions.device)
    rows = torch.arange(positions.shape[0], device=positions.device).unsqueeze(1)
    m.index_put_((rows.expand(-1, 4), idx), w, accumulate=True)
    return m


def level_positions(n_full: int, level: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Full-resolution coordinates (n,) of the pixel centres of pyramid level ``level`` along one axis."""
    f = 2**level
    n = n_full // f
    return (torch.arange(n, dtype=dtype, device=device) + 0.5) * f - 0.5


@dataclass(frozen=True)
class WarpField:
    """``w(u, v, z)`` of one (reference, source) pair over ``z ∈ [z_lo, z_hi]`` (see the module docstring).

    Attributes:
        coeffs: (Nv, Nu, degree + 1, 2) float64 polynomial coefficients (in ``t``) of the source pixel
            ``(u, v)`` at the lattice nodes ``((j − 1) stride, (i − 1) stride)``; NaN where the exact
            warp is undefined (the ray misses the water, or the point does not project).
        stride: lattice step, full-resolution pixels.
        image_size: reference (width, height).
        z_lo, z_hi: world-Z range of the fit, metres.
        h, k: ``τ(z) = 1 / (h + (z − water_z) k)``; ``tau_c``, ``tau_h``: ``t = (tau_c − τ) / tau_h``.
        water_z: world Z of the water surface.
        fit_residual_px: largest |fit − exact| at the fit nodes, pixels (over nodes whose exact warp
            falls within the source image grown by 50 %).
    """

    coeffs: torch.Tensor
    stride: int
    image_size: tuple[int, int]
    z_lo: float
    z_hi: float
    h: float
    k: float
    tau_c: float
    tau_h: float
    water_z: float
    fit_residual_px: float

    @property
    def degree(self) -> int:
        return self.coeffs.shape[2] - 1

    def t_of_z(self, z: torch.Tensor) -> torch.Tensor:
        """Polynomial variable ``t`` (same shape) of world Z ``z``; ``t ∈ [−1, 1]`` on the fit range."""
        tau = 1.0 / (self.h + (z - self.water_z) * self.k)
        return (self.tau_c - tau) / self.tau_h

    def dt_dz(self, z: torch.Tensor) -> torch.Tensor:
        """``dt/dz`` (1/metre, same shape as ``z``)."""
        tau = 1.0 / (self.h + (z - self.water_z) * self.k)
        return tau * tau * self.k / self.tau_h

    def level(
        self,
        level: int,
        src_size: tuple[int, int],
        pad: int,
        border: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> LevelWarp:
        """The warp on the pixel grid of pyramid level ``level``, in ``grid_sample`` coordinates of the
        source level image padded by ``pad`` pixels (``align_corners=True``).

        Args:
            level: pyramid level (0: full resolution).
            src_size: (width, height) of the *unpadded* source image at that level.
            pad: padding of the sampled source image, pixels.
            border: the maps get a border of this many pixels (the NCC window radius) that maps
                outside the source image, so that samples there are invalid.
        """
        device = torch.device(device) if device is not None else self.coeffs.device
        w_full, h_full = self.image_size
        c = self.coeffs.to(device=device)
        nv, nu, deg1, _ = c.shape
        xs = level_positions(w_full, level, torch.float64, device)
        ys = level_positions(h_full, level, torch.float64, device)
        bad = torch.isnan(c).any(dim=-1).any(dim=-1)  # (Nv, Nu)
        f = float(2**level)
        # Full-resolution source pixels → level pixels → padded grid coordinates in [-1, 1]
        # (affine, so it is applied to the lattice coefficients, in float64).
        sw, sh = src_size
        scale = torch.tensor(
            [2.0 / (sw + 2 * pad - 1), 2.0 / (sh + 2 * pad - 1)], dtype=torch.float64, device=device
        )
        c = c / f * scale
        c[:, :, 0] = c[:, :, 0] + ((0.5 / f - 0.5 + pad) * scale - 1.0)
        c = torch.nan_to_num(c, nan=0.0).to(dtype)
        # Separable cubic interpolation as two matrix products, along u then along v, with the
        # Lagrange matrices padded by zero rows for the border, so that the product is written once,
        # directly in the layout of the result (deg+1, H_l + 2b, W_l + 2b, 2).
        hl, wl = len(ys), len(xs)
        hb, wb = hl + 2 * border, wl + 2 * border
        mu = torch.zeros((wb, nu), dtype=dtype, device=device)
        mu[border : border + wl] = lagrange_matrix(xs, self.stride, nu).to(dtype)
        mv = torch.zeros((hb, nv), dtype=dtype, device=device)
        mv[border : border + hl] = lagrange_matrix(ys, self.stride, nv).to(dtype)
        along_u = torch.einsum("vudc,wu->dvwc", c, mu).reshape(deg1, nv, wb * 2)  # (deg+1, Nv, W_b·2)
        out = torch.matmul(mv, along_u).view(deg1, hb, wb, 2)  # zero on the border
        # The border and the pixels that depend on an invalid node: constant OUTSIDE (clamped onto the
        # NaN padding → NaN samples), derivatives 0.
        if border > 0:
            for strip in (out[0, :border], out[0, -border:], out[0, :, :border], out[0, :, -border:]):
                strip.fill_(OUTSIDE)
        bad_l = (mv.abs() @ bad.to(dtype) @ mu.abs().T) > 0  # (H_b, W_b); the border rows are 0
        if bool(bad_l.any()):
            out[0].masked_fill_(bad_l.unsqueeze(-1), OUTSIDE)
            out[1:].masked_fill_(bad_l[None, :, :, None], 0.0)
        return LevelWarp(
            field=self,
            level=level,
            coeffs=out,
            border=border,
            px_per_grid=(1.0 / scale),
        )


#: Grid coordinate of "no valid source position" (far outside [-1, 1]: clamps onto the NaN border).
OUTSIDE = 8.0


def _cubic_taps(positions: torch.Tensor, stride: float, n_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Node indices (N, 4) and cubic Lagrange weights (N, 4) of :func:`lagrange_matrix`."""
    f = positions / stride + 1.0
    i = torch.floor(f).long().clamp(1, n_nodes - 3)
    t = f - i
    w = torch.stack(
        [
            -t * (t - 1) * (t - 2) / 6,
            (t + 1) * (t - 1) * (t - 2) / 2,
            -(t + 1) * t * (t - 2) / 2,
            (t + 1) * t * (t - 1) / 6,
        ],
        dim=-1,
    )
    return i.unsqueeze(1) + torch.arange(-1, 3, device=i.device), w


@dataclass(frozen=True)
class LevelWarp:
    """:class:`WarpField` sampled on the pixel grid of one pyramid level.

    Attributes:
        coeffs: (degree + 1, H_l + 2b, W_l + 2b, 2) coefficients of the source position in padded
            ``grid_sample`` coordinates (see :meth:`WarpField.level`), with a border of ``b`` pixels
            (and invalid pixels) mapped to :data:`OUTSIDE`.
        border: ``b``.
        px_per_grid: (2,) float64 level pixels per grid unit along u and v.
    """

    field: WarpField
    level: int
    coeffs: torch.Tensor
    border: int
    px_per_grid: torch.Tensor

    @property
    def interior(self) -> torch.Tensor:
        """(degree + 1, H_l, W_l, 2) view of the coefficients without the border."""
        b = self.border
        if b == 0:
            return self.coeffs
        return self.coeffs[:, b:-b, b:-b]

    def planes(self, t: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """Grid coordinates (B, rows, W_l + 2b, 2) of planes with constant ``t`` (B,), for the padded
        rows ``rows`` (default all). Horner's scheme per plane: the result of a plane does not depend
        on which other planes are evaluated with it."""
        c = self.coeffs if rows is None else self.coeffs[:, rows]
        tt = t.to(c.dtype).view(-1, 1, 1, 1)
        acc = c[-1] * tt
        for n in range(c.shape[0] - 2, 0, -1):
            acc = torch.add(acc, c[n], out=acc).mul_(tt)  # (acc + c_n) t, in place
        return acc.add_(c[0])

    def at_z(self, z: torch.Tensor) -> torch.Tensor:
        """Grid coordinates (H_l, W_l, 2) of per-pixel world Z ``z`` (H_l, W_l) (Horner's scheme);
        NaN where ``z`` is NaN, :data:`OUTSIDE` where the warp is invalid."""
        return self.taylor(z, order=0)[0]

    def taylor(self, z: torch.Tensor, order: int = 2) -> list[torch.Tensor]:
        """Source position and its derivatives with respect to world Z at per-pixel ``z`` (H_l, W_l).

        Returns ``order + 1`` maps (H_l, W_l, 2) in grid units: ``w``, ``dw/dz``, ``d²w/dz²``
        (``order <= 2``). Invalid pixels: ``w = OUTSIDE``, derivatives 0.
        """
        c = self.interior
        deg = c.shape[0] - 1
        f = self.field
        tau = 1.0 / (f.h + (z - f.water_z) * f.k)
        t = ((f.tau_c - tau) / f.tau_h).to(c.dtype).unsqueeze(-1).expand_as(c[0]).contiguous()
        # Horner with derivatives: p = P(t), d1 = P'(t), d2 = P''(t) / 2 (the first step, from
        # d1 = d2 = 0, written out).
        if deg == 0:
            p, d1, d2 = c[0].clone(), torch.zeros_like(c[0]), torch.zeros_like(c[0])
        else:
            p, d1, d2 = torch.addcmul(c[deg - 1], c[deg], t), c[deg], torch.zeros_like(c[0])
        for n in range(deg - 2, -1, -1):
            if order >= 2:
                d2 = torch.addcmul(d1, d2, t)
            if order >= 1:
                d1 = torch.addcmul(p, d1, t)
            p = torch.addcmul(c[n], p, t)
        if order == 0:
            return [p]
        # Chain rule through t(z): t' = k τ² / τ_h, t'' = -2 k² τ³ / τ_h.
        tp = (f.k * tau * tau / f.tau_h).to(c.dtype).unsqueeze(-1)
        out = [p, d1 * tp]
        if order >= 2:
            tpp = (-2.0 * f.k * f.k * tau * tau * tau / f.tau_h).to(c.dtype).unsqueeze(-1)
            out.append(torch.addcmul(d1 * tpp, 2 * d2, tp * tp))
        return out

    def sensitivity(self, z: torch.Tensor) -> torch.Tensor:
        """|dw/dz| (H_l, W_l): level pixels the source sample moves per metre of world Z at ``z``."""
        dw = self.taylor(z, order=1)[1]
        return self.speed(dw)

    def speed(self, dw: torch.Tensor) -> torch.Tensor:
        """Length in level pixels (H_l, W_l) of grid-unit vectors ``dw`` (H_l, W_l, 2)."""
        return (dw * self.px_per_grid.to(dw.dtype)).norm(dim=-1)


def fill_nodes(coeffs: torch.Tensor, max_passes: int = 4) -> torch.Tensor:
    """Fill lattice nodes without an exact warp (NaN rows of ``coeffs`` (Nv, Nu, ...)) next to valid
    ones by polynomial extrapolation along the lattice rows and columns (quadratic from three valid
    nodes in a line, else linear from two), averaged over the directions available; up to
    ``max_passes`` rings of nodes.

    Such nodes lie outside the image, e.g. beyond a strongly distorted lens's fold next to an image
    corner (the real rig's lenses fold ~14 px beyond their corners at 640×480). Without a value they
    would invalidate every pixel within two lattice steps of them; with it the pixels there are
    interpolated from the smooth continuation of the warp. Whether a pixel has a ray and whether its
    source sample lies inside the source image are still decided exactly, per pixel."""
    c = coeffs.clone()
    for _ in range(max_passes):
        bad = torch.isnan(c).flatten(2).any(dim=-1)
        if not bool(bad.any()) or bool(bad.all()):
            break
        total = torch.zeros_like(c)
        count = torch.zeros(bad.shape, dtype=c.dtype, device=c.device)
        for dim in (0, 1):
            for sign in (1, -1):
                n1, n2, n3 = (torch.roll(c, sign * k, dims=dim) for k in (1, 2, 3))
                ok1, ok2, ok3 = (torch.roll(~bad, sign * k, dims=dim) for k in (1, 2, 3))
                # Rolled-in entries wrap around the lattice: only a neighbour inside it counts.
                idx = torch.arange(c.shape[dim], device=c.device)
                inside = [(idx - sign * k >= 0) & (idx - sign * k < c.shape[dim]) for k in (1, 2, 3)]
                shape = (-1, 1) if dim == 0 else (1, -1)
                ok1 = ok1 & inside[0].view(shape)
                ok2 = ok2 & inside[1].view(shape)
                ok3 = ok3 & inside[2].view(shape)
                quad = ok1 & ok2 & ok3
                lin = ok1 & ok2 & ~quad
                e = c.dim() - 2
                qv = torch.nan_to_num(3 * n1 - 3 * n2 + n3)
                lv = torch.nan_to_num(2 * n1 - n2)
                use = (bad & (quad | lin)).to(c.dtype)
                value = torch.where(quad.view(*quad.shape, *([1] * e)), qv, lv)
                total += value * use.view(*use.shape, *([1] * e))
                count += use
        fill = bad & (count > 0)
        if not bool(fill.any()):
            break
        e = c.dim() - 2
        mean = total / count.clamp_min(1).view(*count.shape, *([1] * e))
        c = torch.where(fill.view(*fill.shape, *([1] * e)), mean, c)
    return c


@torch.no_grad()
def build_warp_field(
    ref: RefractiveCamera,
    src: RefractiveCamera,
    z_lo: float,
    z_hi: float,
    stride: int = 16,
    degree: int = 5,
    device: torch.device | str = "cpu",
) -> WarpField:
    """Fit the :class:`WarpField` of ``(ref, src)`` over world Z ``[z_lo, z_hi]`` (float64, exact nodes).

    Cost: ``(2 degree + 1) × Nv × Nu`` exact projections (Nu ≈ W / stride + 4), e.g. 11 × 34 × 44 for
    640×480 at stride 16.
    """
    if ref.image_size is None:
        raise ValueError("the reference camera needs image_size")
    if not z_hi > z_lo > ref.water_z:
        raise ValueError(f"need water_z ({ref.water_z}) < z_lo ({z_lo}) < z_hi ({z_hi})")
    if abs(ref.water_z - src.water_z) > 1e-9:
        raise ValueError("the cameras disagree on the water plane")
    device = torch.device(device)
    dt = torch.float64
    w, h_img = ref.image_size
    nu = (w - 1) // stride + 4
    nv = (h_img - 1) // stride + 4
    us = (torch.arange(nu, dtype=dt, device=device) - 1) * stride
    vs = (torch.arange(nv, dtype=dt, device=device) - 1) * stride
    vv, uu = torch.meshgrid(vs, us, indexing="ij")
    pixels = torch.stack([uu, vv], dim=-1)  # (Nv, Nu, 2)

    water_z = ref.water_z
    h = water_z - float(ref.center[2])
    k = ref.n_air / ref.n_water

    def tau(z: float) -> float:
        return 1.0 / (h + (z - water_z) * k)

    tau_c = 0.5 * (tau(z_lo) + tau(z_hi))
    tau_h = 0.5 * (tau(z_lo) - tau(z_hi))
    n_fit = 2 * degree + 1
    t_nodes = torch.cos(math.pi * (torch.arange(n_fit, dtype=dt, device=device) + 0.5) / n_fit)
    z_nodes = water_z + (1.0 / (tau_c - tau_h * t_nodes) - h) / k

    origins, directions, ok_ray = ref.cast_ray(pixels)
    depth = world_z_to_ray_depth(directions.unsqueeze(0), z_nodes.view(-1, 1, 1), water_z)
    points = point_at_ray_depth(origins.unsqueeze(0), directions.unsqueeze(0), depth)
    uv, ok = src.project(points)  # (n_fit, Nv, Nu, 2)
    ok = ok & ok_ray.unsqueeze(0) & torch.isfinite(uv).all(dim=-1)
    node_ok = ok.all(dim=0)
    vander = t_nodes.unsqueeze(1) ** torch.arange(degree + 1, dtype=dt, device=device)  # (n_fit, deg+1)
    target = torch.where(node_ok[None, :, :, None], uv, torch.zeros_like(uv)).reshape(n_fit, -1)
    coeffs = torch.linalg.lstsq(vander, target).solution  # (deg+1, Nv*Nu*2)
    fit = (vander @ coeffs).reshape(n_fit, nv, nu, 2)
    coeffs = coeffs.reshape(degree + 1, nv, nu, 2).permute(1, 2, 0, 3).contiguous()
    coeffs = torch.where(node_ok[:, :, None, None], coeffs, torch.full_like(coeffs, math.nan))
    coeffs = fill_nodes(coeffs)
    sw, sh = src.image_size or ref.image_size
    near = (
        (uv[..., 0] > -0.25 * sw)
        & (uv[..., 0] < 1.25 * sw)
        & (uv[..., 1] > -0.25 * sh)
        & (uv[..., 1] < 1.25 * sh)
    )
    resid = (fit - uv).norm(dim=-1)[near & node_ok.unsqueeze(0)]
    return WarpField(
        coeffs=coeffs,
        stride=int(stride),
        image_size=(int(w), int(h_img)),
        z_lo=float(z_lo),
        z_hi=float(z_hi),
        h=h,
        k=k,
        tau_c=tau_c,
        tau_h=tau_h,
        water_z=water_z,
        fit_residual_px=float(resid.max()) if resid.numel() else 0.0,
    )
