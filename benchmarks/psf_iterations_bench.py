"""How many Van Cittert steps the heightfield's blur compensation should take, against ground truth.

The heightfield (:mod:`aquamvs_core.stages.heightfield`, step 3) undoes the stereo window's blur
with ``psf_iterations`` Van Cittert steps. More steps restore fine relief (and so the volumes of
ripple migration) more fully, and amplify the noise more. This script takes the fused clouds that
``benchmarks/change_bench.py`` stored for each seed (run it first, with the same ``--work``), builds
every frame's heightfield with 1, 2 and 3 steps (same grid, same blur σ as the heightfield step),
then the bed changes from the previous and the first frame, and scores both against the surveys'
exact ground truth with :mod:`aquamvs_core.evaluation.change_metrics`. Nothing is written to the
stores.

    python benchmarks/psf_iterations_bench.py --seeds 0 1 2 3 4 [--work .data/bench_change] \
        [--out benchmarks/results/psf_iterations_cpu.md]

Seed 0 reads the built-in demo survey at ``.data/demo`` (as ``change_bench.py`` does).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aquamvs_core import steps  # noqa: E402
from aquamvs_core.config import build_config  # noqa: E402
from aquamvs_core.evaluation.change_metrics import change_metrics, heightfield_metrics  # noqa: E402
from aquamvs_core.stages.bed_grid import ground_sampling_distance, window_psf_sigma  # noqa: E402
from aquamvs_core.stages.change import compute_change  # noqa: E402
from aquamvs_core.stages.heightfield import build_heightfield  # noqa: E402
from aquamvs_core.steps.change import survey_grid  # noqa: E402
from aquamvs_core.store import SurveyStore  # noqa: E402
from aquamvs_core.survey import frame_index, load_survey_spec  # noqa: E402
from aquamvs_core.synthetic import SyntheticSurveyConfig, load_ground_truth  # noqa: E402
from aquamvs_core.synthetic.terrain import ripple_wavelength  # noqa: E402


def ripple_wavelength_mm(seed: int) -> float:
    """The seed's sand-ripple wavelength, mm (what makes one survey's changes finer than another's)."""
    return 1e3 * ripple_wavelength(SyntheticSurveyConfig(seed=seed))


def score_seed(seed: int, survey_file: Path, iterations: list[int], preset: str) -> list[dict]:
    spec = load_survey_spec(survey_file)
    store = SurveyStore(spec.store)
    gt = load_ground_truth(spec.ground_truth)
    cams = steps.StoreCameras.load(store)
    keys = sorted(store.list_products("fused_cloud"), key=frame_index)
    if not keys:
        raise SystemExit(f"{store.root} has no fused cloud: run benchmarks/change_bench.py first")
    rows = []
    for n in iterations:
        config = build_config(preset, overrides={"heightfield": {"psf_iterations": n}})
        grid = survey_grid(store, config, cams)
        beds = {}
        for key in keys:
            cloud = steps.read_cloud(store, key)
            gsd = ground_sampling_distance(cams.cameras, float(np.median(cloud.points[:, 2])))
            psf = window_psf_sigma(config.plane_sweep.window, gsd)
            beds[key] = build_heightfield(
                cloud.points, cloud.normals, cloud.support, grid, config.heightfield, psf, gsd
            )
        window = psf / grid.cell
        hf = [heightfield_metrics(beds[k], gt, frame_index(k))["median_abs_error_mm"] for k in keys]
        pairs = [(keys[i - 1], keys[i], "previous") for i in range(1, len(keys))]
        pairs += [(keys[0], k, "reference") for k in keys[2:]]
        for a, b, kind in pairs:
            c = change_metrics(
                compute_change(beds[a], beds[b], config.change, window), gt, frame_index(a), frame_index(b)
            )
            rows.append(
                {
                    "seed": seed,
                    "ripple_wavelength_mm": ripple_wavelength_mm(seed),
                    "iterations": n,
                    "change": f"{frame_index(a)} → {frame_index(b)} ({kind})",
                    "hf_median_mm": max(hf),
                    "dz_median_mm": c["median_abs_error_mm"],
                    "deepened_error": c["deepened_rel_error"],
                    "raised_error": c["raised_rel_error"],
                    "unchanged_under_lod_95": c["unchanged_under_lod_95"],
                }
            )
    return rows


def markdown(table: pd.DataFrame, meta: dict) -> str:
    shown = pd.DataFrame(
        {
            "seed": np.where(table.seed == 0, "0 (calibration)", table.seed.astype(str)),
            "ripple λ mm": table.ripple_wavelength_mm.map("{:.1f}".format),
            "VC steps": table.iterations,
            "change": table.change,
            "heightfield median mm (worst frame)": table.hf_median_mm.map("{:.3f}".format),
            "median |dz − dz_gt| mm": table.dz_median_mm.map("{:.3f}".format),
            "deepened": (100 * table.deepened_error).map("{:+.1f} %".format),
            "raised": (100 * table.raised_error).map("{:+.1f} %".format),
            "unchanged under LoD 95 %": (100 * table.unchanged_under_lod_95).map("{:.1f} %".format),
        }
    )
    worst = (
        table.assign(vol=np.maximum(table.deepened_error.abs(), table.raised_error.abs()))
        .groupby("iterations")
        .agg(hf=("hf_median_mm", "max"), dz=("dz_median_mm", "max"), vol=("vol", "max"))
    )
    lines = [
        f"# Blur compensation: Van Cittert steps against ground truth ({meta['date']})",
        "",
        f"Fused clouds of `benchmarks/change_bench.py` (preset `{meta['preset']}`, default rig, 640×480, "
        f"3 frames; seeds {meta['seeds']}), heightfields and changes rebuilt with 1–3 steps of the blur "
        "compensation (σ = window · GSD / √12) and scored by `aquamvs_core.evaluation.change_metrics`. "
        "Volumes: relative error of the volumes deepened and raised over the cells both frames cover. "
        f"Script: `benchmarks/psf_iterations_bench.py`; {meta['seconds']:.0f} s on {meta['machine']}.",
        "",
        "## Worst over the seeds",
        "",
        "| VC steps | heightfield median mm | change median mm | worst volume error |",
        "|---|---|---|---|",
    ]
    for n, r in worst.iterrows():
        lines.append(f"| {n} | {r.hf:.3f} | {r.dz:.3f} | {100 * r.vol:.1f} % |")
    lines += ["", "## Every change", "", shown.to_markdown(index=False), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--iterations", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--work", default=str(ROOT / ".data" / "bench_change"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "psf_iterations_cpu.md"))
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = []
    for seed in args.seeds:
        folder = ROOT / ".data" / "demo" if seed == 0 else Path(args.work) / f"seed{seed}"
        rows += score_seed(seed, folder / "survey.yaml", args.iterations, args.preset)
    table = pd.DataFrame(rows)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "preset": args.preset,
        "seeds": ", ".join(map(str, args.seeds)),
        "seconds": time.perf_counter() - t0,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    report = markdown(table, meta)
    Path(args.out).write_text(report)
    table.to_csv(Path(args.out).with_suffix(".csv"), index=False)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
