"""The ``aquamvs`` command line. Every pipeline command drives the Dagster definitions (runs are
recorded in the instance at ``$DAGSTER_HOME``); nothing here reimplements a pipeline step."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import get_args

import dagster as dg

from aquamvs_assets.assets.surface import QUALITY_CHECK
from aquamvs_assets.project import DEMO_SURVEY_DIR, PROJECT_ROOT, ensure_dagster_home
from aquamvs_assets.resources import ReconstructionSettings, RomaMatcher
from aquamvs_assets.runner import ReconstructionRun, run_ingestion, run_reconstruction, selected_frame_keys
from aquamvs_core.camera.calibration import CalibrationError
from aquamvs_core.config import Pathway, Preset
from aquamvs_core.survey import SurveyError, frame_key, load_survey_spec

PRESETS = list(get_args(Preset))
PATHWAYS = list(get_args(Pathway))
#: The pathways the profile and benchmark commands run (RoMa needs its weights: not benchmarked here).
SPARSE_PATHWAYS = [p for p in PATHWAYS if p != "roma"]


def _print_summary(survey_file: Path, home: Path, seconds: float) -> None:
    spec = load_survey_spec(survey_file)
    print(
        f"\nSurvey '{spec.name}' done in {seconds:.1f} s.\n"
        f"  survey file : {survey_file}\n"
        f"  Zarr store  : {spec.store}   (layout: see aquamvs_core/store/layout.py)\n"
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
    instance = dg.DagsterInstance.get()
    run_ingestion(survey_file, instance)
    if not args.no_reconstruct:
        from aquamvs_core import steps as steps
        from aquamvs_core.store import SurveyStore

        frames = _parse_frames(args.frames) or [0]
        settings = ReconstructionSettings(preset=args.preset)
        run = run_reconstruction(survey_file, instance, settings, frames)
        out_dir = Path(args.survey_dir) / "output"
        store = SurveyStore(load_survey_spec(survey_file).store, read_only=True)
        for key in run.frame_keys:
            for path in steps.export_frame(store, key, out_dir):
                print(f"wrote {path}")
        _print_run(run)
    _print_summary(survey_file, home, time.perf_counter() - t0)
    return 0


def _print_run(run: ReconstructionRun) -> None:
    """The profiled bottlenecks (with ``--profile``) and the quality verdicts (with ground truth)."""
    if run.profiles:
        print("top bottlenecks (profiled stages):")
        for line in run.bottlenecks(3):
            print(f"  - {line}")
    for evaluation in run.checks:
        if evaluation.check_name != QUALITY_CHECK:
            continue
        values = {k: v.value for k, v in evaluation.metadata.items()}
        verdict = "met" if evaluation.passed else "NOT met"
        print(f"quality vs ground truth ({verdict}): " + ", ".join(f"{k}={v}" for k, v in values.items()))


def cmd_ingest(args: argparse.Namespace) -> int:
    home = ensure_dagster_home(args.dagster_home)
    t0 = time.perf_counter()
    frames = [int(f) for f in args.frames.split(",")] if args.frames else None
    survey_file = Path(args.survey).resolve()
    run_ingestion(survey_file, dg.DagsterInstance.get(), frames)
    _print_summary(survey_file, home, time.perf_counter() - t0)
    return 0


def _parse_frames(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        frames = [int(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise SurveyError(f"--frames: expected comma-separated frame indices, got {text!r}") from None
    if not frames or any(f < 0 for f in frames):
        raise SurveyError(f"--frames: expected non-negative frame indices, got {text!r}")
    return sorted(set(frames))


def _survey_name_for(out_dir: Path) -> str:
    """The survey name of an ``aquamvs reconstruct`` output folder: its name (made key-safe) and a
    hash of its path, so that two output folders never share asset keys in one instance and a
    re-run into the same folder resumes it."""
    import hashlib
    import re

    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", out_dir.name).strip("-.") or "survey"
    return f"{stem[:40]}-{hashlib.sha256(str(out_dir).encode()).hexdigest()[:8]}"


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """``aquamvs reconstruct CALIBRATION INPUT_DIR OUT_DIR``: the whole pipeline through Dagster.
    Everything is validated before anything is written."""
    from aquamvs_core import steps
    from aquamvs_core.config import build_config
    from aquamvs_core.store import SurveyStore
    from aquamvs_core.survey import Survey, SurveySpec

    calibration = Path(args.calibration).resolve()
    inputs = Path(args.input_dir).resolve()
    out_dir = Path(args.out_dir).resolve()
    config = build_config(args.preset, args.pathway, args.config)  # validate before any work
    roma = _roma_matcher(args) if args.pathway == "roma" else None
    if roma is not None:
        roma.settings().checkpoints.check()  # missing weights: a clear error before any work
    frames = _parse_frames(args.frames)
    ground_truth = Path(args.ground_truth).resolve() if args.ground_truth else None
    if ground_truth and not ground_truth.is_file():
        raise SurveyError(f"--ground-truth: {ground_truth} not found")
    work = out_dir / ".aquamvs"
    spec = SurveySpec(
        name=_survey_name_for(out_dir),
        calibration=calibration,
        inputs=inputs,
        store=str(work / "store.zarr"),
        ground_truth=ground_truth,
    )
    with Survey.open(spec) as survey:  # calibration, inputs and their frame counts: errors now
        keys = selected_frame_keys(survey, frames, "--frames")
    settings = ReconstructionSettings(
        profile=args.profile,
        preset=args.preset,
        pathway=args.pathway,
        config_file=str(Path(args.config).resolve()) if args.config else None,
    )
    t0 = time.perf_counter()
    survey_file = spec.to_yaml(work / "survey.yaml")
    home = ensure_dagster_home(args.dagster_home)
    instance = dg.DagsterInstance.from_config(str(home))
    run = run_reconstruction(
        survey_file,
        instance,
        settings,
        roma=roma,
        on_frame=lambda key, n, total: print(
            f"frame {key} done ({n}/{total}, {time.perf_counter() - t0:.0f} s)"
        ),
        keys=keys,
    )
    store = SurveyStore(spec.store, read_only=True)
    for path in steps.export_frames(store, run.frame_keys, out_dir, args.mesh_format or ["ply"]):
        print(f"wrote {path}")
    for path in steps.export_changes(store, run.frame_keys, out_dir, config):
        print(f"wrote {path}")
    _print_run(run)
    print(
        f"reconstructed {len(run.frame_keys)} frame(s) in {time.perf_counter() - t0:.1f} s; "
        f"store: {spec.store}; instance: {home}"
    )
    return 0


def _roma_checkpoints(args: argparse.Namespace):
    from aquamvs_core.stages.dense.roma import RomaCheckpoints

    default = (
        RomaCheckpoints.in_dir(args.roma_weights_dir) if args.roma_weights_dir else RomaCheckpoints.in_dir()
    )
    return RomaCheckpoints(
        Path(args.roma_matcher or default.matcher).resolve(),
        Path(args.roma_dinov2 or default.dinov2).resolve(),
    )


def _roma_matcher(args: argparse.Namespace) -> RomaMatcher:
    checkpoints = _roma_checkpoints(args)
    return RomaMatcher(
        device=args.roma_device,
        matcher_checkpoint=str(checkpoints.matcher),
        dinov2_checkpoint=str(checkpoints.dinov2),
        coarse_res=args.roma_coarse_res,
    )


def cmd_roma_verify(args: argparse.Namespace) -> int:
    """``aquamvs roma-verify``: load the RoMa checkpoints strictly and report their parameters."""
    from aquamvs_core.stages.dense.roma import verify_checkpoints

    checkpoints = _roma_checkpoints(args)
    print(f"matcher: {checkpoints.matcher}\ndinov2:  {checkpoints.dinov2}")
    counts = verify_checkpoints(checkpoints)
    print(
        f"ok: loaded strictly; {counts['matcher']:,} matcher + {counts['dinov2']:,} DINOv2 parameters "
        f"= {counts['total']:,}"
    )
    return 0


def _add_roma_weight_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--roma-weights-dir",
        help="folder holding roma_outdoor.pth and dinov2_vitl14_pretrain.pth "
        "(default: $AQUAMVS_WEIGHTS_DIR or ~/.cache/aquamvs/weights)",
    )
    parser.add_argument("--roma-matcher", help="RoMa outdoor checkpoint file (overrides the folder)")
    parser.add_argument("--roma-dinov2", help="DINOv2 ViT-L/14 checkpoint file (overrides the folder)")


def _survey_with_frame(survey: str | None, frame: int, dagster_home: str | None) -> Path:
    """The survey file (default: the built-in demo, generated if missing), with ``frame`` ingested
    through Dagster if its store does not have it yet."""
    from aquamvs_core.store import SurveyStore
    from aquamvs_core.synthetic import generate_survey

    survey_file = Path(survey).resolve() if survey else generate_survey(DEMO_SURVEY_DIR)
    spec = load_survey_spec(survey_file)
    if frame_key(frame) not in SurveyStore(spec.store).list_frames():
        ensure_dagster_home(dagster_home)
        run_ingestion(survey_file, dg.DagsterInstance.get(), [frame])
    return survey_file


def cmd_profile(args: argparse.Namespace) -> int:
    """Profile every stage of one frame (the real pipeline) and print the bottlenecks."""
    from aquamvs_core.camera.calibration import load_calibration
    from aquamvs_core.config import build_config
    from aquamvs_core.evaluation.benchmark import profile_frame
    from aquamvs_core.stages.pairs import survey_pairs
    from aquamvs_core.store import SurveyStore

    survey_file = _survey_with_frame(args.survey, args.frame, args.dagster_home)
    spec = load_survey_spec(survey_file)
    pairs = survey_pairs(load_calibration(spec.calibration), spec)
    config = build_config(args.preset, args.pathway, args.config)
    profiler, sizes = profile_frame(SurveyStore(spec.store), frame_key(args.frame), pairs, config)
    table = profiler.table()
    columns = ["stage", "wall_s", "cpu_s", "peak_rss_mb", "rss_growth_mb", "wall_share"]
    if profiler.cuda:
        columns += ["cuda_s", "cuda_peak_mb"]
    print(table[columns].to_markdown(index=False, floatfmt=".2f"))
    print(f"\noutputs: {sizes}\ntop bottlenecks:")
    for line in profiler.bottlenecks(3):
        print(f"  - {line}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Run the pathway × preset matrix on one frame and write a markdown report."""
    import tempfile

    from aquamvs_core.camera.calibration import load_calibration
    from aquamvs_core.evaluation.benchmark import benchmark_matrix
    from aquamvs_core.stages.pairs import survey_pairs

    survey_file = _survey_with_frame(args.survey, args.frame, args.dagster_home)
    spec = load_survey_spec(survey_file)
    pairs = survey_pairs(load_calibration(spec.calibration), spec)
    with tempfile.TemporaryDirectory(prefix="aquamvs-benchmark-") as tmp:
        table = benchmark_matrix(
            spec.store, frame_key(args.frame), pairs, args.pathways, args.presets, tmp, spec.ground_truth
        )
    report = (
        f"# Benchmark: survey '{spec.name}', frame {args.frame}\n\n"
        f"Times in seconds (wall), memory in MB (peak RSS), errors in mm against the ground truth.\n\n"
        + table.to_markdown(index=False, floatfmt=".3f")
        + "\n"
    )
    print(report)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        table.to_csv(out.with_suffix(".csv"), index=False)
        print(f"wrote {out} and {out.with_suffix('.csv')}")
    return 0


def cmd_location_add(args: argparse.Namespace) -> int:
    """``aquamvs location add SURVEY.yaml``: one more rig (code location) in a workspace."""
    from aquamvs_assets.workspace import add_survey_location

    module = add_survey_location(args.survey, args.workspace)
    name = load_survey_spec(args.survey).name
    print(f"survey {name!r}: code location {module}\nlisted in {Path(args.workspace).resolve()}")
    print(f"run: DAGSTER_HOME=<instance> dagster dev -w {args.workspace}")
    return 0


def _parse_assignments(items: list[str] | None) -> dict[str, object]:
    """``FIELD=VALUE`` pairs (VALUE as JSON, e.g. ``[0.9,0.5,0.5]`` or ``true``, else a string)."""
    import json

    out: dict[str, object] = {}
    for item in items or []:
        field, sep, text = item.partition("=")
        if not sep or not field.strip():
            raise ValueError(f"--set: expected FIELD=VALUE, got {item!r}")
        try:
            out[field.strip()] = json.loads(text)
        except ValueError:
            out[field.strip()] = text
    return out


def cmd_generate(args: argparse.Namespace) -> int:
    from aquamvs_core.synthetic import generate_survey
    from aquamvs_core.synthetic.conditions import condition_config

    overrides = _parse_assignments(args.set)
    if args.size:
        try:
            w, h = (int(x) for x in args.size.lower().split("x"))
        except ValueError:
            raise ValueError(f"--size: expected WxH, e.g. 640x480, got {args.size!r}") from None
        overrides["image_size"] = (w, h)
    if args.frames:
        overrides["n_frames"] = args.frames
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = condition_config(*(args.condition or ["default"]), overrides=overrides)
    path = generate_survey(Path(args.out_dir), config, overwrite=args.overwrite)
    print(f"synthetic survey written: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aquamvs", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="generate the built-in synthetic survey (if missing), ingest it and reconstruct frame 0"
    )
    demo.add_argument("--survey-dir", default=str(DEMO_SURVEY_DIR), help="where the demo survey lives")
    demo.add_argument("--regenerate", action="store_true", help="regenerate the demo survey")
    demo.add_argument("--dagster-home", help="instance folder (default: $DAGSTER_HOME or .dagster_home)")
    demo.add_argument("--no-reconstruct", action="store_true", help="only ingest the frames")
    demo.add_argument("--frames", help="frames to reconstruct, comma-separated (default: 0)")
    demo.add_argument("--preset", choices=PRESETS, default="balanced")
    demo.set_defaults(func=cmd_demo)

    ingest = sub.add_parser("ingest", help="ingest a survey (YAML) through Dagster")
    ingest.add_argument("survey", help="survey YAML file")
    ingest.add_argument("--frames", help="comma-separated frame indices (default: the survey's selection)")
    ingest.add_argument("--dagster-home", help="instance folder (default: $DAGSTER_HOME or .dagster_home)")
    ingest.set_defaults(func=cmd_ingest)

    rec = sub.add_parser("reconstruct", help="depth maps, fused cloud and mesh per frame, through Dagster")
    rec.add_argument("calibration", help="AquaCal calibration JSON")
    rec.add_argument("input_dir", help="one <camera>.mp4 per camera, or one folder <camera>/ of images each")
    rec.add_argument(
        "out_dir",
        help="writes OUT_DIR/frame_NNNNNN/{fused_cloud.ply, mesh.ply, heightfield.npz} and "
        "OUT_DIR/changes/{frame_AAAAAA_to_BBBBBB.npz, volumes.csv}",
    )
    rec.add_argument("--frames", help="comma-separated frame indices (default: all)")
    rec.add_argument("--preset", choices=PRESETS, default="balanced")
    rec.add_argument("--pathway", choices=PATHWAYS, default="sift")
    rec.add_argument("--config", help="YAML file overriding any configuration field")
    rec.add_argument(
        "--mesh-format",
        action="append",
        choices=["ply", "obj", "stl", "glb"],
        default=None,
        help="mesh file formats (repeatable; default ply)",
    )
    rec.add_argument("--profile", action="store_true", help="profile every stage and print the bottlenecks")
    rec.add_argument("--ground-truth", help="ground_truth.npz of a synthetic survey: report accuracy")
    rec.add_argument(
        "--dagster-home", help="instance folder (default: $DAGSTER_HOME, else <project>/.dagster_home)"
    )
    _add_roma_weight_args(rec)
    rec.add_argument("--roma-device", default="auto", help="torch device for RoMa (default: CUDA if any)")
    rec.add_argument("--roma-coarse-res", type=int, default=560, help="RoMa matching resolution, px")
    rec.set_defaults(func=cmd_reconstruct)

    verify = sub.add_parser(
        "roma-verify", help="check RoMa checkpoints: load them strictly and report the parameter counts"
    )
    _add_roma_weight_args(verify)
    verify.set_defaults(func=cmd_roma_verify)

    prof = sub.add_parser("profile", help="profile every stage of one frame and print the bottlenecks")
    prof.add_argument("survey", nargs="?", help="survey YAML (default: the built-in demo)")
    prof.add_argument("--frame", type=int, default=0)
    prof.add_argument("--preset", choices=PRESETS, default="balanced")
    prof.add_argument("--pathway", choices=SPARSE_PATHWAYS, default="sift")
    prof.add_argument("--config", help="YAML file overriding any configuration field")
    prof.add_argument("--dagster-home", help="instance used if the frame must be ingested first")
    prof.set_defaults(func=cmd_profile)

    bench = sub.add_parser("benchmark", help="pathway × preset matrix on one frame, as a markdown report")
    bench.add_argument("survey", nargs="?", help="survey YAML (default: the built-in demo)")
    bench.add_argument("--frame", type=int, default=0)
    bench.add_argument("--pathways", nargs="+", choices=SPARSE_PATHWAYS, default=SPARSE_PATHWAYS)
    bench.add_argument("--presets", nargs="+", choices=PRESETS, default=["fast", "balanced"])
    bench.add_argument("--out", help="write the report (markdown) and the table (.csv) here")
    bench.add_argument("--dagster-home", help="instance used if the frame must be ingested first")
    bench.set_defaults(func=cmd_benchmark)

    location = sub.add_parser("location", help="manage the code locations (one per rig) of a workspace")
    location_sub = location.add_subparsers(dest="location_command", required=True)
    add = location_sub.add_parser("add", help="add a survey as a code location of workspace.yaml")
    add.add_argument("survey", help="survey YAML file")
    add.add_argument(
        "--workspace", default="workspace.yaml", help="workspace file (default: ./workspace.yaml)"
    )
    add.set_defaults(func=cmd_location_add)

    from aquamvs_core.synthetic.conditions import CONDITIONS

    gen = sub.add_parser(
        "generate",
        help="write a synthetic survey (calibration, videos, ground truth)",
        description="Conditions (see aquamvs_core/synthetic/conditions.py) combine in order; --set, "
        "--size, --frames and --seed override them.",
    )
    gen.add_argument("out_dir")
    gen.add_argument(
        "--condition",
        action="append",
        choices=list(CONDITIONS),
        help="a named real-lab condition (repeatable): " + ", ".join(CONDITIONS),
    )
    gen.add_argument("--seed", type=int, help="random seed (default 0)")
    gen.add_argument("--size", help="image size WxH, e.g. 640x480")
    gen.add_argument("--frames", type=int, help="number of frames")
    gen.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="any SyntheticSurveyConfig field (repeatable; VALUE as JSON), e.g. --set silt_patches=8",
    )
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
    except RuntimeError as exc:  # a failed Dagster run
        print(f"aquamvs: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
