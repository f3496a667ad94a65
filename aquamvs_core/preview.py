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
