"""The ``aquamvs`` command line. Every pipeline command drives the Dagster definitions (runs are
recorded in the instance at ``$DAGSTER_HOME``); nothing here reimplements a pipeline step."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import dagster as dg

from aquamvs_assets.definitions import build_definitions
from aquamvs_assets.jobs import INGEST_JOB
from aquamvs_assets.partitions import FRAMES_PARTITION_NAME
from aquamvs_assets.project import DEMO_SURVEY_DIR, PROJECT_ROOT, ensure_dagster_home
from aquamvs_core.calibration import CalibrationError
from aquamvs_core.survey import Survey, SurveyError, frame_key, load_survey_spec

log = logging.getLogger("aquamvs.cli")


def register_frames(instance: dg.DagsterInstance, keys: list[str]) -> list[str]:
    """Add frame partitions that the instance does not have yet; returns the added keys."""
    existing = set(instance.get_dynamic_partitions(FRAMES_PARTITION_NAME))
    new = [k for k in keys if k not in existing]
    if new:
        instance.add_dynamic_partitions(FRAMES_PARTITION_NAME, new)
    return new


def run_ingestion(
    survey_file: Path, instance: dg.DagsterInstance, frames: list[int] | None = None
) -> dg.ExecuteInProcessResult:
    """Register the survey's frames as partitions and materialize the ingestion job over them in one
    run (a partition range; the frames asset batches them per its backfill policy)."""
    spec = load_survey_spec(survey_file)
    with Survey.open(spec) as survey:
        indices = survey.frame_indices if frames is None else frames
        bad = [i for i in indices if not 0 <= i < survey.num_frames]
        if bad:
            raise SurveyError(f"frames {bad} are outside the survey's {survey.num_frames} frames")
    keys = [frame_key(i) for i in indices]
    if not keys:
        raise SurveyError(f"{survey_file}: the frame selection is empty")
    added = register_frames(instance, keys)
    log.info("frames: %d selected, %d newly registered as partitions", len(keys), len(added))
    job = build_definitions(survey_file).resolve_job_def(INGEST_JOB)
    if len(keys) == 1:
        return job.execute_in_process(instance=instance, partition_key=keys[0])
    registered = instance.get_dynamic_partitions(FRAMES_PARTITION_NAME)
    if registered[registered.index(keys[0]) : registered.index(keys[-1]) + 1] == keys:
        tags = {
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        }
        return job.execute_in_process(instance=instance, tags=tags)
    result = None
    for key in keys:  # not a contiguous range of registered partitions: one run per frame
        result = job.execute_in_process(instance=instance, partition_key=key)
    return result


def _print_summary(survey_file: Path, home: Path, seconds: float) -> None:
    spec = load_survey_spec(survey_file)
    print(
        f"\nIngested survey '{spec.name}' in {seconds:.1f} s.\n"
        f"  survey file : {survey_file}\n"
        f"  Zarr store  : {spec.store}   (layout: see aquamvs_core/store.py)\n"
        f"  DAGSTER_HOME: {home}\n"
        f"Open the UI (lineage, partitions, run logs) from {PROJECT_ROOT}:\n"
        f"  DAGSTER_HOME={home} AQUAMVS_SURVEY={survey_file} .venv/bin/dagster dev\n"
        f"then browse http://127.0.0.1:3000"
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from aquamvs_core.synthetic import generate_survey

    home = ensure_dagster_home(args.dagster_home)
    t0 = time.perf_counter()
    survey_file = generate_survey(Path(args.survey_dir), overwrite=args.regenerate)
    result = run_ingestion(survey_file, dg.DagsterInstance.get())
    if not result.success:
        return 1
    _print_summary(survey_file, home, time.perf_counter() - t0)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    home = ensure_dagster_home(args.dagster_home)
    t0 = time.perf_counter()
    frames = [int(f) for f in args.frames.split(",")] if args.frames else None
    survey_file = Path(args.survey).resolve()
    result = run_ingestion(survey_file, dg.DagsterInstance.get(), frames)
    if not result.success:
        return 1
    _print_summary(survey_file, home, time.perf_counter() - t0)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from aquamvs_core.synthetic import SyntheticSurveyConfig, generate_survey

    overrides = {}
    if args.size:
        w, h = (int(x) for x in args.size.lower().split("x"))
        overrides["image_size"] = (w, h)
    if args.frames:
        overrides["n_frames"] = args.frames
    config = SyntheticSurveyConfig(seed=args.seed, **overrides)
    path = generate_survey(Path(args.out_dir), config, overwrite=args.overwrite)
    print(f"synthetic survey written: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aquamvs", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="generate the built-in synthetic survey (if missing) and ingest it")
    demo.add_argument("--survey-dir", default=str(DEMO_SURVEY_DIR), help="where the demo survey lives")
    demo.add_argument("--regenerate", action="store_true", help="regenerate the demo survey")
    demo.add_argument("--dagster-home", help="instance folder (default: $DAGSTER_HOME or .dagster_home)")
    demo.set_defaults(func=cmd_demo)

    ingest = sub.add_parser("ingest", help="ingest a survey (YAML) through Dagster")
    ingest.add_argument("survey", help="survey YAML file")
    ingest.add_argument("--frames", help="comma-separated frame indices (default: the survey's selection)")
    ingest.add_argument("--dagster-home", help="instance folder (default: $DAGSTER_HOME or .dagster_home)")
    ingest.set_defaults(func=cmd_ingest)

    gen = sub.add_parser("generate", help="write a synthetic survey (calibration, videos, ground truth)")
    gen.add_argument("out_dir")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--size", help="image size WxH, e.g. 640x480")
    gen.add_argument("--frames", type=int, help="number of frames")
    gen.add_argument("--overwrite", action="store_true")
    gen.set_defaults(func=cmd_generate)
    return parser


def _configure_logging(verbose: bool) -> None:
    """Terminal progress for the CLI's own steps. Inside Dagster runs, ``aquamvs`` loggers are
    managed by Dagster (dagster.yaml ``python_logs``) and printed by it, so they are not echoed."""
    own = ("aquamvs.cli", "aquamvs.synthetic")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or r.name.startswith(own))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    for name in own:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return args.func(args)
    except (CalibrationError, SurveyError, FileNotFoundError, ValueError) as exc:
        print(f"aquamvs: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
