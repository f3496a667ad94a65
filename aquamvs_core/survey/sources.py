"""Frame sources: one camera's frames from a video file or a folder of images.

Every source yields ``(H, W, 3)`` uint8 **RGB** arrays (see :mod:`aquamvs_core.camera.calibration`) and
indexes frames from 0: frame ``i`` of a video is the ``i``-th decoded frame in presentation order,
frame ``i`` of a folder is the ``i``-th image file in natural name order.

* :class:`~aquamvs_core.survey.video.VideoSource` (PyAV) keeps its container open;
* :class:`~aquamvs_core.survey.image_folder.ImageFolderSource` reads 8-bit images with OpenCV;
* :func:`open_source` picks one by the kind of path.

Writing videos is :mod:`aquamvs_core.survey.video_writer`.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class FrameSourceError(ValueError):
    """An unreadable, corrupt or missing input; the message names the path."""


@runtime_checkable
class FrameSource(Protocol):
    """One camera's frames, indexed from 0."""

    @property
    def path(self) -> str: ...

    @property
    def num_frames(self) -> int: ...

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        ...

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` as an (H, W, 3) uint8 RGB array."""
        ...

    def close(self) -> None: ...


def check_index(index: int, num_frames: int, path: str) -> int:
    i = operator.index(index)
    if not 0 <= i < num_frames:
        raise IndexError(f"{path}: frame index {i} out of range; the source has {num_frames} frames")
    return i


def open_source(path: str | Path) -> FrameSource:
    """A :class:`~aquamvs_core.survey.video.VideoSource` for a file, an
    :class:`~aquamvs_core.survey.image_folder.ImageFolderSource` for a directory.

    Raises:
        FrameSourceError: the path does not exist or cannot be read.
    """
    from aquamvs_core.survey.image_folder import ImageFolderSource
    from aquamvs_core.survey.video import VideoSource

    p = Path(path)
    if p.is_dir():
        return ImageFolderSource(p)
    if p.is_file():
        return VideoSource(p)
    raise FrameSourceError(f"{path}: input not found (expected a video file or an image folder)")
