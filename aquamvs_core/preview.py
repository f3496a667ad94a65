"""Small preview images (PNG bytes) for materialization metadata and reports."""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np


def mosaic(images: dict[str, np.ndarray], tile_width: int = 200, label: bool = True) -> np.ndarray:
    """Grid of downscaled RGB images (H, W, 3) uint8, in dict order, each labelled with its key."""
    if not images:
        raise ValueError("no images to tile")
    first = next(iter(images.values()))
    h, w = first.shape[:2]
    tile_h = max(1, round(h * tile_width / w))
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    canvas = np.zeros((rows * tile_h, cols * tile_width, 3), dtype=np.uint8)
    for i, (name, img) in enumerate(images.items()):
        tile = cv2.resize(np.ascontiguousarray(img), (tile_width, tile_h), interpolation=cv2.INTER_AREA)
        if tile.ndim == 2:
            tile = np.repeat(tile[..., None], 3, axis=-1)
        if label:
            cv2.putText(tile, name, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
        r, c = divmod(i, cols)
        canvas[r * tile_h : (r + 1) * tile_h, c * tile_width : (c + 1) * tile_width] = tile
    return canvas


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB (H, W, 3) or grey (H, W) uint8 image."""
    bgr = image[..., ::-1] if image.ndim == 3 else image
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def height_map_preview(points: np.ndarray, colors: np.ndarray | None = None, size: int = 320) -> np.ndarray:
    """Top-down view of a point cloud (N, 3) (world X right, Y down): the points' colours (N, 3)
    uint8 if given, else their world Z as grey (deeper = darker). Returns (size, size', 3) uint8."""
    pts = np.asarray(points, dtype=np.float64)
    canvas_h = size
    if len(pts) == 0:
        return np.zeros((canvas_h, size, 3), dtype=np.uint8)
    lo, hi = pts[:, :2].min(axis=0), pts[:, :2].max(axis=0)
    scale = (size - 1) / max(float((hi - lo).max()), 1e-9)
    width = max(1, round((hi[0] - lo[0]) * scale) + 1)
    height = max(1, round((hi[1] - lo[1]) * scale) + 1)
    col = np.round((pts[:, 0] - lo[0]) * scale).astype(np.int64)
    row = np.round((pts[:, 1] - lo[1]) * scale).astype(np.int64)
    if colors is None:
        z = pts[:, 2]
        grey = 255 * (1 - (z - z.min()) / max(float(np.ptp(z)), 1e-9))
        colors = np.repeat(grey[:, None], 3, axis=1)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[row, col] = np.asarray(colors, dtype=np.uint8)
    return image


def bar_chart(
    labels: list[str], series: dict[str, list[float]], title: str = "", width: int = 640, bar_height: int = 16
) -> np.ndarray:
    """Horizontal grouped bar chart (RGB uint8): one group per label, one bar per series."""
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    names = list(series)
    top, left, right = 28, 170, 70
    group = bar_height * len(names) + 10
    height = top + group * len(labels) + 12 + 18 * len(names)
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    peak = max((v for values in series.values() for v in values if np.isfinite(v)), default=1.0) or 1.0
    scale = (width - left - right) / peak
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(image, title, (8, 18), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for i, label in enumerate(labels):
        y0 = top + i * group
        cv2.putText(image, label[:24], (6, y0 + group // 2), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        for j, name in enumerate(names):
            value = series[name][i]
            y = y0 + j * bar_height
            length = round(float(value) * scale) if np.isfinite(value) else 0
            cv2.rectangle(
                image, (left, y), (left + length, y + bar_height - 3), colours[j % len(colours)], -1
            )
            cv2.putText(
                image, f"{value:.3g}", (left + length + 4, y + bar_height - 5), font, 0.38, (0, 0, 0), 1
            )
    for j, name in enumerate(names):
        y = top + group * len(labels) + 8 + 18 * j
        cv2.rectangle(image, (8, y), (22, y + 12), colours[j % len(colours)], -1)
        cv2.putText(image, name, (28, y + 11), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return image


# --------------------------------------------------------------------------------------------
# Heightfields and change maps (per-cell grids; row j is world Y, column i world X)
# --------------------------------------------------------------------------------------------

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _valid_box(valid: np.ndarray, pad: int = 2) -> tuple[slice, slice]:
    """Rows and columns of the bounding box of ``valid`` (the whole array if none), padded."""
    rows, cols = np.nonzero(np.any(valid, axis=1))[0], np.nonzero(np.any(valid, axis=0))[0]
    if rows.size == 0:
        return slice(None), slice(None)
    return (
        slice(max(rows[0] - pad, 0), rows[-1] + pad + 1),
        slice(max(cols[0] - pad, 0), cols[-1] + pad + 1),
    )


def _fit(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """``image`` scaled so that its longer side is ``size`` pixels (area averaging when shrinking),
    and the scale (output pixels per input pixel)."""
    scale = size / max(image.shape[:2])
    out_wh = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    return cv2.resize(np.ascontiguousarray(image), out_wh, interpolation=interp), scale


def _scale_bar(image: np.ndarray, px_per_m: float, colour: tuple[int, int, int] = (0, 0, 0)) -> None:
    """Draw a length scale bar (a round number of mm, about a fifth of the width) bottom left."""
    target = image.shape[1] / 5 / px_per_m * 1e3  # mm
    length_mm = next(v for v in (1000, 500, 200, 100, 50, 20, 10, 5, 2, 1) if v <= max(target, 1))
    length = max(1, round(length_mm * 1e-3 * px_per_m))
    y = image.shape[0] - 10
    cv2.line(image, (10, y), (10 + length, y), colour, 3)
    cv2.putText(image, f"{length_mm} mm", (10, y - 6), _FONT, 0.45, colour, 1, cv2.LINE_AA)


def hillshade(
    z: np.ndarray, cell: float, size: int = 480, azimuth_deg: float = 315.0, altitude_deg: float = 45.0
) -> np.ndarray:
    """Shaded relief of a heightfield ``z`` (ny, nx), world Z down, metres, on cells of ``cell``
    metres, lit from ``azimuth_deg`` (clockwise from −Y, "north" up in the picture) at
    ``altitude_deg``; cropped to the cells with a height, NaN in pale blue, with a scale bar.
    Returns (H, W, 3) uint8 RGB, longer side ``size``."""
    valid = np.isfinite(z)
    rows, cols = _valid_box(valid)
    z, valid = z[rows, cols].astype(np.float64), valid[rows, cols]
    elev = -np.where(valid, z, np.nanmean(z) if valid.any() else 0.0)  # up positive
    gy, gx = np.gradient(elev, cell)
    az, alt = math.radians(azimuth_deg), math.radians(altitude_deg)
    # Surface normal (-gx, -gy, 1) against the light (sin az, -cos az) horizontally (image "up" is -Y).
    lx, ly, lz = math.cos(alt) * math.sin(az), -math.cos(alt) * math.cos(az), math.sin(alt)
    shade = (lz - gx * lx - gy * ly) / np.sqrt(1 + gx * gx + gy * gy)
    grey = np.clip(255 * (0.15 + 0.85 * np.clip(shade, 0, 1)), 0, 255).astype(np.uint8)
    image = np.repeat(grey[..., None], 3, axis=2)
    image[~valid] = (200, 220, 235)
    image, scale = _fit(image, size)
    _scale_bar(image, scale / cell)
    return image


def diverging_colours(t: np.ndarray) -> np.ndarray:
    """RGB uint8 (..., 3) of ``t`` in [-1, 1]: blue (−1) through white (0) to red (+1)."""
    t = np.clip(np.nan_to_num(t), -1.0, 1.0)[..., None]
    blue, white, red = np.array([33, 102, 172.0]), np.array([247, 247, 247.0]), np.array([178, 24, 43.0])
    out = np.where(t < 0, white + (-t) * (blue - white), white + t * (red - white))
    return out.round().astype(np.uint8)


def change_map(
    dz: np.ndarray, lod: np.ndarray, cell: float, vmax: float | None = None, size: int = 480, title: str = ""
) -> np.ndarray:
    """A change map: ``dz`` (ny, nx, metres, positive = deeper) in diverging colours (red: deeper,
    blue: raised) up to ``vmax`` (default: the 99th percentile of |dz|), cells with
    ``|dz| <= lod`` grey ("no detectable change"), unknown cells white; with a colour bar in mm
    and a length scale bar. Returns (H, W, 3) uint8 RGB."""
    valid = np.isfinite(dz)
    rows, cols = _valid_box(valid)
    dz, lod, valid = dz[rows, cols].astype(np.float64), lod[rows, cols], valid[rows, cols]
    if vmax is None:
        vmax = float(np.quantile(np.abs(dz[valid]), 0.99)) if valid.any() else 1e-3
    vmax = max(vmax, 1e-6)
    image = diverging_colours(dz / vmax)
    image[valid & ~(np.abs(dz) > lod)] = (150, 150, 150)
    image[~valid] = (255, 255, 255)
    image, scale = _fit(image, size)
    _scale_bar(image, scale / cell)
    bar_w, pad = 90, 8
    canvas = np.full((max(image.shape[0], 200) + 24, image.shape[1] + bar_w, 3), 255, np.uint8)
    canvas[24 : 24 + image.shape[0], : image.shape[1]] = image
    cv2.putText(canvas, title[:60], (6, 17), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    x0, top, bottom = image.shape[1] + pad, 34, canvas.shape[0] - 40
    ramp = np.linspace(1, -1, bottom - top)[:, None].repeat(16, axis=1)
    canvas[top:bottom, x0 : x0 + 16] = diverging_colours(ramp)
    for frac in (0.0, 0.5, 1.0):
        y = round(top + frac * (bottom - top - 1))
        value = vmax * (1 - 2 * frac) * 1e3
        cv2.putText(canvas, f"{value:+.2f}", (x0 + 19, y + 4), _FONT, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, "dz mm", (x0 - 2, top - 6), _FONT, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (x0, bottom + 8), (x0 + 16, bottom + 20), (150, 150, 150), -1)
    cv2.putText(canvas, "< LoD", (x0 + 19, bottom + 19), _FONT, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def line_chart(
    x: list[float],
    series: dict[str, list[float]],
    title: str = "",
    x_label: str = "",
    width: int = 640,
    height: int = 320,
) -> np.ndarray:
    """Line chart (RGB uint8) of several series over ``x``, with a zero line, axis ranges and a legend."""
    colours = [(178, 24, 43), (33, 102, 172), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 30, 50
    values = [v for s in series.values() for v in s if np.isfinite(v)]
    lo, hi = min([0.0, *values]), max([0.0, *values])
    hi = hi if hi > lo else lo + 1.0
    x_lo, x_hi = (min(x), max(x)) if x else (0.0, 1.0)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1.0

    def px(xv: float, yv: float) -> tuple[int, int]:
        return (
            round(left + (xv - x_lo) / (x_hi - x_lo) * (width - left - right)),
            round(height - bottom - (yv - lo) / (hi - lo) * (height - top - bottom)),
        )

    cv2.putText(image, title[:80], (8, 18), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(image, px(x_lo, lo), px(x_hi, hi), (180, 180, 180), 1)
    cv2.line(image, px(x_lo, 0.0), px(x_hi, 0.0), (120, 120, 120), 1)
    for yv in (lo, 0.0, hi):
        cv2.putText(image, f"{yv:.3g}", (4, px(x_lo, yv)[1] + 4), _FONT, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    for xv in (x_lo, x_hi):
        cv2.putText(image, f"{xv:g}", (px(xv, lo)[0] - 8, height - bottom + 16), _FONT, 0.38, (0, 0, 0), 1)
    cv2.putText(
        image, x_label, (width // 2 - 40, height - bottom + 32), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA
    )
    for k, (name, ys) in enumerate(series.items()):
        colour = colours[k % len(colours)]
        points = [px(a, b) for a, b in zip(x, ys, strict=True) if np.isfinite(b)]
        for p, q in itertools.pairwise(points):
            cv2.line(image, p, q, colour, 2, cv2.LINE_AA)
        for p in points:
            cv2.circle(image, p, 3, colour, -1)
        y = height - 14
        x0 = left + k * 150
        cv2.rectangle(image, (x0, y - 9), (x0 + 14, y + 1), colour, -1)
        cv2.putText(image, name[:18], (x0 + 18, y), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return image
