"""The ground-truth bottom as a bilinear heightfield, and the exact intersection of rays with it.

**Marching.** With ``g(s) = -f(s)`` (the height of the ray above the surface) and ``L`` a Lipschitz
bound of the bilinear surface's gradient, ``g`` can decrease by at most ``(d_z + L |d_xy|)`` per
metre along the ray, so a step of ``g / (d_z + L |d_xy|)`` never passes a crossing.

* Rays with ``L |d_xy| < d_z`` (every ray of the default survey): ``f`` is strictly increasing
  along the ray and the crossing is unique. The march takes ``max(that safe step, half a grid cell
  horizontally)`` (large safe steps far from the surface, half-cell steps near it) until it brackets
  the crossing.
* The other rays (steep walls seen obliquely, where a ray may cross the surface several times)
  **walk the cells**: inside a bilinear cell ``f`` is a quadratic in ``s``, so the first root in
  the part of the ray within the cell is solved in closed form; no crossing can be missed, not even
  a graze. Where the safe step is longer than the cell, it skips the cells it spans.

Brackets are refined by the Illinois method to ``|Δs| < 1e-10`` m or ``|f| < 1e-13`` m.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from aquamvs_core.synthetic.ground_truth import HeightGrid

DTYPE = torch.float64
BAND_MARGIN = 1e-6  # m, the march starts this far above the highest node
S_TOL = 1e-10  # m, bracket width at which the refinement stops
F_TOL = 1e-13  # m, |Z - h| at which the refinement stops
MAX_MARCH = 100_000
MAX_REFINE = 100


class Heightfield:
    """The bilinear surface ``Z = h(x, y)`` through a grid (torch, float64).

    Inside cell ``(i, j)`` (row, column) with local coordinates ``tx, ty ∈ [0, 1]``:
    ``h = a + b tx + c ty + e tx ty`` with ``a = h00``, ``b = h10 - h00``, ``c = h01 - h00``,
    ``e = h11 - h10 - h01 + h00`` (``h10``: next column, ``h01``: next row). Outside the grid the
    border cell's polynomial is extended (callers keep to the square).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray):
        z = np.asarray(z, dtype=np.float64)
        ny, nx = z.shape
        if nx < 2 or ny < 2 or x.shape != (nx,) or y.shape != (ny,):
            raise ValueError(f"grid mismatch: x {x.shape}, y {y.shape}, z {z.shape}")
        self.nx, self.ny = nx, ny
        self.x0, self.x1 = float(x[0]), float(x[-1])
        self.y0, self.y1 = float(y[0]), float(y[-1])
        self.dx = (self.x1 - self.x0) / (nx - 1)
        self.dy = (self.y1 - self.y0) / (ny - 1)
        self.zmin, self.zmax = float(z.min()), float(z.max())
        h00, h10, h01, h11 = z[:-1, :-1], z[:-1, 1:], z[1:, :-1], z[1:, 1:]
        coef = np.stack([h00, h10 - h00, h01 - h00, h11 - h10 - h01 + h00], axis=-1)
        self.coef = torch.from_numpy(np.ascontiguousarray(coef.reshape(-1, 4)))
        # Lipschitz bound of h: in a cell |∂h/∂x| ≤ max(|b|, |b + e|)/dx, |∂h/∂y| ≤ max(|c|, |c + e|)/dy.
        gx = np.maximum(np.abs(coef[..., 1]), np.abs(coef[..., 1] + coef[..., 3])) / self.dx
        gy = np.maximum(np.abs(coef[..., 2]), np.abs(coef[..., 2] + coef[..., 3])) / self.dy
        self.lipschitz = float(np.sqrt(gx * gx + gy * gy).max()) * (1 + 1e-6) + 1e-12

    @classmethod
    def from_terrain(cls, terrain: HeightGrid, frame_index: int) -> Heightfield:
        return cls(terrain.x, terrain.y, terrain.heights(frame_index))

    def check_below(self, water_z: float) -> None:
        """Raise ValueError unless the whole surface lies below the water plane ``Z = water_z``."""
        if not self.zmin > water_z:
            raise ValueError(
                f"the terrain reaches Z={self.zmin:.4f} m, at or above the water surface Z={water_z:.4f} m"
            )

    def _locate(self, px: torch.Tensor, py: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cell coefficients (N, 4) and local coordinates ``tx, ty`` of points (px, py)."""
        fx = (px - self.x0) / self.dx
        fy = (py - self.y0) / self.dy
        ix = torch.floor(fx).clamp_(0, self.nx - 2)
        iy = torch.floor(fy).clamp_(0, self.ny - 2)
        cell = torch.addcmul(ix, iy, torch.tensor(float(self.nx - 1), dtype=iy.dtype)).long()
        return self.coef.index_select(0, cell), fx.sub_(ix), fy.sub_(iy)

    @staticmethod
    def _bilinear(c: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
        c0, c1, c2, c3 = c.unbind(1)
        return torch.addcmul(c0, tx, c1).addcmul_(ty, torch.addcmul(c2, tx, c3))

    def height(self, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
        """World Z of the surface at (px, py) (same shapes, 1-D, float64)."""
        return self._bilinear(*self._locate(px, py))

    def height_and_gradient(
        self, px: torch.Tensor, py: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Height and its gradient ``(∂h/∂x, ∂h/∂y)`` (exact, of the bilinear cell)."""
        c, tx, ty = self._locate(px, py)
        h = self._bilinear(c, tx, ty)
        return h, torch.addcmul(c[:, 1], ty, c[:, 3]) / self.dx, torch.addcmul(c[:, 2], tx, c[:, 3]) / self.dy

    def _gap(self, r: list[torch.Tensor], s: torch.Tensor) -> torch.Tensor:
        """Height of the rays ``r = [ox, oy, oz, dx, dy, dz, ...]`` above the surface at ``s``."""
        x = torch.addcmul(r[0], s, r[3])
        y = torch.addcmul(r[1], s, r[4])
        return self.height(x, y).sub_(torch.addcmul(r[2], s, r[5]))

    def intersect(
        self, origins: torch.Tensor, directions: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """First intersection of rays ``o + s d`` (``d_z > 0``) with the surface, inside its square.

        Args:
            origins, directions: (N, 3) float64.
            valid: (N,) rays to trace (default all).

        Returns:
            s: (N,) ray parameter of the hit (NaN where none).
            hit: (N,) bool.
        """
        n = origins.shape[0]
        s_out = torch.full((n,), math.nan, dtype=DTYPE)
        hit = torch.zeros(n, dtype=torch.bool)
        ok = directions[:, 2] > 0
        if valid is not None:
            ok &= valid
        idx = torch.nonzero(ok).squeeze(1)
        if idx.numel() == 0:
            return s_out, hit
        o = origins.to(DTYPE).index_select(0, idx)
        d = directions.to(DTYPE).index_select(0, idx)
        dz = d[:, 2]
        s0 = (self.zmin - BAND_MARGIN - o[:, 2]) / dz
        s1 = (self.zmax + BAND_MARGIN - o[:, 2]) / dz
        for k, lo_b, hi_b in ((0, self.x0, self.x1), (1, self.y0, self.y1)):
            dk, ok_ = d[:, k], o[:, k]
            inside = (ok_ >= lo_b) & (ok_ <= hi_b)
            moving = dk != 0
            safe = torch.where(moving, dk, torch.ones_like(dk))
            ta, tb = (lo_b - ok_) / safe, (hi_b - ok_) / safe
            t_lo = torch.where(moving, torch.minimum(ta, tb), torch.where(inside, -math.inf, math.inf))
            t_hi = torch.where(moving, torch.maximum(ta, tb), torch.where(inside, math.inf, -math.inf))
            s0 = torch.maximum(s0, t_lo)
            s1 = torch.minimum(s1, t_hi)
        dxy = torch.hypot(d[:, 0], d[:, 1])
        closing = dz + self.lipschitz * dxy  # bound on how fast a ray can approach the surface
        min_step = 0.5 * min(self.dx, self.dy) / dxy.clamp_min(1e-300)  # half a cell horizontally
        monotone = self.lipschitz * dxy < dz  # f strictly increasing along the ray: a unique crossing

        # Per-ray state, compacted as rays finish: ox oy oz dx dy dz | closing min_step s1 | index.
        rays = [t.contiguous() for t in (*o.unbind(1), *d.unbind(1))]
        state = [*rays, closing, min_step, s1, torch.arange(idx.numel())]
        entering = s0 <= s1
        brackets = self._march(compact(state, entering & monotone), s0[entering & monotone])
        walked, roots = self._walk(compact(state, entering & ~monotone), s0[entering & ~monotone])
        brackets += walked
        if roots[0].numel():
            s_out[idx[roots[0]]] = roots[1]
            hit[idx[roots[0]]] = True
        if not brackets:
            return s_out, hit
        pos, s_fin = self._refine([torch.cat(parts) for parts in zip(*brackets, strict=True)])
        s_out[idx[pos]] = s_fin
        hit[idx[pos]] = True
        return s_out, hit

    def _march(self, state: list[torch.Tensor], sa: torch.Tensor) -> list[list[torch.Tensor]]:
        """Brackets ``[*ray, index, sa, sb, ga, gb]`` with ``gap(sa) > 0 >= gap(sb)`` of rays where the
        crossing is unique (see the module docstring): safe steps, at least half a cell."""
        ga = self._gap(state, sa)
        above = ga > 0  # the others enter the square below the surface (through its side): miss
        state, sa, ga = compact(state, above), sa[above], ga[above]
        brackets: list[list[torch.Tensor]] = []
        for _ in range(MAX_MARCH):
            if sa.numel() == 0:
                break
            step = torch.maximum(ga / state[6], state[7])
            sb = torch.minimum(sa + step, state[8])
            gb = self._gap(state, sb)
            crossed = gb <= 0
            going = ~crossed & (sb < state[8])  # the others left the square: miss
            if bool(crossed.any()):
                brackets.append(compact([*state[:6], state[9], sa, sb, ga, gb], crossed))
            if not bool(going.all()):
                state, sb, gb = compact(state, going), sb[going], gb[going]
            sa, ga = sb, gb
        return brackets

    def _walk(
        self, state: list[torch.Tensor], sa: torch.Tensor
    ) -> tuple[list[list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
        """First crossing of rays that may cross the surface several times, found exactly: cell by
        cell, the first root of ``f = Z - h`` (a quadratic in ``s`` inside a bilinear cell) in the
        part of the ray within the cell; where the surface is far, a safe step skips cells.

        Returns brackets (as :meth:`_march`, for the rare landing on or just past the surface) and
        ``(index, s)`` of the roots found exactly."""
        ga = self._gap(state, sa)
        above = ga > 0
        state, sa, ga = compact(state, above), sa[above], ga[above]
        brackets: list[list[torch.Tensor]] = []
        found_pos: list[torch.Tensor] = []
        found_s: list[torch.Tensor] = []
        for _ in range(MAX_MARCH):
            if sa.numel() == 0:
                break
            sigma, sigma_exit = self._first_root_in_cell(state, sa)
            found = sigma <= sigma_exit
            if bool(found.any()):
                found_pos.append(state[9][found])
                found_s.append((sa + sigma)[found])
            step = torch.maximum(sigma_exit, ga / state[6])
            sb = torch.minimum(
                torch.maximum(sa + step, torch.nextafter(sa, torch.full_like(sa, math.inf))), state[8]
            )
            gb = self._gap(state, sb)
            crossed = ~found & (gb <= 0)
            going = ~found & ~crossed & (sb < state[8])
            if bool(crossed.any()):
                brackets.append(compact([*state[:6], state[9], sa, sb, ga, gb], crossed))
            if not bool(going.all()):
                state, sb, gb = compact(state, going), sb[going], gb[going]
            sa, ga = sb, gb
        empty = torch.zeros(0, dtype=torch.long)
        pos = torch.cat(found_pos) if found_pos else empty
        return brackets, (pos, torch.cat(found_s) if found_s else torch.zeros(0, dtype=DTYPE))

    def _first_root_in_cell(
        self, r: list[torch.Tensor], sa: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For rays at ``sa`` (above the surface): ``σ_exit``, how far along the ray the cell it is
        entering extends (capped at the ray's end ``r[8]``), and ``σ``, the first root of
        ``f(sa + σ) = 0`` on ``[0, σ_exit]`` with the cell's polynomial (``inf`` where none)."""
        ox, oy, oz, dx, dy, dz = r[:6]
        fx = (torch.addcmul(ox, sa, dx) - self.x0) / self.dx
        fy = (torch.addcmul(oy, sa, dy) - self.y0) / self.dy
        # The cell the ray enters: on a cell boundary, the one on the side it moves to.
        ix = torch.where(dx >= 0, torch.floor(fx), torch.ceil(fx) - 1).clamp_(0, self.nx - 2)
        iy = torch.where(dy >= 0, torch.floor(fy), torch.ceil(fy) - 1).clamp_(0, self.ny - 2)
        tx, ty = fx - ix, fy - iy
        c = self.coef.index_select(0, (ix + iy * (self.nx - 1)).long())
        a0, b, cc, e = c.unbind(1)
        bx, by = dx / self.dx, dy / self.dy  # d tx / ds, d ty / ds
        inf = torch.full_like(sa, math.inf)
        sx = torch.where(bx > 0, (1 - tx) / bx, torch.where(bx < 0, -tx / bx, inf)).clamp_min(0)
        sy = torch.where(by > 0, (1 - ty) / by, torch.where(by < 0, -ty / by, inf)).clamp_min(0)
        sigma_exit = torch.minimum(torch.minimum(sx, sy), r[8] - sa)
        # f(σ) = f0 + B σ + C σ² inside the cell.
        f0 = torch.addcmul(oz, sa, dz) - (a0 + b * tx + cc * ty + e * tx * ty)
        B = dz - b * bx - cc * by - e * (tx * by + ty * bx)
        C = -e * bx * by
        disc = B * B - 4 * C * f0
        sq = torch.sqrt(disc.clamp_min(0))
        q = -0.5 * (B + torch.where(B >= 0, sq, -sq))
        safe_q = torch.where(q != 0, q, torch.ones_like(q))
        safe_c = torch.where(C != 0, C, torch.ones_like(C))
        r1 = torch.where((C != 0) & (q != 0), q / safe_c, inf)
        r2 = torch.where(q != 0, f0 / safe_q, inf)  # also the root of the linear case C = 0
        r1 = torch.where((disc >= 0) & (r1 >= 0), r1, inf)
        r2 = torch.where((disc >= 0) & (r2 >= 0), r2, inf)
        sigma = torch.where(f0 >= 0, torch.zeros_like(sa), torch.minimum(r1, r2))
        return sigma, sigma_exit

    def _refine(self, r: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Illinois (modified regula falsi) on the brackets ``[*ray, index, a, b, ga, gb]``, bracket
        kept; returns the rays' indices and the roots."""
        pos = r[6]
        a, b, fa, fb = r[7], r[8], -r[9], -r[10]  # f = Z - h: fa < 0 <= fb
        s_fin = b.clone()
        state = [*r[:6], torch.arange(b.numel()), a, b, fa, fb]
        state = compact(state, fb != 0)
        for _ in range(MAX_REFINE):
            if state[6].numel() == 0:
                break
            a, b, fa, fb = state[7:]
            c = b - fb * (b - a) / (fb - fa)
            lo, hi = torch.minimum(a, b), torch.maximum(a, b)
            c = torch.where((c > lo) & (c < hi), c, 0.5 * (a + b))
            fc = self._gap(state, c).neg_()
            flip = (fc > 0) != (fb > 0)
            a = torch.where(flip, b, a)
            fa = torch.where(flip, fb, 0.5 * fa)
            s_fin[state[6]] = c
            state[7:] = [a, c, fa, fc]
            done = (fc.abs() <= F_TOL) | ((c - a).abs() <= S_TOL)
            if bool(done.any()):
                state = compact(state, ~done)
        return pos, s_fin


def compact(tensors: list[torch.Tensor], keep: torch.Tensor) -> list[torch.Tensor]:
    """The rows ``keep`` (bool) of every tensor of a per-ray state."""
    sel = torch.nonzero(keep).squeeze(1)
    return [t.index_select(0, sel) for t in tensors]
