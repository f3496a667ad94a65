"""The Zarr survey store: round trips (local and fsspec memory://), commit markers, validation."""

from __future__ import annotations

import uuid

import fsspec
import numpy as np
import pytest
import zarr

from aquamvs_core.camera.calibration import parse_calibration
from aquamvs_core.store import (
    FrameNotFoundError,
    IncompleteFrameError,
    StoreError,
    StoreKeyError,
    SurveyStore,
)
from aquamvs_core.store import commit as commit_mod
from aquamvs_core.store import layout as store_mod

CAMERAS = ["cam0", "cam1", "cam2"]
H, W = 48, 64


@pytest.fixture(params=["local", "memory"])
def store_root(request, tmp_path):
    """A fresh store root: a local directory, or a unique fsspec memory:// URL (removed afterwards)."""
    if request.param == "local":
        yield str(tmp_path / "store.zarr")
        return
    path = f"/aquamvs-test-{uuid.uuid4().hex}"
    yield f"memory://{path}"
    fs = fsspec.filesystem("memory")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _images(seed: int = 0, cameras: list[str] = CAMERAS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {cam: rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for cam in cameras}


def _raw_group(root: str) -> zarr.Group:
    return zarr.open_group(store_mod.open_zarr_store(root), mode="r")


def _versions(group: zarr.Group) -> dict[str, zarr.Group]:
    """The version subgroups of a store group (committed or not)."""
    return dict(group.groups())


class _CrashAfter:
    """Replacement for ``commit.write_array`` that writes ``n`` arrays, then raises."""

    def __init__(self, n: int):
        self.n = n
        self.written: list[str] = []
        self.real = commit_mod.write_array

    def __call__(self, group, name, data, chunks=None):
        if len(self.written) == self.n:
            raise OSError("simulated crash while writing")
        self.real(group, name, data, chunks)
        self.written.append(name)


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


def test_frame_round_trip_is_bit_exact(store_root):
    store = SurveyStore(store_root, survey="reef")
    images = _images(1)
    images["cam2"] = np.zeros((H, W, 3), np.uint8)  # an all-fill-value image must read back too
    attrs = {"calibration_hash": "abc", "sources": {c: f"/in/{c}.mp4" for c in CAMERAS}}
    assert not store.has_frame("f000007")
    store.write_frame("f000007", images, attrs)

    reopened = SurveyStore(store_root, read_only=True)
    assert reopened.survey == "reef"
    assert reopened.has_frame("f000007")
    assert reopened.list_frames() == ["f000007"]
    out = reopened.read_frame("f000007")
    assert list(out) == CAMERAS
    for cam in CAMERAS:
        assert out[cam].dtype == np.uint8 and out[cam].shape == (H, W, 3)
        assert np.array_equal(out[cam], images[cam])
    assert list(reopened.read_frame("f000007", cameras=["cam1"])) == ["cam1"]

    got = reopened.frame_attrs("f000007")
    assert got["frame_index"] == 7
    assert got["complete"] is True
    assert got["cameras"] == CAMERAS
    assert got["calibration_hash"] == "abc"
    assert got["sources"]["cam0"] == "/in/cam0.mp4"
    assert "written_at" in got

    raw = _raw_group(store_root)
    assert raw.attrs["aquamvs_layout"] == 2
    frame = raw["frames/f000007"]
    assert list(_versions(frame)) == [got["version"]]  # the committed version holds the images
    assert frame[got["version"]]["cam0"].chunks == (H, W, 3)


def test_list_frames_is_sorted_by_index_and_skips_incomplete(store_root, monkeypatch):
    store = SurveyStore(store_root)
    for key in ["f000010", "f000002", "f1000000", "f999999"]:
        store.write_frame(key, _images(cameras=["cam0"]))
    monkeypatch.setattr(commit_mod, "write_array", _CrashAfter(0))
    with pytest.raises(OSError, match="simulated"):
        store.write_frame("f000005", _images(cameras=["cam0"]))
    assert store.list_frames() == ["f000002", "f000010", "f999999", "f1000000"]


def test_calibration_round_trip(store_root, survey_aquacal_dict):
    rig = parse_calibration(survey_aquacal_dict(CAMERAS), source="/data/calibration.json")
    Ks = {cam: np.array([[50.0, 0, 32.5], [0, 50.0, 24.0], [0, 0, 1]]) + i for i, cam in enumerate(CAMERAS)}
    rng = np.random.default_rng(3)
    masks = {cam: rng.random((H, W)) > 0.2 for cam in CAMERAS}
    masks["cam1"] = masks["cam1"].astype(np.uint8)  # 0/1 uint8 is accepted and stored as bool

    store = SurveyStore(store_root)
    assert not store.has_calibration()
    with pytest.raises(StoreError, match="no calibration"):
        store.read_calibration()
    store.write_calibration(rig, Ks, masks)

    reopened = SurveyStore(store_root, read_only=True)
    assert reopened.has_calibration()
    attrs = reopened.read_calibration()
    assert attrs["calibration_hash"] == rig.content_hash
    assert attrs["source"] == "/data/calibration.json"
    assert attrs["calibration"]["version"] == "1.0"
    assert reopened.read_rig().content_hash == rig.content_hash
    Ks_back = reopened.read_undistorted_K()
    assert all(np.array_equal(Ks_back[c], Ks[c]) for c in CAMERAS)
    masks_back = reopened.read_valid_masks()
    assert list(masks_back) == CAMERAS
    for cam in CAMERAS:
        assert masks_back[cam].dtype == bool
        assert np.array_equal(masks_back[cam], masks[cam].astype(bool))
    group = _raw_group(store_root)["calibration"]
    assert group[attrs["version"]]["valid_mask/cam0"].chunks == (H, W)


def test_lens_cameras_round_trip_into_store_cameras(store_root, survey_aquacal_dict):
    """Frames stored on the original grid: the store records which cameras carry their lens, and
    StoreCameras builds those with the lens model (others as pinholes of the stored K and size)."""
    from aquamvs_core.steps import StoreCameras

    rig = parse_calibration(survey_aquacal_dict(CAMERAS))
    Ks = {cam: np.asarray(rig[cam].K) for cam in CAMERAS}
    Ks["cam2"] = Ks["cam2"] * [[0.9], [0.9], [1.0]]
    masks = {cam: np.ones((H, W), bool) for cam in CAMERAS}
    store = SurveyStore(store_root)
    with pytest.raises(ValueError, match="lens_cameras"):
        store.write_calibration(rig, Ks, masks, lens_cameras=["nope"])
    store.write_calibration(rig, Ks, masks, lens_cameras=["cam0", "cam1"])
    assert store.read_lens_cameras() == ["cam0", "cam1"]
    cams = StoreCameras.load(store).cameras
    assert cams["cam0"].lens is not None and cams["cam1"].lens is not None and cams["cam2"].lens is None
    np.testing.assert_array_equal(cams["cam2"].K.numpy(), Ks["cam2"])
    assert cams["cam2"].image_size == (W, H)
    np.testing.assert_array_equal(cams["cam0"].lens.dist_coeffs, rig["cam0"].dist_coeffs)


def test_calibration_validation_writes_nothing(store_root, survey_aquacal_dict):
    rig = parse_calibration(survey_aquacal_dict(CAMERAS))
    Ks = {cam: np.eye(3) for cam in CAMERAS}
    masks = {cam: np.ones((H, W), bool) for cam in CAMERAS}
    store = SurveyStore(store_root)
    with pytest.raises(ValueError, match="undistorted_K: cameras"):
        store.write_calibration(rig, {"cam0": np.eye(3)}, masks)
    with pytest.raises(ValueError, match=r"undistorted_K\['cam1'\]"):
        store.write_calibration(rig, {**Ks, "cam1": np.eye(2)}, masks)
    with pytest.raises(ValueError, match=r"valid_masks\['cam2'\]"):
        store.write_calibration(rig, Ks, {**masks, "cam2": np.ones((H, W), np.float32)})
    with pytest.raises(ValueError, match="shapes differ"):
        store.write_calibration(rig, Ks, {**masks, "cam2": np.ones((H, W + 1), bool)})
    assert not store.has_calibration()
    assert "calibration" not in _raw_group(store_root)


def test_calibration_rewrite_crash_keeps_the_previous_calibration(
    store_root, survey_aquacal_dict, monkeypatch
):
    rig = parse_calibration(survey_aquacal_dict(CAMERAS))
    Ks = {cam: np.eye(3) for cam in CAMERAS}
    masks = {cam: np.ones((H, W), bool) for cam in CAMERAS}
    store = SurveyStore(store_root)
    store.write_calibration(rig, Ks, masks)
    before = store.read_calibration()
    monkeypatch.setattr(commit_mod, "write_array", _CrashAfter(1))
    new_masks = {cam: np.zeros((H, W), bool) for cam in CAMERAS}
    with pytest.raises(OSError, match="simulated"):
        store.write_calibration(rig, Ks, new_masks)
    assert store.has_calibration() and store.read_calibration() == before  # the old one, whole
    assert all(m.all() for m in store.read_valid_masks().values())


@pytest.mark.parametrize("when", ["before the masks", "after the masks"])
def test_masks_of_a_calibration_rewritten_while_being_read_come_whole_from_the_new_version(
    store_root, survey_aquacal_dict, monkeypatch, when
):
    """Another writer recommits the calibration (new masks) and deletes the version being read, in
    the middle of ``read_valid_masks``: before the masks are read (they are gone) or after (their
    chunks may have been deleted under the reader). All masks come from the new version; a
    committed version whose masks are missing is an error, not a loop."""
    rig = parse_calibration(survey_aquacal_dict(CAMERAS))
    Ks = {cam: np.eye(3) for cam in CAMERAS}
    old = {cam: np.ones((H, W), bool) for cam in CAMERAS}
    new = {cam: np.arange(H * W).reshape(H, W) % (i + 2) == 0 for i, cam in enumerate(CAMERAS)}
    store = SurveyStore(store_root)
    store.write_calibration(rig, Ks, old)
    real_locate = SurveyStore._calibration_group
    calls = {"n": 0}

    def locate_then_rewrite(self):
        calls["n"] += 1
        group = real_locate(self)
        # 1: the committed calibration is found; 2: the check once its masks are read.
        if calls["n"] == (1 if when == "before the masks" else 2):
            SurveyStore(store_root).write_calibration(rig, Ks, new)
            if when == "after the masks":
                group = real_locate(self)  # the check sees the new commit
        return group

    monkeypatch.setattr(SurveyStore, "_calibration_group", locate_then_rewrite)
    got = store.read_valid_masks()
    assert calls["n"] >= 3  # read again
    assert list(got) == CAMERAS
    for cam in CAMERAS:
        np.testing.assert_array_equal(got[cam], new[cam])
    monkeypatch.undo()
    version = store.read_calibration()["version"]
    raw = zarr.open_group(store_mod.open_zarr_store(store_root), mode="r+")
    del raw[f"calibration/{version}/valid_mask/cam1"]
    with pytest.raises((KeyError, FileNotFoundError)):
        store.read_valid_masks()


def test_a_group_rewritten_at_every_read_is_an_error_not_a_loop(store_root, survey_aquacal_dict, monkeypatch):
    rig = parse_calibration(survey_aquacal_dict(CAMERAS))
    Ks = {cam: np.eye(3) for cam in CAMERAS}
    masks = {cam: np.ones((H, W), bool) for cam in CAMERAS}
    store = SurveyStore(store_root)
    store.write_calibration(rig, Ks, masks)
    real_locate = SurveyStore._calibration_group

    def always_rewritten(self):
        group = real_locate(self)
        SurveyStore(store_root).write_calibration(rig, Ks, masks)
        return group

    monkeypatch.setattr(SurveyStore, "_calibration_group", always_rewritten)
    with pytest.raises(StoreError, match=f"rewritten {commit_mod.READ_ATTEMPTS} times"):
        store.read_valid_masks()


# --------------------------------------------------------------------------------------------
# Commit marker
# --------------------------------------------------------------------------------------------


def test_crash_midway_through_a_new_frame(store_root, monkeypatch):
    store = SurveyStore(store_root)
    crash = _CrashAfter(1)
    monkeypatch.setattr(commit_mod, "write_array", crash)
    with pytest.raises(OSError, match="simulated"):
        store.write_frame("f000003", _images(), {"calibration_hash": "abc"})
    assert crash.written == ["cam0"]
    (partial,) = _versions(_raw_group(store_root)["frames/f000003"]).values()
    assert "cam0" in partial  # the first array did reach the store, in an uncommitted version

    assert not store.has_frame("f000003")
    assert store.list_frames() == []
    with pytest.raises(IncompleteFrameError, match="f000003 is incomplete"):
        store.read_frame("f000003")
    with pytest.raises(IncompleteFrameError):
        store.frame_attrs("f000003")
    with pytest.raises(KeyError):  # IncompleteFrameError is a KeyError
        store.read_frame("f000003")

    monkeypatch.setattr(commit_mod, "write_array", crash.real)
    images = _images(4)
    store.write_frame("f000003", images)  # a retry completes the frame
    assert store.list_frames() == ["f000003"]
    assert all(np.array_equal(store.read_frame("f000003")[c], images[c]) for c in CAMERAS)


def test_crash_midway_through_a_rewrite(store_root, monkeypatch):
    store = SurveyStore(store_root)
    old = _images(1)
    store.write_frame("f000003", old)
    assert store.has_frame("f000003")

    committed = store.frame_attrs("f000003")["version"]
    monkeypatch.setattr(commit_mod, "write_array", _CrashAfter(2))
    new = _images(2)
    with pytest.raises(OSError, match="simulated"):
        store.write_frame("f000003", new)
    versions = _versions(_raw_group(store_root)["frames/f000003"])
    (partial,) = (g for v, g in versions.items() if v != committed)
    assert np.array_equal(partial["cam0"][...], new["cam0"])  # half of the new frame was written ...
    assert "cam2" not in partial
    assert store.list_frames() == ["f000003"]  # ... but readers still see the old frame, whole
    back = store.read_frame("f000003")
    assert all(np.array_equal(back[c], old[c]) for c in CAMERAS)


def test_rewrite_with_fewer_cameras_drops_stale_arrays(store_root):
    store = SurveyStore(store_root)
    store.write_frame("f000001", _images(1))
    new = _images(2, cameras=["cam1"])
    store.write_frame("f000001", new)
    assert list(store.read_frame("f000001")) == ["cam1"]
    versions = _versions(_raw_group(store_root)["frames/f000001"])
    assert len(versions) == 1  # the replaced version was deleted
    assert sorted(next(iter(versions.values())).array_keys()) == ["cam1"]
    with pytest.raises(StoreKeyError, match=r"no camera\(s\) \['cam0'\]"):
        store.read_frame("f000001", cameras=["cam0"])


def test_two_writers_of_one_frame_the_last_commit_wins_whole(store_root, monkeypatch):
    """Writer A has written one image when writer B rewrites the frame completely; then A finishes.
    The frame is A's, every camera of it: never a mixture of A's and B's images."""
    store, other = SurveyStore(store_root), SurveyStore(store_root)
    store.write_frame("f000001", _images(0))
    a, b = _images(1), _images(2)
    real = commit_mod.write_array
    calls = {"n": 0}

    def interleaved(group, name, data, chunks=None):
        real(group, name, data, chunks)
        calls["n"] += 1
        if calls["n"] == 1:  # after A's first image, B writes and commits the whole frame
            monkeypatch.setattr(commit_mod, "write_array", real)
            other.write_frame("f000001", b)
            assert all(np.array_equal(store.read_frame("f000001")[c], b[c]) for c in CAMERAS)
            monkeypatch.setattr(commit_mod, "write_array", interleaved)

    monkeypatch.setattr(commit_mod, "write_array", interleaved)
    store.write_frame("f000001", a)
    back = SurveyStore(store_root).read_frame("f000001")
    assert all(np.array_equal(back[c], a[c]) for c in CAMERAS)


def test_read_detects_a_concurrent_rewrite(store_root, monkeypatch):
    store = SurveyStore(store_root)
    store.write_frame("f000001", _images(1))
    writer = SurveyStore(store_root)
    real = SurveyStore._committed_frame

    def committed_then_rewritten(self, key):
        found = real(self, key)
        writer.write_frame(key, _images(2))  # another process rewrites between check and read
        return found

    monkeypatch.setattr(SurveyStore, "_committed_frame", committed_then_rewritten)
    with pytest.raises(IncompleteFrameError, match="rewritten while being read"):
        store.read_frame("f000001")


@pytest.mark.parametrize(
    ("images", "attrs", "match"),
    [
        ({}, None, "non-empty"),
        ({"cam0": np.zeros((H, W, 3), np.float32)}, None, "uint8"),
        ({"cam0": np.zeros((H, W), np.uint8)}, None, r"\(H, W, 3\)"),
        ({"cam0": np.zeros((H, W, 4), np.uint8)}, None, r"\(H, W, 3\)"),
        ({"cam0": np.zeros((H, W, 3), np.uint8), "cam1": np.zeros((H, W - 2, 3), np.uint8)}, None, "differs"),
        ({"a/b": np.zeros((H, W, 3), np.uint8)}, None, "invalid camera name"),
        ({"cam0": np.zeros((H, W, 3), np.uint8)}, {"n": np.int64(3)}, "JSON"),
        ({"cam0": np.zeros((H, W, 3), np.uint8)}, {"complete": True}, "set by the store"),
        ({"cam0": np.zeros((H, W, 3), np.uint8)}, {"frame_index": 9}, "does not match"),
    ],
)
def test_bad_input_writes_nothing(store_root, images, attrs, match):
    store = SurveyStore(store_root)
    good = _images(5)
    store.write_frame("f000001", good)
    for key in ("f000001", "f000002"):  # a rewrite of a complete frame, and a new frame
        with pytest.raises(ValueError, match=match):
            store.write_frame(key, images, attrs)
    assert store.list_frames() == ["f000001"]
    assert "f000002" not in _raw_group(store_root)["frames"]
    assert all(np.array_equal(store.read_frame("f000001")[c], good[c]) for c in CAMERAS)


def test_invalid_keys_are_rejected(store_root):
    store = SurveyStore(store_root)
    with pytest.raises(ValueError, match="invalid frame key"):
        store.write_frame("frame1", _images())
    with pytest.raises(ValueError, match="invalid frame key"):
        store.has_frame("../calibration")


def test_missing_frame_and_delete(store_root):
    store = SurveyStore(store_root)
    with pytest.raises(FrameNotFoundError, match="f000004 is not in the store") as info:
        store.read_frame("f000004")
    assert not isinstance(info.value, IncompleteFrameError)
    assert store.list_frames() == []
    store.write_frame("f000004", _images())
    store.write_frame("f000005", _images())
    assert store.delete_frame("f000004") is True
    assert store.delete_frame("f000004") is False
    assert store.list_frames() == ["f000005"]
    assert not store.has_frame("f000004")


def test_pair_keys_lists_the_stored_pair_geometries(store_root):
    store = SurveyStore(store_root)
    assert store.pair_keys() == []
    store.write_pair_geometry("cam1-cam0", {"ref": "cam1", "src": "cam0", "baseline_m": 0.2})
    store.write_pair_geometry("cam0-cam1", {"ref": "cam0", "src": "cam1", "baseline_m": 0.2})
    assert store.pair_keys() == ["cam0-cam1", "cam1-cam0"]
    assert store.read_pair_geometry("cam1-cam0")["ref"] == "cam1"


def test_store_open_errors(tmp_path, store_root):
    with pytest.raises(StoreError, match="cannot open"):
        SurveyStore(tmp_path / "missing.zarr", read_only=True)
    foreign = zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    foreign.create_array("x", shape=(2,), dtype="uint8")
    with pytest.raises(StoreError, match="not an AquaMVS store"):
        SurveyStore(tmp_path / "foreign.zarr")
    SurveyStore(store_root, survey="reef")
    with pytest.raises(StoreError, match="belongs to survey 'reef', not 'lagoon'"):
        SurveyStore(store_root, survey="lagoon")
    assert SurveyStore(store_root, survey="reef").survey == "reef"
