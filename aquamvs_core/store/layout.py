"""The survey's Zarr (v3) store: calibration and undistorted frames, with atomic frame commits.

The root is a local path (default) or any fsspec URL (``s3://bucket/survey``, ``memory://x``).
Layout::

    <root>/                       group, attrs {"aquamvs_layout": 2, "survey": name}
      calibration/                group, attrs {"calibration": <AquaCal JSON dict>, "calibration_hash",
                                                "source", "undistorted_K": {cam: 3x3}, "cameras": [...],
                                                "version", "complete", "written_at"}
        v<id>/valid_mask/<camera> (H, W) bool: undistorted-image validity, chunk = whole image
      frames/<frame_key>/         group, attrs {"frame_index", "calibration_hash", "sources": {cam: path},
                                                "source_hash", "fingerprint", "cameras": [...],
                                                "version", "complete", "written_at", "write_id"}
        v<id>/<camera>            (H, W, 3) uint8 RGB undistorted image, chunks = (H, W, 3)
                                  (consumers read whole images: one object per image on object stores)
      pairs/<ref>-<src>/          group, attrs: pair geometry (baseline, overlap through the water, ...)
      tables/<name>.csv           tables (e.g. benchmark results), written with pandas, atomically
      products/<asset>/<frame>[/<part>]/   a stage's product (see :mod:`aquamvs_core.steps`), attrs
                                  {"fingerprint", "summary", provenance, "version", "complete", ...}
        v<id>/<array>             e.g. products/pairwise_depths/f000001/cam0-cam1/v…/depth

Frame keys are :func:`aquamvs_core.survey.keys.frame_key` strings (``f000123``).

**Commit protocol** (:mod:`aquamvs_core.store.commit`): frames, products and the calibration hold
their arrays in versions; a group's attrs name its committed version and say ``complete: true``,
written in one put after every array of the version. A reader sees the previous version or the new
one, complete, never a mixture; a crash leaves the previous version committed; of two writers, the
last commit wins. :class:`~aquamvs_core.store.survey_store.SurveyStore` validates everything first
(bad input writes nothing). A reader of a frame re-checks its ``write_id`` when a read fails.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import zarr
from zarr.abc.store import Store
from zarr.errors import ContainsGroupError
from zarr.storage import FsspecStore, LocalStore

from aquamvs_core.survey import is_url

#: 2: groups hold their contents in committed versions (see :mod:`aquamvs_core.store.commit`).
LAYOUT_VERSION = 2
CALIBRATION = "calibration"
VALID_MASK = "valid_mask"
FRAMES = "frames"
PAIRS = "pairs"
PRODUCTS = "products"
RESERVED_FRAME_ATTRS = ("complete", "version", "cameras", "written_at", "write_id")


class StoreError(Exception):
    """A store that cannot be opened, or a missing calibration; the message names the root."""


class StoreKeyError(StoreError, KeyError):
    """A missing frame or camera (a KeyError whose message is not quoted)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class FrameNotFoundError(StoreKeyError):
    """The frame has no group in the store."""


class IncompleteFrameError(FrameNotFoundError):
    """The frame's group exists but is not committed (a write failed or is in progress)."""


def open_zarr_store(
    root: str | Path, read_only: bool = False, storage_options: dict[str, Any] | None = None
) -> Store:
    """The Zarr store for ``root``: a :class:`LocalStore` for a path or ``file://`` URL, else an
    :class:`FsspecStore` for the URL, its filesystem made with ``storage_options`` (e.g. s3fs's
    ``endpoint_url``, ``key``, ``secret``; without them s3fs reads the ``AWS_*`` environment).

    fsspec's listings cache is off by default: other processes (Celery workers) write the store,
    and a cached listing would hide their products from this one for as long as it lives."""
    root = str(root)
    if is_url(root) and not root.startswith("file://"):
        options = {"use_listings_cache": False, **(storage_options or {})}
        return FsspecStore.from_url(root, read_only=read_only, storage_options=options)
    path = root.removeprefix("file://")
    return LocalStore(Path(path).expanduser(), read_only=read_only)


def require_group(parent: zarr.Group, path: str, attempts: int = 5) -> zarr.Group:
    """``parent.require_group(path)``, safe against another process creating the same group (or one
    of its parents) at the same moment: zarr then raises ContainsGroupError, and the group that the
    other process made is opened instead."""
    for attempt in range(attempts):
        try:
            return parent.require_group(path)
        except ContainsGroupError:
            time.sleep(0.02 * (attempt + 1))
    return parent.require_group(path)
