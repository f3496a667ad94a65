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

**Texture.** An RGB image in world ``(x, y)`` (texel centres on a regular grid covering the same
square), values in ``[0, 1]``, attached to ``(x, y)`` (the relief changes under it, not the texture):
sand tones mixed at large scale, multi-octave luminance noise from 2 mm to 6 cm, individual grains
(quartz, dark minerals, iron-stained) of 0.5–1 mm, pebbles and shell fragments, darker detritus in
the nest and gravel on its rim.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from aquamvs_core.runtime import torch_threads
from aquamvs_core.synthetic.config import SyntheticSurveyConfig
from aquamvs_core.synthetic.rig import ring_center

TERRAIN_STREAM = 2
TEXTURE_STREAM = 3
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
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    frame_indices: np.ndarray
    texture: np.ndarray
    texture_origin: tuple[float, float]
    texel_size: float
    crater: Crater | None = None

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
# Noise helpers
# --------------------------------------------------------------------------------------------


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], size: float, scale: float) -> np.ndarray:
    """(H, W) float32 noise of unit std with features of ~``scale`` metres over a ``size`` square:
    a random lattice of spacing ~``scale`` upsampled bicubically to ``shape``."""
    m = max(2, round(size / scale)) + 1
    lattice = torch.from_numpy(rng.standard_normal((1, 1, m, m), dtype=np.float32))
    if m >= min(shape):
        out = F.interpolate(lattice, size=shape, mode="bilinear", align_corners=True)
    else:
        out = F.interpolate(lattice, size=shape, mode="bicubic", align_corners=True)
    out = out[0, 0]
    out = (out - out.mean()) / out.std().clamp_min(1e-12)
    return out.numpy()


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (reflected borders) of an (H, W) or (H, W, C) float32 array; sigma in texels."""
    if sigma <= 0:
        return img
    radius = max(1, math.ceil(3 * sigma))
    src = np.ascontiguousarray(img, dtype=np.float32)
    return cv2.GaussianBlur(src, (2 * radius + 1, 2 * radius + 1), sigma, borderType=cv2.BORDER_REFLECT_101)


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


def make_crater(config: SyntheticSurveyConfig) -> Crater:
    """The fish nest: within 8 cm of the rig centre (its own random stream, shared by the relief and
    the texture)."""
    rng = np.random.default_rng([config.seed, CRATER_STREAM])
    s = config.relief_scale
    c = ring_center(config)[:2]
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


def _make_relief(config: SyntheticSurveyConfig, x: np.ndarray, y: np.ndarray, crater: Crater) -> _Relief:
    rng = np.random.default_rng([config.seed, TERRAIN_STREAM])
    s = config.relief_scale
    c = ring_center(config)[:2]
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
    for _ in range(4):
        mx, my = around(0.12, 0.42)
        static += gauss(mx, my, s * rng.uniform(0.010, 0.022), rng.uniform(0.045, 0.09))
    for _ in range(2):
        px, py = around(0.15, 0.42)
        static += gauss(px, py, -s * rng.uniform(0.008, 0.014), rng.uniform(0.04, 0.07))
    gx, gy = around(0.15, 0.3)
    mound = (gx, gy, s * rng.uniform(0.012, 0.018), rng.uniform(0.05, 0.07))

    # Fine roughness (about 1.5 cm features, 0.2 mm).
    size = float(x[-1] - x[0])
    static += s * 2e-4 * smooth_noise(rng, X.shape, size, 0.015).astype(np.float64)

    ripple_dir = rng.uniform(0, math.pi)
    ripple_wavelength = rng.uniform(0.045, 0.06)
    ripple_amp = s * rng.uniform(0.0012, 0.0018)
    ripple_bend = (rng.uniform(0.3, 0.6), rng.uniform(0.25, 0.4), rng.uniform(0, 2 * math.pi))
    envelope = 0.75 + 0.25 * smooth_noise(rng, X.shape, size, 0.3).astype(np.float64)
    r2 = (X - crater.x) ** 2 + (Y - crater.y) ** 2
    envelope *= 1.0 - np.exp(-r2 / (2 * (0.6 * crater.rim_radius) ** 2))  # no ripples in the nest
    return _Relief(
        static=static,
        mound=mound,
        crater=crater,
        ripple_dir=ripple_dir,
        ripple_wavelength=ripple_wavelength,
        ripple_amp=ripple_amp,
        ripple_bend=ripple_bend,
        ripple_envelope=envelope,
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
    c = ring_center(config)
    half = n * config.terrain_cell / 2
    x = c[0] - half + config.terrain_cell * np.arange(n + 1)
    y = c[1] - half + config.terrain_cell * np.arange(n + 1)
    return x, y


# --------------------------------------------------------------------------------------------
# Texture
# --------------------------------------------------------------------------------------------

_SAND_LIGHT = np.array([0.84, 0.74, 0.55], dtype=np.float32)
_SAND_DARK = np.array([0.68, 0.57, 0.40], dtype=np.float32)
_SILT = np.array([0.50, 0.47, 0.38], dtype=np.float32)
_PEBBLE_COLOURS = np.array(
    [
        [0.55, 0.55, 0.53],  # grey
        [0.30, 0.30, 0.31],  # dark basalt
        [0.52, 0.39, 0.27],  # brown
        [0.72, 0.57, 0.37],  # ochre
        [0.86, 0.84, 0.79],  # quartzite
        [0.42, 0.33, 0.30],  # reddish brown
    ],
    dtype=np.float32,
)


def _draw_ellipses(
    img: np.ndarray,
    rng: np.random.Generator,
    centers: np.ndarray,
    radii: np.ndarray,
    colours: np.ndarray,
    origin: tuple[float, float],
    texel: float,
    light: np.ndarray,
    dome: float,
) -> None:
    """Paint soft-edged, shaded ellipses (pebbles, shells) into ``img`` (H, W, 3) in place.

    ``centers`` (N, 2) world xy, ``radii`` (N,) semi-major axes (m), ``colours`` (N, 3).
    """
    h, w, _ = img.shape
    edge = max(texel, 3e-4)
    for (cx, cy), a, col in zip(centers, radii, colours, strict=True):
        b = a * rng.uniform(0.55, 1.0)
        ang = rng.uniform(0, math.pi)
        ca, sa = math.cos(ang), math.sin(ang)
        j0 = max(0, math.floor((cx - a - origin[0]) / texel) - 1)
        j1 = min(w, math.ceil((cx + a - origin[0]) / texel) + 2)
        i0 = max(0, math.floor((cy - a - origin[1]) / texel) - 1)
        i1 = min(h, math.ceil((cy + a - origin[1]) / texel) + 2)
        if j0 >= j1 or i0 >= i1:
            continue
        px = origin[0] + texel * np.arange(j0, j1)[None, :] - cx
        py = origin[1] + texel * np.arange(i0, i1)[:, None] - cy
        pu = (ca * px + sa * py) / a
        pv = (-sa * px + ca * py) / b
        rho = np.sqrt(pu * pu + pv * pv)
        alpha = np.clip((1.0 - rho) * b / edge, 0.0, 1.0)[..., None]
        # Dome shading: the side facing the light is brighter.
        nz = np.sqrt(np.clip(1.0 - rho * rho, 0.0, 1.0))
        facing = (px * light[0] + py * light[1]) / a
        shade = (1.0 + dome * (facing - 0.3 * (1.0 - nz)))[..., None]
        mottle = 1.0 + 0.08 * rng.standard_normal((i1 - i0, j1 - j0, 1))
        patch = img[i0:i1, j0:j1]
        img[i0:i1, j0:j1] = patch * (1.0 - alpha) + alpha * (col * shade * mottle)


def make_texture(
    config: SyntheticSurveyConfig, crater: Crater | None = None
) -> tuple[np.ndarray, tuple[float, float], float]:
    """The sand texture: ``(image (H, W, 3) float32 in [0, 1], origin (x, y), texel size)``."""
    rng = np.random.default_rng([config.seed, TEXTURE_STREAM])
    texel = config.texel_size
    n = round(config.terrain_size / texel)
    c = ring_center(config)
    half = n * texel / 2
    origin = (float(c[0] - half), float(c[1] - half))
    size = n * texel
    shape = (n + 1, n + 1)
    xs = origin[0] + texel * np.arange(n + 1, dtype=np.float64)
    ys = origin[1] + texel * np.arange(n + 1, dtype=np.float64)

    # Large-scale sand colour mixing and silty patches.
    mix = smooth_noise(rng, shape, size, 0.25) + 0.6 * smooth_noise(rng, shape, size, 0.1)
    t = 1.0 / (1.0 + np.exp(-1.3 * mix))
    img = _SAND_LIGHT * (1 - t[..., None]) + _SAND_DARK * t[..., None]
    silt = np.clip(smooth_noise(rng, shape, size, 0.08) - 1.0, 0.0, 1.0)[..., None] * 0.4
    img = img * (1 - silt) + _SILT * silt

    # Multi-octave luminance (2 mm … 6 cm) with a little chroma.
    lum = np.ones(shape, dtype=np.float32)
    for scale, amp in (
        (0.06, 0.05),
        (0.03, 0.05),
        (0.016, 0.06),
        (0.008, 0.07),
        (0.004, 0.08),
        (0.002, 0.08),
    ):
        if scale >= 1.5 * texel:
            lum += amp * smooth_noise(rng, shape, size, scale)
    img = img * lum[..., None]
    chroma = smooth_noise(rng, shape, size, 0.01)
    img = img * (1.0 + 0.04 * chroma[..., None] * np.array([1.0, 0.2, -1.0], dtype=np.float32))

    # Grains: about half a millimetre, of four kinds.
    grain_px = max(1, round(5e-4 / texel))
    gshape = (math.ceil(shape[0] / grain_px), math.ceil(shape[1] / grain_px))
    kind = rng.uniform(size=gshape).astype(np.float32)
    value = rng.standard_normal(gshape, dtype=np.float32)
    if grain_px > 1:
        kind = np.repeat(np.repeat(kind, grain_px, 0), grain_px, 1)[: shape[0], : shape[1]]
        value = np.repeat(np.repeat(value, grain_px, 0), grain_px, 1)[: shape[0], : shape[1]]
    img = img * (1.0 + 0.07 * value[..., None])
    dark = (kind < 0.05)[..., None]
    bright = ((kind >= 0.05) & (kind < 0.09))[..., None]
    iron = ((kind >= 0.09) & (kind < 0.11))[..., None]
    img = np.where(dark, img * np.array([0.45, 0.45, 0.47], dtype=np.float32), img)
    img = np.where(bright, np.clip(img * 1.25 + 0.08, 0, 1), img)
    img = np.where(iron, img * np.array([1.05, 0.75, 0.55], dtype=np.float32), img)
    img = img.astype(np.float32)

    # Nest: darker detritus in the bowl, gravel on the rim.
    light = np.array([0.6, -0.8])
    if crater is not None:
        sig = 0.8 * crater.bowl_sigma
        cols = (xs >= crater.x - 5 * sig) & (xs <= crater.x + 5 * sig)
        rows = (ys >= crater.y - 5 * sig) & (ys <= crater.y + 5 * sig)
        if cols.any() and rows.any():
            X, Y = np.meshgrid(xs[cols], ys[rows])
            r2 = (X - crater.x) ** 2 + (Y - crater.y) ** 2
            bowl = (0.25 * np.exp(-r2 / (2 * sig * sig))).astype(np.float32)[..., None]
            sl = (
                slice(int(np.argmax(rows)), int(np.argmax(rows)) + int(rows.sum())),
                slice(int(np.argmax(cols)), int(np.argmax(cols)) + int(cols.sum())),
            )
            img[sl] = img[sl] * (1.0 - bowl) + bowl * np.array([0.30, 0.27, 0.20], np.float32)
        n_gravel = 120
        ang = rng.uniform(0, 2 * math.pi, n_gravel)
        rad = crater.rim_radius + rng.normal(0, 0.6 * crater.rim_sigma, n_gravel)
        centers = np.stack([crater.x + rad * np.cos(ang), crater.y + rad * np.sin(ang)], axis=1)
        radii = np.exp(rng.uniform(math.log(0.002), math.log(0.006), n_gravel))
        cols = _PEBBLE_COLOURS[rng.integers(0, len(_PEBBLE_COLOURS), n_gravel)]
        cols = cols * rng.uniform(0.85, 1.1, (n_gravel, 1)).astype(np.float32)
        _draw_ellipses(img, rng, centers, radii, cols, origin, texel, light, 0.3)

    # Pebbles and shell fragments scattered everywhere.
    area = size * size
    n_peb = round(160 * area)
    centers = np.stack([rng.uniform(xs[0], xs[-1], n_peb), rng.uniform(ys[0], ys[-1], n_peb)], axis=1)
    radii = np.exp(rng.uniform(math.log(0.002), math.log(0.012), n_peb))
    cols = _PEBBLE_COLOURS[rng.integers(0, len(_PEBBLE_COLOURS), n_peb)]
    cols = cols * rng.uniform(0.85, 1.1, (n_peb, 1)).astype(np.float32)
    _draw_ellipses(img, rng, centers, radii, cols, origin, texel, light, 0.3)
    n_shell = round(200 * area)
    centers = np.stack([rng.uniform(xs[0], xs[-1], n_shell), rng.uniform(ys[0], ys[-1], n_shell)], axis=1)
    radii = rng.uniform(0.001, 0.003, n_shell)
    cols = np.clip(np.array([0.92, 0.90, 0.84]) * rng.uniform(0.85, 1.05, (n_shell, 1)), 0, 1)
    _draw_ellipses(img, rng, centers, radii, cols.astype(np.float32), origin, texel, light, 0.15)

    # Band-limit to what a camera can resolve: a pixel sees ~2 mm of the bottom and the renderer
    # point-samples the texture (supersampled), so sub-millimetre detail would only alias.
    img = gaussian_blur(img.astype(np.float32), config.texture_blur / texel)
    return np.ascontiguousarray(np.clip(img, 0.02, 0.98), dtype=np.float32), origin, texel


# --------------------------------------------------------------------------------------------
# Everything
# --------------------------------------------------------------------------------------------


def make_terrain(config: SyntheticSurveyConfig) -> Terrain:
    """The synthetic bottom for frames ``0 … n_frames - 1`` (deterministic for ``config.seed``).

    The mean world Z of frame 0 is exactly ``config.bottom_z``. The texture is made in a second
    thread while the heightfields are computed (independent random streams: same result).
    """
    crater = make_crater(config)
    with torch_threads(1), ThreadPoolExecutor(max_workers=1) as pool:
        texture_job = pool.submit(make_texture, config, crater)
        x, y = terrain_grid(config)
        relief = _make_relief(config, x, y, crater)
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
    )
