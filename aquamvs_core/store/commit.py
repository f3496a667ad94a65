"""The store's one commit protocol, and the JSON check of attrs.

A group (a frame, a product, the calibration) holds its contents in **versions**: subgroups named
``v<16 hex digits>``. The group's attrs name the committed version (``version``) and say
``complete: true``. :func:`commit_group` writes every array of a new version into a fresh subgroup,
then commits it with a single put of the group's attrs, and only then deletes the version it
replaced. So:

* a reader sees the previous version, complete, until the commit, and the new one, complete, after;
  never a mixture: :func:`read_committed` returns only what it read from a version that was still
  the committed one afterwards, and reads again when another writer replaced (and deleted) it
  meanwhile;
* a crash at any point leaves the previous version committed (or, for a new group, nothing that
  reads as complete), plus an uncommitted version that no reader looks at;
* two writers of one group at once each write their own version; the last commit wins cleanly.

Group attrs live in one metadata object per group, written with a single put (atomic on object
stores; temp file and rename on local disk), so no rename of data is ever relied on.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from aquamvs_core.store.layout import StoreError

__all__ = [
    "COMPLETE",
    "READ_ATTEMPTS",
    "VERSION",
    "VERSION_NAME",
    "commit_group",
    "committed_contents",
    "is_committed",
    "json_attrs",
    "now",
    "read_committed",
    "row_chunks",
    "write_array",
    "write_arrays",
]

#: The commit marker (attr name).
COMPLETE = "complete"
#: The attr naming the committed version (a subgroup of the group).
VERSION = "version"
#: How versions are named.
VERSION_NAME = re.compile(r"v[0-9a-f]{16}")
#: Reads of a group that another writer replaced meanwhile, before :func:`read_committed` gives up.
READ_ATTEMPTS = 5
#: Rows per chunk of long (N, ...) arrays such as point clouds.
PRODUCT_CHUNK_ROWS = 1 << 20
#: Compressor of every array the store writes: Blosc lz4 with byte shuffle (lossless). On 1600×1200
#: depth maps and (N, 3) point tables it writes about 2.5x and reads about 2x faster than Zarr's
#: default (zstd), and a depth map takes 62 % of its raw size instead of 79 %
#: (benchmarks/results/store_codec_cpu.md). Arrays written with another codec read as before.
STORE_COMPRESSORS = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)


def now() -> str:
    """UTC time stamp (ISO 8601) recorded with every commit."""
    return datetime.now(UTC).isoformat()


def json_attrs(attrs: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """``attrs`` as a plain JSON-compatible dict (tuples become lists).

    Raises:
        ValueError: the attrs are not JSON-serialisable (``what`` names the owner).
    """
    try:
        return json.loads(json.dumps(dict(attrs or {})))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: attrs are not JSON-serialisable ({exc})") from None


def is_committed(group: object) -> bool:
    """Whether ``group`` is a Zarr group whose commit marker is set."""
    return isinstance(group, zarr.Group) and group.attrs.get(COMPLETE) is True


def write_array(
    group: zarr.Group, name: str, data: np.ndarray, chunks: tuple[int, ...] | None = None
) -> None:
    """Write ``data`` as array ``name`` of ``group`` (one chunk unless ``chunks``), replacing it."""
    group.create_array(
        name, data=data, chunks=chunks or data.shape, overwrite=True, compressors=STORE_COMPRESSORS
    )


def write_arrays(
    group: zarr.Group, arrays: Mapping[str, np.ndarray], chunking: Callable[[np.ndarray], tuple] | None = None
) -> None:
    """Write ``arrays`` into ``group`` (replacing same-named arrays) and delete the arrays it had
    that ``arrays`` does not name. ``chunking(data)`` gives the chunk shape (default: one chunk)."""
    for stale in set(group.array_keys()) - set(arrays):
        del group[stale]
    for name, data in arrays.items():
        data = np.ascontiguousarray(data)
        write_array(group, name, data, chunking(data) if chunking else None)


def row_chunks(data: np.ndarray) -> tuple[int, ...]:
    """Images and maps (2-D or more) in one chunk; long 1-D/(N, k) tables chunked by rows."""
    if data.ndim >= 2 and data.shape[0] * 8 < PRODUCT_CHUNK_ROWS:
        return data.shape
    return (max(1, min(data.shape[0], PRODUCT_CHUNK_ROWS)), *data.shape[1:])


def commit_group(
    group: zarr.Group,
    write_contents: Callable[[zarr.Group], None],
    attrs: Mapping[str, Any],
) -> dict[str, Any]:
    """Write and commit a new version of ``group`` (module docstring).

    Args:
        group: the group to (re)write.
        write_contents: writes the arrays into the new version's subgroup (its argument).
        attrs: the group's final attrs (JSON-compatible); ``version``, ``written_at`` and ``complete``
            are added.

    Returns:
        The attrs written.
    """
    previous = group.attrs.get(VERSION) if is_committed(group) else None
    version = f"v{uuid.uuid4().hex[:16]}"  # matches VERSION_NAME
    write_contents(group.create_group(version))
    final = {**attrs, VERSION: version, "written_at": now(), COMPLETE: True}
    group.attrs.put(final)  # the commit
    if previous and previous != version and previous in group:
        del group[previous]
    return final


def committed_contents(group: zarr.Group) -> zarr.Group:
    """The subgroup holding a committed group's arrays (its committed version)."""
    return group[group.attrs[VERSION]]


T = TypeVar("T")


def read_committed(
    locate: Callable[[], zarr.Group], read: Callable[[zarr.Group, dict[str, Any]], T], what: str
) -> T:
    """``read(contents, attrs)`` of the committed version of the group that ``locate()`` opens,
    returned only if that version is still the committed one once the read is done.

    Another writer may commit a new version meanwhile and delete the one being read (two runs of one
    frame at once): its arrays are then gone, or some chunks are, which would read as fill values.
    The read then starts again on the new version, at most :data:`READ_ATTEMPTS` times. A committed
    version that is itself broken (an array missing although nobody replaced it) raises its error.

    Args:
        locate: opens the group afresh (so its attrs are current); raises a
            :class:`~aquamvs_core.store.layout.StoreError` when nothing is committed there.
        read: reads what is wanted from the version's subgroup, given the group's attrs.
        what: the group, for the error message.

    Raises:
        StoreError: from ``locate``, or the group was rewritten at every attempt.
    """
    for _ in range(READ_ATTEMPTS):
        group = locate()
        attrs = group.attrs.asdict()
        failure: Exception | None = None
        try:
            value = read(group[attrs[VERSION]], attrs)
        except (KeyError, FileNotFoundError) as exc:
            failure = exc
        try:
            still = locate().attrs.get(VERSION) == attrs[VERSION]
        except StoreError:  # uncommitted or deleted meanwhile: the next attempt says which
            still = False
        if still:
            if failure is not None:
                raise failure
            return value
    raise StoreError(f"{what} was rewritten {READ_ATTEMPTS} times while being read")
