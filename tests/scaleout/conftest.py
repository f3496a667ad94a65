"""Fixtures of the scale-out tests: one PostgreSQL, one Redis, one S3 server and two Celery workers
for the session (helpers: ``servers.py``, ``harness.py``). Every server and worker is stopped when
the session ends, also after failures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest
from harness import TEST_VISIBILITY_TIMEOUT_S, CeleryWorker, execute
from servers import log_tail, postgres_server, redis_server, s3_server

from aquamvs_assets import scaleout
from aquamvs_assets.definitions import survey_namespace
from aquamvs_assets.project import PROJECT_ROOT
from aquamvs_core.survey import frame_key, load_survey_spec

#: Fast, one neighbour per camera, no auxiliary sources: 4 dense pairs a frame.
CHEAP = {"preset": "fast", "overrides_yaml": "use_auxiliary_sources: false"}


@pytest.fixture(scope="session")
def pg():
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis():
    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3():
    with s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def scale_survey(synthetic_small_survey, s3, tmp_path_factory) -> Path:
    """The small synthetic survey, cheap, with its store on the S3 server."""
    spec = load_survey_spec(synthetic_small_survey).model_copy(
        update={"store": f"s3://{s3.bucket}/survey.zarr", "pair_neighbours": 1, "reconstruction": CHEAP}
    )
    return spec.to_yaml(tmp_path_factory.mktemp("scale_survey") / "survey.yaml")


@pytest.fixture(scope="session")
def deployment(pg, redis, s3, scale_survey, tmp_path_factory) -> dict[str, str]:
    """The environment of every process of the deployment (runs, workers, webserver): the instance
    deploy/dagster.yaml on PostgreSQL, the Celery executor, the store on S3. The test process gets
    the instance variables too, to read the runs."""
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(PROJECT_ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        **pg.env(),
        **s3.env(),
        "DAGSTER_HOME": str(home),
        "AQUAMVS_SURVEY": str(scale_survey),
        scaleout.EXECUTOR_ENV: "celery",
        scaleout.BROKER_ENV: redis.url,
        scaleout.VISIBILITY_TIMEOUT_ENV: str(TEST_VISIBILITY_TIMEOUT_S),
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "deploy" / "celery"), str(PROJECT_ROOT)]),
        "PYTHONUNBUFFERED": "1",
    }
    saved = {name: os.environ.get(name) for name in [*pg.env(), "DAGSTER_HOME"]}
    os.environ.update({name: env[name] for name in saved})
    try:
        yield env
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def instance(deployment):
    with dg.DagsterInstance.get() as inst:
        yield inst


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scaleout_logs")


@pytest.fixture(scope="session")
def _workers(deployment, log_dir):
    workers = [CeleryWorker(name, deployment, log_dir / f"{name}.log") for name in ("w1", "w2")]
    try:
        for worker in workers:
            worker.start()
        yield workers
    finally:
        for worker in workers:
            worker.stop()


@pytest.fixture
def workers(_workers, redis) -> list[CeleryWorker]:
    """Both workers alive and answering on the broker (restarts any that a test killed)."""
    redis.start()
    for worker in _workers:
        worker.start()
    scaleout.broker_preflight(redis.url, timeout_s=30, min_workers=2)
    return _workers


@pytest.fixture(scope="session")
def calibrated(_workers, deployment, instance, scale_survey, log_dir) -> None:
    """The survey's frames registered and its calibration stored, through the Celery workers."""
    ns = survey_namespace(scale_survey)
    instance.add_dynamic_partitions(ns.frames.name, [frame_key(i) for i in range(3)])
    log_path = log_dir / "calibration.log"
    run = execute(deployment, instance, "calibration", None, log_path)
    assert run.status == dg.DagsterRunStatus.SUCCESS, log_tail(log_path, 60)
