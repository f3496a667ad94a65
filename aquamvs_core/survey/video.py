"""Video frame source (PyAV).

:class:`VideoSource` keeps its container open: reading ``i`` then ``i + 1`` decodes forward.
Random access seeks to the keyframe at or before the target's timestamp and decodes forward,
checking every decoded frame's index against its timestamp; a video whose timestamps do not map
one-to-one onto frame indices is read by decoding from the start instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from aquamvs_core.survey.sources import FrameSourceError, check_index

#: A forward jump of at most this many frames is decoded rather than sought.
DEFAULT_FORWARD_DECODE_LIMIT = 32
#: After a seek that lands past the target, retry this many frames earlier, then decode from the start.
_SEEK_BACKOFF = (0, 1, 8, 64)


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
        i = check_index(index, self._num_frames, self._path)
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
