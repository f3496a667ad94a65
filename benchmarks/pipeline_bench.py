"""Time every reconstruction stage on one frame of the default synthetic survey and measure its
accuracy against the ground truth; write a markdown table to ``benchmarks/results/``.

Usage (from the repository root, after ``scripts/install.sh``)::

    .venv/bin/python benchmarks/pipeline_bench.py [--presets fast balanced] [--frame 0] [--threads 2]

It runs the same store-level steps as the Dagster assets (:mod:`aquamvs_core.steps`) on a
private copy of the ingested demo store, so timings exclude Dagster's per-run overhead (about
0.3–1 s per run on SQLite), which the table notes separately.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aquamvs_core import steps as steps  # noqa: E402
from aquamvs_core.config import build_config  # noqa: E402
from aquamvs_core.evaluation.benchmark import STAGES, profile_frame  # noqa: E402
from aquamvs_core.evaluation.quality import quality_report  # noqa: E402
from aquamvs_core.stages.pairs import survey_pairs  # noqa: E402
from aquamvs_core.store import SurveyStore  # noqa: E402
from aquamvs_core.survey import Product, frame_key, load_survey_spec, product_path  # noqa: E402

DEMO = ROOT / ".data" / "demo"


def ensure_demo(ingested: bool = True) -> Path:
    """The demo survey, generated and ingested if missing (through the CLI, i.e. through Dagster)."""
    spec_file = DEMO / "survey.yaml"
    store = DEMO / "store.zarr"
    if not spec_file.exists() or (ingested and not SurveyStore(store).list_frames()):
        cmd = [sys.executable, "-m", "aquamvs_assets.cli", "demo", "--no-reconstruct"]
        subprocess.run(cmd, check=True, cwd=ROOT)
    return spec_file


def run_preset(spec_file: Path, preset: str, frame: int, work: Path, source_store: str | None = None) -> dict:
    spec = load_survey_spec(spec_file)
    store_path = work / f"store-{preset}.zarr"
    shutil.copytree(source_store or spec.store, store_path)
    # Only the calibration and the frames: products already in the source store (another benchmark's,
    # say) would be reused and their stages not timed.
    shutil.rmtree(store_path / "products", ignore_errors=True)
    store = SurveyStore(store_path)
    rig = store.read_rig()
    pairs = survey_pairs(rig, spec)
    config = build_config(preset)
    key = frame_key(frame)
    load_before = os.getloadavg()[0]
    profiler, sizes = profile_frame(store, key, pairs, config)
    load = f"{load_before:.1f} → {os.getloadavg()[0]:.1f}"
    table = profiler.table().set_index("stage")
    times = {stage: float(table.loc[stage, "wall_s"]) for stage in STAGES}
    for name, seconds in times.items():
        print(f"  {preset:9s} {name:16s} {seconds:7.2f} s", flush=True)
    report = quality_report(store, key, spec.ground_truth, config)
    swept = [
        store.product_attrs(product_path(Product.PAIRWISE_DEPTHS, key, p.key))["summary"].get("planes")
        for p in pairs
        if store.has_product(product_path(Product.PAIRWISE_DEPTHS, key, p.key))
    ]
    swept = [n for n in swept if n]
    dense = times["pairwise_depths"] + times["camera_depths"] + times["fused_cloud"] + times["mesh"]
    return {
        "preset": preset,
        "num_depths": config.plane_sweep.num_depths,
        "planes_swept": [min(swept), max(swept)] if swept else None,
        "pairs": len(pairs),
        "times_s": {k: round(v, 2) for k, v in times.items()},
        "dense_s": round(dense, 2),
        "total_s": round(sum(times.values()), 2),
        "points": sizes["points"],
        "vertices": sizes["vertices"],
        "peak_rss_mb": round(float(table["peak_rss_mb"].max())),
        "load": load,
        "quality": report,
    }


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    load = os.getloadavg()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), load {load[0]:.1f}"


def _planes(row: dict) -> str:
    """The planes the pairs swept, e.g. "16–17 (128)"; the older tables have only the most."""
    swept = row.get("planes_swept")
    if not swept:
        return str(row["num_depths"])
    lo, hi = swept
    return f"{lo} ({row['num_depths']})" if lo == hi else f"{lo}–{hi} ({row['num_depths']})"


def to_markdown(rows: list[dict], frame: int, survey: str) -> str:
    stages = list(rows[0]["times_s"])
    head = (
        "| preset | planes swept (at most) | "
        + " | ".join(stages)
        + " | dense total | all stages | points | median mm | p90 mm | outliers | completeness (≥2 views) | 2–3 views | ≥4 views | quality gate | peak RSS MB | load |"
    )
    sep = "|" + "---|" * (head.count("|") - 1)
    lines = [head, sep]
    for r in rows:
        q = r["quality"]
        lines.append(
            f"| {r['preset']} | {_planes(r)} | "
            + " | ".join(f"{r['times_s'][s]:.1f} s" for s in stages)
            + f" | **{r['dense_s']:.1f} s** | {r['total_s']:.1f} s | {r['points']:,} | {q['cloud_median_abs_error_mm']:.3f}"
            f" | {q['cloud_p90_abs_error_mm']:.3f} | {100 * q['cloud_outlier_fraction']:.3f} %"
            f" | {100 * q['cloud_completeness']:.1f} % | {100 * q.get('completeness_2_to_3_views', float('nan')):.1f} %"
            f" | {100 * q.get('completeness_4plus_views', float('nan')):.1f} % | {'met' if q['passed'] else '**not met**'}"
            f" | {r['peak_rss_mb']} | {r['load']} |"
        )
    mesh = [
        f"| {r['preset']} | {r['quality']['mesh_median_abs_error_mm']:.3f} | {r['quality']['mesh_p90_abs_error_mm']:.3f}"
        f" | {100 * r['quality']['mesh_completeness']:.1f} % | {r['vertices']:,} |"
        for r in rows
    ]
    return "\n".join(
        [
            f"# Reconstruction pipeline benchmark ({datetime.now(UTC):%Y-%m-%d})",
            "",
            f"Survey: `{survey}`, frame {frame} (9 cameras: 8 ring + 1 fisheye auxiliary, 640×480, "
            f"{rows[0]['pairs']} directed pairs). Machine: {machine()}.",
            "Accuracy is the fused cloud's vertical error against the ground-truth heightfield; "
            "completeness is over ground-truth cells seen by two or more cameras (occlusion-aware).",
            "Dense total = pairwise depths + camera depths + fusion + mesh. The stage times come from the "
            "store-level steps called directly (no Dagster, no process start: see "
            "`results/frame_profile_cpu.md` for a whole `aquamvs reconstruct` process). Quality gate: "
            "`QualityTargets` (median ≤ 0.3 mm, p90 ≤ 1 mm, outliers ≤ 0.5 %, completeness ≥ 90 %).",
            "",
            *lines,
            "",
            "Mesh (heightfield) against the ground truth:",
            "",
            "| preset | median mm | p90 mm | completeness | vertices |",
            "|---|---|---|---|---|",
            *mesh,
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["fast", "balanced"])
    parser.add_argument("--frame", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pipeline_cpu.md"))
    parser.add_argument("--store", default=None, help="an ingested store of the demo survey to copy")
    parser.add_argument("--keep", default=None, help="keep each preset's store in this folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec_file = ensure_demo(ingested=args.store is None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="aquamvs-bench-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for preset in args.presets:
            rows.append(run_preset(spec_file, preset, args.frame, work, args.store))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(rows, args.frame, str(spec_file.relative_to(ROOT))))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
