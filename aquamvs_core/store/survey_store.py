"""The survey store (:class:`SurveyStore`): calibration, undistorted frames, pair geometry, pipeline
products and tables in one Zarr v3 hierarchy (layout: :mod:`aquamvs_core.store.layout`), every
group written under the commit protocol of :mod:`aquamvs_core.store.commit`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from aquamvs_core.camera.calibration import Rig, parse_calibration, rig_to_dict
from aquamvs_core.files import atomic_path
from aquamvs_core.store.commit import (
    COMPLETE,
    VERSION,
    VERSION_NAME,
    commit_group,
    is_committed,
    json_attrs,
    read_committed,
    row_chunks,
    write_arrays,
)
from aquamvs_core.store.layout import (
    CALIBRATION,
    FRAMES,
    LAYOUT_VERSION,
    PAIRS,
    PRODUCTS,
    RESERVED_FRAME_ATTRS,
    VALID_MASK,
    FrameNotFoundError,
    IncompleteFrameError,
    StoreError,
    StoreKeyError,
    open_zarr_store,
    require_group,
)
from aquamvs_core.survey import frame_index, is_url


def _check_product_path(path: str) -> list[str]:
    parts = path.split("/")
    if any(not p or p.startswith(".") or not all(c.isalnum() or c in "_.-" for c in p) for p in parts):
        raise ValueError(f"invalid product path {path!r}: use '/'-separated names of letters, digits, '_.-'")
    return parts


class SurveyStore:
    """A survey's Zarr store (see the module docstring for the layout and commit protocol).

    Args:
        root: local path or fsspec URL; created (as an empty store) unless ``read_only``.
        survey: survey name recorded in a new store; an existing store of another survey is refused.
        read_only: open without writing anything.
        storage_options: options of the fsspec filesystem of a URL root (and its tables), e.g.
            ``{"endpoint_url": ..., "key": ..., "secret": ...}`` for s3fs.

    Raises:
        StoreError: missing (read-only) store, a Zarr group that is not an AquaMVS store, an
            unsupported layout version, or a store of another survey.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        survey: str | None = None,
        read_only: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ):
        self._root = str(root)
        self._storage_options = dict(storage_options or {}) or None
        try:
            self._group = _open_root_group(self._root, read_only, self._storage_options)
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
        self,
        rig: Rig,
        undistorted_K: Mapping[str, np.ndarray],
        valid_masks: Mapping[str, np.ndarray],
        lens_cameras: Iterable[str] = (),
    ) -> None:
        """Store the calibration, the intrinsics and validity mask of each camera's stored images.

        Args:
            rig: the calibration.
            undistorted_K: camera → (3, 3) intrinsics of the stored images (undistorted images, or the
                calibrated K for ``lens_cameras``).
            valid_masks: camera → (H, W) bool (or 0/1 uint8) mask of valid stored pixels.
            lens_cameras: cameras whose frames are stored as recorded, on the original pixel grid
                (their camera model includes the lens, see :mod:`aquamvs_core.stages.ingest`).

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
        lens = [cam for cam in names if cam in set(lens_cameras)]
        unknown = sorted(set(lens_cameras) - set(names))
        if unknown:
            raise ValueError(f"lens_cameras: {unknown} are not cameras of the calibration {names}")

        group = require_group(self._group, CALIBRATION)
        commit_group(
            group,
            lambda version: write_arrays(version.require_group(VALID_MASK), masks),
            {
                "calibration": rig_to_dict(rig),
                "calibration_hash": rig.content_hash,
                "source": rig.source,
                "undistorted_K": {cam: K.tolist() for cam, K in Ks.items()},
                "lens_cameras": lens,
                "cameras": names,
            },
        )

    def has_calibration(self) -> bool:
        """Whether a calibration has been completely written."""
        return is_committed(self._group.get(CALIBRATION))

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

    def read_lens_cameras(self) -> list[str]:
        """Cameras whose frames are stored on the original pixel grid (the lens is in the camera)."""
        return list(self.read_calibration().get("lens_cameras", []))

    def read_valid_masks(self) -> dict[str, np.ndarray]:
        """Camera → (H, W) bool validity mask of the undistorted images, all from one version of the
        calibration (read again when it is rewritten meanwhile:
        :func:`~aquamvs_core.store.commit.read_committed`)."""

        def read(contents: zarr.Group, attrs: dict[str, Any]) -> dict[str, np.ndarray]:
            masks = contents[VALID_MASK]
            return {cam: np.asarray(masks[cam][...], dtype=bool) for cam in attrs["cameras"]}

        return read_committed(self._calibration_group, read, f"{self._root}: the calibration")

    def _calibration_group(self) -> zarr.Group:
        group = self._group.get(CALIBRATION)
        if not is_committed(group):
            raise StoreError(
                f"{self._root}: no calibration in the store (write_calibration has not completed)"
            )
        return group

    # -- camera pairs --------------------------------------------------------------------------

    def write_pair_geometry(self, pair_key: str, geometry: Mapping[str, Any]) -> None:
        """Store a camera pair's geometry (JSON-serialisable attrs, one atomic put)."""
        payload = json_attrs(geometry, f"{self._root}: pair {pair_key!r}: geometry")
        pairs = require_group(self._group, PAIRS)
        require_group(pairs, pair_key).attrs.put(payload)

    def read_pair_geometry(self, pair_key: str) -> dict[str, Any]:
        """A camera pair's stored geometry; :class:`StoreKeyError` if absent."""
        group = self._group.get(f"{PAIRS}/{pair_key}")
        if not isinstance(group, zarr.Group) or not group.attrs:
            raise StoreKeyError(f"{self._root}: no geometry stored for camera pair {pair_key!r}")
        return group.attrs.asdict()

    def pair_keys(self) -> list[str]:
        """Keys of the camera pairs whose geometry is stored (``ref-src``), sorted."""
        pairs = self._group.get(PAIRS)
        if not isinstance(pairs, zarr.Group):
            return []
        return sorted(name for name, group in pairs.groups() if group.attrs)

    # -- pipeline products -----------------------------------------------------------------------

    def write_product(
        self,
        path: str,
        arrays: Mapping[str, np.ndarray],
        attrs: Mapping[str, Any] | None = None,
        chunking: Callable[[np.ndarray], tuple[int, ...]] = row_chunks,
    ) -> None:
        """Write a group of arrays at ``products/<path>`` and commit it (same protocol as frames).

        Args:
            path: e.g. ``"depth/f000001/cam0-cam1"``.
            arrays: name → numpy array (any dtype; NaN allowed).
            attrs: JSON-serialisable provenance and parameters.
            chunking: chunk shape of each array (default: maps whole, long tables by rows).

        Raises:
            ValueError: invalid path, arrays or attrs (nothing is written).
        """
        _check_product_path(path)
        if not arrays or not all(isinstance(a, np.ndarray) for a in arrays.values()):
            raise ValueError(f"product {path}: expected a non-empty mapping name → numpy array")
        _check_product_path("/".join(arrays))
        meta = json_attrs(attrs, f"product {path}")
        group = require_group(self._group, f"{PRODUCTS}/{path}")
        commit_group(
            group, lambda version: write_arrays(version, arrays, chunking), {**meta, "arrays": list(arrays)}
        )

    def has_product(self, path: str) -> bool:
        """Whether ``products/<path>`` is completely written."""
        _check_product_path(path)
        return is_committed(self._group.get(f"{PRODUCTS}/{path}"))

    def product_attrs(self, path: str) -> dict[str, Any]:
        """Attrs of a committed product (:class:`StoreKeyError` if absent or incomplete)."""
        return self._committed_product(path).attrs.asdict()

    def read_product(self, path: str, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Arrays of a committed product (all, or ``names``), all of one version that was still the
        committed one when they had been read (:func:`~aquamvs_core.store.commit.read_committed`:
        a product rewritten meanwhile by another run is read again from its new version)."""
        wanted_names = None if names is None else list(names)

        def read(contents: zarr.Group, attrs: dict[str, Any]) -> dict[str, np.ndarray]:
            wanted = list(attrs["arrays"]) if wanted_names is None else wanted_names
            missing = [n for n in wanted if n not in attrs["arrays"]]
            if missing:
                raise StoreKeyError(f"{self._root}: product {path} has no array(s) {missing}")
            return {n: contents[n][...] for n in wanted}

        return read_committed(lambda: self._committed_product(path), read, f"{self._root}: product {path}")

    def list_products(self, prefix: str) -> list[str]:
        """Names of the committed products directly under ``products/<prefix>``, sorted."""
        _check_product_path(prefix)
        group = self._group.get(f"{PRODUCTS}/{prefix}")
        if not isinstance(group, zarr.Group):
            return []
        return sorted(name for name, g in group.groups() if is_committed(g))

    def product_paths(self, prefix: str) -> list[str]:
        """Paths of every committed product at or below ``products/<prefix>`` (e.g. every pair and
        camera part of a stage), sorted."""
        _check_product_path(prefix)
        found: list[str] = []

        def walk(path: str, group: zarr.Group) -> None:
            if is_committed(group):
                found.append(path)
                return
            for name, child in group.groups():
                if not VERSION_NAME.fullmatch(name):  # a part, not a version's contents
                    walk(f"{path}/{name}", child)

        group = self._group.get(f"{PRODUCTS}/{prefix}")
        if isinstance(group, zarr.Group):
            walk(prefix, group)
        return sorted(found)

    def _committed_product(self, path: str) -> zarr.Group:
        _check_product_path(path)
        group = self._group.get(f"{PRODUCTS}/{path}")
        if not is_committed(group):
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
            table.to_csv(url, index=False, storage_options=self._storage_options)
            return url
        path = Path(url.removeprefix("file://"))
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
        return str(path)

    def read_table(self, name: str) -> pd.DataFrame:
        """A table written by :meth:`write_table` (:class:`StoreKeyError` if absent)."""
        url = self.table_url(name)
        try:
            remote = is_url(url) and not url.startswith("file://")
            return pd.read_csv(url, storage_options=self._storage_options if remote else None)
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

        group = require_group(self._group, f"{FRAMES}/{key}")
        meta.update(frame_index=index, cameras=cameras, write_id=uuid.uuid4().hex)
        commit_group(group, lambda version: write_arrays(version, images), meta)

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
            if is_committed(group):
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
            contents = group[attrs[VERSION]]
            return {cam: contents[cam][...] for cam in names}
        except Exception as exc:  # the version read was replaced (and deleted) meanwhile
            if self._write_id(key) != attrs["write_id"]:
                raise IncompleteFrameError(
                    f"{self._root}: frame {key} was rewritten while being read"
                ) from exc
            raise

    def delete_frame(self, key: str) -> bool:
        """Delete frame ``key`` (uncommitting it first); returns whether it existed."""
        index = frame_index(key)
        group = self._frame_group(key)
        if group is None:
            return False
        group.attrs.put({"frame_index": index, COMPLETE: False})  # readers stop seeing it first
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
        if not is_committed(group):
            raise IncompleteFrameError(
                f"{self._root}: frame {key} is incomplete (its write failed or is in progress)"
            )
        return group, attrs

    def _write_id(self, key: str) -> str | None:
        group = self._frame_group(key)
        if not is_committed(group):
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
    return json_attrs(attrs, f"frame {key}")


def _open_root_group(
    root: str, read_only: bool, storage_options: dict[str, Any] | None, attempts: int = 5
) -> zarr.Group:
    """The store's root group, created if missing (unless ``read_only``). Two processes creating a new
    store at once (two runs of one frame): zarr raises ContainsGroupError in the slower one, which
    then opens the group that the other made."""
    for attempt in range(attempts):
        try:
            return zarr.open_group(
                open_zarr_store(root, read_only, storage_options),
                mode="r" if read_only else "a",
                zarr_format=3,
                use_consolidated=False,
            )
        except zarr.errors.ContainsGroupError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))
    raise AssertionError("unreachable")
