"""The executor by environment, the Celery settings shared by runs and workers, retries on object
stores, the broker preflight, and the store resource's S3 options (the servers themselves are
exercised in tests/scaleout)."""

from __future__ import annotations

import socket
import time

import dagster as dg
import pytest

from aquamvs_assets import scaleout
from aquamvs_assets.definitions import build_definitions
from aquamvs_assets.jobs import CALIBRATION_JOB, FRAMES_JOB, RECONSTRUCT_JOB
from aquamvs_assets.resources import ZarrStoreResource
from aquamvs_core.survey import load_survey_spec

JOBS = (CALIBRATION_JOB, FRAMES_JOB, RECONSTRUCT_JOB)


@pytest.fixture
def no_scaleout_env(monkeypatch):
    for name in (
        scaleout.EXECUTOR_ENV,
        scaleout.BROKER_ENV,
        scaleout.BACKEND_ENV,
        scaleout.VISIBILITY_TIMEOUT_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _executor_config(executor: dg.ExecutorDefinition) -> dict:
    result = executor.apply_config_mapping({})
    assert result.success
    return result.value["config"]


def test_executor_is_in_process_by_default_and_celery_by_environment(no_scaleout_env, synthetic_survey_file):
    defs = build_definitions(synthetic_survey_file)
    assert all(defs.resolve_job_def(job).executor_def is dg.in_process_executor for job in JOBS)

    no_scaleout_env.setenv(scaleout.EXECUTOR_ENV, "celery")
    no_scaleout_env.setenv(scaleout.BROKER_ENV, "redis://broker.lab:6379/0")
    no_scaleout_env.setenv(scaleout.VISIBILITY_TIMEOUT_ENV, "900")
    defs = build_definitions(synthetic_survey_file)
    for job in JOBS:
        executor = defs.resolve_job_def(job).executor_def
        assert executor.name == "aquamvs_celery"
        config = _executor_config(executor)
        assert config["broker"] == config["backend"] == "redis://broker.lab:6379/0"
        settings = config["config_source"]
        assert settings["task_acks_late"] is True and settings["task_reject_on_worker_lost"] is True
        assert settings["worker_prefetch_multiplier"] == 1
        assert settings["broker_transport_options"]["visibility_timeout"] == 900
        # dagster_celery's publish retries, which a broker_transport_options dict replaces, are kept
        assert settings["broker_transport_options"]["max_retries"] == 3

    # The workers' settings module reads the same variables to the same settings.
    worker = scaleout.worker_config()
    assert worker.pop("broker_url") == worker.pop("result_backend") == "redis://broker.lab:6379/0"
    assert worker == settings


def test_celery_backend_and_bad_settings(no_scaleout_env, synthetic_survey_file):
    no_scaleout_env.setenv(scaleout.EXECUTOR_ENV, "celery")
    with pytest.raises(dg.DagsterInvariantViolationError, match=r"AQUAMVS_CELERY_BROKER"):
        build_definitions(synthetic_survey_file)
    no_scaleout_env.setenv(scaleout.BROKER_ENV, "redis://b:6379/0")
    no_scaleout_env.setenv(scaleout.BACKEND_ENV, "redis://b:6379/1")
    config = _executor_config(scaleout.executor_from_env())
    assert (config["broker"], config["backend"]) == ("redis://b:6379/0", "redis://b:6379/1")
    no_scaleout_env.setenv(scaleout.EXECUTOR_ENV, "dask")
    with pytest.raises(dg.DagsterInvariantViolationError, match=r"AQUAMVS_EXECUTOR='dask'.*celery"):
        build_definitions(synthetic_survey_file)


def test_steps_on_an_object_store_retry(no_scaleout_env, synthetic_survey_file, tmp_path):
    local = build_definitions(synthetic_survey_file)
    assert all(local.resolve_job_def(job).op_retry_policy is None for job in JOBS)
    spec = load_survey_spec(synthetic_survey_file).model_copy(update={"store": "s3://bucket/survey.zarr"})
    remote = build_definitions(spec.to_yaml(tmp_path / "s3_survey.yaml"))
    for job in JOBS:
        policy = remote.resolve_job_def(job).op_retry_policy
        assert policy == scaleout.TRANSIENT_RETRY and policy.max_retries == 2


def test_broker_preflight_names_an_unreachable_broker():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    started = time.monotonic()
    with pytest.raises(scaleout.BrokerUnavailableError, match=rf"broker {url} is unreachable.*refused"):
        scaleout.broker_preflight(url, timeout_s=2)
    assert time.monotonic() - started < 15  # fails fast instead of a run waiting for ever


def test_store_resource_passes_only_the_s3_options_it_has():
    assert ZarrStoreResource(root="/data/store.zarr").storage_options() == {}
    resource = ZarrStoreResource(
        root="s3://b/s.zarr", endpoint_url="http://s3.lab:9000", access_key_id="k", secret_access_key="s"
    )
    assert resource.storage_options() == {"endpoint_url": "http://s3.lab:9000", "key": "k", "secret": "s"}
