"""Scale-out throughput and instance overhead on this machine, with the product's code and real servers.

1. Frames per hour through the Celery executor with 1 and with 2 workers: PostgreSQL instance
   (deploy/dagster.yaml), Redis broker, store on the moto S3 server (as in tests/scaleout), the small
   synthetic survey (4 ring cameras + fisheye, 160x120), cheap settings (fast preset, one neighbour,
   no auxiliary sources). The survey's 3 frames are launched at once as 3 runs (``dagster job
   execute``); time from the launches to the last run's end. Each configuration writes a fresh store.
2. Per-run overhead of the instance: a one-asset run that does nothing, ``materialize`` 10 times
   (after a warm-up) on SQLite (a temporary DAGSTER_HOME) and on PostgreSQL (local TCP, fsync off).

Usage::

    .venv/bin/python benchmarks/scaleout_bench.py [--out benchmarks/results/scaleout_cpu.md]

Needs what tests/scaleout needs (scripts/install.sh). Takes about 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "scaleout"))

from harness import CeleryWorker, launch, run_by_tag, wait  # noqa: E402
from servers import postgres_server, redis_server, s3_server  # noqa: E402

from aquamvs_assets import scaleout  # noqa: E402
from aquamvs_assets.definitions import survey_namespace  # noqa: E402
from aquamvs_assets.runner import register_frames  # noqa: E402
from aquamvs_core.survey import frame_key, load_survey_spec  # noqa: E402

CHEAP = {"preset": "fast", "overrides_yaml": "use_auxiliary_sources: false"}
FRAMES = [frame_key(i) for i in range(3)]


def _survey(folder: Path, store: str) -> Path:
    from aquamvs_core.synthetic import SyntheticSurveyConfig, generate_survey

    source = folder / "synthetic" / "survey.yaml"
    if not source.exists():
        config = SyntheticSurveyConfig(
            seed=7, n_ring_cameras=4, image_size=(160, 120), n_frames=3, supersample=1
        )
        source = generate_survey(folder / "synthetic", config)
    spec = load_survey_spec(source).model_copy(
        update={"store": store, "pair_neighbours": 1, "reconstruction": CHEAP}
    )
    return spec.to_yaml(folder / f"survey_{abs(hash(store))}.yaml")


def _frames_per_hour(pg, redis, s3, folder: Path, n_workers: int) -> dict:
    survey = _survey(folder, f"s3://{s3.bucket}/bench_{n_workers}w.zarr")
    home = folder / f"home_{n_workers}w"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        **pg.env(),
        **s3.env(),
        "DAGSTER_HOME": str(home),
        "AQUAMVS_SURVEY": str(survey),
        scaleout.EXECUTOR_ENV: "celery",
        scaleout.BROKER_ENV: redis.url,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "deploy" / "celery"), str(ROOT)]),
    }
    os.environ.update({k: env[k] for k in [*pg.env(), "DAGSTER_HOME"]})
    workers = [
        CeleryWorker(f"b{n_workers}_{i}", env, folder / f"w{n_workers}_{i}.log") for i in range(n_workers)
    ]
    with dg.DagsterInstance.get() as instance:
        try:
            for worker in workers:
                worker.start()
            register_frames(instance, survey_namespace(survey), FRAMES)
            _, proc = launch(env, "calibration", None, folder / f"calibration_{n_workers}.log")
            wait(proc, 600, folder / f"calibration_{n_workers}.log")
            started = time.monotonic()
            launched = [launch(env, "reconstruct", f, folder / f"run_{n_workers}_{f}.log") for f in FRAMES]
            for (_, proc), frame in zip(launched, FRAMES, strict=True):
                wait(proc, 1800, folder / f"run_{n_workers}_{frame}.log")
            elapsed = time.monotonic() - started
            statuses = [run_by_tag(instance, tag).status.value for tag, _ in launched]
        finally:
            for worker in workers:
                worker.stop()
    return {
        "workers": n_workers,
        "seconds": elapsed,
        "frames_per_hour": 3600 * len(FRAMES) / elapsed,
        "runs": statuses,
    }


@dg.asset
def nothing() -> None:
    """A step that does nothing: what remains is the instance's and the run's overhead."""


def _overhead(instance: dg.DagsterInstance, n: int = 10) -> list[float]:
    dg.materialize([nothing], instance=instance)  # warm-up (schema, imports)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        assert dg.materialize([nothing], instance=instance).success
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scaleout_cpu.md")
    args = parser.parse_args()
    load_before = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="aquamvs-scaleout-bench-"))
    try:
        with postgres_server() as pg, redis_server() as redis, s3_server() as s3:
            throughput = [_frames_per_hour(pg, redis, s3, folder, n) for n in (1, 2)]
            with tempfile.TemporaryDirectory() as sqlite_home:
                sqlite = _overhead(dg.DagsterInstance.from_config(_sqlite_home(Path(sqlite_home))))
            with dg.DagsterInstance.get() as instance:  # the PostgreSQL instance of the last run
                postgres = _overhead(instance)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load_after = os.getloadavg()
    _write(args.out, throughput, sqlite, postgres, load_before, load_after)
    print(args.out.read_text())


def _sqlite_home(home: Path) -> str:
    (home / "dagster.yaml").write_text(
        f"storage:\n  sqlite:\n    base_dir: {home}\ntelemetry:\n  enabled: false\n"
    )
    return str(home)


def _write(out: Path, throughput, sqlite, postgres, load_before, load_after) -> None:
    rows = "\n".join(
        f"| {t['workers']} | {t['seconds']:.0f} | {t['frames_per_hour']:.0f} | {', '.join(t['runs'])} |"
        for t in throughput
    )

    def stats(x: list[float]) -> str:
        return f"{statistics.median(x):.3f} | {min(x):.3f}–{max(x):.3f}"

    out.write_text(f"""# Scale-out on this machine (CPU only): `benchmarks/scaleout_bench.py`

Machine: {os.cpu_count()} cores shared with other engineers' jobs; load average (1, 5, 15 min)
{", ".join(f"{v:.2f}" for v in load_before)} before and {", ".join(f"{v:.2f}" for v in load_after)} after.
Measured {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.

## Frames per hour through Celery (PostgreSQL instance, Redis broker, store on moto S3)

Small synthetic survey (4 ring cameras + fisheye, 160×120), fast preset, one neighbour, no auxiliary
sources; its 3 frames launched at once as 3 runs; seconds from the launches to the last run's end.

| Celery workers | seconds for 3 frames | frames per hour | runs |
|---|---|---|---|
{rows}

What bounds it: the 2 cores. Each worker runs one step at a time, and each step pays seconds of
Celery overhead (the executor polls every second; each step forks a fresh pool child and builds the
instance, plan and resources; the orchestrating `dagster job execute` processes also run here). A
second worker adds no cores, so it can only overlap one run's overhead with another's work; on
separate hosts each worker brings its own cores. The `gpu` pool (limit 1) also serialises the
dense-depth steps of all runs.

GPU worker: **not measured** (no GPU on this machine). Not measured either: the same frames run
embedded (in-process, local store) for comparison, and a real S3 service (moto serves the bucket
from a thread of the benchmark's own process, in Python).

## Per-run overhead of the instance (one-asset run that does nothing, `materialize`, 10 runs)

| instance | median s | min–max s |
|---|---|---|
| SQLite (temporary DAGSTER_HOME) | {stats(sqlite)} |
| PostgreSQL 15 (local TCP, fsync off) | {stats(postgres)} |
""")


if __name__ == "__main__":
    main()
