"""Frame sources (videos, image folders) and the video writer."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from aquamvs_core.survey import FrameSource, FrameSourceError, open_source
from aquamvs_core.survey.image_folder import ImageFolderSource
from aquamvs_core.survey.video import VideoSource
from aquamvs_core.survey.video_writer import write_video


def _noise_frames(n: int, width: int = 64, height: int = 48, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]


def _read_all(path: Path) -> list[np.ndarray]:
    with VideoSource(path) as src:
        return [src.read(i) for i in range(src.num_frames)]


# --------------------------------------------------------------------------------------------
# Video writing and decoding
# --------------------------------------------------------------------------------------------


def test_lossless_video_round_trip_is_bit_exact(tmp_path):
    frames = _noise_frames(5)
    path = write_video(tmp_path / "cam0.mp4", frames, fps=30, lossless=True)
    with VideoSource(path) as src:
        assert isinstance(src, FrameSource)
        assert src.num_frames == 5
        assert src.image_size == (64, 48)
        decoded = [src.read(i) for i in range(5)]
    for i, (got, want) in enumerate(zip(decoded, frames, strict=True)):
        assert got.dtype == np.uint8 and got.shape == (48, 64, 3)
        assert np.array_equal(got, want), f"frame {i} differs"


def test_lossless_round_trip_of_moving_texture_with_inter_frames(tmp_path, frames_textured):
    frames = frames_textured(24)
    path = write_video(tmp_path / "v.mp4", frames, keyframe_interval=8)
    with av.open(str(path)) as c:
        types = [f.key_frame for f in c.decode(video=0)]
    assert types.count(True) == 3  # keyframes at 0, 8, 16; the rest are predicted
    assert all(np.array_equal(a, b) for a, b in zip(_read_all(path), frames, strict=True))


@pytest.mark.parametrize("lossless", [True, False])
@pytest.mark.parametrize("forward_decode_limit", [0, 32])
def test_random_access_equals_sequential(tmp_path, frames_textured, lossless, forward_decode_limit):
    frames = frames_textured(40)
    path = write_video(tmp_path / "v.mp4", frames, lossless=lossless, keyframe_interval=8)
    sequential = _read_all(path)
    if lossless:
        assert all(np.array_equal(a, b) for a, b in zip(sequential, frames, strict=True))
    order = [3, 0, 4, 1, 39, 38, 17, 17, 16, 35, 2, 24, 23, 0, 39]
    order += list(np.random.default_rng(5).permutation(40))
    with VideoSource(path, forward_decode_limit=forward_decode_limit) as src:
        for i in order:
            assert np.array_equal(src.read(i), sequential[i]), f"frame {i}"
        assert src.timestamps_reliable


def test_random_access_seeks_instead_of_decoding_from_start(tmp_path, frames_textured, monkeypatch):
    path = write_video(tmp_path / "v.mp4", frames_textured(40), keyframe_interval=8)
    sequential = _read_all(path)
    src = VideoSource(path, forward_decode_limit=0)
    restarts = []
    monkeypatch.setattr(src, "_restart", lambda: restarts.append(1))
    for i in (35, 3, 20, 39, 0, 17):
        assert np.array_equal(src.read(i), sequential[i])
    assert restarts == []
    src.close()


@pytest.mark.parametrize("lossless", [True, False])
def test_write_video_is_deterministic(tmp_path, frames_textured, lossless):
    frames = frames_textured(6)
    a = write_video(tmp_path / "a.mp4", frames, lossless=lossless).read_bytes()
    b = write_video(tmp_path / "b.mp4", frames, lossless=lossless).read_bytes()
    assert a == b


def test_read_returns_independent_arrays(tmp_path):
    path = write_video(tmp_path / "v.mp4", _noise_frames(3))
    with VideoSource(path) as src:
        a = src.read(1)
        a[:] = 0
        assert src.read(1).any()


def _write_vfr_video(path: Path, frames: list[np.ndarray], pts_ms: list[int]) -> None:
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264rgb", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "rgb24"
        stream.options = {"crf": "0", "g": "8"}
        stream.codec_context.time_base = Fraction(1, 1000)
        for pts, frame in zip(pts_ms, frames, strict=True):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = pts, Fraction(1, 1000)
            for packet in stream.encode(vf):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)


def test_variable_frame_rate_video_is_indexed_by_decoding_order(tmp_path, frames_textured, monkeypatch):
    frames = frames_textured(30)
    steps = np.random.default_rng(2).choice([20, 33, 50, 100], len(frames) - 1)
    pts = [0, *np.cumsum(steps).tolist()]
    path = tmp_path / "vfr.mp4"
    _write_vfr_video(path, frames, pts)
    with VideoSource(path, forward_decode_limit=0) as src:
        assert src.num_frames == 30
        assert not src.timestamps_reliable
        for i in [17, 3, 29, 0, 12, 11, 28]:
            assert np.array_equal(src.read(i), frames[i]), f"frame {i}"
        restarts = []
        real_restart = src._restart
        monkeypatch.setattr(src, "_restart", lambda: (restarts.append(1), real_restart()))
        src.read(2)  # behind the decoder: decode again from the start
        src.read(20)  # ahead: decode forward, no restart
        assert restarts == [1]
        assert np.array_equal(src.read(20), frames[20])


def test_timestamp_check_catches_frames_that_do_not_match_their_pts(tmp_path, frames_textured):
    """A video wrongly believed to have a constant rate: decoding detects the mismatch and counts."""
    frames = frames_textured(30)
    steps = np.random.default_rng(3).choice([20, 33, 50, 100], len(frames) - 1)
    path = tmp_path / "vfr.mp4"
    _write_vfr_video(path, frames, [0, *np.cumsum(steps).tolist()])
    with VideoSource(path, forward_decode_limit=0) as src:
        src._reliable = True
        got = [src.read(i) for i in range(30)]
        assert not src.timestamps_reliable
    assert all(np.array_equal(a, b) for a, b in zip(got, frames, strict=True))


def test_matroska_frame_count_is_counted(tmp_path, frames_textured):
    frames = frames_textured(20)
    mp4 = write_video(tmp_path / "v.mp4", frames, keyframe_interval=5)
    mkv = tmp_path / "v.mkv"
    with av.open(str(mp4)) as src, av.open(str(mkv), "w") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    with av.open(str(mkv)) as c:
        assert c.streams.video[0].frames == 0  # no frame count in the container
    with VideoSource(mkv, forward_decode_limit=0) as src:
        assert src.num_frames == 20
        for i in [12, 3, 19, 0, 7]:
            assert np.array_equal(src.read(i), frames[i])


def test_lossy_video_is_close_and_even_sized(tmp_path, frames_textured):
    frames = frames_textured(6)
    path = write_video(tmp_path / "v.mp4", frames, lossless=False, crf=18)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
    decoded = _read_all(path)
    # reference: the frames through 4:2:0 chroma subsampling alone (no compression)
    subsampled = [
        av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p").to_ndarray(format="rgb24")
        for f in frames
    ]
    err = np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(decoded, subsampled, strict=True)])
    assert 0 < err < 8  # grey levels, mean absolute; this 64x48 texture is detailed for CRF 18
    with pytest.raises(ValueError, match="even width and height"):
        write_video(tmp_path / "odd.mp4", [np.zeros((47, 64, 3), np.uint8)], lossless=False)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((48, 64, 3), np.float32), "uint8"),
        (np.zeros((48, 64), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((40, 64, 3), np.uint8), "differs"),
    ],
)
def test_write_video_rejects_bad_frames_and_keeps_the_old_file(tmp_path, bad, match):
    path = write_video(tmp_path / "v.mp4", _noise_frames(2))
    before = path.read_bytes()
    with pytest.raises(ValueError, match=match):
        write_video(path, [*_noise_frames(2, seed=9), bad])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]  # no temporary file left


def test_write_video_without_frames_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "v.mp4", [])
    assert list(tmp_path.iterdir()) == []


def test_unreadable_video_names_the_path(tmp_path):
    path = tmp_path / "cam0.mp4"
    path.write_bytes(b"this is not a video" * 100)
    with pytest.raises(FrameSourceError, match=r"cam0\.mp4"):
        VideoSource(path)
    with pytest.raises(FrameSourceError, match=r"cam0\.mp4"):
        open_source(path)


def test_truncated_video_is_an_error(tmp_path):
    path = write_video(tmp_path / "cam0.mp4", _noise_frames(5))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # e.g. a copy in progress
    with pytest.raises(FrameSourceError, match=r"cam0\.mp4"):
        VideoSource(path)


def test_missing_input_names_the_path(tmp_path):
    with pytest.raises(FrameSourceError, match=r"nope\.mp4.*not found"):
        VideoSource(tmp_path / "nope.mp4")
    with pytest.raises(FrameSourceError, match="nope"):
        open_source(tmp_path / "nope")


def test_index_out_of_range_names_path_and_count(tmp_path):
    path = write_video(tmp_path / "cam0.mp4", _noise_frames(3))
    with VideoSource(path) as src:
        for bad in (3, 100, -1):
            with pytest.raises(IndexError, match=r"cam0\.mp4.*frame index .* 3 frames"):
                src.read(bad)
    src.close()
    with pytest.raises(FrameSourceError, match="closed"):
        src.read(0)


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_image_folder_round_trip_in_natural_order(tmp_path):
    frames = _noise_frames(3, seed=4)
    folder = tmp_path / "cam0"
    folder.mkdir()
    for number, rgb in zip((1, 2, 10), frames, strict=True):
        _write_rgb(folder / f"img_{number}.png", rgb)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"")
    src = open_source(folder)
    assert isinstance(src, ImageFolderSource)
    assert isinstance(src, FrameSource)
    assert src.num_frames == 3
    assert src.image_size == (64, 48)
    assert [p.name for p in src.files] == ["img_1.png", "img_2.png", "img_10.png"]
    for i in (2, 0, 1):
        assert np.array_equal(src.read(i), frames[i])
    with pytest.raises(IndexError, match=r"cam0.*3 frames"):
        src.read(3)


def test_image_folder_converts_grey_and_drops_alpha(tmp_path):
    rng = np.random.default_rng(6)
    grey = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    bgra = rng.integers(0, 256, (48, 64, 4), dtype=np.uint8)
    assert cv2.imwrite(str(tmp_path / "a.png"), grey)
    assert cv2.imwrite(str(tmp_path / "b.png"), bgra)
    src = ImageFolderSource(tmp_path)
    assert np.array_equal(src.read(0), np.repeat(grey[:, :, None], 3, axis=2))
    assert np.array_equal(src.read(1), bgra[:, :, 2::-1])


def test_image_folder_size_mismatch_is_reported_on_read(tmp_path):
    _write_rgb(tmp_path / "0001.png", np.zeros((48, 64, 3), np.uint8))
    _write_rgb(tmp_path / "0002.png", np.zeros((40, 64, 3), np.uint8))
    src = ImageFolderSource(tmp_path)  # only the first image is read up front
    src.read(0)
    with pytest.raises(FrameSourceError, match=r"0002\.png.*64x40.*64x48"):
        src.read(1)


def test_image_folder_rejects_16_bit_images(tmp_path):
    assert cv2.imwrite(str(tmp_path / "0001.png"), np.full((48, 64, 3), 4000, np.uint16))
    with pytest.raises(FrameSourceError, match=r"0001\.png.*uint16.*8 bits"):
        ImageFolderSource(tmp_path)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FrameSourceError, match="not found"):
        ImageFolderSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FrameSourceError, match="no image files"):
        ImageFolderSource(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "0001.png").write_bytes(b"not a png")
    with pytest.raises(FrameSourceError, match=r"0001\.png.*cannot read"):
        ImageFolderSource(tmp_path / "broken")
