"""Image-folder frame source: frame ``i`` is the ``i``-th image file in natural name order.
8-bit images are read with OpenCV; 16-bit images are rejected rather than silently rescaled (the
pipeline works on 8-bit radiometry)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np

from aquamvs_core.survey.sources import IMAGE_SUFFIXES, FrameSourceError, check_index


def _natural_key(name: str) -> list[int | str]:
    """Sort key that orders ``img2`` before ``img10``."""
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` (suffixes :data:`IMAGE_SUFFIXES`, hidden files skipped), in
    natural name order."""
    with os.scandir(folder) as entries:  # the file type comes with the entry: no stat per file
        names = [
            e.name
            for e in entries
            if not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_SUFFIXES and e.is_file()
        ]
    return [folder / name for name in sorted(names, key=_natural_key)]


def read_image(path: Path) -> np.ndarray:
    """One 8-bit image file as (H, W, 3) uint8 RGB: grey is replicated to 3 channels, alpha dropped.

    Raises:
        FrameSourceError: unreadable file, or not 8-bit (16-bit and float images are rejected).
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FrameSourceError(f"{path}: cannot read image")
    if image.dtype != np.uint8:
        raise FrameSourceError(
            f"{path}: {image.dtype} image is not supported; convert the images to 8 bits per channel"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels == 1:
        return np.repeat(image, 3, axis=2)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise FrameSourceError(f"{path}: unsupported number of channels ({channels})")


class ImageFolderSource:
    """Frames stored as one image file per frame in a folder.

    The image size is taken from the first image; every other image is checked when read.

    Raises:
        FrameSourceError: the folder is missing or holds no image file.
    """

    def __init__(self, folder: str | Path):
        self._folder = Path(folder)
        self._path = str(folder)
        if not self._folder.is_dir():
            raise FrameSourceError(f"{self._path}: image folder not found")
        self._files = list_images(self._folder)
        if not self._files:
            raise FrameSourceError(f"{self._path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        first = read_image(self._files[0])
        self._image_size = (int(first.shape[1]), int(first.shape[0]))

    @property
    def path(self) -> str:
        return self._path

    @property
    def num_frames(self) -> int:
        return len(self._files)

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) in pixels, of the first image."""
        return self._image_size

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` as an (H, W, 3) uint8 RGB array.

        Raises:
            FrameSourceError: unreadable image, or its size differs from the first image's.
        """
        i = check_index(index, len(self._files), self._path)
        image = read_image(self._files[i])
        w, h = self._image_size
        if image.shape[:2] != (h, w):
            raise FrameSourceError(
                f"{self._files[i]}: image size {image.shape[1]}x{image.shape[0]} differs from "
                f"{w}x{h} of the first image {self._files[0].name} in {self._path}"
            )
        return image

    def close(self) -> None:
        pass

    def __enter__(self) -> ImageFolderSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ImageFolderSource({self._path!r}, num_frames={self.num_frames}, image_size={self._image_size})"
        )
