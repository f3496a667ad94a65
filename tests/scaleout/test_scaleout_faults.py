"""Faults of a scale-out deployment, on the real servers: a Celery worker killed mid-step (the step
runs again on the other worker and the run completes), the broker down at launch (the run fails at
once, saying so), the object store unreachable mid-write (nothing reads as complete; a later run
completes, reusing what was committed)."""

from __future__ import annotations

import os
import time

import dagster as dg
import pytest
from harness import (
    RUN_TAG,
    TEST_VISIBILITY_TIMEOUT_S,
    dense_pair_count,
    execute,
    launch,
    run_by_tag,
    step_events,
    step_key,
    up_to,
    wait,
)
from servers import log_tail

from aquamvs_assets.definitions import survey_namespace
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Product, frame_key, load_survey_spec, product_path

pytestmark = [pytest.mark.scaleout, pytest.mark.xdist_group("scaleout")]  # one worker: shared servers


def _wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _run_text(instance: dg.DagsterInstance, run_id: str) -> str:
    """Every message of the run's event log, with the errors' messages and causes."""
    lines = []
    for entry in instance.all_logs(run_id):
        lines.append(entry.message or "")
        error = getattr(getattr(entry.dagster_event, "event_specific_data", None), "error", None)
        while error is not None:
            lines.append(error.message)
            error = error.cause
    return "\n".join(lines)


def test_worker_killed_mid_step_is_rerun_on_the_other_worker(
    calibrated, workers, deployment, instance, scale_survey, log_dir
):
    log_path = log_dir / "killed_worker_f1.log"
    step = step_key(scale_survey, "pairwise_depths")  # the longest step here (~15 s)
    # The frame's chain up to its dense depths only: the steps after it add time, not coverage.
    tag, proc = launch(
        deployment, "reconstruct", frame_key(1), log_path, up_to(scale_survey, "pairwise_depths")
    )

    def started():
        run = instance.get_runs(filters=dg.RunsFilter(tags={RUN_TAG: tag}))
        if run:
            events = step_events(instance, run[0].run_id, dg.DagsterEventType.STEP_START)
            return next((e for e in events if e.step_key == step), None)
        return None

    first = _wait_for(started, 300, f"{step} to start")
    worker = next(w for w in workers if w.alive() and w.proc.pid == os.getpgid(first.dagster_event.pid))
    time.sleep(1.0)
    worker.kill()  # the worker and its pool child at once: a lost host
    killed_at = time.time()
    wait(proc, 400, log_path)
    run = run_by_tag(instance, tag)
    assert run.status == dg.DagsterRunStatus.SUCCESS, log_tail(log_path, 60)

    starts = [
        e for e in step_events(instance, run.run_id, dg.DagsterEventType.STEP_START) if e.step_key == step
    ]
    successes = [
        e for e in step_events(instance, run.run_id, dg.DagsterEventType.STEP_SUCCESS) if e.step_key == step
    ]
    assert len(starts) == 2 and len(successes) == 1, "the killed step should have run once more, to success"
    assert starts[1].dagster_event.pid != first.dagster_event.pid
    # Redis hands the unacknowledged step to the surviving worker once the visibility timeout has
    # passed since it was delivered to the killed one (a few seconds before its STEP_START).
    assert killed_at < starts[1].timestamp < killed_at + TEST_VISIBILITY_TIMEOUT_S + 60
    store = SurveyStore(load_survey_spec(scale_survey).store, read_only=True)
    assert len(store.product_paths(product_path(Product.PAIRWISE_DEPTHS, frame_key(1)))) == dense_pair_count(
        scale_survey
    )


def test_broker_down_at_launch_fails_at_once_saying_so(
    calibrated, workers, redis, deployment, instance, log_dir
):
    redis.stop()
    try:
        started = time.monotonic()
        run = execute(deployment, instance, "reconstruct", frame_key(2), log_dir / "broker_down_f2.log", 120)
        elapsed = time.monotonic() - started
    finally:
        redis.start()
    assert run.status == dg.DagsterRunStatus.FAILURE
    text = _run_text(instance, run.run_id)
    assert f"the Celery broker {redis.url} is unreachable" in text, text[-3000:]
    assert "Connection refused" in text
    assert not step_events(instance, run.run_id, dg.DagsterEventType.STEP_START)  # nothing was submitted
    assert elapsed < 60


def test_object_store_down_mid_write_leaves_nothing_complete(
    calibrated, workers, s3, deployment, instance, scale_survey, log_dir
):
    frame = frame_key(2)
    ns = survey_namespace(scale_survey)
    store_url = load_survey_spec(scale_survey).store
    pairs_prefix = product_path(Product.PAIRWISE_DEPTHS, frame)
    log_path = log_dir / "s3_down_f2.log"
    tag, proc = launch(deployment, "reconstruct", frame, log_path)

    client, prefix = s3.client(), f"{store_url.removeprefix(f's3://{s3.bucket}/')}/products/{pairs_prefix}/"

    def writing_a_pair() -> bool:
        """An array chunk of a pair's new version is on S3 (the pair is committed after all its arrays)."""
        keys = client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix).get("Contents", [])
        return any("/c/" in k["Key"] for k in keys)

    _wait_for(writing_a_pair, 300, "the dense step to write its first pair", poll_s=0.05)
    s3.stop()  # mid-write of the pairwise-depths step's products
    try:
        wait(proc, 300, log_path)
    finally:
        s3.start()
    failed = run_by_tag(instance, tag)
    assert failed.status == dg.DagsterRunStatus.FAILURE, log_tail(log_path, 60)
    step = step_key(scale_survey, "pairwise_depths")
    retries = step_events(instance, failed.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert [e.step_key for e in retries] == [step, step]  # the RetryPolicy for object stores

    store = SurveyStore(store_url, read_only=True)
    committed = store.product_paths(pairs_prefix)
    assert len(committed) < dense_pair_count(scale_survey)
    for product in (Product.CAMERA_DEPTHS, Product.FUSED_CLOUD, Product.MESH):
        assert not store.product_paths(product_path(product, frame)), product
    for asset in ("pairwise_depths", "fused_cloud", "mesh"):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=ns.key(asset), asset_partitions=[frame]), limit=1
        ).records
        assert not records, asset
    written_before = {path: store.product_attrs(path)["written_at"] for path in committed}

    # The later run: the chain up to the step that failed (the rest is the end-to-end test's).
    again = execute(
        deployment, instance, "reconstruct", frame, log_dir / "s3_back_f2.log",
        op_selection=up_to(scale_survey, "pairwise_depths"),
    )  # fmt: skip
    assert again.status == dg.DagsterRunStatus.SUCCESS, log_tail(log_dir / "s3_back_f2.log", 60)
    store = SurveyStore(store_url, read_only=True)
    assert len(store.product_paths(pairs_prefix)) == dense_pair_count(scale_survey)
    # Pairs committed before the outage (if any) are current and were reused, not written again.
    assert {path: store.product_attrs(path)["written_at"] for path in committed} == written_before
