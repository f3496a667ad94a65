"""The survey's Zarr (v3) store: calibration and undistorted frames, with atomic frame commits.

The root is a local path (default) or any fsspec URL (``s3://bucket/survey``, ``memory://x``).
Layout::

    <root>/                       group, attrs {"aquamvs_layout": 1, "survey": name}
      calibration/                group, attrs {"calibration": <AquaCal JSON dict>, "calibration_hash",
                                                "source", "undistorted_K": {cam: 3x3}, "cameras": [...],
                                                "written_at"}
        valid_mask/<camera>       (H, W) bool: undistorted-image validity, chunk = whole image
      frames/<frame_key>/         group, attrs {"frame_index", "calibration_hash", "sources": {cam: path},
                                                "cameras": [...], "complete": true, "written_at", "write_id"}
        <camera>                  (H, W, 3) uint8 RGB undistorted image, chunks = (H, W, 3)
                                  (consumers read whole images: one object per image on object stores)
      pairs/<ref>-<src>/          group, attrs: pair geometry (baseline, overlap through the water, ...)
      tables/<name>.csv           tables (e.g. benchmark results), written with pandas, atomically
      products/<stage>/<frame>/<part>/   group of arrays written by a pipeline stage (sparse matches,
                                  depth maps, clouds, meshes), committed like frames; e.g.
                                  products/depth/f000001/cam0-cam1/{depth, confidence}

Frame keys are :func:`aquamvs_core.survey.spec.frame_key` strings (``f000123``).

**Commit protocol.** A frame exists for readers only when its group's attrs say ``complete: true``.
:meth:`SurveyStore.write_frame` validates everything first (bad input writes nothing), then
replaces the attrs by ``complete: false``, writes the arrays, and writes the full attrs with
``complete: true`` last; a crash at any point leaves no complete frame that mixes old and new
images. A reader re-checks the attrs after reading and reports a frame rewritten meanwhile as
incomplete. The calibration group is committed the same way (its ``calibration_hash`` last).
Group attrs live in one metadata object per group, written with a single put (atomic on object
stores; temp file and rename on local disk). One writer per frame at a time is assumed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

from aquamvs_core.camera.calibration import Rig, parse_calibration, rig_to_dict
from aquamvs_core.survey.spec import frame_index, is_url

LAYOUT_VERSION = 1
CALIBRATION = "calibration"
VALID_MASK = "valid_mask"
FRAMES = "frames"
PAIRS = "pairs"
PRODUCTS = "products"
PRODUCT_CHUNK_ROWS = 1 << 20  # rows per chunk of long (N, ...) arrays such as point clouds
RESERVED_FRAME_ATTRS = ("complete", "cameras", "written_at", "write_id")


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


def open_zarr_store(root: str | Path, read_only: bool = False) -> Store:
    """The Zarr store for ``root``: a :class:`LocalStore` for a path or ``file://`` URL, else an
    :class:`FsspecStore` for the URL."""
    root = str(root)
    if is_url(root) and not root.startswith("file://"):
        return FsspecStore.from_url(root, read_only=read_only)
    path = root.removeprefix("file://")
    return LocalStore(Path(path).expanduser(), read_only=read_only)


def _write_array(group: zarr.Group, name: str, data: np.ndarray) -> None:
    """Write ``data`` as array ``name`` of ``group`` in one chunk, replacing any existing array."""
    group.create_array(name, data=data, chunks=data.shape, overwrite=True)


def _write_product_array(group: zarr.Group, name: str, data: np.ndarray) -> None:
    """Images and maps (2-D or more) in one chunk; long 1-D/(N, k) tables chunked by rows."""
    chunks = data.shape if data.ndim >= 2 and data.shape[0] * 8 < PRODUCT_CHUNK_ROWS else None
    if chunks is None:
        chunks = (max(1, min(data.shape[0], PRODUCT_CHUNK_ROWS)), *data.shape[1:])
    group.create_array(name, data=data, chunks=chunks, overwrite=True)


def _check_product_path(path: str) -> list[str]:
    parts = path.split("/")
    if any(not p or p.startswith(".") or not all(c.isalnum() or c in "_.-" for c in p) for p in parts):
        raise ValueError(f"invalid product path {path!r}: use '/'-separated names of letters, digits, '_.-'")
    return parts


def _now() -> str:
    return datetime.now(UTC).isoformat()


class SurveyStore:
    """A survey's Zarr store (see the module docstring for the layout and commit protocol).

    Args:
        root: local path or fsspec URL; created (as an empty store) unless ``read_only``.
        survey: survey name recorded in a new store; an existing store of another survey is refused.
        read_only: open without writing anything.

    Raises:
        StoreError: missing (read-only) store, a Zarr group that is not an AquaMVS store, an
            unsupported layout version, or a store of another survey.
    """

    def __init__(self, root: str | Path, *, survey: str | None = None, read_only: bool = False):
        self._root = str(root)
        try:
            self._group = zarr.open_group(
                open_zarr_store(self._root, read_only),
                mode="r" if read_only else "a",
                zarr_format=3,
                use_consolidated=False,
            )
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.ContainsArrayError) as exc:
            raise StoreError(
                f"{self._root}: cannot open the Zarr store ({type(exc).__name__}: {exc})"
            ) from None
        attrs = self._group.attrs.asdict()
        if "aquamvs_layout" not in attrs:
            if read_only or list(self._group.keys()):
                raise StoreError(f"{self._root}: not an AquaMVS store (no 'aquamvs_layout' attribute)")
            self._group.attrs.put({"aquamvs_layout": LAYOUT_VERSION, "survey": survey or ""})
        elif attrs["aquamvs_layout"] != LAYOUT_VERSION:
            raise StoreError(
                f"{self._root}: store layout version {attrs['aquamvs_layout']!r} is not supported "
                f"(expected {LAYOUT_VERSION})"
            )
        elif survey:
            existing = attrs.get("survey") or ""
            if existing and existing != survey:
                raise StoreError(f"{self._root}: the store belongs to survey {existing!r}, not {survey!r}")
            if not existing and not read_only:
                self._group.attrs.update({"survey": survey})

    @property
    def root(self) -> str:
        return self._root

    @property
    def survey(self) -> str:
        """Survey name recorded in the store ("" if none)."""
        return str(self._group.attrs.get("survey", ""))

    def __repr__(self) -> str:
        return f"SurveyStore({self._root!r})"

    # -- calibration ---------------------------------------------------------------------------

    def write_calibration(
        self, rig: Rig, undistorted_K: Mapping[str, np.ndarray], valid_masks: Mapping[str, np.ndarray]
    ) -> None:
        """Store the calibration, each camera's undistorted intrinsics and validity mask.

        Args:
            rig: the calibration.
            undistorted_K: camera → (3, 3) intrinsics of the undistorted images.
            valid_masks: camera → (H, W) bool (or 0/1 uint8) mask of valid undistorted pixels.

        Raises:
            ValueError: cameras differ from the rig's, or a K or mask of the wrong shape (nothing is
                written).
        """
        names = rig.camera_names
        for label, mapping in (("undistorted_K", undistorted_K), ("valid_masks", valid_masks)):
            if set(mapping) != set(names):
                raise ValueError(f"{label}: cameras {sorted(mapping)} differ from the calibration's {names}")
        Ks = {cam: _check_K(cam, undistorted_K[cam]) for cam in names}
        masks = _check_masks(valid_masks, names)

        group = self._group.require_group(CALIBRATION)
        group.attrs.put({})  # uncommitted while being rewritten
        mask_group = group.require_group(VALID_MASK)
        for stale in set(mask_group.array_keys()) - set(names):
            del mask_group[stale]
        for cam in names:
            _write_array(mask_group, cam, masks[cam])
        group.attrs.put(
            {
                "calibration": rig_to_dict(rig),
                "calibration_hash": rig.content_hash,
                "source": rig.source,
                "undistorted_K": {cam: K.tolist() for cam, K in Ks.items()},
                "cameras": names,
                "written_at": _now(),
            }
        )

    def has_calibration(self) -> bool:
        """Whether a calibration has been completely written."""
        group = self._group.get(CALIBRATION)
        return isinstance(group, zarr.Group) and "calibration_hash" in group.attrs

    def read_calibration(self) -> dict[str, Any]:
        """The calibration group's attrs (see the layout).

        Raises:
            StoreError: no complete calibration in the store.
        """
        return self._calibration_group().attrs.asdict()

    def read_rig(self) -> Rig:
        """The stored calibration as a validated :class:`Rig`."""
        attrs = self.read_calibration()
        return parse_calibration(
            attrs["calibration"], source=attrs.get("source") or f"{self._root}/{CALIBRATION}"
        )

    def read_undistorted_K(self) -> dict[str, np.ndarray]:
        """Camera → (3, 3) float64 intrinsics of the undistorted images."""
        attrs = self.read_calibration()
        return {cam: np.asarray(K, dtype=np.float64) for cam, K in attrs["undistorted_K"].items()}

    def read_valid_masks(self) -> dict[str, np.ndarray]:
        """Camera → (H, W) bool validity mask of the undistorted images."""
        group = self._calibration_group()
        masks = group[VALID_MASK]
        return {cam: np.asarray(masks[cam][...], dtype=bool) for cam in group.attrs["cameras"]}

    def _calibration_group(self) -> zarr.Group:
        group = self._group.get(CALIBRATION)
        if not isinstance(group, zarr.Group) or "calibration_hash" not in group.attrs:
            raise StoreError(
                f"{self._root}: no calibration in the store (write_calibration has not completed)"
            )
        return group

    # -- camera pairs --------------------------------------------------------------------------

    def write_pair_geometry(self, pair_key: str, geometry: Mapping[str, Any]) -> None:
        """Store a camera pair's geometry (JSON-serialisable attrs, one atomic put)."""
        try:
            payload = json.loads(json.dumps(dict(geometry)))
        except (TypeError, ValueError) as exc:
            raise StoreError(
                f"{self._root}: pair {pair_key!r}: geometry is not JSON-serialisable ({exc})"
            ) from None
        pairs = self._group.require_group(PAIRS)
        pairs.require_group(pair_key).attrs.put(payload)

    def read_pair_geometry(self, pair_key: str) -> dict[str, Any]:
        """A camera pair's stored geometry; :class:`StoreKeyError` if absent."""
        group = self._group.get(f"{PAIRS}/{pair_key}")
        if not isinstance(group, zarr.Group) or not group.attrs:
            raise StoreKeyError(f"{self._root}: no geometry stored for camera pair {pair_key!r}")
        return group.attrs.asdict()

    # -- pipeline products -----------------------------------------------------------------------

    def write_product(
        self, path: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any] | None = None
    ) -> None:
        """Write a group of arrays at ``products/<path>`` and commit it (same protocol as frames).

        Args:
            path: e.g. ``"depth/f000001/cam0-cam1"``.
            arrays: name → numpy array (any dtype; NaN allowed).
            attrs: JSON-serialisable provenance and parameters.

        Raises:
            ValueError: invalid path, arrays or attrs (nothing is written).
        """
        _check_product_path(path)
        if not arrays or not all(isinstance(a, np.ndarray) for a in arrays.values()):
            raise ValueError(f"product {path}: expected a non-empty mapping name → numpy array")
        _check_product_path("/".join(arrays))
        try:
            meta = json.loads(json.dumps(dict(attrs or {})))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"product {path}: attrs are not JSON-serialisable ({exc})") from None
        group = self._group.require_group(f"{PRODUCTS}/{path}")
        group.attrs.put({"complete": False})
        for stale in set(group.array_keys()) - set(arrays):
            del group[stale]
        for name, data in arrays.items():
            _write_product_array(group, name, np.ascontiguousarray(data))
        meta.update(arrays=list(arrays), written_at=_now(), complete=True)
        group.attrs.put(meta)

    def has_product(self, path: str) -> bool:
        """Whether ``products/<path>`` is completely written."""
        _check_product_path(path)
        group = self._group.get(f"{PRODUCTS}/{path}")
        return isinstance(group, zarr.Group) and group.attrs.get("complete") is True

    def product_attrs(self, path: str) -> dict[str, Any]:
        """Attrs of a committed product (:class:`StoreKeyError` if absent or incomplete)."""
        return self._committed_product(path).attrs.asdict()

    def read_product(self, path: str, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Arrays of a committed product (all, or ``names``)."""
        group = self._committed_product(path)
        wanted = list(group.attrs["arrays"]) if names is None else list(names)
        missing = [n for n in wanted if n not in group.attrs["arrays"]]
        if missing:
            raise StoreKeyError(f"{self._root}: product {path} has no array(s) {missing}")
        return {n: group[n][...] for n in wanted}

    def list_products(self, prefix: str) -> list[str]:
        """Names of the committed products directly under ``products/<prefix>``, sorted."""
        _check_product_path(prefix)
        group = self._group.get(f"{PRODUCTS}/{prefix}")
        if not isinstance(group, zarr.Group):
            return []
        return sorted(name for name, g in group.groups() if g.attrs.get("complete") is True)

    def _committed_product(self, path: str) -> zarr.Group:
        _check_product_path(path)
        group = self._group.get(f"{PRODUCTS}/{path}")
        if not isinstance(group, zarr.Group) or group.attrs.get("complete") is not True:
            raise StoreKeyError(f"{self._root}: product {path} is not in the store (or is incomplete)")
        return group

    # -- tables --------------------------------------------------------------------------------

    def table_url(self, name: str) -> str:
        _check_product_path(name)
        return f"{self._root.rstrip('/')}/tables/{name}.csv"

    def write_table(self, name: str, table: pd.DataFrame) -> str:
        """Write ``table`` as CSV at ``tables/<name>.csv`` (temp file then rename on local disk; one
        put on object stores, which is atomic). Returns its path or URL."""
        url = self.table_url(name)
        if is_url(url) and not url.startswith("file://"):
            table.to_csv(url, index=False)
            return url
        path = Path(url.removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        table.to_csv(tmp, index=False)
        tmp.replace(path)
        return str(path)

    def read_table(self, name: str) -> pd.DataFrame:
        """A table written by :meth:`write_table` (:class:`StoreKeyError` if absent)."""
        url = self.table_url(name)
        try:
            return pd.read_csv(url)
        except FileNotFoundError:
            raise StoreKeyError(f"{self._root}: no table {name!r}") from None

    # -- frames --------------------------------------------------------------------------------

    def write_frame(
        self, key: str, images: Mapping[str, np.ndarray], attrs: Mapping[str, Any] | None = None
    ) -> None:
        """Write (or rewrite) frame ``key`` and commit it (see the commit protocol).

        Args:
            key: frame key (``f000123``).
            images: camera → (H, W, 3) uint8 RGB undistorted image, all the same size.
            attrs: JSON-serialisable attrs to record (e.g. ``calibration_hash``, ``sources``);
                ``frame_index`` is set from the key; :data:`RESERVED_FRAME_ATTRS` are set here.

        Raises:
            ValueError: invalid key, images or attrs (nothing is written).
        """
        index = frame_index(key)
        cameras = _check_images(key, images)
        meta = _check_frame_attrs(key, index, attrs or {})

        group = self._group.require_group(FRAMES).require_group(key)
        group.attrs.put({"frame_index": index, "complete": False})  # uncommit before touching arrays
        for stale in set(group.array_keys()) - set(cameras):
            del group[stale]
        for cam in cameras:
            _write_array(group, cam, images[cam])
        meta.update(
            frame_index=index, cameras=cameras, written_at=_now(), write_id=uuid.uuid4().hex, complete=True
        )
        group.attrs.put(meta)

    def has_frame(self, key: str) -> bool:
        """Whether frame ``key`` is completely written."""
        try:
            self._committed_frame(key)
        except FrameNotFoundError:
            return False
        return True

    def list_frames(self) -> list[str]:
        """Keys of the completely written frames, in frame order."""
        frames = self._group.get(FRAMES)
        if not isinstance(frames, zarr.Group):
            return []
        keys = []
        for key, group in frames.groups():
            try:
                index = frame_index(key)
            except ValueError:
                continue
            if group.attrs.get("complete") is True:
                keys.append((index, key))
        return [key for _, key in sorted(keys)]

    def frame_attrs(self, key: str) -> dict[str, Any]:
        """The attrs of a completely written frame.

        Raises:
            FrameNotFoundError: no such frame; IncompleteFrameError: not committed.
        """
        return self._committed_frame(key)[1]

    def read_frame(self, key: str, cameras: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Images of a completely written frame: camera → (H, W, 3) uint8 RGB.

        Args:
            key: frame key.
            cameras: cameras to read (default: all, in the order written).

        Raises:
            FrameNotFoundError: no such frame; IncompleteFrameError: not committed, or rewritten
                while being read; StoreKeyError: a camera the frame does not have.
        """
        group, attrs = self._committed_frame(key)
        names = list(attrs["cameras"]) if cameras is None else list(cameras)
        unknown = [c for c in names if c not in attrs["cameras"]]
        if unknown:
            raise StoreKeyError(
                f"{self._root}: frame {key} has no camera(s) {unknown}; it has {attrs['cameras']}"
            )
        try:
            images = {cam: group[cam][...] for cam in names}
        except Exception as exc:
            if self._write_id(key) != attrs["write_id"]:
                raise IncompleteFrameError(
                    f"{self._root}: frame {key} was rewritten while being read"
                ) from exc
            raise
        if self._write_id(key) != attrs["write_id"]:
            raise IncompleteFrameError(f"{self._root}: frame {key} was rewritten while being read")
        return images

    def delete_frame(self, key: str) -> bool:
        """Delete frame ``key`` (uncommitting it first); returns whether it existed."""
        index = frame_index(key)
        group = self._frame_group(key)
        if group is None:
            return False
        group.attrs.put({"frame_index": index, "complete": False})
        del self._group[FRAMES][key]
        return True

    def _frame_group(self, key: str) -> zarr.Group | None:
        frame_index(key)
        group = self._group.get(f"{FRAMES}/{key}")
        return group if isinstance(group, zarr.Group) else None

    def _committed_frame(self, key: str) -> tuple[zarr.Group, dict[str, Any]]:
        group = self._frame_group(key)
        if group is None:
            raise FrameNotFoundError(f"{self._root}: frame {key} is not in the store")
        attrs = group.attrs.asdict()
        if attrs.get("complete") is not True:
            raise IncompleteFrameError(
                f"{self._root}: frame {key} is incomplete (its write failed or is in progress)"
            )
        return group, attrs

    def _write_id(self, key: str) -> str | None:
        group = self._frame_group(key)
        if group is None or group.attrs.get("complete") is not True:
            return None
        return group.attrs.get("write_id")


# --------------------------------------------------------------------------------------------
# Validation (before anything is written)
# --------------------------------------------------------------------------------------------


def _check_K(cam: str, K: np.ndarray) -> np.ndarray:
    arr = np.asarray(K, dtype=np.float64)
    if arr.shape != (3, 3) or not np.all(np.isfinite(arr)):
        raise ValueError(f"undistorted_K[{cam!r}]: expected a finite (3, 3) matrix, got shape {arr.shape}")
    return arr


def _check_masks(valid_masks: Mapping[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    masks: dict[str, np.ndarray] = {}
    for cam in names:
        m = np.asarray(valid_masks[cam])
        if m.ndim != 2 or not (m.dtype == bool or (m.dtype == np.uint8 and m.max(initial=0) <= 1)):
            raise ValueError(
                f"valid_masks[{cam!r}]: expected an (H, W) bool or 0/1 uint8 array, got {m.dtype} {m.shape}"
            )
        masks[cam] = m.astype(bool)
    shapes = {cam: m.shape for cam, m in masks.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"valid_masks: shapes differ between cameras: {shapes}")
    return masks


def _check_images(key: str, images: Mapping[str, np.ndarray]) -> list[str]:
    """Camera names of ``images``, after checking every image is (H, W, 3) uint8 of one size."""
    if not isinstance(images, Mapping) or not images:
        raise ValueError(f"frame {key}: expected a non-empty mapping camera → image")
    shape = None
    for cam, image in images.items():
        if not isinstance(cam, str) or not cam or "/" in cam:
            raise ValueError(f"frame {key}: invalid camera name {cam!r}")
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] != 3
        ):
            desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(
                f"frame {key}: camera {cam!r}: expected an (H, W, 3) uint8 RGB array, got {desc}"
            )
        if shape is not None and image.shape != shape:
            raise ValueError(f"frame {key}: camera {cam!r} image shape {image.shape} differs from {shape}")
        shape = image.shape
    return list(images)


def _check_frame_attrs(key: str, index: int, attrs: Mapping[str, Any]) -> dict[str, Any]:
    reserved = [k for k in RESERVED_FRAME_ATTRS if k in attrs]
    if reserved:
        raise ValueError(f"frame {key}: attrs {reserved} are set by the store")
    if "frame_index" in attrs and attrs["frame_index"] != index:
        raise ValueError(f"frame {key}: attrs frame_index {attrs['frame_index']!r} does not match the key")
    meta = dict(attrs)
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"frame {key}: attrs are not JSON-serialisable ({exc})") from None
    return meta
