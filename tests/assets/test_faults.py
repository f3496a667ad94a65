"""Faults, tried for real: a reconstruction killed with ``kill -9`` mid-write, two concurrent runs on
one frame, a write that fails halfway (disk full), and bad input, each with a clear message and
nothing written."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from dagster_helpers import webserver
from graphql_client import graphql

from aquamvs_assets.cli import _survey_name_for
from aquamvs_assets.cli import main as cli_main
from aquamvs_assets.partitions import SurveyNamespace
from aquamvs_assets.project import ensure_dagster_home
from aquamvs_assets.run_health import reap_dead_runs
from aquamvs_assets.workspace import add_survey_location
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Product, load_survey_spec, product_path

PARTITIONS_QUERY = """{ assetNodes { assetKey { path } assetPartitionStatuses {
    ... on DefaultPartitionStatuses {
        materializedPartitions failedPartitions unmaterializedPartitions materializingPartitions } } } }"""


def _reconstruct_args(spec, out: Path, home: Path, *extra: str) -> list[str]:
    """``aquamvs reconstruct`` of frame 0, fast and without auxiliary sources (16 dense pairs:
    the 4 ring cameras × their 3 ring sources, the fisheye × its 4 ring sources)."""
    cheap = out.parent / "cheap.yaml"
    cheap.write_text("use_auxiliary_sources: false\n")
    return [
        "reconstruct", str(spec.calibration), str(spec.inputs), str(out),
        "--frames", "0", "--preset", "fast", "--config", str(cheap), "--dagster-home", str(home), *extra,
    ]  # fmt: skip


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    code = f"import sys; from aquamvs_assets.cli import main; sys.exit(main({args!r}))"
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _every_committed_product_reads(store: SurveyStore) -> int:
    """Reads every committed product's arrays in full (none is half-written); returns their count."""
    paths = [p for product in Product for p in store.product_paths(product.value)]
    for path in paths:
        arrays = store.read_product(path)
        assert arrays and all(a.size >= 0 for a in arrays.values())
    return len(paths)


def test_kill_9_mid_write_leaves_nothing_that_looks_complete_and_the_next_run_finishes(
    synthetic_survey_file, tmp_path
):
    spec = load_survey_spec(synthetic_survey_file)
    out, home = tmp_path / "out", tmp_path / "home"
    store_root = out / ".aquamvs" / "store.zarr"
    proc = _spawn(_reconstruct_args(spec, out, home), tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 300
        while True:  # kill it as soon as the first pair depths are committed: mid-asset
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the reconstruction never reached the pairwise depths"
            if store_root.exists():
                try:
                    done = SurveyStore(store_root, read_only=True).list_products(
                        product_path(Product.PAIRWISE_DEPTHS, "f000000")
                    )
                except Exception:  # the store is being created
                    done = []
                if len(done) >= 2:
                    break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)

    store = SurveyStore(store_root, read_only=True)
    assert store.has_frame("f000000")
    assert _every_committed_product_reads(store) >= 2
    assert not store.has_product(product_path(Product.FUSED_CLOUD, "f000000"))
    survived = {
        p: store.product_attrs(product_path(Product.PAIRWISE_DEPTHS, "f000000", p))["written_at"]
        for p in store.list_products(product_path(Product.PAIRWISE_DEPTHS, "f000000"))
    }
    ns = SurveyNamespace(_survey_name_for(out))
    instance = dg.DagsterInstance.from_config(str(home))
    killed = [r for r in instance.get_runs() if r.job_name == "reconstruct"]
    assert [r.status for r in killed] == [dg.DagsterRunStatus.STARTED]  # nobody could report its end
    pool = instance.event_log_storage.get_concurrency_info("gpu")
    assert pool.claimed_slots and pool.claimed_slots[0].run_id == killed[0].run_id  # held by the dead run
    assert reap_dead_runs(instance) == [killed[0].run_id]
    assert instance.get_run_by_id(killed[0].run_id).status == dg.DagsterRunStatus.FAILURE
    assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots  # and freed
    for asset in ("pairwise_depths", "camera_depths", "fused_cloud", "mesh"):
        assert "f000000" not in instance.get_materialized_partitions(ns.key(asset)), asset

    # The UI's view of the killed frame: the killed assets are failed or missing, not materialized.
    workspace = tmp_path / "workspace.yaml"
    add_survey_location(out / ".aquamvs" / "survey.yaml", workspace)
    with webserver(home, workspace, tmp_path / "webserver.log") as port:
        nodes = graphql(port, PARTITIONS_QUERY)["data"]["assetNodes"]
    status = {n["assetKey"]["path"][-1]: n["assetPartitionStatuses"] for n in nodes}
    assert status["frames"]["materializedPartitions"] == ["f000000"]
    for asset in ("pairwise_depths", "fused_cloud", "mesh"):
        assert "f000000" not in status[asset]["materializedPartitions"], asset
        assert "f000000" in status[asset]["failedPartitions"] + status[asset]["unmaterializedPartitions"]

    # The next run finishes the frame, reusing the pair depths committed before the kill.
    assert cli_main(_reconstruct_args(spec, out, home)) == 0
    store = SurveyStore(store_root, read_only=True)
    assert store.has_product(product_path(Product.MESH, "f000000"))
    for pair, written_at in survived.items():
        assert (
            store.product_attrs(product_path(Product.PAIRWISE_DEPTHS, "f000000", pair))["written_at"]
            == written_at
        )
    assert instance.get_materialized_partitions(ns.key("mesh")) == {"f000000"}


def test_two_concurrent_runs_on_one_frame_leave_a_sound_store(synthetic_survey_file, tmp_path):
    spec = load_survey_spec(synthetic_survey_file)
    out, home = tmp_path / "out", tmp_path / "home"
    ensure_dagster_home(home)
    procs = [_spawn(_reconstruct_args(spec, out, home), tmp_path / f"run{i}.log") for i in range(2)]
    codes = [p.wait(timeout=900) for p in procs]
    logs = [(tmp_path / f"run{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(log[-2000:] for log in logs)
    store = SurveyStore(out / ".aquamvs" / "store.zarr", read_only=True)
    assert _every_committed_product_reads(store) > 10
    cloud = store.read_product(product_path(Product.FUSED_CLOUD, "f000000"))["points"]
    assert len(cloud) > 1000 and np.isfinite(cloud).all()
    # Each product is one writer's whole version: a fused cloud that agrees with the camera depths
    # it names (the fingerprint of its inputs) and a PLY export that reads back.
    instance = dg.DagsterInstance.from_config(str(home))
    runs = [r for r in instance.get_runs() if r.job_name == "reconstruct"]
    assert len(runs) == 2 and all(r.is_success for r in runs)
    assert (out / "frame_000000" / "fused_cloud.ply").stat().st_size > 0


def test_a_write_that_fails_halfway_gives_a_clear_error_and_nothing_half_written(
    synthetic_survey_file, tmp_path, monkeypatch, capsys
):
    from aquamvs_core.store import commit

    spec = load_survey_spec(synthetic_survey_file)
    out, home = tmp_path / "out", tmp_path / "home"
    real = commit.write_array

    def disk_full_on_the_cloud(group, name, data, chunks=None):
        if name == "normals":  # the fused cloud's third array: the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        real(group, name, data, chunks)

    monkeypatch.setattr(commit, "write_array", disk_full_on_the_cloud)
    assert cli_main(_reconstruct_args(spec, out, home)) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "fused_cloud" in err
    store = SurveyStore(out / ".aquamvs" / "store.zarr", read_only=True)
    assert not store.has_product(product_path(Product.FUSED_CLOUD, "f000000"))
    assert store.has_product(product_path(Product.SPARSE_CLOUD, "f000000"))
    assert _every_committed_product_reads(store) > 5
    assert not (out / "frame_000000").exists()
    monkeypatch.setattr(commit, "write_array", real)  # space freed: the next run completes
    assert cli_main(_reconstruct_args(spec, out, home)) == 0
    assert (out / "frame_000000" / "mesh.ply").is_file()


def _bad_calibration(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("break_input", "message"),
    [
        ("corrupt_video", "cam1.mp4"),
        ("truncated_video", "cam1.mp4"),
        ("fewer_frames", "different frame counts (cam0: 3, cam1: 2"),
        ("nan_calibration", "cam2"),
        ("missing_camera", "camera(s) ['cam3'] have no input"),
    ],
)
def test_bad_input_gets_a_clear_message_and_nothing_is_written(
    synthetic_survey_file, tmp_path, capsys, break_input, message
):
    from aquamvs_core.survey.video import VideoSource
    from aquamvs_core.survey.video_writer import write_video

    spec = load_survey_spec(synthetic_survey_file)
    inputs = tmp_path / "inputs"
    shutil.copytree(spec.inputs, inputs)
    calibration = tmp_path / "calibration.json"
    shutil.copy(spec.calibration, calibration)
    video = inputs / "cam1.mp4"
    if break_input == "corrupt_video":
        video.write_bytes(os.urandom(20000))
    elif break_input == "truncated_video":
        video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    elif break_input == "fewer_frames":
        source = VideoSource(video)
        frames = [source.read(i) for i in range(2)]
        source.close()
        write_video(video, frames)
    elif break_input == "nan_calibration":
        _bad_calibration(
            calibration, lambda d: d["cameras"]["cam2"]["intrinsics"]["K"][0].__setitem__(0, math.nan)
        )
    elif break_input == "missing_camera":
        (inputs / "cam3.mp4").unlink()
    out = tmp_path / "out"
    code = cli_main(
        ["reconstruct", str(calibration), str(inputs), str(out), "--dagster-home", str(tmp_path / "h")]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert not out.exists()  # nothing written


def test_a_survey_file_with_unknown_keys_is_refused_naming_them(synthetic_survey_file, tmp_path, capsys):
    text = Path(synthetic_survey_file).read_text() + "pair_neigbours: 3\n"  # a typo
    bad = tmp_path / "typo.yaml"
    bad.write_text(text)
    spec = load_survey_spec(synthetic_survey_file)
    assert cli_main(["ingest", str(bad), "--dagster-home", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "pair_neigbours" in err
    assert not Path(spec.store).exists()
