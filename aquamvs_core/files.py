"""Atomic file writes: the one helper every writer of a local file uses (calibration JSON, survey
YAML, videos, tables, point clouds, meshes). A reader never sees a half-written file: the content
goes to a hidden temporary file in the same folder, which is renamed onto the target only when the
writer has finished; on any error the temporary file is removed and the target is left as it was.

(Object stores have no rename; there one ``put`` is atomic, see :mod:`aquamvs_core.store`.)
"""

from __future__ import annotations

import os
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["atomic_path", "atomic_write_npz", "atomic_write_text"]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    Args:
        path: the file to write; its folder is created.
        suffix: the temporary file's extension (default: ``path``'s), for writers that choose the
            format by extension.

    Yields:
        The temporary path to write to. No temporary file is left behind in any case.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_npz(
    path: str | os.PathLike, arrays: Mapping[str, np.ndarray], compresslevel: int = 1
) -> Path:
    """Write ``arrays`` to ``path`` as a compressed ``.npz`` (what :func:`numpy.load` reads), atomically;
    returns ``path``. Deflate level 1 instead of :func:`numpy.savez_compressed`'s 6: on a 1600×1200
    rig's heightfield (164 MB of arrays) 1.3 s instead of 4.7 s, for a file 4 % larger (47 MB)."""
    deflate = {"compression": zipfile.ZIP_DEFLATED, "compresslevel": compresslevel}
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", **deflate) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
    return Path(path)
