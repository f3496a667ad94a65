"""Steep bowers: the sand castles some cichlids build, a round mound with steep walls and a pit.

Bower ``i`` adds the elevation (up positive, metres)::

    e(r) = H Φ((R - r) / σ) - D Φ((R_p - r) / σ_p)

with ``r`` the distance from its centre and ``Φ`` the standard normal CDF: a mound of height ``H``
whose wall, centred at radius ``R``, has its steepest slope ``H / (σ √(2π)) = bower_max_slope``,
and a pit of depth ``D`` and radius ``R_p < R`` whose wall is as steep (``σ_p = D / (slope √(2π))``).
The pit's wall rises where the mound's falls, so the two only lower each other's slope: the
steepest slope of a bower is ``bower_max_slope`` (up to the grid's sampling). Sand ripples are
calmed on and around the bowers.

Bowers sit within the rig's radius of its centre, away from the fish nest and from each other
(their own random stream). Steep walls seen obliquely can be crossed twice by a ray: the renderer
walks those rays cell by cell (:mod:`aquamvs_core.synthetic.heightfield`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from aquamvs_core.synthetic.config import SyntheticSurveyConfig

BOWER_STREAM = 7
SQRT_2PI = math.sqrt(2 * math.pi)


@dataclass(frozen=True)
class Bower:
    """One bower (metres): centre, mound height and wall radius and width, pit depth, radius, width."""

    x: float
    y: float
    height: float
    radius: float
    sigma: float
    pit_depth: float
    pit_radius: float
    pit_sigma: float

    @property
    def footprint(self) -> float:
        """Radius beyond which the bower's slope is below 1 % of its steepest."""
        return self.radius + 3 * self.sigma

    @property
    def extent(self) -> float:
        """Radius beyond which the bower's elevation is below 1e-9 of its height."""
        return self.radius + 6.5 * self.sigma


def make_bowers(
    config: SyntheticSurveyConfig,
    center: np.ndarray,
    radius: float,
    occupied: list[tuple[float, float, float]],
) -> tuple[Bower, ...]:
    """``config.bowers`` bowers within ``radius`` of ``center`` (x, y), clear of the discs
    ``occupied`` (x, y, radius: the nest, mounds and pits) and of each other; deterministic for
    ``config.seed``."""
    rng = np.random.default_rng([config.seed, BOWER_STREAM])
    s, slope = config.relief_scale, config.bower_max_slope
    bowers: list[Bower] = []
    for _ in range(config.bowers):
        height = s * rng.uniform(0.025, 0.04)
        wall_radius = rng.uniform(0.05, 0.08)
        pit_depth = height * rng.uniform(0.6, 0.9)
        bower = None
        for _ in range(1000):  # rejection: away from the nest and the other bowers
            r, a = radius * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
            x, y = center[0] + r * math.cos(a), center[1] + r * math.sin(a)
            candidate = Bower(
                x=float(x),
                y=float(y),
                height=float(height),
                radius=float(wall_radius),
                sigma=float(height / (slope * SQRT_2PI)) if height > 0 else 1e-3,
                pit_depth=float(pit_depth),
                pit_radius=float(wall_radius * rng.uniform(0.35, 0.5)),
                pit_sigma=float(pit_depth / (slope * SQRT_2PI)) if pit_depth > 0 else 1e-3,
            )
            discs = [*occupied, *((b.x, b.y, b.footprint) for b in bowers)]
            if all(math.hypot(x - ox, y - oy) > candidate.footprint + r_o for ox, oy, r_o in discs):
                bower = candidate
                break
        if bower is None:
            raise ValueError(
                f"cannot place {config.bowers} bowers within {radius:.2f} m of the rig centre clear of "
                "the nest, the mounds and each other; use fewer bowers"
            )
        bowers.append(bower)
    return tuple(bowers)


def _window(b: Bower, x: np.ndarray, y: np.ndarray, margin: float) -> tuple[slice, slice]:
    cols = np.nonzero(np.abs(x - b.x) <= b.extent + margin)[0]
    rows = np.nonzero(np.abs(y - b.y) <= b.extent + margin)[0]
    if cols.size == 0 or rows.size == 0:
        return slice(0, 0), slice(0, 0)
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def bower_relief(bowers: tuple[Bower, ...], x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Ny, Nx) elevation of the bowers over the grid ``x`` (Nx,) × ``y`` (Ny,), and the (Ny, Nx)
    factor in [0, 1] that calms the sand ripples on and around them."""
    elevation = np.zeros((y.size, x.size))
    calm = np.ones((y.size, x.size))
    for b in bowers:
        rows, cols = _window(b, x, y, 6 * b.sigma)
        X, Y = np.meshgrid(x[cols], y[rows])
        r = torch.from_numpy(np.hypot(X - b.x, Y - b.y))
        phi = lambda t: 0.5 * (1 + torch.erf(t / math.sqrt(2)))  # noqa: E731
        e = b.height * phi((b.radius - r) / b.sigma) - b.pit_depth * phi((b.pit_radius - r) / b.pit_sigma)
        elevation[rows, cols] += e.numpy()
        calm[rows, cols] *= phi((r - (b.radius + 2 * b.sigma)) / b.sigma).numpy()
    return elevation, calm
