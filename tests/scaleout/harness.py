"""Processes of a scale-out deployment for the tests: Celery workers, runs launched with ``dagster job
execute`` (the run's orchestrator in that process, its steps on the workers), GraphQL, event queries."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from servers import log_tail

from aquamvs_assets.definitions import survey_namespace
from aquamvs_assets.project import PROJECT_ROOT
from aquamvs_assets.scaleout import CELERY_QUEUE
from aquamvs_core.camera.calibration import load_calibration
from aquamvs_core.stages.pairs import survey_pairs
from aquamvs_core.survey import load_survey_spec

BIN = Path(sys.executable).parent
LOCATION_MODULE = "aquamvs_assets.location"
RUN_TAG = "aquamvs/test-run"
#: Seconds before Redis hands the step of a dead worker to another: short, for the tests, but longer
#: than the longest step here under load (up to ~35 s seen), or a running step is handed out twice.
#: Production uses hours (deploy/README.md).
TEST_VISIBILITY_TIMEOUT_S = 60


def worker_command(name: str) -> list[str]:
    """The worker command of deploy/README.md: one step at a time, each in a fresh pool child."""
    return [
        str(BIN / "celery"), "-A", "dagster_celery.app", "worker", "--pool=prefork", "--concurrency=1",
        "--prefetch-multiplier=1", "--max-tasks-per-child=1", "-I", LOCATION_MODULE, "-Q", CELERY_QUEUE,
        "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "--loglevel=INFO",
    ]  # fmt: skip


@dataclass
class CeleryWorker:
    """One ``celery worker`` process in its own session (a SIGKILL of its group is a host loss)."""

    name: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    starts: int = field(default=0)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 180.0) -> None:
        if self.alive():
            return
        self.starts += 1
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                worker_command(self.name), env=self.env, cwd=PROJECT_ROOT, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"celery worker {self.name} exited ({self.proc.returncode}):\n{self.tail()}"
                )
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                if b" ready." in log.read():
                    return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"celery worker {self.name} not ready after {timeout_s} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the worker and its pool child (its whole process group), like a lost host."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()  # warm shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def tail(self) -> str:
        return log_tail(self.log_path, 40)


def launch(
    env: dict[str, str], job: str, partition: str | None, log_path: Path, op_selection: str | None = None
) -> tuple[str, subprocess.Popen]:
    """Start ``dagster job execute`` of ``job`` for ``partition``; returns the run's test tag and the
    process (which orchestrates the run: it submits each step to Celery and waits for it).
    ``op_selection`` (Dagster's syntax, for example ``*step`` for a step and all it depends on) runs
    only part of the job, for tests that need only its first steps."""
    tag = uuid.uuid4().hex
    tags = {RUN_TAG: tag, **({"dagster/partition": partition} if partition else {})}
    command = [str(BIN / "dagster"), "job", "execute", "-m", LOCATION_MODULE, "-a", "defs", "-j", job]
    if op_selection:
        command += ["--op-selection", op_selection]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [*command, "--tags", json.dumps(tags)], env=env, cwd=PROJECT_ROOT, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return tag, proc


def wait(proc: subprocess.Popen, timeout_s: float, log_path: Path) -> None:
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        raise AssertionError(f"run still going after {timeout_s} s:\n{log_tail(log_path, 40)}") from None


def step_key(survey_file: Path, asset: str) -> str:
    """The step (op) name of a survey's ``asset`` in its jobs."""
    return survey_namespace(survey_file).key(asset).to_python_identifier()


def up_to(survey_file: Path, asset: str) -> str:
    """The op selection of ``asset``'s step and every step it depends on."""
    return f"*{step_key(survey_file, asset)}"


def dense_pair_count(survey_file: Path) -> int:
    """The dense pairs of a frame of the survey without auxiliary sources (the tests' setting)."""
    spec = load_survey_spec(survey_file)
    rig = load_calibration(spec.calibration)
    return sum(p.src not in rig.auxiliary_names for p in survey_pairs(rig, spec))


def run_by_tag(instance: dg.DagsterInstance, tag: str) -> dg.DagsterRun:
    runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_TAG: tag}))
    assert len(runs) == 1, f"expected one run tagged {tag}, found {len(runs)}"
    return runs[0]


def execute(env: dict[str, str], instance: dg.DagsterInstance, job: str, partition: str | None,
            log_path: Path, timeout_s: float = 400,
            op_selection: str | None = None) -> dg.DagsterRun:  # fmt: skip
    """Run ``job`` (or its ``op_selection``) for ``partition`` to its end; returns the run as recorded
    in the instance."""
    tag, proc = launch(env, job, partition, log_path, op_selection)
    wait(proc, timeout_s, log_path)
    return run_by_tag(instance, tag)


def step_events(
    instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType
) -> list[dg.EventLogEntry]:
    records = instance.get_records_for_run(run_id, of_type=kind).records
    return [record.event_log_entry for record in records]
