"""How the frame-only partitions scale: the instance operations a lab meets as a survey grows.

For each frame count N (default 1,000 and 10,000) on a 12-camera ring rig (the synthetic ``ring``
condition without its auxiliary camera: 12 cameras × 4 neighbours = 48 directed pairs, at a tiny
64×48 image size, since only the calibration and the input listing matter here), with a fresh
SQLite instance and N frames (one hard-linked PNG per camera and frame) in the survey's inputs:

* ``sensor_first_tick`` / ``add_partitions``: the survey's ``new_frames_sensor`` evaluated directly
  (``dg.build_sensor_context`` on the instance) when all N frames are new, and registering them;
* ``sensor_tick``: one tick with the N frames already registered (what every later tick costs);
* ``status_*``: the UI's partition query through a real ``dagster-webserver`` on the instance
  (GraphQL ``assetNodes { assetPartitionStatuses partitionKeysByDimension }``), for one asset
  (``mesh``) and for every frame-partitioned asset of the survey, first with nothing materialized,
  then with ``mesh`` materialized for every frame (runless materialization events);
* ``backfill_launch``: GraphQL ``launchPartitionBackfill`` of the ``reconstruct`` job over all N
  frames (no daemon runs: this times the launch only, the backfill stays requested).

``--rejected-frames M`` adds, for contrast, the design the project rejected: one asset partitioned
frame × pair (``MultiPartitionsDefinition``, 48 × M partitions), whose status query is timed the
same way (nothing materialized). Each timing is the median of ``--repeats`` runs after one warm-up
(the warm-up's time is given too). Writes ``<out>.md`` and ``<out>.json``. ``--profile-tick``
instead profiles one sensor tick per frame count (``<out>_sensor_profile_<N>.txt``).

    python benchmarks/partition_scale_bench.py --frames 1000 10000 --rejected-frames 1000
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import dagster as dg
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "assets"))

from dagster_helpers import graphql, webserver  # noqa: E402

from aquamvs_assets.definitions import build_definitions  # noqa: E402
from aquamvs_assets.jobs import CALIBRATION_JOB, RECONSTRUCT_JOB, reconstruction_asset_keys  # noqa: E402
from aquamvs_assets.partitions import SurveyNamespace  # noqa: E402
from aquamvs_assets.project import ensure_dagster_home  # noqa: E402
from aquamvs_assets.resources import SurveyResource, ZarrStoreResource  # noqa: E402
from aquamvs_assets.workspace import add_survey_location  # noqa: E402
from aquamvs_core.camera.calibration import load_calibration, save_calibration  # noqa: E402
from aquamvs_core.stages.pairs import select_pairs  # noqa: E402
from aquamvs_core.survey import SurveySpec  # noqa: E402
from aquamvs_core.synthetic import condition_config  # noqa: E402
from aquamvs_core.synthetic.rig import make_rig  # noqa: E402

IMAGE_SIZE = (64, 48)
STATUS_FIELDS = """
  assetKey { path }
  assetPartitionStatuses {
    ... on DefaultPartitionStatuses {
      materializedPartitions failedPartitions unmaterializedPartitions materializingPartitions }
    ... on MultiPartitionStatuses {
      primaryDimensionName
      ranges { primaryDimStartKey primaryDimEndKey secondaryDim {
        ... on DefaultPartitionStatuses {
          materializedPartitions failedPartitions unmaterializedPartitions materializingPartitions } } } }
  }
  partitionKeysByDimension { name partitionKeys }
"""
STATUS_QUERY = "query($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) {" + STATUS_FIELDS + "} }"
BACKFILL_MUTATION = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionSetNotFoundError { message }
  }
}
"""
REJECTED_LOCATION = '''"""The rejected frame x pair design (benchmark only)."""

import sys

sys.path.insert(0, {bench_dir!r})

from partition_scale_bench import rejected_design_definitions

defs = rejected_design_definitions({calibration!r}, {survey!r})
'''


def rejected_design_definitions(calibration: str, survey: str) -> dg.Definitions:
    """One asset ``[rejected, pair_depth]`` partitioned by the survey's frames × its camera pairs."""
    pairs = select_pairs(load_calibration(calibration), 4)
    partitions = dg.MultiPartitionsDefinition(
        {
            "frame": SurveyNamespace(survey).frames,
            "pair": dg.StaticPartitionsDefinition([f"{p.ref}-{p.src}" for p in pairs]),
        }
    )

    @dg.asset(key=["rejected", "pair_depth"], partitions_def=partitions)
    def pair_depth() -> None:
        """Never run: only its partitions are queried."""

    return dg.Definitions(assets=[pair_depth])


def make_survey(root: Path, n_frames: int) -> tuple[Path, int]:
    """A survey of the 12-camera ring (tiny images) with ``n_frames`` frames; returns its file and
    its number of directed pairs."""
    config = condition_config("ring", overrides={"auxiliary_camera": False, "image_size": IMAGE_SIZE})
    rig = make_rig(config)
    root.mkdir(parents=True, exist_ok=True)
    calibration = root / "calibration.json"
    save_calibration(rig, calibration)
    pixels = np.random.default_rng(0).integers(0, 255, (*IMAGE_SIZE[::-1], 3), np.uint8)
    for cam in rig.camera_names:
        image = root / f"frame_{cam}.png"  # one file per camera: a file has at most ~65 000 links
        cv2.imwrite(str(image), pixels)
        folder = root / "inputs" / cam
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_frames):
            path = folder / f"{i:06d}.png"
            if not path.exists():
                os.link(image, path)
    spec = SurveySpec(
        name=f"scale-n{n_frames}",
        calibration=calibration,
        inputs=root / "inputs",
        store=str(root / "store.zarr"),
    )
    return spec.to_yaml(root / "survey.yaml"), len(select_pairs(rig, spec.pair_neighbours))


def timed(fn, repeats: int) -> dict:
    """One warm-up call, then ``repeats`` calls: their median, min and max in seconds."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"first_s": first, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def checked(answer: dict) -> dict:
    if "errors" in answer:
        raise RuntimeError(json.dumps(answer["errors"])[:2000])
    return answer["data"]


def bench_scale(root: Path, n_frames: int, repeats: int, rejected: bool, n_materialized: int) -> dict:
    survey_file, n_pairs = make_survey(root, n_frames)
    home = ensure_dagster_home(root / "home")
    defs = build_definitions(survey_file)
    ns = SurveyNamespace(f"scale-n{n_frames}")
    resources = {
        "survey": SurveyResource(survey_file=str(survey_file)),
        "store": ZarrStoreResource(root=str(root / "store.zarr")),
    }
    sensor = defs.resolve_sensor_def("new_frames_sensor")
    out: dict = {"frames": n_frames, "pairs": n_pairs, "timings": {}}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert defs.resolve_job_def(CALIBRATION_JOB).execute_in_process(instance=instance).success

        def tick() -> dg.SensorResult:
            return sensor(dg.build_sensor_context(instance=instance, resources=resources))

        out["load_before"] = os.getloadavg()
        t0 = time.perf_counter()
        first = tick()
        out["timings"]["sensor_first_tick"] = {"median_s": time.perf_counter() - t0, "runs": 1}
        (request,) = first.dynamic_partitions_requests
        assert len(request.partition_keys) == n_frames and len(first.run_requests) == n_frames
        t0 = time.perf_counter()
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        out["timings"]["add_partitions"] = {"median_s": time.perf_counter() - t0, "runs": 1}
        assert not tick().run_requests  # every frame is registered: nothing new
        out["timings"]["sensor_tick"] = timed(tick, repeats)

        workspace = root / "workspace.yaml"
        workspace.unlink(missing_ok=True)
        add_survey_location(survey_file, workspace)
        if rejected:
            module = root / "rejected_location.py"
            module.write_text(
                REJECTED_LOCATION.format(
                    bench_dir=str(REPO / "benchmarks"),
                    calibration=str(root / "calibration.json"),
                    survey=ns.survey,
                )
            )
            data = yaml.safe_load(workspace.read_text())
            data["load_from"].append(
                {"python_file": {"relative_path": str(module), "location_name": "rejected"}}
            )
            workspace.write_text(yaml.safe_dump(data, sort_keys=False))
        env = {"PYTHONPATH": str(REPO)}
        mesh = [{"path": ns.key("mesh").path}]
        chain = [{"path": k.path} for k in reconstruction_asset_keys(ns)]
        with webserver(home, workspace, root / "webserver.log", env=env) as port:

            def status(keys: list[dict], expect: int) -> None:
                nodes = checked(graphql(port, STATUS_QUERY, {"keys": keys}))["assetNodes"]
                assert len(nodes) == len(keys)
                got = len(nodes[0]["partitionKeysByDimension"][0]["partitionKeys"])
                assert got == expect, (got, expect)

            out["load_webserver"] = os.getloadavg()
            out["timings"]["status_mesh_empty"] = timed(lambda: status(mesh, n_frames), repeats)
            out["timings"]["status_chain_empty"] = timed(lambda: status(chain, n_frames), repeats)
            if rejected:
                key = [{"path": ["rejected", "pair_depth"]}]
                out["timings"]["rejected_status_pair_depth"] = timed(lambda: status(key, n_frames), repeats)
                out["rejected_partitions"] = n_frames * n_pairs

            materialized = list(request.partition_keys)[:n_materialized]
            out["materialized"] = len(materialized)
            t0 = time.perf_counter()
            for k in materialized:
                instance.report_runless_asset_event(dg.AssetMaterialization(ns.key("mesh"), partition=k))
            out["timings"]["report_mesh_materializations"] = {"median_s": time.perf_counter() - t0, "runs": 1}
            out["timings"]["status_mesh_materialized"] = timed(lambda: status(mesh, n_frames), repeats)
            out["timings"]["status_chain_materialized"] = timed(lambda: status(chain, n_frames), repeats)
            nodes = checked(graphql(port, STATUS_QUERY, {"keys": mesh}))["assetNodes"]
            assert len(nodes[0]["assetPartitionStatuses"]["materializedPartitions"]) == len(materialized)

            params = {
                "selector": {
                    "partitionSetName": f"{RECONSTRUCT_JOB}_partition_set",
                    "repositorySelector": {
                        "repositoryName": "__repository__",
                        "repositoryLocationName": ns.survey,
                    },
                },
                "partitionNames": list(request.partition_keys),
            }

            def backfill(params: dict) -> None:
                answer = checked(graphql(port, BACKFILL_MUTATION, {"params": params}))
                result = answer["launchPartitionBackfill"]
                assert result["__typename"] == "LaunchBackfillSuccess", result

            out["timings"]["backfill_launch"] = timed(lambda: backfill(params), repeats)
            out["backfill_targets"] = backfill_targets(instance)
            if rejected:  # every partition of the frame × pair asset, as the UI's "materialize all"
                everything = {"assetSelection": [{"path": ["rejected", "pair_depth"]}], "allPartitions": True}
                out["timings"]["rejected_backfill_launch"] = timed(lambda: backfill(everything), repeats)
                out["rejected_backfill_targets"] = backfill_targets(instance)
            out["load_after"] = os.getloadavg()
    return out


def backfill_targets(instance: dg.DagsterInstance) -> int:
    """How many partitions the newest backfill targets (a job's partitions, or asset partitions)."""
    newest = instance.get_backfills(limit=1)[0]
    if newest.asset_backfill_data is None:  # a job's backfill: its partitions
        return len(newest.partition_names)
    return newest.asset_backfill_data.target_subset.num_partitions_and_non_partitioned_assets


LABELS = {
    "sensor_first_tick": "new-frames sensor, first tick (all frames new: N run requests)",
    "add_partitions": "register the N frames (add_dynamic_partitions)",
    "sensor_tick": "new-frames sensor, one tick with N frames registered",
    "status_mesh_empty": "UI status query, `mesh` (nothing materialized)",
    "status_chain_empty": "UI status query, the 9 frame-partitioned assets of `reconstruct` (nothing materialized)",
    "rejected_status_pair_depth": "REJECTED frame × pair design: status query, one asset (48 × N partitions)",
    "report_mesh_materializations": "(setup) record M runless `mesh` materializations, one SQLite write each",
    "status_mesh_materialized": "UI status query, `mesh` (M frames materialized)",
    "status_chain_materialized": "UI status query, the 9 frame-partitioned assets of `reconstruct` (`mesh` of M frames materialized)",
    "backfill_launch": "launchPartitionBackfill of `reconstruct` over all N frames",
    "rejected_backfill_launch": "REJECTED frame × pair design: backfill of all 48 × N partitions of its asset",
}


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    return head.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")


def loads(result: dict) -> str:
    """The load averages recorded in ``result`` (1/5/15 min), by moment."""
    return ", ".join(
        f"{k.removeprefix('load_')} {v[0]:.2f}/{v[1]:.2f}/{v[2]:.2f}"
        for k, v in result.items()
        if k.startswith("load_")
    )


def write_tables(results: list[dict], out: Path, repeats: int) -> None:
    lines = [
        "# Partition scale (CPU, SQLite)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `benchmarks/partition_scale_bench.py`, commit "
        f"{commit()}, {platform.processor() or platform.machine()}, {os.cpu_count()} shared cores, "
        f"dagster {dg.__version__}, a fresh SQLite instance per frame count, the webserver on the same machine, "
        f"run at niceness {os.nice(0)} (the machine is shared).",
        "Rig: the synthetic `ring` condition without its auxiliary camera (12 cameras, 48 directed pairs), "
        f"{IMAGE_SIZE[0]}×{IMAGE_SIZE[1]} images (only the calibration and the input listing matter here).",
        f"Seconds: median of {repeats} after one warm-up (min–max; the warm-up's time in the last column).",
        "",
    ]
    for r in results:
        lines += [
            f"## {r['frames']:,} frames ({r['frames'] * r['pairs']:,} frame × pair combinations)",
            "",
            f"Load averages (1/5/15 min): {loads(r)}.",
            "",
            "| operation | median s | min–max s | first s |",
            "|---|---|---|---|",
        ]
        for key, t in r["timings"].items():
            spread = f"{t['min_s']:.3f}–{t['max_s']:.3f}" if "min_s" in t else "one run"
            first = f"{t['first_s']:.3f}" if "first_s" in t else ""
            label = (
                LABELS[key]
                .replace("48 × N", f"{r.get('rejected_partitions', 0):,}")
                .replace("N", f"{r['frames']:,}")
                .replace("M", f"{r.get('materialized', 0):,}")
            )
            lines.append(f"| {label} | {t['median_s']:.3f} | {spread} | {first} |")
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))


def profile_tick(root: Path, n_frames: int, out: Path) -> None:
    """cProfile of one new-frames sensor tick with ``n_frames`` registered (a fresh instance, no
    webserver): the top of the cumulative-time listing, written to ``out``."""
    survey_file, _ = make_survey(root, n_frames)
    home = ensure_dagster_home(root / "home")
    defs = build_definitions(survey_file)
    sensor = defs.resolve_sensor_def("new_frames_sensor")
    resources = {
        "survey": SurveyResource(survey_file=str(survey_file)),
        "store": ZarrStoreResource(root=str(root / "store.zarr")),
    }
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert defs.resolve_job_def(CALIBRATION_JOB).execute_in_process(instance=instance).success

        def tick() -> dg.SensorResult:
            return sensor(dg.build_sensor_context(instance=instance, resources=resources))

        (request,) = tick().dynamic_partitions_requests
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        profiler.runcall(tick)
        wall = time.perf_counter() - t0
    listing = io.StringIO()
    pstats.Stats(profiler, stream=listing).sort_stats("cumulative").print_stats(14)
    load = "/".join(f"{v:.2f}" for v in os.getloadavg())
    out.write_text(
        f"One new_frames_sensor tick with {n_frames:,} frames registered, under cProfile: {wall:.2f} s.\n"
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, load {load}, niceness {os.nice(0)}.\n"
        f"Made by: python benchmarks/partition_scale_bench.py --profile-tick --frames {n_frames}\n"
        + listing.getvalue()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument(
        "--rejected-frames", type=int, nargs="*", default=[], help="add the frame × pair asset"
    )
    parser.add_argument(
        "--materialized",
        type=int,
        default=1000,
        help="frames whose `mesh` is recorded materialized (at most)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=REPO / ".data" / "partition_scale")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "partition_scale_cpu")
    parser.add_argument(
        "--profile-tick", action="store_true", help="only profile one sensor tick: <out>_sensor_profile.txt"
    )
    args = parser.parse_args()
    if args.profile_tick:
        for n in args.frames:
            shutil.rmtree(args.work / f"n{n}" / "home", ignore_errors=True)
            shutil.rmtree(args.work / f"n{n}" / "store.zarr", ignore_errors=True)
            target = args.out.with_name(f"{args.out.name}_sensor_profile_{n}.txt")
            profile_tick(args.work / f"n{n}", n, target)
            print(target.read_text())
        return
    results = []
    for n in args.frames:
        root = args.work / f"n{n}"
        shutil.rmtree(root / "home", ignore_errors=True)
        shutil.rmtree(root / "store.zarr", ignore_errors=True)
        results.append(bench_scale(root, n, args.repeats, n in args.rejected_frames, args.materialized))
        print(json.dumps(results[-1], indent=2), flush=True)
        write_tables(results, args.out, args.repeats)


if __name__ == "__main__":
    main()
