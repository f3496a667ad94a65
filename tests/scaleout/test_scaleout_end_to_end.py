"""End to end on real engines: one frame of the small synthetic survey reconstructed through the
Celery executor with two workers, the instance on PostgreSQL (deploy/dagster.yaml), the store on an
S3 server; its fused cloud and mesh equal an embedded run's (in-process, local store), and the run
is visible through a real dagster-webserver on that instance."""

from __future__ import annotations

import contextlib
import subprocess
import time

import dagster as dg
import numpy as np
import pytest
import yaml
from graphql_client import graphql
from harness import BIN, execute, step_events
from servers import free_port, log_tail

from aquamvs_assets.definitions import survey_namespace
from aquamvs_assets.project import PROJECT_ROOT
from aquamvs_assets.resources import ReconstructionSettings
from aquamvs_assets.runner import run_reconstruction
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Product, frame_key, load_survey_spec, product_path

pytestmark = [pytest.mark.scaleout, pytest.mark.xdist_group("scaleout")]  # one worker: shared servers
FRAME = frame_key(0)


@pytest.fixture(scope="session")
def embedded_store(scale_survey, tmp_path_factory) -> SurveyStore:
    """The same survey and frame reconstructed the embedded way: in-process, a local store."""
    folder = tmp_path_factory.mktemp("embedded")
    spec = load_survey_spec(scale_survey)
    local = spec.model_copy(update={"store": str(folder / "store.zarr")}).to_yaml(folder / "survey.yaml")
    settings = ReconstructionSettings(**spec.reconstruction)
    run_reconstruction(local, dg.DagsterInstance.ephemeral(), settings, frames=[0])
    return SurveyStore(folder / "store.zarr", read_only=True)


def test_celery_postgres_s3_run_matches_embedded(
    calibrated, workers, deployment, instance, scale_survey, embedded_store, log_dir
):
    run = execute(deployment, instance, "reconstruct", FRAME, log_dir / "reconstruct_f0.log")
    assert run.status == dg.DagsterRunStatus.SUCCESS, log_tail(log_dir / "reconstruct_f0.log", 60)
    assert run.tags["dagster/partition"] == FRAME

    # Every step ran as a Celery task: in a worker's pool child, not in the orchestrating process.
    starts = step_events(instance, run.run_id, dg.DagsterEventType.STEP_START)
    orchestrator_pid = step_events(instance, run.run_id, dg.DagsterEventType.RUN_START)[0].dagster_event.pid
    assert len(starts) >= 7 and all(e.dagster_event.pid != orchestrator_pid for e in starts)

    s3_store = SurveyStore(load_survey_spec(scale_survey).store, read_only=True)
    cloud, embedded_cloud = (
        _in_point_order(store.read_product(product_path(Product.FUSED_CLOUD, FRAME)), "points")
        for store in (s3_store, embedded_store)
    )
    assert len(cloud["points"]) > 1000
    _assert_same_arrays(cloud, embedded_cloud, "fused_cloud")
    mesh, embedded_mesh = (
        _mesh_in_vertex_order(store.read_product(product_path(Product.MESH, FRAME)))
        for store in (s3_store, embedded_store)
    )
    _assert_same_arrays(mesh, embedded_mesh, "mesh")

    # The run, its partition and its materializations, through a real webserver on this instance.
    workspace = log_dir / "workspace.yaml"
    location = {"python_module": {"module_name": "aquamvs_assets.location", "location_name": "aquamvs"}}
    workspace.write_text(yaml.safe_dump({"load_from": [location]}))
    with _webserver(deployment, workspace, log_dir / "webserver.log") as port:
        answer = graphql(port, RUN_QUERY, {"runId": run.run_id})["data"]["runOrError"]
        assert answer["status"] == "SUCCESS"
        assert {"key": "dagster/partition", "value": FRAME} in answer["tags"]
        ns = survey_namespace(scale_survey)
        materialized = {
            tuple(e["assetKey"]["path"]) for e in answer["eventConnection"]["events"] if e.get("assetKey")
        }
        assert (
            tuple(ns.key("mesh").path) in materialized and tuple(ns.key("fused_cloud").path) in materialized
        )


def _in_point_order(arrays: dict[str, np.ndarray], key: str) -> dict[str, np.ndarray]:
    """The per-point arrays sorted by ``arrays[key]``'s rows (the order of points is not part of
    the result: two processes may emit the same points in another order)."""
    n = len(arrays[key])
    order = np.lexsort(arrays[key].T[::-1])
    return {name: a[order] if a.ndim and len(a) == n else a for name, a in arrays.items()}


def _mesh_in_vertex_order(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The mesh with vertices sorted by position and triangles renumbered and sorted."""
    n = len(arrays["vertices"])
    order = np.lexsort(arrays["vertices"].T[::-1])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    triangles = rank[arrays["triangles"]]
    first = triangles.argmin(axis=1)  # rotate each triangle to start at its smallest index (keeps winding)
    triangles = np.take_along_axis(triangles, (first[:, None] + np.arange(3)) % 3, axis=1)
    triangles = triangles[np.lexsort(triangles.T[::-1])]
    out = {name: a[order] if a.ndim and len(a) == n else a for name, a in arrays.items()}
    return {**out, "triangles": triangles}


def _assert_same_arrays(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], what: str) -> None:
    assert sorted(ours) == sorted(theirs), what
    for name, array in theirs.items():
        assert ours[name].shape == array.shape and ours[name].dtype == array.dtype, (what, name)
        np.testing.assert_allclose(ours[name], array, rtol=1e-6, atol=1e-9, err_msg=f"{what}.{name}")


RUN_QUERY = """
query ($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run {
      status
      tags { key value }
      eventConnection(afterCursor: null) {
        events { __typename ... on MaterializationEvent { assetKey { path } } }
      }
    }
  }
}
"""


@contextlib.contextmanager
def _webserver(env: dict[str, str], workspace, log_path):
    """dagster-webserver on 127.0.0.1 for the deployment's instance; stopped in any case."""
    port = free_port()
    command = [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log_tail(log_path, 40)
            with contextlib.suppress(OSError, KeyError, TypeError):
                if graphql(port, "{ assetNodes { id } }")["data"]["assetNodes"]:
                    break
            assert time.monotonic() < deadline, "webserver not ready:\n" + log_tail(log_path, 40)
            time.sleep(1.0)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
