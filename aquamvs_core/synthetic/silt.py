"""Low-contrast silt patches: smooth areas of the bed with 5–10× less texture contrast than sand.

A patch ``i`` is a lobed disc: the point at distance ``r`` and azimuth ``θ`` from its centre is
inside when ``r <= ρ_i(θ) = R_i (1 + Σ_k a_k cos(k θ + φ_k))`` (``k = 2, 3, 4``). Its silt fraction
``m_i = clip((ρ_i(θ) - r) / EDGE + 1/2, 0, 1)`` fades over ``EDGE`` across the boundary; the
ground-truth mask of a grid cell is ``m >= 1/2`` (the cell's node inside ``ρ``). Both are analytic,
so the texture (texel grid) and the ground truth (heightfield grid) agree.

In the texture, silt keeps the sand's large-scale colour (a Gaussian low-pass of ``LOWPASS``
metres, toned towards a grey-brown silt colour) and divides all finer detail (grains, pebbles,
the millimetre-to-centimetre luminance noise) by the patch's contrast factor, drawn in
``silt_contrast``: ``t' = L + (1 - m (1 - 1/c)) (t - low(t))`` with ``L = low(t)`` toned by ``m``.
The sand ripples are calmed inside the silt as well (silt settles in them), so the patches are
smooth in shape too. Patches lie within the rig's radius (plus 10 cm) of its centre.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from aquamvs_core.synthetic.config import SyntheticSurveyConfig

SILT_STREAM = 6
EDGE = 0.015  # m, width of the silt's soft boundary
LOWPASS = 0.015  # m, std of the low-pass that separates colour (kept) from detail (reduced)
SILT_TONE = np.array([0.50, 0.47, 0.38], dtype=np.float32)
TONE_WEIGHT = 0.4


@dataclass(frozen=True)
class SiltPatch:
    """A silt patch: centre (m), base radius (m), contrast factor, and its boundary's lobes
    ``(k, a_k, φ_k)``."""

    x: float
    y: float
    radius: float
    contrast: float
    lobes: tuple[tuple[int, float, float], ...]

    @property
    def extent(self) -> float:
        """Radius beyond which the patch has no silt."""
        return self.radius * (1 + sum(abs(a) for _, a, _ in self.lobes)) + EDGE


def make_silt_patches(
    config: SyntheticSurveyConfig, center: np.ndarray, radius: float
) -> tuple[SiltPatch, ...]:
    """``config.silt_patches`` patches with centres within ``radius`` of ``center`` (x, y)
    (deterministic for ``config.seed``; patches may overlap)."""
    rng = np.random.default_rng([config.seed, SILT_STREAM])
    patches = []
    for _ in range(config.silt_patches):
        r, a = radius * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        lobes = tuple(
            (k, float(rng.uniform(0.0, 0.12)), float(rng.uniform(0, 2 * math.pi))) for k in (2, 3, 4)
        )
        patches.append(
            SiltPatch(
                x=float(center[0] + r * math.cos(a)),
                y=float(center[1] + r * math.sin(a)),
                radius=float(rng.uniform(*config.silt_radius)),
                contrast=float(rng.uniform(*config.silt_contrast)),
                lobes=lobes,
            )
        )
    return tuple(patches)


def _window(p: SiltPatch, x: np.ndarray, y: np.ndarray) -> tuple[slice, slice]:
    cols = np.nonzero(np.abs(x - p.x) <= p.extent)[0]
    rows = np.nonzero(np.abs(y - p.y) <= p.extent)[0]
    if cols.size == 0 or rows.size == 0:
        return slice(0, 0), slice(0, 0)
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _inside_margin(p: SiltPatch, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``ρ(θ) - r`` (m): positive inside the patch's boundary."""
    dx, dy = X - p.x, Y - p.y
    theta = np.arctan2(dy, dx)
    rho = p.radius * (1 + sum(a * np.cos(k * theta + ph) for k, a, ph in p.lobes))
    return rho - np.hypot(dx, dy)


def silt_fields(
    patches: tuple[SiltPatch, ...], x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over the grid ``x`` (Nx,) × ``y`` (Ny,): the (Ny, Nx) float32 silt fraction ``m``, the
    (Ny, Nx) float32 contrast factor of the patch with the largest fraction (1 outside), and the
    (Ny, Nx) bool mask ``ρ(θ) >= r`` of any patch."""
    fraction = np.zeros((y.size, x.size), dtype=np.float32)
    contrast = np.ones((y.size, x.size), dtype=np.float32)
    mask = np.zeros((y.size, x.size), dtype=bool)
    for p in patches:
        rows, cols = _window(p, x, y)
        X, Y = np.meshgrid(x[cols], y[rows])
        margin = _inside_margin(p, X, Y)
        m = np.clip(margin / EDGE + 0.5, 0.0, 1.0).astype(np.float32)
        larger = m > fraction[rows, cols]
        fraction[rows, cols] = np.where(larger, m, fraction[rows, cols])
        contrast[rows, cols] = np.where(larger, np.float32(p.contrast), contrast[rows, cols])
        mask[rows, cols] |= margin >= 0
    return fraction, contrast, mask


def apply_silt(
    img: np.ndarray,
    fraction: np.ndarray,
    contrast: np.ndarray,
    texel: float,
    blur: Callable[[np.ndarray, float], np.ndarray],
) -> np.ndarray:
    """The texture ``img`` (H, W, 3) float32 with the silt of ``fraction`` and ``contrast`` (H, W)
    (see the module docstring); ``blur(img, sigma_texels)`` is the Gaussian low-pass, applied at a
    quarter of the resolution when the texels are much finer than the low-pass (same result to a
    fraction of the detail, four times faster)."""
    sigma = LOWPASS / texel
    h, w = img.shape[:2]
    if sigma >= 8 and min(h, w) >= 64:
        small = cv2.resize(img, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
        low = cv2.resize(blur(small, sigma / 4), (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        low = blur(img, sigma)
    m = fraction[..., None]
    detail_gain = 1.0 - m * (1.0 - 1.0 / contrast[..., None])
    tone = low * (1 - TONE_WEIGHT * m) + SILT_TONE * (TONE_WEIGHT * m)
    silt = tone + detail_gain * (img - low)
    return np.where(m > 0, silt, img).astype(np.float32)  # texels outside the silt stay exact
