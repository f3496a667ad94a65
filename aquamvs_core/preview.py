"""Small preview images (PNG bytes) for materialization metadata and reports."""

from __future__ import annotations

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
