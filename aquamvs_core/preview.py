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
