"""Writing frames to an MP4 (:func:`write_video`): bit-exact RGB when ``lossless`` (H.264 RGB,
CRF 0), atomically (see :mod:`aquamvs_core.files`)."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from aquamvs_core.files import atomic_path


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
    size: tuple[int, int] | None = None
    count = 0
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream: av.VideoStream | None = None
        for frame in frames:
            size = _check_frame(frame, count, size)
            if stream is None:
                stream = _add_video_stream(container, size, rate, lossless, crf, preset, keyframe_interval)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError(f"{path}: no frames to write")
        for packet in stream.encode():
            container.mux(packet)
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
