"""Survey definitions, input discovery, the opened survey and frame keys."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from aquamvs_core.survey import (
    FrameSelection,
    FrameSourceError,
    Survey,
    SurveyError,
    SurveySpec,
    discover_inputs,
    frame_index,
    frame_key,
    load_survey_spec,
    open_source,
)
from aquamvs_core.survey import inputs as survey_mod
from aquamvs_core.survey.video_writer import write_video

CAMERAS = ["cam0", "cam1", "cam2"]


# --------------------------------------------------------------------------------------------
# Frame keys and selections
# --------------------------------------------------------------------------------------------


def test_frame_key_round_trip():
    assert frame_key(0) == "f000000"
    assert frame_key(123) == "f000123"
    assert frame_key(1234567) == "f1234567"
    for i in (0, 7, 999_999, 1_000_000, 12_345_678):
        assert frame_index(frame_key(i)) == i
    with pytest.raises(ValueError, match="non-negative"):
        frame_key(-1)


@pytest.mark.parametrize(
    "bad", ["f12345", "000123", "f0000123", "g000001", "f00012a", "F000001", "", "f-00001"]
)
def test_frame_index_rejects_malformed_keys(bad):
    with pytest.raises(ValueError, match="invalid frame key"):
        frame_index(bad)


def test_frame_selection_indices():
    assert FrameSelection().indices(4) == [0, 1, 2, 3]
    assert FrameSelection(start=2, stop=11, step=3).indices(20) == [2, 5, 8]
    assert FrameSelection(start=1, stop=100, step=2).indices(6) == [1, 3, 5]  # stop clipped
    assert FrameSelection(start=10).indices(5) == []
    assert FrameSelection(step=5).indices(0) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start": -1}, "start"),
        ({"step": 0}, "step"),
        ({"start": 5, "stop": 5}, "stop"),
        ({"stop": 0}, "stop"),
    ],
)
def test_frame_selection_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FrameSelection(**kwargs)


# --------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------


def _write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_load_survey_spec_resolves_relative_paths(tmp_path):
    survey_dir = tmp_path / "surveys" / "reef"
    path = _write_yaml(
        survey_dir / "survey.yaml",
        {
            "name": "reef",
            "calibration": "calib/calibration.json",
            "inputs": "inputs",
            "frames": {"start": 2, "stop": 10, "step": 4},
            "store": "out/store.zarr",
            "ground_truth": "../gt/surface.npz",
        },
    )
    spec = load_survey_spec(path)
    assert spec.name == "reef"
    assert spec.calibration == survey_dir / "calib" / "calibration.json"
    assert spec.inputs == survey_dir / "inputs"
    assert spec.ground_truth == tmp_path / "surveys" / "gt" / "surface.npz"
    assert spec.store == str(survey_dir / "out" / "store.zarr")
    assert spec.frames == FrameSelection(start=2, stop=10, step=4)
    assert spec.pair_neighbours == 4


@pytest.mark.parametrize(
    "store", ["s3://bucket/surveys/reef.zarr", "memory://reef", "file:///data/reef.zarr"]
)
def test_load_survey_spec_keeps_url_stores(tmp_path, store):
    data = {"name": "r", "calibration": "/abs/calibration.json", "inputs": "in", "store": store}
    spec = load_survey_spec(_write_yaml(tmp_path / "s.yaml", data))
    assert spec.store == store
    assert spec.calibration == Path("/abs/calibration.json")
    assert spec.ground_truth is None
    assert spec.frames == FrameSelection()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"calibration": "c.json", "inputs": "in", "store": "s"}, "name: Field required"),
        ({"name": "r", "calibration": "c.json", "inputs": "in", "store": "s", "colour": 1}, "colour"),
        (
            {"name": "r", "calibration": "c.json", "inputs": "in", "store": "s", "frames": {"step": 0}},
            "frames.step",
        ),
        (
            {"name": "r", "calibration": "c.json", "inputs": "in", "store": "s", "pair_neighbours": 0},
            "pair_neighbours",
        ),
        (
            {
                "name": "r",
                "calibration": "c.json",
                "inputs": "in",
                "store": "s",
                "frames": {"start": 3, "stop": 1},
            },
            "stop",
        ),
    ],
)
def test_load_survey_spec_errors_name_file_and_field(tmp_path, data, match):
    path = _write_yaml(tmp_path / "bad.yaml", data)
    with pytest.raises(SurveyError, match=r"bad\.yaml") as info:
        load_survey_spec(path)
    assert match in str(info.value)


def test_load_survey_spec_file_errors(tmp_path):
    with pytest.raises(SurveyError, match=r"missing\.yaml: survey file not found"):
        load_survey_spec(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SurveyError, match=r"broken\.yaml: not valid YAML"):
        load_survey_spec(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SurveyError, match=r"list\.yaml: expected a mapping"):
        load_survey_spec(tmp_path / "list.yaml")


def test_to_yaml_round_trip_is_relocatable(tmp_path):
    survey_dir = tmp_path / "a"
    spec = SurveySpec(
        name="reef",
        calibration=survey_dir / "calibration.json",
        inputs=survey_dir / "inputs",
        frames=FrameSelection(start=1, step=2),
        store=str(survey_dir / "store.zarr"),
        pair_neighbours=3,
        ground_truth=tmp_path / "elsewhere" / "gt.npz",
    )
    path = spec.to_yaml(survey_dir / "survey.yaml")
    text = yaml.safe_load(path.read_text())
    assert text["calibration"] == "calibration.json"
    assert text["inputs"] == "inputs"
    assert text["store"] == "store.zarr"
    assert text["ground_truth"] == str(tmp_path / "elsewhere" / "gt.npz")  # outside: absolute
    assert load_survey_spec(path) == spec

    moved = tmp_path / "b"
    survey_dir.rename(moved)
    reloaded = load_survey_spec(moved / "survey.yaml")
    assert reloaded.calibration == moved / "calibration.json"
    assert reloaded.inputs == moved / "inputs"
    assert reloaded.store == str(moved / "store.zarr")
    assert reloaded.ground_truth == spec.ground_truth


def test_to_yaml_keeps_url_store(tmp_path):
    spec = SurveySpec(
        name="r", calibration=tmp_path / "c.json", inputs=tmp_path / "in", store="s3://b/r.zarr"
    )
    path = spec.to_yaml(tmp_path / "s.yaml")
    assert yaml.safe_load(path.read_text())["store"] == "s3://b/r.zarr"
    assert load_survey_spec(path) == spec


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_discover_inputs_videos_and_folders(tmp_path):
    _touch(tmp_path / "cam0.mp4")
    _touch(tmp_path / "cam1" / "0001.png")
    _touch(tmp_path / "cam2.MOV")
    _touch(tmp_path / "README.txt")
    _touch(tmp_path / ".cam0.mp4.1234.tmp")
    (tmp_path / ".cache").mkdir()
    found = discover_inputs(tmp_path, ["cam2", "cam0", "cam1"])
    assert list(found) == ["cam2", "cam0", "cam1"]
    assert found == {"cam0": tmp_path / "cam0.mp4", "cam1": tmp_path / "cam1", "cam2": tmp_path / "cam2.MOV"}


def test_discover_inputs_errors(tmp_path):
    with pytest.raises(SurveyError, match=r"inputs directory .*missing.* not found"):
        discover_inputs(tmp_path / "missing", CAMERAS)

    for cam in CAMERAS:
        _touch(tmp_path / f"{cam}.mp4")
    _touch(tmp_path / "camX.mkv")
    with pytest.raises(
        SurveyError, match=r"unknown camera 'camX' in .*; calibration has \['cam0', 'cam1', 'cam2'\]"
    ):
        discover_inputs(tmp_path, CAMERAS)
    (tmp_path / "camX.mkv").unlink()

    (tmp_path / "cam2.mp4").unlink()
    with pytest.raises(SurveyError, match=r"camera\(s\) \['cam2'\] have no input"):
        discover_inputs(tmp_path, CAMERAS)

    _touch(tmp_path / "cam2.mp4")
    (tmp_path / "cam1").mkdir()
    with pytest.raises(SurveyError, match="camera 'cam1' has both a video and an image folder"):
        discover_inputs(tmp_path, CAMERAS)
    (tmp_path / "cam1").rmdir()

    _touch(tmp_path / "cam0.avi")
    with pytest.raises(SurveyError, match="camera 'cam0' has several videos"):
        discover_inputs(tmp_path, CAMERAS)


# --------------------------------------------------------------------------------------------
# Opened surveys
# --------------------------------------------------------------------------------------------


def _make_survey(
    root: Path,
    calibration: dict,
    frames: dict[str, list[np.ndarray]],
    folder_cameras: tuple[str, ...] = (),
    selection: FrameSelection | None = None,
) -> SurveySpec:
    root.mkdir(parents=True, exist_ok=True)
    (root / "calibration.json").write_text(json.dumps(calibration))
    for cam, images in frames.items():
        if cam in folder_cameras:
            (root / "inputs" / cam).mkdir(parents=True)
            for i, rgb in enumerate(images):
                assert cv2.imwrite(
                    str(root / "inputs" / cam / f"{i:04d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
                )
        else:
            write_video(root / "inputs" / f"{cam}.mp4", images)
    spec = SurveySpec(
        name="test",
        calibration=root / "calibration.json",
        inputs=root / "inputs",
        store=str(root / "store.zarr"),
        frames=selection or FrameSelection(),
    )
    return load_survey_spec(spec.to_yaml(root / "survey.yaml"))


def test_survey_open_and_read(tmp_path, survey_aquacal_dict, frames_textured):
    frames = {cam: frames_textured(6, seed=k) for k, cam in enumerate(CAMERAS)}
    spec = _make_survey(
        tmp_path,
        survey_aquacal_dict(CAMERAS),
        frames,
        folder_cameras=("cam1",),
        selection=FrameSelection(step=2),
    )
    with Survey.open(spec) as survey:
        assert survey.spec == spec
        assert survey.rig.camera_names == CAMERAS
        assert list(survey.sources) == CAMERAS
        assert survey.num_frames == 6
        assert survey.frame_indices == [0, 2, 4]
        for i in (3, 0, 5):
            images = survey.read_frame(i)
            assert list(images) == CAMERAS
            for cam in CAMERAS:
                assert np.array_equal(images[cam], frames[cam][i]), (cam, i)
        with pytest.raises(IndexError, match=r"frame index 6 out of range.*6 frames"):
            survey.read_frame(6)


def test_survey_frame_count_mismatch_lists_every_camera(
    tmp_path, survey_aquacal_dict, frames_textured, monkeypatch
):
    frames = {"cam0": frames_textured(5), "cam1": frames_textured(4), "cam2": frames_textured(5)}
    spec = _make_survey(tmp_path, survey_aquacal_dict(CAMERAS), frames, folder_cameras=("cam2",))
    opened = []

    def tracking_open_source(path):
        opened.append(open_source(path))
        return opened[-1]

    monkeypatch.setattr(survey_mod, "open_source", tracking_open_source)
    with pytest.raises(SurveyError, match=r"different frame counts \(cam0: 5, cam1: 4, cam2: 5\)"):
        Survey.open(spec)
    assert len(opened) == 3
    with pytest.raises(FrameSourceError, match="closed"):  # sources are closed on failure
        opened[0].read(0)


def test_survey_image_size_mismatch_names_camera_and_sizes(tmp_path, survey_aquacal_dict, frames_textured):
    frames = {
        "cam0": frames_textured(3),
        "cam1": frames_textured(3, width=48, height=32),
        "cam2": frames_textured(3),
    }
    spec = _make_survey(tmp_path, survey_aquacal_dict(CAMERAS), frames)
    with pytest.raises(SurveyError, match=r"camera 'cam1': .*cam1\.mp4 has image size 48x32.*has 64x48"):
        Survey.open(spec)


def test_survey_unknown_camera_and_missing_input(tmp_path, survey_aquacal_dict, frames_textured):
    frames = {cam: frames_textured(3) for cam in CAMERAS}
    spec = _make_survey(tmp_path, survey_aquacal_dict(["cam0", "cam1"]), frames)
    with pytest.raises(SurveyError, match="unknown camera 'cam2'"):
        Survey.open(spec)
    spec = _make_survey(
        tmp_path / "b", survey_aquacal_dict(CAMERAS), {"cam0": frames["cam0"], "cam1": frames["cam1"]}
    )
    with pytest.raises(SurveyError, match=r"\['cam2'\] have no input"):
        Survey.open(spec)


def test_survey_unreadable_video(tmp_path, survey_aquacal_dict, frames_textured):
    frames = {cam: frames_textured(3) for cam in CAMERAS}
    spec = _make_survey(tmp_path, survey_aquacal_dict(CAMERAS), frames)
    (tmp_path / "inputs" / "cam1.mp4").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(ValueError, match=r"cam1\.mp4"):
        Survey.open(spec)


def test_sources_open_side_by_side_and_a_failure_closes_the_others(
    tmp_path, survey_aquacal_dict, frames_textured, monkeypatch
):
    """The cameras' sources open in threads, each once, in camera order in the result; when two fail,
    the first in camera order is raised and every source that did open is closed."""
    frames = {cam: frames_textured(3, seed=k) for k, cam in enumerate(CAMERAS)}
    spec = _make_survey(tmp_path, survey_aquacal_dict(CAMERAS), frames)
    opened, threads = [], set()

    def tracking_open_source(path):
        threads.add(threading.current_thread().name)
        opened.append(open_source(path))
        return opened[-1]

    monkeypatch.setattr(survey_mod, "open_source", tracking_open_source)
    monkeypatch.setattr(survey_mod, "available_cores", lambda: 3)
    with Survey.open(spec) as survey:
        assert list(survey.sources) == CAMERAS
        paths = [survey.sources[c].path for c in CAMERAS]
        assert paths == [str(tmp_path / "inputs" / f"{c}.mp4") for c in CAMERAS]
    assert len(opened) == 3 and threads and all(t.startswith("aquamvs-open") for t in threads)

    opened.clear()
    for cam in ("cam1", "cam2"):
        (tmp_path / "inputs" / f"{cam}.mp4").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(FrameSourceError, match=r"cam1\.mp4"):
        Survey.open(spec)
    assert len(opened) == 1  # cam0's
    with pytest.raises(FrameSourceError, match="closed"):
        opened[0].read(0)
