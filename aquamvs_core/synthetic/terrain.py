"""Synthetic bottom: a ground-truth heightfield per frame and a sandy texture draped on it.

**Ground truth.** The bottom of frame ``f`` is *defined* as the bilinear interpolation of the grid
``z[f]`` (world Z, metres, Z down) over the nodes ``x`` (columns) × ``y`` (rows); the renderer
intersects exactly that surface. Relief (elevation, up positive) is built from:

* smooth undulations (8 random Fourier modes, 0.25–1.2 m wavelengths, a few mm);
* Gaussian mounds (1–2.2 cm high) and pits (~1 cm deep) within 0.42 m of the rig centre, plus one
  mound that grows by ``change_per_frame`` every frame;
* a fish nest within 8 cm of the rig centre: a bowl (2–2.8 cm deep) with a raised rim (~1 cm, radius
  ~10 cm); the bowl deepens by ``change_per_frame`` every frame and its rim rises a little;
* sinuous, slightly asymmetric sand ripples (1.2–1.8 mm amplitude, 4.5–6 cm wavelength) that drift
  by ``ripple_drift`` every frame, calmer inside the nest;
* fine roughness (0.2 mm std, ~1.5 cm features).

The mean Z of frame 0 is ``bottom_z``; with the defaults the relief spans about 5 cm.


The texture draped on it is :mod:`aquamvs_core.synthetic.texture`.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from aquamvs_core.runtime import torch_threads
from aquamvs_core.synthetic.bowers import Bower, bower_relief, make_bowers
from aquamvs_core.synthetic.config import SyntheticSurveyConfig
from aquamvs_core.synthetic.rig import rig_center, rig_radius
from aquamvs_core.synthetic.silt import SiltPatch, make_silt_patches, silt_fields
from aquamvs_core.synthetic.texture import make_texture, smooth_noise

TERRAIN_STREAM = 2
CRATER_STREAM = 4


@dataclass(frozen=True)
class Crater:
    """A fish nest: bowl ``-depth·exp(-r²/2σ_b²)`` plus rim ``rim_height·exp(-(r-r_rim)²/2σ_r²)``."""

    x: float
    y: float
    depth: float
    bowl_sigma: float
    rim_radius: float
    rim_sigma: float
    rim_height: float


@dataclass(frozen=True)
class Terrain:
    """Bottom geometry for every frame and its texture.

    Attributes:
        x: (Nx,) world X of the grid columns, metres (uniform spacing).
        y: (Ny,) world Y of the grid rows, metres (uniform spacing).
        z: (F, Ny, Nx) float64 world Z of the bottom (Z down) at the nodes, per frame.
        frame_indices: (F,) the frame index of each ``z`` slice.
        texture: (Ht, Wt, 3) float32 RGB in [0, 1]; texel ``(i, j)`` (row, column) is centred at
            ``(texture_origin[0] + j * texel_size, texture_origin[1] + i * texel_size)``.
        texture_origin: world (x, y) of the centre of texel (0, 0), metres.
        texel_size: texel spacing, metres.
        crater: the fish nest, if any (informative).
        bowers: the steep bowers (informative; their relief is in ``z``).
        silt: the silt patches (informative; their detail is in ``texture``).
        silt_mask: (Ny, Nx) bool, the grid nodes inside a silt patch (None: no silt).
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    frame_indices: np.ndarray
    texture: np.ndarray
    texture_origin: tuple[float, float]
    texel_size: float
    crater: Crater | None = None
    bowers: tuple[Bower, ...] = ()
    silt: tuple[SiltPatch, ...] = ()
    silt_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.z.ndim != 3 or self.z.shape[1:] != (self.y.size, self.x.size):
            raise ValueError(f"z must have shape (F, {self.y.size}, {self.x.size}), got {self.z.shape}")
        if self.frame_indices.shape != (self.z.shape[0],):
            raise ValueError("frame_indices must have one entry per z slice")
        if self.x.size < 2 or self.y.size < 2:
            raise ValueError("the grid needs at least 2 nodes per axis")
        for name, a in (("x", self.x), ("y", self.y)):
            step = np.diff(a)
            if step.min() <= 0 or np.abs(step - step.mean()).max() > 1e-9 * max(1.0, abs(step.mean())):
                raise ValueError(f"{name} must be uniformly increasing")
        if self.texture.ndim != 3 or self.texture.shape[2] != 3:
            raise ValueError(f"texture must be (Ht, Wt, 3), got {self.texture.shape}")
        if self.silt_mask is not None and self.silt_mask.shape != self.z.shape[1:]:
            raise ValueError(f"silt_mask must have shape {self.z.shape[1:]}, got {self.silt_mask.shape}")

    def frame_slot(self, frame_index: int) -> int:
        """Position of ``frame_index`` in :attr:`frame_indices`."""
        hits = np.nonzero(self.frame_indices == frame_index)[0]
        if hits.size == 0:
            raise KeyError(f"frame {frame_index} not in the terrain's frames {self.frame_indices.tolist()}")
        return int(hits[0])

    def heights(self, frame_index: int) -> np.ndarray:
        """(Ny, Nx) world Z grid of frame ``frame_index``."""
        return self.z[self.frame_slot(frame_index)]

    @classmethod
    def flat(
        cls,
        z: float,
        center: tuple[float, float] = (0.0, 0.0),
        size: float = 1.0,
        cell: float = 0.01,
        n_frames: int = 1,
        texture: np.ndarray | None = None,
        texel_size: float | None = None,
    ) -> Terrain:
        """A horizontal plane ``Z = z`` over a ``size`` square (for analytic checks).

        The default texture is a checkerboard of ``cell``-sized squares.
        """
        n = round(size / cell)
        x = center[0] - size / 2 + cell * np.arange(n + 1)
        y = center[1] - size / 2 + cell * np.arange(n + 1)
        if texture is None:
            ii, jj = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
            check = ((ii + jj) % 2).astype(np.float32)
            texture = np.repeat((0.3 + 0.4 * check)[..., None], 3, axis=2)
            texel_size = cell
        elif texel_size is None:
            raise ValueError("texel_size is required with a texture")
        zz = np.full((n_frames, n + 1, n + 1), float(z))
        return cls(
            x=x,
            y=y,
            z=zz,
            frame_indices=np.arange(n_frames),
            texture=np.ascontiguousarray(texture, dtype=np.float32),
            texture_origin=(float(x[0]), float(y[0])),
            texel_size=float(texel_size),
        )


# --------------------------------------------------------------------------------------------
# Heightfield
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Relief:
    static: np.ndarray  # (Ny, Nx) elevation that never changes, m (up positive)
    mound: tuple[float, float, float, float]  # growing mound (x, y, amplitude, sigma)
    crater: Crater
    ripple_dir: float
    ripple_wavelength: float
    ripple_amp: float
    ripple_bend: tuple[float, float, float]  # sinuosity: amplitude (rad), wavelength (m), phase
    ripple_envelope: np.ndarray  # (Ny, Nx) amplitude modulation
    bowers: tuple[Bower, ...] = ()


def make_crater(config: SyntheticSurveyConfig) -> Crater:
    """The fish nest: within 8 cm of the rig centre (its own random stream, shared by the relief and
    the texture)."""
    rng = np.random.default_rng([config.seed, CRATER_STREAM])
    s = config.relief_scale
    c = rig_center(config)[:2]
    r, a = rng.uniform(0.0, 0.08), rng.uniform(0, 2 * math.pi)
    return Crater(
        x=float(c[0] + r * math.cos(a)),
        y=float(c[1] + r * math.sin(a)),
        depth=s * rng.uniform(0.020, 0.028),
        bowl_sigma=rng.uniform(0.045, 0.055),
        rim_radius=rng.uniform(0.095, 0.11),
        rim_sigma=rng.uniform(0.022, 0.028),
        rim_height=s * rng.uniform(0.007, 0.010),
    )


def _make_relief(
    config: SyntheticSurveyConfig,
    x: np.ndarray,
    y: np.ndarray,
    crater: Crater,
    silt_fraction: np.ndarray | None = None,
) -> _Relief:
    rng = np.random.default_rng([config.seed, TERRAIN_STREAM])
    s = config.relief_scale
    c = rig_center(config)[:2]
    X, Y = np.meshgrid(x, y)  # (Ny, Nx)
    static = np.zeros_like(X)

    # Large, smooth undulations.
    for _ in range(8):
        wavelength = rng.uniform(0.25, 1.2)
        ang = rng.uniform(0, 2 * math.pi)
        k = 2 * math.pi / wavelength
        static += (
            s
            * rng.uniform(0.8, 2.2)
            * 1e-3
            * np.cos(k * (math.cos(ang) * X + math.sin(ang) * Y) + rng.uniform(0, 2 * math.pi))
        )

    def gauss(cx: float, cy: float, amp: float, sigma: float) -> np.ndarray:
        return amp * np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / (2 * sigma * sigma))

    def around(r_min: float, r_max: float) -> tuple[float, float]:
        r = rng.uniform(r_min, r_max)
        a = rng.uniform(0, 2 * math.pi)
        return c[0] + r * math.cos(a), c[1] + r * math.sin(a)

    # Mounds and pits.
    occupied = [(crater.x, crater.y, crater.rim_radius + 2 * crater.rim_sigma)]  # (x, y, radius)
    for _ in range(4):
        mx, my = around(0.12, 0.42)
        amplitude = s * rng.uniform(0.010, 0.022)  # drawn before the width, as ever
        sigma = rng.uniform(0.045, 0.09)
        static += gauss(mx, my, amplitude, sigma)
        occupied.append((mx, my, 1.5 * sigma))
    for _ in range(2):
        px, py = around(0.15, 0.42)
        amplitude = -s * rng.uniform(0.008, 0.014)
        sigma = rng.uniform(0.04, 0.07)
        static += gauss(px, py, amplitude, sigma)
        occupied.append((px, py, 1.5 * sigma))
    gx, gy = around(0.15, 0.3)
    mound = (gx, gy, s * rng.uniform(0.012, 0.018), rng.uniform(0.05, 0.07))
    occupied.append((gx, gy, 1.5 * mound[3]))

    # Fine roughness (about 1.5 cm features, 0.2 mm).
    size = float(x[-1] - x[0])
    roughness = s * 2e-4 * smooth_noise(rng, X.shape, size, 0.015).astype(np.float64)
    if silt_fraction is not None:  # silt drapes the sand smooth
        roughness *= 1.0 - silt_fraction.astype(np.float64)
    static += roughness

    ripple_dir = rng.uniform(0, math.pi)
    ripple_wavelength = rng.uniform(0.045, 0.06)
    ripple_amp = s * rng.uniform(0.0012, 0.0018)
    ripple_bend = (rng.uniform(0.3, 0.6), rng.uniform(0.25, 0.4), rng.uniform(0, 2 * math.pi))
    envelope = 0.75 + 0.25 * smooth_noise(rng, X.shape, size, 0.3).astype(np.float64)
    r2 = (X - crater.x) ** 2 + (Y - crater.y) ** 2
    envelope *= 1.0 - np.exp(-r2 / (2 * (0.6 * crater.rim_radius) ** 2))  # no ripples in the nest
    # Steep sand castles on flat sand (away from the nest and the mounds), calm sand on and around them.
    bowers = make_bowers(config, c, rig_radius(config) + 0.15, occupied) if config.bowers else ()
    if bowers:
        elevation, calm = bower_relief(bowers, x, y)
        static += elevation
        envelope *= calm
    if silt_fraction is not None:  # silt fills the ripples
        envelope *= 1.0 - silt_fraction.astype(np.float64)
    return _Relief(
        static=static,
        mound=mound,
        crater=crater,
        ripple_dir=ripple_dir,
        ripple_wavelength=ripple_wavelength,
        ripple_amp=ripple_amp,
        ripple_bend=ripple_bend,
        ripple_envelope=envelope,
        bowers=bowers,
    )


def _elevation(
    relief: _Relief, X: np.ndarray, Y: np.ndarray, step: int, config: SyntheticSurveyConfig
) -> np.ndarray:
    """Elevation (up positive, m) at frame step ``step`` (0, 1, …)."""
    growth = config.change_per_frame * step
    e = relief.static.copy()
    gx, gy, amp, sigma = relief.mound
    e += (amp + growth) * np.exp(-((X - gx) ** 2 + (Y - gy) ** 2) / (2 * sigma * sigma))
    cr = relief.crater
    r = np.sqrt((X - cr.x) ** 2 + (Y - cr.y) ** 2)
    e -= (cr.depth + growth) * np.exp(-(r * r) / (2 * cr.bowl_sigma**2))
    # The sand dug out of the bowl piles up on the rim.
    e += (cr.rim_height + 0.3 * growth) * np.exp(-((r - cr.rim_radius) ** 2) / (2 * cr.rim_sigma**2))
    # Sinuous, slightly asymmetric ripples drifting along their direction.
    u = math.cos(relief.ripple_dir) * X + math.sin(relief.ripple_dir) * Y
    v = -math.sin(relief.ripple_dir) * X + math.cos(relief.ripple_dir) * Y
    bend_amp, bend_wl, bend_ph = relief.ripple_bend
    phase = 2 * math.pi * (u - config.ripple_drift * step) / relief.ripple_wavelength
    phase = phase + bend_amp * np.sin(2 * math.pi * v / bend_wl + bend_ph)
    e += relief.ripple_amp * relief.ripple_envelope * (np.sin(phase) + 0.25 * np.sin(2 * phase))
    return e


def terrain_grid(config: SyntheticSurveyConfig) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) node coordinates of the heightfield grid: a square centred below the rig."""
    n = round(config.terrain_size / config.terrain_cell)
    c = rig_center(config)
    half = n * config.terrain_cell / 2
    x = c[0] - half + config.terrain_cell * np.arange(n + 1)
    y = c[1] - half + config.terrain_cell * np.arange(n + 1)
    return x, y


# --------------------------------------------------------------------------------------------
# Everything
# --------------------------------------------------------------------------------------------


def ripple_wavelength(config: SyntheticSurveyConfig) -> float:
    """The survey's sand-ripple wavelength, metres (informative: finer ripples make finer changes)."""
    x, y = terrain_grid(config)
    return _make_relief(config, x, y, make_crater(config)).ripple_wavelength


def make_terrain(config: SyntheticSurveyConfig) -> Terrain:
    """The synthetic bottom for frames ``0 … n_frames - 1`` (deterministic for ``config.seed``).

    The mean world Z of frame 0 is exactly ``config.bottom_z``. The texture is made in a second
    thread while the heightfields are computed (independent random streams: same result).
    """
    crater = make_crater(config)
    center, radius = rig_center(config)[:2], rig_radius(config)
    with torch_threads(1), ThreadPoolExecutor(max_workers=1) as pool:
        texture_job = pool.submit(make_texture, config, crater)
        x, y = terrain_grid(config)
        silt = make_silt_patches(config, center, radius + 0.1) if config.silt_patches else ()
        fraction, _, silt_mask = silt_fields(silt, x, y) if silt else (None, None, None)
        relief = _make_relief(config, x, y, crater, fraction)
        X, Y = np.meshgrid(x, y)
        elev = np.stack([_elevation(relief, X, Y, f, config) for f in range(config.n_frames)])
        offset = float(elev[0].mean())
        z = config.bottom_z - (elev - offset)
        texture, origin, texel = texture_job.result()
    return Terrain(
        x=x,
        y=y,
        z=z,
        frame_indices=np.arange(config.n_frames),
        texture=texture,
        texture_origin=origin,
        texel_size=texel,
        crater=crater,
        bowers=relief.bowers,
        silt=silt,
        silt_mask=silt_mask,
    )
