"""Keys: how frames, (frame, pair) partitions and store products are named.

* A frame is ``f`` and at least 6 digits of its index (``f000123``): :func:`frame_key`,
  :func:`frame_index`. It names store groups and frame partitions.
* A directed camera pair is ``"<ref>-<src>"`` (:attr:`aquamvs_core.stages.pairs.CameraPair.key`).
* A (frame, pair) partition is ``"<frame>|<pair>"`` (Dagster sorts the dimensions of a
  multi-partition by name: frame, then pair): :func:`frame_pair_key`, :func:`split_frame_pair_key`.
* A store product is named after the asset that writes it (:class:`Product`), at
  ``products/<product>/<frame>[/<part>]`` (:func:`product_path`).
"""

from __future__ import annotations

import operator
import re
from enum import StrEnum

__all__ = [
    "FRAME_KEY_DIGITS",
    "Product",
    "frame_index",
    "frame_key",
    "frame_pair_key",
    "product_path",
    "split_frame_pair_key",
]

FRAME_KEY_DIGITS = 6
_FRAME_KEY = re.compile(r"f([0-9]{6,})")  # FRAME_KEY_DIGITS or more
#: Separator of the (frame, pair) partition key.
FRAME_PAIR_SEPARATOR = "|"


def frame_key(index: int) -> str:
    """Store and partition key of frame ``index``: ``"f"`` and at least 6 digits (``f000123``)."""
    i = operator.index(index)
    if i < 0:
        raise ValueError(f"frame index must be non-negative, got {i}")
    return f"f{i:0{FRAME_KEY_DIGITS}d}"


def frame_index(key: str) -> int:
    """Inverse of :func:`frame_key`; rejects anything that :func:`frame_key` would not produce."""
    m = _FRAME_KEY.fullmatch(key) if isinstance(key, str) else None
    if m is None or frame_key(int(m[1])) != key:
        raise ValueError(f"invalid frame key {key!r}: expected 'f' and at least 6 digits, e.g. 'f000123'")
    return int(m[1])


def frame_pair_key(frame: str, pair: str) -> str:
    """The (frame, pair) partition key ``"<frame>|<pair>"``."""
    return f"{frame}{FRAME_PAIR_SEPARATOR}{pair}"


def split_frame_pair_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`frame_pair_key`: ``(frame, pair)``; the frame part is validated."""
    frame, sep, pair = key.partition(FRAME_PAIR_SEPARATOR)
    if not sep or not pair:
        raise ValueError(f"invalid frame|pair key {key!r}: expected '<frame>|<ref>-<src>'")
    frame_index(frame)
    return frame, pair


class Product(StrEnum):
    """Products of the pipeline in the store, named after the assets that write them."""

    SPARSE_MATCHES = "sparse_matches"  # per pair: matches and triangulated points
    SPARSE_CLOUD = "sparse_cloud"  # per frame: kept points, per-camera depth ranges
    PAIRWISE_DEPTHS = "pairwise_depths"  # per pair: depth of the reference camera
    CAMERA_DEPTHS = "camera_depths"  # per camera: its pairs combined
    FUSED_CLOUD = "fused_cloud"  # per frame
    MESH = "mesh"  # per frame
    HEIGHTFIELD = "heightfield"  # per frame: the bed on the survey grid
    BED_CHANGE = "bed_change"  # per frame and earlier frame: dz and its level of detection


def product_path(product: Product | str, frame: str, part: str | None = None) -> str:
    """``<product>/<frame>[/<part>]``: a product's path under ``products/`` in the store (``part``
    is a pair key, a camera name, or the earlier frame of a bed change)."""
    return f"{Product(product).value}/{frame}" + (f"/{part}" if part else "")
