"""Score the reconstruction on one synthetic survey per real-lab condition, through the CLI.

Usage (from the repository root)::

    python benchmarks/conditions_bench.py [--conditions default ring lab-rig turbid-silt]
        [--tag before] [--preset balanced] [--frames 0] [--data .data/conditions] [--seed-offset 1000]

For each condition (:mod:`aquamvs_core.synthetic.conditions`) it generates the survey with the
condition's fixed seed (plus ``--seed-offset``: surveys no method was tuned on) into
``<data>/<condition>[-seed<seed>]/`` (git-ignored; reused when it is already there
and matches), then runs, as a separate process, the command users run::

    aquamvs reconstruct CALIBRATION VIDEOS OUT --preset balanced --ground-truth GROUND_TRUTH --frames 0

(as ``python -m aquamvs_assets.cli`` with this checkout on ``PYTHONPATH``, a temporary Dagster
instance, one torch thread per step: the configuration's default). The quality check of that run
scores the fused cloud against the exact ground truth; its values, printed by the command, are the
table's accuracy columns. Wall time is the whole command (ingestion, reconstruction, scoring); peak
RSS is the largest resident set of the command's process tree (``wait4``). Machine load
(``/proc/loadavg`` before and after) and the processor model are recorded with every row.

Writes ``benchmarks/results/conditions_cpu[_<tag>].md`` and ``.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aquamvs_core.synthetic import condition_config, generate_survey, lens_report, make_rig  # noqa: E402
from aquamvs_core.synthetic.generate import CALIBRATION_FILE, GROUND_TRUTH_FILE, VIDEOS_DIR  # noqa: E402

#: One fixed seed per condition (the default survey keeps the demo's seed).
SEEDS = {"default": 0, "ring": 1201, "lab-rig": 1202, "turbid-silt": 1203}
#: ``--smoke``: tiny surveys that run the whole harness in a few minutes (a check of the script only).
SMOKE = {
    "image_size": (160, 120),
    "n_frames": 1,
    "terrain_cell": 0.004,
    "texel_size": 0.002,
    "supersample": 1,
}
QUALITY_PREFIX = "quality vs ground truth"
BANDS = ("2_views", "3_views", "4_to_5_views", "6plus_views")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def parse_quality(stdout: str) -> dict[str, float | str]:
    """The ``key=value`` pairs of the command's quality line (the reconstruction_quality check)."""
    for line in stdout.splitlines():
        if line.startswith(QUALITY_PREFIX):
            values: dict[str, float | str] = {"verdict": "met" if "(met)" in line else "not met"}
            for item in line.split(": ", 1)[1].split(", "):
                key, _, value = item.partition("=")
                try:
                    values[key.strip()] = float(value)
                except ValueError:
                    values[key.strip()] = value
            return values
    raise RuntimeError("the reconstruct command printed no quality line (was --ground-truth given?)")


def config_for(name: str, smoke: bool = False, seed_offset: int = 0):
    return condition_config(name, seed=SEEDS[name] + seed_offset, overrides=SMOKE if smoke else None)


def survey_name(name: str, seed_offset: int = 0) -> str:
    """The survey's folder under ``--data``: the condition, plus its seed when it is not the fixed one."""
    return name if seed_offset == 0 else f"{name}-seed{SEEDS[name] + seed_offset}"


def generate(name: str, data: Path, smoke: bool = False, seed_offset: int = 0) -> tuple[Path, float | None]:
    """The condition's survey directory, generated if missing; and the generation time (None: reused)."""
    config = config_for(name, smoke, seed_offset)
    name = survey_name(name, seed_offset)
    out = data / name
    existed = (out / "survey.yaml").exists()
    t0 = time.perf_counter()
    generate_survey(out, config)
    seconds = None if existed else time.perf_counter() - t0
    if seconds is not None:
        (data / f"{name}.generation.json").write_text(
            json.dumps({"seconds": seconds, "load_after": load_average(), "cpu": cpu_model()})
        )
    else:
        stored = data / f"{name}.generation.json"
        seconds = json.loads(stored.read_text())["seconds"] if stored.exists() else None
    return out, seconds


def reconstruct(survey: Path, out: Path, preset: str, frames: str) -> dict:
    """Run the CLI in its own process; returns its quality values, wall time, peak RSS and loads."""
    if out.exists():
        shutil.rmtree(out)
    command = [
        sys.executable, "-m", "aquamvs_assets.cli", "reconstruct",
        str(survey / CALIBRATION_FILE), str(survey / VIDEOS_DIR), str(out),
        "--preset", preset, "--ground-truth", str(survey / GROUND_TRUTH_FILE), "--frames", frames,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    log_path = out.parent / f"{out.name}.log"
    load_before = load_average()
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        stdout = proc.stdout.read() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        log.write(stdout)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {code}; see {log_path}")
    return {
        "quality": parse_quality(stdout),
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # kB on Linux
        "load_before": load_before,
        "load_after": load_average(),
    }


def row_for(
    name: str, gen_seconds: float | None, run: dict, frames: str, smoke: bool = False, seed_offset: int = 0
) -> dict:
    config = config_for(name, smoke, seed_offset)
    rig = make_rig(config)
    kept = [lens_report(rig[n]).kept_by_undistortion for n in rig.primary_names]
    q = run["quality"]

    def pct(key: str) -> float:
        value = q.get(key)
        return round(100 * value, 1) if isinstance(value, float) and math.isfinite(value) else math.nan

    return {
        "condition": name,
        "seed": SEEDS[name] + seed_offset,
        "cameras": len(rig.cameras),
        "image": f"{config.image_size[0]}x{config.image_size[1]}",
        "frames": frames,
        "median_mm": q.get("cloud_median_abs_error_mm", math.nan),
        "p90_mm": q.get("cloud_p90_abs_error_mm", math.nan),
        "outliers_pct": pct("cloud_outlier_fraction"),
        "completeness_pct": pct("cloud_completeness"),
        **{f"completeness_{b}_pct": pct(f"completeness_{b}") for b in BANDS},
        **{f"cells_{b}": int(q.get(f"cells_{b}", 0)) for b in BANDS},
        "silt_completeness_pct": pct("silt_completeness"),
        "outside_silt_completeness_pct": pct("outside_silt_completeness"),
        "silt_median_mm": q.get("silt_median_abs_error_mm", math.nan),
        "mesh_median_mm": q.get("mesh_median_abs_error_mm", math.nan),
        "points": int(q.get("cloud_points", 0)),
        "kept_by_undistortion_pct": round(100 * sum(kept) / len(kept), 1),
        "wall_s": round(run["wall_s"], 1),
        "peak_rss_mb": round(run["peak_rss_mb"], 0),
        "generate_s": round(gen_seconds, 1) if gen_seconds is not None else math.nan,
        "load_before": run["load_before"],
        "load_after": run["load_after"],
        "verdict": q.get("verdict", ""),
    }


def fmt(value: object, spec: str = "", unit: str = "") -> str:
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else format(value, spec) + unit
    return str(value) + unit


def seed_text(args: argparse.Namespace) -> str:
    if args.seed_offset == 0:
        return "fixed per condition"
    return f"the fixed one + {args.seed_offset}: surveys the methods were not tuned on"


def markdown(rows: list[dict], args: argparse.Namespace, started: str) -> str:
    lines = [
        f"# Reconstruction per real-lab condition (CPU){' — ' + args.tag if args.tag else ''}",
        "",
        f"Generated by `benchmarks/conditions_bench.py` on {started} at commit {git_commit()}: each survey "
        f"generated with its seed ({seed_text(args)}), then `aquamvs reconstruct CAL VIDEOS OUT --preset {args.preset} "
        f"--ground-truth GT --frames {args.frames}` as its own process. Processor: {cpu_model()}, "
        f"{os.cpu_count()} logical CPUs, shared with other jobs: load averages (1/5/15 min) are given "
        "before and after each run, so timings are under that load.",
        "",
        "Accuracy of the fused cloud: vertical error |Z − h(x, y)| against the exact ground truth (mm); "
        "outliers > 10 mm. Completeness: ground-truth cells (~2 mm) with a cloud point within 5 mm, over "
        "the cells that 2 or more cameras see (occlusion-aware), then split by how many cameras see a "
        "cell (cell counts in the CSV) and inside / outside the silt patches.",
        "",
        "| condition | cameras | image | median mm | p90 mm | outliers | completeness (≥2 views) "
        "| 2 views | 3 views | 4–5 views | 6+ views | silt | outside silt | silt median mm "
        "| undistortion keeps | wall s | peak RSS MB | load before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            f"{r['condition']} (seed {r['seed']})",
            str(r["cameras"]),
            r["image"],
            fmt(r["median_mm"], ".3f"),
            fmt(r["p90_mm"], ".3f"),
            fmt(r["outliers_pct"], ".2f", " %"),
            fmt(r["completeness_pct"], ".1f", " %"),
            *(fmt(r[f"completeness_{b}_pct"], ".1f", " %") for b in BANDS),
            fmt(r["silt_completeness_pct"], ".1f", " %"),
            fmt(r["outside_silt_completeness_pct"], ".1f", " %"),
            fmt(r["silt_median_mm"], ".3f"),
            fmt(r["kept_by_undistortion_pct"], ".1f", " %"),
            f"{r['wall_s']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['load_before']} → {r['load_after']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Conditions (`aquamvs_core/synthetic/conditions.py`; regenerate any of them with "
        "`aquamvs generate OUT --condition NAME --seed SEED`):",
        "",
        "- **default**: 8 ring cameras tilted 12° + a central fisheye, 640×480, mild lenses, clear water.",
        "- **ring**: 12 cameras tilted 24° inward on a 0.55 m ring + a central fisheye, 800×600, water "
        "0.98 m below the reference camera, 0.5 m deep.",
        "- **lab-rig**: the real 12-camera lab rig's layout (3 × 4 grid 0.33 m apart, tilts 1–4°, water "
        "0.99 m down, 0.5 m deep) and strong lenses (k1 ≈ −0.5; 6 of 12 models fold 45–48° off axis), 640×480.",
        "- **turbid-silt**: the default rig with per-camera gain and white balance, vignetting, shot and "
        "read noise, turbid water with backscatter, 6 silt patches with 5–10× less contrast, 3 steep bowers.",
        "",
        "Survey generation times (s, same machine and load): "
        + ", ".join(f"{r['condition']} {fmt(r['generate_s'], '.0f')}" for r in rows)
        + ". “undistortion keeps” is the mean share of each original image that the undistorted image "
        "of the current ingestion keeps (`lens_report`).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conditions", nargs="+", choices=list(SEEDS), default=list(SEEDS))
    parser.add_argument("--tag", default="", help="suffix of the result files, e.g. 'before'")
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--frames", default="0", help="frames to reconstruct (the CLI's --frames)")
    parser.add_argument("--data", default=str(ROOT / ".data" / "conditions"), help="where the surveys live")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--smoke", action="store_true", help="tiny surveys, to check the script itself")
    parser.add_argument(
        "--seed-offset", type=int, default=0, help="add this to every condition's fixed seed (unseen surveys)"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.data = str(Path(args.data).with_name(Path(args.data).name + "-smoke"))
        args.tag = args.tag or "smoke"
    data = Path(args.data).resolve()
    data.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    suffix = f"_{args.tag}" if args.tag else ""
    md_path = Path(args.out) / f"conditions_cpu{suffix}.md"
    rows = []
    for name in args.conditions:
        seed, folder = SEEDS[name] + args.seed_offset, survey_name(name, args.seed_offset)
        print(f"[{name}] generating (seed {seed}) in {data / folder} ...", flush=True)
        survey, gen_seconds = generate(name, data, args.smoke, args.seed_offset)
        print(f"[{name}] reconstructing (load {load_average()}) ...", flush=True)
        run = reconstruct(survey, data / f"{folder}-recon{suffix}", args.preset, args.frames)
        rows.append(row_for(name, gen_seconds, run, args.frames, args.smoke, args.seed_offset))
        print(f"[{name}] {json.dumps(rows[-1])}", flush=True)
        md_path.parent.mkdir(parents=True, exist_ok=True)  # write after every row: long runs show progress
        md_path.write_text(markdown(rows, args, started))
        with md_path.with_suffix(".csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(f"wrote {md_path} and {md_path.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
