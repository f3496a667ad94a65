"""Store-level ingestion: frames keep their decoded input's hash and fingerprint, an unchanged frame
is not written again, and :func:`verify_frames` checks the stored frames against the inputs
independently (and finds a replaced input, or a frame beyond an input's end)."""

from __future__ import annotations

import shutil

from aquamvs_core.stages.ingest import Undistorter
from aquamvs_core.steps import ingest_frames, source_hash, verify_frames, write_calibration
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Survey, load_survey_spec


def _ingest(spec, store, indices):
    with Survey.open(spec) as survey:
        undistorter = Undistorter.for_rig(survey.rig)
        write_calibration(store, survey.rig, undistorter)
        return ingest_frames(survey, store, indices, undistorter), survey.read_frame(indices[0])


def test_frames_record_their_input_and_are_not_rewritten_when_unchanged(synthetic_survey_file):
    spec = load_survey_spec(synthetic_survey_file)
    store = SurveyStore(spec.store)
    (first,), raw = _ingest(spec, store, [1])
    attrs = store.frame_attrs("f000001")
    assert attrs["source_hash"] == source_hash(raw) == first.source_hash and not first.reused
    write_id = attrs["write_id"]
    (again,), _ = _ingest(spec, store, [1])
    assert again.reused and store.frame_attrs("f000001")["write_id"] == write_id  # not written again
    assert verify_frames(spec, store, [1]) == {"f000001": []}


def test_verify_frames_finds_a_replaced_input_and_a_frame_beyond_an_input(synthetic_survey_file, tmp_path):
    spec = load_survey_spec(synthetic_survey_file)
    inputs = tmp_path / "inputs"
    shutil.copytree(spec.inputs, inputs)
    spec = spec.model_copy(update={"inputs": inputs})
    store = SurveyStore(spec.store)
    _ingest(spec, store, [0, 2])
    shutil.copy(inputs / "cam2.mp4", inputs / "cam1.mp4")  # same size and length, other images
    problems = verify_frames(spec, store, [0, 2])
    assert problems == {
        k: ["the inputs decode to other images than were ingested"] for k in ("f000000", "f000002")
    }
    problems = verify_frames(spec, store, [5])
    assert "frame 5 is beyond the inputs" in problems["f000005"][0]
