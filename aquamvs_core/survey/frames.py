"""Frame decoding: one camera's frames from a video file or a folder of images.

Every source yields ``(H, W, 3)`` uint8 **RGB** arrays (see :mod:`aquamvs_core.camera.calibration`) and
indexes frames from 0: frame ``i`` of a video is the ``i``-th decoded frame in presentation order,
frame ``i`` of a folder is the ``i``-th image file in natural name order.

* :class:`VideoSource` keeps its container open: reading ``i`` then ``i + 1`` decodes forward.
  Random access seeks to the keyframe at or before the target's timestamp and decodes forward,
  checking every decoded frame's index against its timestamp; a video whose timestamps do not
  map one-to-one onto frame indices is read by decoding from the start instead.
* :class:`ImageFolderSource` reads 8-bit images with OpenCV; 16-bit images are rejected rather than
  silently rescaled (the pipeline works on 8-bit radiometry).
* :func:`write_video` writes frames to an MP4, bit-exact RGB when ``lossless`` (H.264 RGB, CRF 0).
"""

from __future__ import annotations

import operator
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Protocol, runtime_checkable

import av
import av.error
import cv2
import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

#: A forward jump of at most this many frames is decoded rather than sought.
DEFAULT_FORWARD_DECODE_LIMIT = 32
#: After a seek that lands past the target, retry this many frames earlier, then decode from the start.
_SEEK_BACKOFF = (0, 1, 8, 64)


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


def _check_index(index: int, num_frames: int, path: str) -> int:
    i = operator.index(index)
    if not 0 <= i < num_frames:
        raise IndexError(f"{path}: frame index {i} out of range; the source has {num_frames} frames")
    return i


# --------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------


def _constant_rate(stream: av.VideoStream) -> bool:
    """Whether the stream's timestamps look like a constant frame rate, so that a frame's index is
    ``(pts - first_pts) * time_base * rate``: a positive average rate equal to the base rate that
    FFmpeg guessed, and a whole number of time-base ticks per frame (or a time base of a millisecond
    or coarser, as in Matroska, where timestamps are rounded)."""
    if not stream.average_rate or not stream.time_base or not stream.guessed_rate:
        return False
    rate, time_base = Fraction(stream.average_rate), Fraction(stream.time_base)
    if rate <= 0 or Fraction(stream.guessed_rate) != rate:
        return False
    ticks = 1 / (rate * time_base)
    return ticks.denominator == 1 or time_base >= Fraction(1, 1000)


class VideoSource:
    """Frames of one video file, decoded with PyAV.

    Args:
        path: the video file.
        forward_decode_limit: a forward jump of at most this many frames decodes forward instead of
            seeking (set 0 to seek on every non-sequential read).

    A source holds decoder state: use one per thread.

    Raises:
        FrameSourceError: the file is missing, not a video, or has no decodable frame.
    """

    def __init__(self, path: str | Path, forward_decode_limit: int = DEFAULT_FORWARD_DECODE_LIMIT):
        self._path = str(path)
        self._forward_limit = int(forward_decode_limit)
        if not Path(path).is_file():
            raise FrameSourceError(f"{self._path}: video file not found")
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._pending: av.VideoFrame | None = None  # first frame decoded after a seek
        self._next: int = 0  # index of the next frame the decoder yields
        self._cached: tuple[int, np.ndarray] | None = None
        try:
            self._restart()
            self._init_stream_info()
        except BaseException:
            self.close()
            raise

    def _init_stream_info(self) -> None:
        stream = self._stream
        first = self._next_frame(0)
        self._pending = first
        self._first_pts = first.pts
        self._image_size = (int(first.width), int(first.height))
        self._rate: Fraction | None = Fraction(stream.average_rate) if stream.average_rate else None
        self._time_base: Fraction | None = Fraction(stream.time_base) if stream.time_base else None
        self._reliable = _constant_rate(stream) and first.pts is not None
        self._num_frames = int(stream.frames) if stream.frames > 0 else self._count_packets()
        if self._num_frames <= 0:
            raise FrameSourceError(f"{self._path}: video stream has no frames")

    @property
    def path(self) -> str:
        return self._path

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self._image_size

    @property
    def timestamps_reliable(self) -> bool:
        """Whether random access may seek by timestamp (else it decodes from the start)."""
        return self._reliable

    @property
    def _stream(self) -> av.VideoStream:
        assert self._container is not None
        return self._container.streams.video[0]

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` as an (H, W, 3) uint8 RGB array (a new array on every call)."""
        if self._container is None:
            raise FrameSourceError(f"{self._path}: source is closed")
        i = _check_index(index, self._num_frames, self._path)
        if self._cached is not None and self._cached[0] == i:
            return self._cached[1].copy()
        if i < self._next or i - self._next > self._forward_limit:
            self._seek(i)
        frame = self._decode_to(i)
        image = frame.to_ndarray(format="rgb24")
        self._cached = (i, image)
        return image.copy()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._frames = None
        self._pending = None
        self._cached = None

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoSource({self._path!r}, num_frames={self._num_frames}, image_size={self._image_size})"

    # -- decoding ------------------------------------------------------------------------------

    def _open_container(self) -> av.container.InputContainer:
        try:
            container = av.open(self._path, mode="r")
        except (av.error.FFmpegError, OSError) as exc:
            raise FrameSourceError(f"{self._path}: cannot open video ({exc})") from None
        if not container.streams.video:
            container.close()
            raise FrameSourceError(f"{self._path}: no video stream")
        container.streams.video[0].thread_type = "AUTO"
        return container

    def _restart(self) -> None:
        """Reopen the container and decode from the first frame."""
        if self._container is not None:
            self._container.close()
        self._container = self._open_container()
        self._frames = self._container.decode(self._stream)
        self._pending = None
        self._next = 0

    def _next_frame(self, expected: int) -> av.VideoFrame:
        """The next decoded frame (``expected`` is its index, for error messages)."""
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        assert self._frames is not None
        try:
            return next(self._frames)
        except StopIteration:
            declared = getattr(self, "_num_frames", None)
            raise FrameSourceError(
                f"{self._path}: video ended before frame {expected}"
                + (f" (the stream declares {declared} frames)" if declared else "")
            ) from None
        except av.error.FFmpegError as exc:
            raise FrameSourceError(f"{self._path}: cannot decode frame {expected} ({exc})") from None

    def _pts_index(self, frame: av.VideoFrame) -> int | None:
        """Frame index implied by ``frame.pts`` (None without a timestamp)."""
        if frame.pts is None or self._first_pts is None or not self._rate or not self._time_base:
            return None
        return round((frame.pts - self._first_pts) * self._time_base * self._rate)

    def _target_pts(self, index: int) -> int:
        assert self._rate and self._time_base and self._first_pts is not None
        return self._first_pts + int(Fraction(index) / (self._rate * self._time_base))

    def _seek(self, i: int) -> None:
        """Position the decoder at or before frame ``i``: on the keyframe at or before it (verified
        by timestamp); without reliable timestamps, at the start if ``i`` is behind the decoder;
        at the start too if seeking keeps landing past ``i``."""
        if not self._reliable:
            if i < self._next:
                self._restart()
            return
        assert self._container is not None
        for back in _SEEK_BACKOFF:
            target = max(i - back, 0)
            try:
                self._container.seek(self._target_pts(target), stream=self._stream, backward=True)
            except av.error.FFmpegError:
                break
            self._frames = self._container.decode(self._stream)
            self._pending = None
            try:
                frame = self._next_frame(i)
            except FrameSourceError:
                break
            landed = self._pts_index(frame)
            if landed is None:
                break
            if landed <= i:
                self._pending = frame
                self._next = landed
                return
        self._restart()

    def _decode_to(self, i: int) -> av.VideoFrame:
        """Decode forward from the current position to frame ``i``, checking timestamps."""
        while True:
            expected = self._next
            frame = self._next_frame(expected)
            if self._reliable and self._pts_index(frame) != expected:
                # timestamps do not count frames one by one: count decoded frames from the start
                self._reliable = False
                self._restart()
                continue
            self._next = expected + 1
            if expected == i:
                return frame

    def _count_packets(self) -> int:
        """Number of video packets (frames), by demuxing the whole file without decoding."""
        container = self._open_container()
        try:
            stream = container.streams.video[0]
            return sum(1 for p in container.demux(stream) if p.size > 0)
        except av.error.FFmpegError as exc:
            raise FrameSourceError(f"{self._path}: cannot read video packets ({exc})") from None
        finally:
            container.close()


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def _natural_key(name: str) -> list[int | str]:
    """Sort key that orders ``img2`` before ``img10``."""
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` (suffixes :data:`IMAGE_SUFFIXES`, hidden files skipped), in
    natural name order."""
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    return sorted(files, key=lambda p: _natural_key(p.name))


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
        i = _check_index(index, len(self._files), self._path)
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


def open_source(path: str | Path) -> FrameSource:
    """A :class:`VideoSource` for a file, an :class:`ImageFolderSource` for a directory.

    Raises:
        FrameSourceError: the path does not exist or cannot be read.
    """
    p = Path(path)
    if p.is_dir():
        return ImageFolderSource(p)
    if p.is_file():
        return VideoSource(p)
    raise FrameSourceError(f"{path}: input not found (expected a video file or an image folder)")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _check_frame(frame: np.ndarray, n: int, size: tuple[int, int] | None) -> tuple[int, int]:
    """Validate frame ``n`` of a video being written; returns its (height, width)."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"frame {n}: expected an (H, W, 3) uint8 RGB array, got {desc}")
    hw = (int(frame.shape[0]), int(frame.shape[1]))
    if size is not None and hw != size:
        raise ValueError(f"frame {n}: shape {hw} differs from {size} of frame 0")
    return hw


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float | Fraction = 30,
    lossless: bool = True,
    crf: int = 18,
    *,
    preset: str | None = None,
    keyframe_interval: int | None = None,
) -> Path:
    """Encode RGB frames to an H.264 MP4 (written to a temporary file, then renamed into place).

    Args:
        path: output file (its parent is created).
        frames: (H, W, 3) uint8 RGB arrays, all the same size.
        fps: frames per second.
        lossless: ``libx264rgb`` at CRF 0 (bit-exact RGB round trip); else ``libx264`` yuv420p
            (lossy chroma subsampling; width and height must be even).
        crf: quality of lossy encoding (0–51, lower is better); ignored when lossless.
        preset: x264 preset; default ``ultrafast`` when lossless (about 5x faster to encode and
            decode than ``medium`` for ~15% larger files), ``medium`` otherwise.
        keyframe_interval: maximum frames between keyframes (x264's default if None).

    Returns:
        ``path``.

    Raises:
        ValueError: no frames, or a frame of the wrong type, dtype or shape (nothing is written).
    """
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1_000_000)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    size: tuple[int, int] | None = None
    count = 0
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream: av.VideoStream | None = None
            for frame in frames:
                size = _check_frame(frame, count, size)
                if stream is None:
                    stream = _add_video_stream(
                        container, size, rate, lossless, crf, preset, keyframe_interval
                    )
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
                count += 1
            if stream is None:
                raise ValueError(f"{path}: no frames to write")
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _add_video_stream(
    container: av.container.OutputContainer,
    size: tuple[int, int],
    rate: Fraction,
    lossless: bool,
    crf: int,
    preset: str | None,
    keyframe_interval: int | None,
) -> av.VideoStream:
    h, w = size
    if lossless:
        codec, pix_fmt, quality = "libx264rgb", "rgb24", 0
    else:
        if w % 2 or h % 2:
            raise ValueError(f"lossy yuv420p video needs an even width and height, got {w}x{h}")
        codec, pix_fmt, quality = "libx264", "yuv420p", int(crf)
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
    options = {"crf": str(quality), "preset": preset or ("ultrafast" if lossless else "medium")}
    if keyframe_interval is not None:
        options["g"] = str(int(keyframe_interval))
    stream.options = options
    return stream
