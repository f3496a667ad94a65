"""Synthetic bottom texture, and the noise both the relief and the texture are made of.

**Texture.** An RGB image in world ``(x, y)`` (texel centres on a regular grid covering the same
square), values in ``[0, 1]``, attached to ``(x, y)`` (the relief changes under it, not the texture):
sand tones mixed at large scale, multi-octave luminance noise from 2 mm to 6 cm, individual grains
(quartz, dark minerals, iron-stained) of 0.5–1 mm, pebbles and shell fragments, darker detritus in
the nest and gravel on its rim; optionally low-contrast silt patches (:mod:`.silt`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from aquamvs_core.synthetic.config import SyntheticSurveyConfig
from aquamvs_core.synthetic.rig import rig_center, rig_radius
from aquamvs_core.synthetic.silt import apply_silt, make_silt_patches, silt_fields

if TYPE_CHECKING:  # the nest shapes the texture; the terrain module makes it
    from aquamvs_core.synthetic.terrain import Crater

TEXTURE_STREAM = 3


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
    c = rig_center(config)
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

    # Silt patches: the same colour at large scale, far less detail (aquamvs_core.synthetic.silt).
    if config.silt_patches:
        patches = make_silt_patches(config, c[:2], rig_radius(config) + 0.1)
        fraction, contrast, _ = silt_fields(patches, xs, ys)
        img = apply_silt(img, fraction, contrast, texel, gaussian_blur)

    # Band-limit to what a camera can resolve: a pixel sees ~2 mm of the bottom and the renderer
    # point-samples the texture (supersampled), so sub-millimetre detail would only alias.
    img = gaussian_blur(img.astype(np.float32), config.texture_blur / texel)
    return np.ascontiguousarray(np.clip(img, 0.02, 0.98), dtype=np.float32), origin, texel
