"""Measure the design choices of issue 12 on one condition survey: the undistortion canvas, the view
selection, and the weak-texture handling, each variant through the same store-level steps as the
assets, scored against the exact ground truth; write a markdown table and a CSV.

Usage (from the repository root)::

    python benchmarks/variants_bench.py --survey .data/conditions/lab-rig \\
        --variants original full calibrated --out benchmarks/results/canvas_cpu.md

Variants (:data:`VARIANTS`): ``original`` is the product's configuration (frames on the original
pixel grid with the lens in the camera model, geometric view selection);
``full`` / ``calibrated`` change the undistortion canvas (:mod:`aquamvs_core.stages.ingest`);
``nearest`` selects each camera's k nearest cameras by centre plus the auxiliary as a source (the
earlier rule); ``fallback`` turns the plane sweep's multi-scale fallback on; ``calibrated-nearest``
is the earlier pipeline's geometry (calibrated-K canvas and nearest pairs).

Each variant ingests frame 0 into a private store under ``--work`` (default ``.data/variants``),
runs every reconstruction step once (balanced preset unless ``--preset``) and scores the fused cloud
with :func:`~aquamvs_core.evaluation.quality.quality_report` (completeness over the cells seen by
two or more cameras in their *original* images, so every canvas is scored against the same cells).
Times are wall seconds of each stage on this shared machine; the load average is recorded.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aquamvs_core import steps  # noqa: E402
from aquamvs_core.camera.calibration import Rig  # noqa: E402
from aquamvs_core.config import build_config  # noqa: E402
from aquamvs_core.evaluation.benchmark import STAGES, profile_frame  # noqa: E402
from aquamvs_core.evaluation.quality import quality_report  # noqa: E402
from aquamvs_core.stages.ingest import Undistorter  # noqa: E402
from aquamvs_core.stages.pairs import CameraPair, survey_pairs  # noqa: E402
from aquamvs_core.store import SurveyStore  # noqa: E402
from aquamvs_core.survey import Survey, frame_key, load_survey_spec  # noqa: E402

#: name → (canvas, selection, configuration overrides)
VARIANTS: dict[str, tuple[str, str, dict]] = {
    "original": ("original", "geometric", {}),
    "full": ("full", "geometric", {}),
    "calibrated": ("calibrated", "geometric", {}),
    "nearest": ("original", "nearest", {}),
    "calibrated-nearest": ("calibrated", "nearest", {}),
    "fallback": ("original", "geometric", {"plane_sweep": {"multiscale_fallback": True}}),
}


def nearest_pairs(rig: Rig, k: int) -> list[CameraPair]:
    """The earlier rule: each primary camera's k nearest primary cameras by centre distance, plus
    every auxiliary camera as a source (auxiliaries are never references)."""
    primary = rig.primary_names
    centres = np.stack([rig[n].center for n in primary])
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    k = min(k, len(primary) - 1)
    pairs = []
    for i, ref in enumerate(primary):
        pairs += [CameraPair(ref, primary[j]) for j in np.argsort(dist[i], kind="stable")[:k]]
        pairs += [CameraPair(ref, a) for a in rig.auxiliary_names]
    return pairs


def load_average() -> str:
    return (
        " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "n/a"
    )


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run_variant(survey_dir: Path, name: str, work: Path, preset: str) -> dict:
    canvas, selection, overrides = VARIANTS[name]
    spec = load_survey_spec(survey_dir / "survey.yaml")
    store_path = work / f"{survey_dir.name}-{name}.zarr"
    if store_path.exists():
        shutil.rmtree(store_path)
    store = SurveyStore(store_path)
    load_before = load_average()
    t0 = time.perf_counter()
    with Survey.open(spec) as survey:
        undistorter = Undistorter.for_rig(survey.rig, canvas=canvas)
        steps.write_calibration(store, survey.rig, undistorter)
        steps.ingest_frames(survey, store, [0], undistorter)
        rig = survey.rig
    ingest_s = time.perf_counter() - t0
    pairs = survey_pairs(rig, spec) if selection == "geometric" else nearest_pairs(rig, spec.pair_neighbours)
    config = build_config(preset, overrides=overrides)
    profiler, sizes = profile_frame(store, frame_key(0), pairs, config)
    times = profiler.table().set_index("stage")["wall_s"].to_dict()
    report = quality_report(store, frame_key(0), spec.ground_truth, config)
    kept = float(np.mean([m.mean() for m in store.read_valid_masks().values()]))
    row = {
        "survey": survey_dir.name,
        "variant": name,
        "canvas": canvas,
        "selection": selection,
        "overrides": str(overrides or ""),
        "pairs": len(pairs),
        "stored_size": "x".join(str(s) for s in store.read_valid_masks()[rig.camera_names[0]].shape[::-1]),
        "valid_canvas_pct": round(100 * kept, 1),
        "ingest_s": round(ingest_s, 1),
        **{f"{s}_s": round(float(times[s]), 1) for s in STAGES},
        "dense_s": round(sum(float(times[s]) for s in STAGES[2:]), 1),
        "points": sizes["points"],
        "load_before": load_before,
        "load_after": load_average(),
    }
    row.update({k: v for k, v in report.items() if not isinstance(v, dict)})
    shutil.rmtree(store_path, ignore_errors=True)
    return row


def pct(v: object) -> str:
    return "–" if v is None else f"{100 * float(v):.1f} %"


def markdown(rows: list[dict], started: str, preset: str) -> str:
    lines = [
        f"# Design variants of issue 12 (CPU, preset {preset})",
        "",
        f"Generated by `benchmarks/variants_bench.py` on {started}. Processor: {cpu_model()}, "
        f"{os.cpu_count()} logical CPUs shared with other jobs (load averages before → after each run "
        "are given: timings are under that load). Completeness counts the ground-truth cells (~2 mm) "
        "seen by two or more cameras in their *original* images (the same cells for every canvas), a "
        "cell being complete with a cloud point within 5 mm; errors are vertical, of the fused cloud.",
        "",
        "| survey | variant | canvas | selection | pairs | stored image | median mm | p90 mm | outliers "
        "| completeness | 2 views | 3 views | 4–5 views | 6+ views | silt | dense s | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            r["survey"],
            r["variant"],
            r["canvas"],
            r["selection"],
            str(r["pairs"]),
            r["stored_size"],
            f"{r['cloud_median_abs_error_mm']:.3f}",
            f"{r['cloud_p90_abs_error_mm']:.3f}",
            f"{100 * r['cloud_outlier_fraction']:.2f} %",
            pct(r["cloud_completeness"]),
            pct(r.get("completeness_2_views")),
            pct(r.get("completeness_3_views")),
            pct(r.get("completeness_4_to_5_views")),
            pct(r.get("completeness_6plus_views")),
            pct(r.get("silt_completeness")),
            f"{r['dense_s']:.0f}",
            f"{r['load_before']} → {r['load_after']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--survey", required=True, nargs="+", help="generated survey directories")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["original"])
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--work", default=str(ROOT / ".data" / "variants"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "variants_cpu.md"))
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = Path(args.out)
    rows = []
    for survey in args.survey:
        for name in args.variants:
            print(f"[{Path(survey).name} / {name}] load {load_average()} ...", flush=True)
            rows.append(run_variant(Path(survey).resolve(), name, work, args.preset))
            print(rows[-1], flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(markdown(rows, started, args.preset))
            with out.with_suffix(".csv").open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]), extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
