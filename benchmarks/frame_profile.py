"""Whole-frame profile of ``aquamvs reconstruct`` as a user runs it: one process, every stage and every
fixed cost (process start, imports, instance, each Dagster run, survey opening, decoding,
undistortion, store reads and writes, each stage, export, teardown), with the peak resident memory.

Usage (from the repository root)::

    python benchmarks/frame_profile.py run [--survey .data/demo] [--preset balanced] [--frames 0]
        [--repeat 2] [--code DIR] [--label after] [--config overrides.yaml] [--json benchmarks/results/frame_profile_after.json]
    python benchmarks/frame_profile.py render --before B.json --after A.json --out benchmarks/results/frame_profile_cpu.md
    python benchmarks/frame_profile.py ab --before-code /tmp/checkout-of-d1bf278 [--rounds 2]
    python benchmarks/frame_profile.py plain --survey .data/rig1600 --repeat 2 --out benchmarks/results/frame_plain_rig1600_cpu.md

``run`` starts ``python -m aquamvs_assets.cli reconstruct CALIBRATION VIDEOS OUT --preset P --frames F``
in a child process whose ``main`` is wrapped by timing hooks (this file, ``child`` mode): functions of
the CLI, the Dagster runner, the steps, the store, the survey and the undistorter are wrapped where
they are looked up, so the code that runs is the code the user runs. ``--code DIR`` profiles another
checkout (e.g. ``git archive`` of an earlier commit) with the same hooks. Each span's *self* time is
its wall time minus the hooked spans inside it, so the rows add up to the process's wall time. The
child's resident memory is sampled every 20 ms; the process peak comes from the kernel
(``wait4``). The survey is generated first if missing and that is not timed (``aquamvs
reconstruct`` would generate the built-in demo on import otherwise). Afterwards, outside the timing,
the frame's fused cloud and mesh are scored against the survey's ground truth. ``plain`` runs the
CLI as it is, with no hooks, for the wall time and peak memory a user sees.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
T_CHILD = time.time()  # as early as possible in the child

# --------------------------------------------------------------------------------------------
# Child: the hooks
# --------------------------------------------------------------------------------------------


class Tracer:
    """Nested spans (name, category, start, end), one stack per thread; self time = wall − hooked
    children of the same thread. Spans of other threads than the main one (the pair workers) are
    marked ``worker``: they overlap, so they are reported apart, in thread-seconds."""

    def __init__(self):
        self.spans: list[dict] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self.rss: list[tuple[float, float]] = []

    @property
    def _stack(self) -> list[dict]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def wrap(self, owner, attr: str, name: str, category: str, label=None) -> None:
        fn = getattr(owner, attr, None)
        if fn is None or getattr(fn, "_traced", False):
            return
        tracer = self

        def wrapper(*args, **kwargs):
            stack = tracer._stack
            span = {
                "name": label(args, kwargs) if label else name,
                "category": category,
                "start": time.time(),
                "worker": threading.current_thread() is not threading.main_thread(),
                "parent": stack[-1]["id"] if stack else None,
            }
            with tracer._lock:
                span["id"] = len(tracer.spans)
                tracer.spans.append(span)
            stack.append(span)
            try:
                return fn(*args, **kwargs)
            finally:
                span["end"] = time.time()
                stack.pop()

        wrapper._traced = True
        wrapper.__wrapped__ = fn
        setattr(owner, attr, wrapper)

    def sample_rss(self, stop: threading.Event) -> None:
        import psutil

        proc = psutil.Process()
        while not stop.wait(0.02):
            self.rss.append((time.time(), proc.memory_info().rss / 2**20))


def _install_hooks(tracer: Tracer) -> None:
    import dagster as dg

    import aquamvs_assets.runner as runner
    from aquamvs_core import steps
    from aquamvs_core.stages import ingest
    from aquamvs_core.store import SurveyStore
    from aquamvs_core.survey import Survey

    tracer.wrap(dg.DagsterInstance, "from_config", "instance: create", "dagster")
    tracer.wrap(runner, "build_definitions", "definitions: build", "dagster")
    tracer.wrap(runner, "register_frames", "instance: register frames", "dagster")
    tracer.wrap(runner, "frame_keys", "survey: frame selection", "survey")
    tracer.wrap(
        dg.JobDefinition,
        "execute_in_process",
        "run",
        "dagster run",
        label=lambda a, k: f"dagster run: {a[0].name}",
    )
    for name in (
        "sparse_matches_step",
        "match_frame_pairs",
        "sparse_cloud_step",
        "pairwise_depths_step",
        "sweep_frame_pairs",
        "roma_pairwise_depths_step",
        "camera_depths_step",
        "fused_cloud_step",
        "mesh_step",
        "heightfield_step",
        "export_frames",
        "export_frame",
        "export_heightfield",
        "export_changes",
    ):
        tracer.wrap(steps, name, f"step: {name.removesuffix('_step')}", "stage")
    import aquamvs_core.steps.depth as depth_steps  # sweep_frame_pairs calls its own module's step

    tracer.wrap(depth_steps, "pairwise_depths_step", "step: pairwise_depths", "stage")
    import aquamvs_core.steps.sparse as sparse_steps  # so does match_frame_pairs

    tracer.wrap(sparse_steps, "sparse_matches_step", "step: sparse_matches", "stage")
    try:  # the ingestion asset imported its steps by name
        import aquamvs_assets.assets.ingestion as ingestion_assets

        tracer.wrap(ingestion_assets, "ingest_frames", "step: ingest frames", "stage")
        tracer.wrap(ingestion_assets, "write_calibration", "step: write calibration", "stage")
        tracer.wrap(ingestion_assets.Undistorter, "for_rig", "undistort: maps", "ingest")
    except ImportError:
        pass
    tracer.wrap(ingest.Undistorter, "apply", "undistort: images", "ingest")
    tracer.wrap(Survey, "open", "survey: open inputs", "survey")
    tracer.wrap(Survey, "read_frame", "decode: frames", "ingest")
    for attr in (
        "read_frame",
        "read_product",
        "read_rig",
        "read_valid_masks",
        "read_undistorted_K",
        "list_products",
        "has_product",
        "product_attrs",
        "read_calibration",
        "frame_attrs",
    ):
        tracer.wrap(SurveyStore, attr, "store: read", "store")
    for attr in ("write_frame", "write_product", "write_calibration", "write_pair_geometry"):
        tracer.wrap(SurveyStore, attr, "store: write", "store")
    tracer.wrap(SurveyStore, "__init__", "store: open", "store")


def _pair_neighbours(n: int) -> None:
    """Make ``aquamvs reconstruct`` write surveys with ``n`` stereo neighbours per camera (it has no
    option for it; the survey YAML it writes then carries the value)."""
    from pydantic import Field

    import aquamvs_core.survey as survey

    class Spec(survey.SurveySpec):
        pair_neighbours: int = Field(n, ge=1)

    survey.SurveySpec = Spec


def child(trace_path: str, argv: list[str], pair_neighbours: int | None = None) -> int:
    import psutil

    tracer = Tracer()
    marks = {"process_start": psutil.Process().create_time(), "child_main": T_CHILD}
    t = time.time()
    import dagster  # noqa: F401

    marks["import_dagster"] = time.time() - t
    t = time.time()
    import torch  # noqa: F401

    import aquamvs_core.steps  # noqa: F401

    marks["import_core"] = time.time() - t
    t = time.time()
    import aquamvs_assets.definitions  # noqa: F401  (builds the default survey's definitions)

    marks["import_definitions"] = time.time() - t
    t = time.time()
    from aquamvs_assets import cli

    marks["import_cli"] = time.time() - t
    _install_hooks(tracer)
    if pair_neighbours:
        _pair_neighbours(pair_neighbours)
    tracer.wrap(cli, "main", "cli: main", "cli")
    # The memory sampler starts only now, after importing aquamvs_assets set glibc's one-heap limit
    # (runtime.tune_allocator): a thread started before would keep a heap of its own, which the pair
    # workers could then be given, and the peak would not be the CLI's (4.6 GB against 3.8 GB on the
    # rig frame).
    stop = threading.Event()
    sampler = threading.Thread(target=tracer.sample_rss, args=(stop,), daemon=True)
    sampler.start()
    marks["main_start"] = time.time()
    rc = cli.main(argv)
    marks["main_end"] = time.time()
    stop.set()
    sampler.join()
    Path(trace_path).write_text(json.dumps({"marks": marks, "spans": tracer.spans, "rss": tracer.rss}))
    return rc


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def machine() -> dict:
    sys.path.insert(0, str(ROOT))
    from aquamvs_core.evaluation.profiling import machine_info

    return machine_info()


def ensure_survey(survey: Path) -> Path:
    """The survey's survey.yaml; the built-in demo is generated (not timed) if missing."""
    if (survey / "survey.yaml").is_file():
        return survey / "survey.yaml"
    sys.path.insert(0, str(ROOT))
    from aquamvs_core.synthetic import generate_survey

    t = time.perf_counter()
    path = generate_survey(survey)
    print(f"generated {survey} in {time.perf_counter() - t:.0f} s (not timed)", flush=True)
    return path


def _self_times(trace: dict) -> list[dict]:
    spans = trace["spans"]
    child_time = defaultdict(float)
    for s in spans:
        if s["parent"] is not None:
            child_time[s["parent"]] += s["end"] - s["start"]
    for s in spans:
        s["self"] = s["end"] - s["start"] - child_time[s["id"]]
    return spans


def _peak(rss: list, start: float, end: float) -> float:
    vals = [r for t, r in rss if start <= t <= end]
    return max(vals) if vals else float("nan")


def summarise(trace: dict, wall: float, maxrss_mb: float) -> tuple[list[dict], list[dict]]:
    """Rows (in order of first appearance): name, seconds (self time), calls, peak RSS MB; and the
    pair workers' rows (name, thread-seconds, calls), which overlap each other and the main rows."""
    m = trace["marks"]
    spans = _self_times(trace)
    rows: dict[str, dict] = {}
    workers: dict[str, dict] = {}

    def add(name: str, seconds: float, start: float, end: float, calls: int = 1) -> None:
        row = rows.setdefault(
            name, {"name": name, "seconds": 0.0, "inclusive": 0.0, "calls": 0, "peak_rss_mb": 0.0}
        )
        row["seconds"] += seconds
        row["inclusive"] += (end - start) if end > start else seconds
        row["calls"] += calls
        row["peak_rss_mb"] = max(row["peak_rss_mb"], _peak(trace["rss"], start, end) if end > start else 0.0)

    add("process start (interpreter, profiler)", m["child_main"] - m["process_start"], 0, 0)
    add("import dagster", m["import_dagster"], 0, 0)
    add("import torch, open3d, aquamvs_core", m["import_core"], 0, 0)
    add("import definitions (default survey's defs)", m["import_definitions"], 0, 0)
    add("import cli", m["import_cli"], 0, 0)
    for s in spans:
        name = s["name"]
        if s.get("worker"):  # overlapping spans of the pair workers: thread-seconds, apart
            row = workers.setdefault(name, {"name": name, "thread_seconds": 0.0, "calls": 0})
            row["thread_seconds"] += s["self"]
            row["calls"] += 1
            continue
        if s["category"] == "dagster run":
            name = f"{name} (Dagster, assets' own work)"
        elif name == "cli: main":
            name = "cli: arguments, calibration, temp dirs"
        add(name, s["self"], s["start"], s["end"])
    add("teardown (after main, until exit)", wall - (m["main_end"] - m["process_start"]), 0, 0)
    out = list(rows.values())
    for r in out:
        r["share"] = r["seconds"] / wall
    return out, list(workers.values())


def _timed_child(cmd: list[str], cwd: Path, env: dict) -> tuple[dict, float, float]:
    """Run ``cmd`` to its end, timed by the kernel (``wait4``): the run's record (wall, user and
    system seconds, peak RSS MB, load averages before and after), its wall seconds and its exact
    peak in MB. A failure prints the end of its output and exits."""
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    if status != 0:
        print(output[-4000:])
        raise SystemExit(f"aquamvs reconstruct failed (status {status})")
    run = {
        "wall_s": round(wall, 2),
        "user_s": round(usage.ru_utime, 2),
        "sys_s": round(usage.ru_stime, 2),
        "max_rss_mb": round(usage.ru_maxrss / 1024),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
    }
    return run, wall, usage.ru_maxrss / 1024


def run_profile(args: argparse.Namespace) -> dict:
    code = Path(args.code).resolve() if args.code else ROOT
    survey_file = ensure_survey(Path(args.survey).resolve())
    survey = survey_file.parent
    import yaml

    spec = yaml.safe_load(survey_file.read_text())
    calibration = survey / spec["calibration"]
    inputs = survey / spec["inputs"]
    runs = []
    env = dict(os.environ, PYTHONPATH=str(code))
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="aquamvs-frame-") as tmp:
            out = Path(tmp) / "out"
            trace_path = Path(tmp) / "trace.json"
            argv = [
                "reconstruct",
                str(calibration),
                str(inputs),
                str(out),
                "--preset",
                args.preset,
                "--frames",
                args.frames,
            ]
            if args.config:
                argv += ["--config", str(Path(args.config).resolve())]
            cmd = [sys.executable, str(HERE), "child", "--trace", str(trace_path)]
            if args.pair_neighbours:
                cmd += ["--pair-neighbours", str(args.pair_neighbours)]
            cmd += ["--", *argv]
            run, wall, peak_mb = _timed_child(cmd, code, env)
            trace = json.loads(trace_path.read_text())
            run["rows"], run["worker_rows"] = summarise(trace, wall, peak_mb)
            if spec.get("ground_truth") and i == 0:
                run["quality"] = score(
                    code,
                    out / ".aquamvs" / "store.zarr",
                    survey / spec["ground_truth"],
                    args.frames,
                    args.preset,
                )
            runs.append(run)
            print(
                f"run {i + 1}/{args.repeat}: {wall:.1f} s wall, {run['max_rss_mb']} MB peak, load "
                f"{run['load_before'][0]:.2f} → {run['load_after'][0]:.2f}",
                flush=True,
            )
    result = {
        "label": args.label,
        "code": str(code),
        "commit": _commit(code),
        "survey": str(survey),
        "preset": args.preset,
        "frames": args.frames,
        "pair_neighbours": args.pair_neighbours or 4,
        "config": _flat(yaml.safe_load(Path(args.config).read_text())) if args.config else {},
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": runs,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def run_plain(args: argparse.Namespace) -> dict:
    """``args.repeat`` runs of the real CLI (``python -m aquamvs_assets.cli reconstruct``, no hooks,
    no memory sampler), each from an empty output folder, timed by the kernel (``wait4``: wall, user,
    system, peak RSS); the first run's output is scored against the ground truth."""
    survey_file = ensure_survey(Path(args.survey).resolve())
    survey = survey_file.parent
    import yaml

    spec = yaml.safe_load(survey_file.read_text())
    runs = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="aquamvs-plain-") as tmp:
            out = Path(tmp) / "out"
            cmd = [
                sys.executable,
                "-m",
                "aquamvs_assets.cli",
                "reconstruct",
                str(survey / spec["calibration"]),
                str(survey / spec["inputs"]),
                str(out),
                "--preset",
                args.preset,
                "--frames",
                args.frames,
            ]
            run, wall, _ = _timed_child(cmd, ROOT, dict(os.environ, PYTHONPATH=str(ROOT)))
            store = out / ".aquamvs" / "store.zarr"
            if i == 0:
                run["shape"] = frame_shape(ROOT, store)
            if spec.get("ground_truth") and i == 0:
                run["quality"] = score(ROOT, store, survey / spec["ground_truth"], args.frames, args.preset)
            runs.append(run)
            print(
                f"plain run {i + 1}/{args.repeat}: {wall:.1f} s wall, {run['max_rss_mb']} MB peak", flush=True
            )
    return {
        "commit": _commit(ROOT),
        "survey": str(survey),
        "preset": args.preset,
        "frames": args.frames,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": runs,
    }


def render_plain(result: dict) -> str:
    """The table of :func:`run_plain`."""
    m, runs = result["machine"], result["runs"]
    walls = sorted(r["wall_s"] for r in runs)
    lines = [
        f"# `aquamvs reconstruct`, plain runs ({Path(result['survey']).name}, CPU)",
        "",
        f"Made by `benchmarks/frame_profile.py plain` on {result['date']} (commit {result['commit']}): "
        f"`aquamvs reconstruct CALIBRATION VIDEOS OUT --preset {result['preset']} --frames {result['frames']}` "
        f"on `{result['survey']}`, as the user runs it (no profiling hooks), each run from an empty output "
        "folder, timed by the kernel (`wait4`). The survey was generated beforehand and is not timed.",
        f"Machine: **{m['cpu']}**, {m['cores']} cores, {m['memory_gb']} GB, no GPU (GPU: not measured), "
        "shared with other users (load averages below); the project's defaults (pair workers: the cores, "
        "one torch thread each).",
        *_shape_line(runs),
        "",
        "| run | wall s | user s | sys s | peak RSS MB | load (1 min) |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r['wall_s']:.1f} | {r['user_s']:.0f} | {r['sys_s']:.0f} | {r['max_rss_mb']} | "
            f"{r['load_before'][0]:.2f} → {r['load_after'][0]:.2f} |"
        )
    median = statistics.median(walls)
    peak = max(r["max_rss_mb"] for r in runs)
    lines += ["", f"**Median wall time: {median:.1f} s; highest peak RSS: {peak} MB.**"]
    if any("quality" in r for r in runs):
        lines += [
            "",
            "Accuracy of the first run's output (fused cloud and mesh against the ground truth, cells seen by "
            f"≥ 2 cameras): {_quality(result)}.",
        ]
    return "\n".join(lines) + "\n"


def _commit(code: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(code), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return (code / "COMMIT").read_text().strip() if (code / "COMMIT").is_file() else "unknown"


def score(code: Path, store: Path, ground_truth: Path, frames: str, preset: str) -> dict:
    """The frame's quality report (cloud and mesh against the ground truth), in a separate process
    of the profiled code, outside the timing."""
    frame = int(frames.split(",")[0])
    script = (
        "import json, sys\n"
        "from aquamvs_core.config import build_config\n"
        "from aquamvs_core.evaluation.quality import quality_report\n"
        "from aquamvs_core.store import SurveyStore\n"
        f"r = quality_report(SurveyStore({str(store)!r}, read_only=True), 'f{frame:06d}', {str(ground_truth)!r}, "
        f"build_config({preset!r}))\n"
        "print('QUALITY' + json.dumps({k: v for k, v in r.items() if isinstance(v, (int, float, bool))}))\n"
    )
    return _printed_json(code, script, "QUALITY")


def frame_shape(code: Path, store: Path) -> dict:
    """What the run reconstructed, read from its store in a process of the profiled code: the
    cameras, their image size (width, height) and the directed pairs whose geometry it stored."""
    script = (
        "import json\n"
        "from aquamvs_core.store import SurveyStore\n"
        f"s = SurveyStore({str(store)!r}, read_only=True)\n"
        "rig = s.read_rig()\n"
        "print('SHAPE' + json.dumps({'cameras': len(rig.camera_names), 'image_size': list(rig.image_size), "
        "'pairs': len(s.pair_keys())}))\n"
    )
    return _printed_json(code, script, "SHAPE")


def _printed_json(code: Path, script: str, tag: str) -> dict:
    """Run ``script`` in a process of the checkout ``code``; the JSON it prints after ``tag``."""
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=code,
        env=dict(os.environ, PYTHONPATH=str(code)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.split(tag, 1)[1])


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


#: Row groups of the summary tables: (group, test on the row name).
GROUPS = (
    ("start-up: process, imports", lambda n: n.startswith(("process start", "import"))),
    (
        "Dagster: instance, definitions, runs (own work)",
        lambda n: n.startswith(("instance", "definitions", "dagster run")),
    ),
    ("CLI and survey opening", lambda n: n.startswith(("cli", "survey"))),
    (
        "ingestion: decode, undistortion maps and images",
        lambda n: n.startswith(("decode", "undistort", "step: ingest", "step: write calibration")),
    ),
    ("store: open, reads", lambda n: n in ("store: read", "store: open")),
    ("store: writes", lambda n: n == "store: write"),
    ("sparse matches", lambda n: n in ("step: sparse_matches", "step: match_frame_pairs")),
    ("sparse cloud", lambda n: n == "step: sparse_cloud"),
    (
        "pairwise depths (plane sweep)",
        lambda n: n in ("step: pairwise_depths", "step: sweep_frame_pairs", "step: roma_pairwise_depths"),
    ),
    ("camera depths", lambda n: n == "step: camera_depths"),
    ("fusion", lambda n: n == "step: fused_cloud"),
    ("mesh", lambda n: n == "step: mesh"),
    ("heightfield", lambda n: n == "step: heightfield"),
    # One row: the cloud, mesh and heightfield files are written side by side since 2026-12-04
    # (export_frames; its threads' spans are listed apart, in thread-seconds).
    (
        "export (cloud, mesh, heightfield, change files)",
        lambda n: (
            n
            in (
                "step: export_frames",
                "step: export_frame",
                "step: export_heightfield",
                "step: export_changes",
            )
        ),
    ),
    ("teardown", lambda n: n.startswith("teardown")),
)


def grouped(run: dict) -> list[dict]:
    """The run's rows summed by :data:`GROUPS` (self times: store I/O is its own group)."""
    out = []
    for group, test in GROUPS:
        rows = [r for r in run["rows"] if test(r["name"])]
        seconds = sum(r["seconds"] for r in rows)
        peak = max((r["peak_rss_mb"] for r in rows), default=0.0)
        out.append({"name": group, "seconds": seconds, "share": seconds / run["wall_s"], "peak_rss_mb": peak})
    return out


def _median_run(result: dict) -> dict:
    """The run of median wall time (of an even number, the faster of the middle two)."""
    runs = sorted(result["runs"], key=lambda r: r["wall_s"])
    return runs[(len(runs) - 1) // 2]


def _table(result: dict) -> list[str]:
    run = _median_run(result)
    lines = ["| part | seconds | share | calls | peak RSS MB |", "|---|---|---|---|---|"]
    for r in run["rows"]:
        if r["seconds"] < 0.005 and r["calls"] < 2:
            continue
        lines.append(
            f"| {r['name']} | {r['seconds']:.2f} | {100 * r['share']:.1f} % | {r['calls']} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    lines.append(
        f"| **whole process** | **{run['wall_s']:.1f}** | 100 % | | **{run['max_rss_mb']}** (kernel peak) |"
    )
    for r in run.get("worker_rows", []):  # inside the rows above: worker threads, side by side
        lines.append(
            f"| in worker threads: {r['name']} | {r['thread_seconds']:.2f} thread-s | | {r['calls']} | |"
        )
    return lines


def _top(result: dict, n: int = 5) -> list[str]:
    run = _median_run(result)
    rows = sorted(run["rows"], key=lambda r: -r["seconds"])[:n]
    return [
        f"{i}. {r['name']}: {r['seconds']:.1f} s ({100 * r['share']:.0f} %)" for i, r in enumerate(rows, 1)
    ]


def _runs_line(result: dict) -> str:
    parts = [
        f"{r['wall_s']:.1f} s (load {r['load_before'][0]:.2f} → {r['load_after'][0]:.2f}, user {r['user_s']:.0f} s, "
        f"sys {r['sys_s']:.0f} s)"
        for r in result["runs"]
    ]
    return "; ".join(parts)


def _shape_line(runs: list[dict]) -> list[str]:
    """The frame's cameras, image size and directed pairs, from the first run's store (if read)."""
    shape = next((r["shape"] for r in runs if "shape" in r), None)
    if not shape:
        return []
    width, height = shape["image_size"]
    return [
        f"Frame: {shape['cameras']} cameras at {width}×{height}, {shape['pairs']} directed pairs "
        "(the pair geometry in the first run's store)."
    ]


def _quality(result: dict) -> str:
    q = next((r["quality"] for r in result["runs"] if "quality" in r), None)
    if not q:
        return "not scored"
    return (
        f"cloud median {q['cloud_median_abs_error_mm']:.3f} mm, p90 {q['cloud_p90_abs_error_mm']:.3f} mm, "
        f"completeness {100 * q['cloud_completeness']:.1f} %; mesh median {q['mesh_median_abs_error_mm']:.3f} mm, "
        f"completeness {100 * q['mesh_completeness']:.1f} %"
    )


def _pairs(run: dict) -> int:
    """Pairs swept: the calls of the pair step, in the main thread or in the pair workers."""
    rows = [*run["rows"], *run.get("worker_rows", [])]
    return next((r["calls"] for r in rows if r["name"].endswith("step: pairwise_depths")), 0)


def _header(result: dict, what: str) -> list[str]:
    m = result["machine"]
    return [
        f"One `aquamvs reconstruct CALIBRATION VIDEOS OUT --preset {result['preset']} --frames {result['frames']}` "
        f"process on {what}, profiled by [`benchmarks/frame_profile.py`](../frame_profile.py): timing hooks "
        "around the CLI, the Dagster runner, the steps, the store, the survey and the undistorter; each row is "
        "a *self* time (store I/O inside a step is counted as store I/O), so the rows add up to the process's "
        "wall time. Peak RSS: the highest resident memory sampled (20 ms) during the part; the whole-process "
        "peak is the kernel's. The survey was generated beforehand and is not timed.",
        f"Machine: **{m['cpu']}**, {m['cores']} cores, {m['memory_gb']} GB, no GPU (GPU: not measured), shared "
        "with other users: the load averages of every run are given. torch 1 thread (the project's default) "
        "unless a run's settings say otherwise (`torch_threads`: matching and plane sweep; `fusion.threads`).",
    ]


def interleaved(args: argparse.Namespace) -> tuple[dict, dict]:
    """``args.rounds`` rounds of one 'before' run (``args.before_code``) then one 'after' run (this
    checkout), so that both sides see the same drift of a shared host; writes both JSON files."""
    sides = {
        "before": (str(Path(args.before_code).resolve()), args.before_json),
        "after": (None, args.after_json),
    }
    results: dict[str, dict] = {}
    for _ in range(args.rounds):
        for side, (code, _) in sides.items():
            one = argparse.Namespace(
                survey=args.survey,
                preset=args.preset,
                frames=args.frames,
                repeat=1,
                code=code,
                label=f"{side}: {_commit(Path(code) if code else ROOT)}",
                pair_neighbours=None,
                config=None,
                json=None,
            )
            res = run_profile(one)
            if side in results:
                results[side]["runs"] += res["runs"]
            else:
                results[side] = {
                    **res,
                    "order": "interleaved with the other side: before, after, before, after",
                }
    for side, (_, path) in sides.items():
        Path(path).write_text(json.dumps(results[side], indent=1))
    return results["before"], results["after"]


def render(before: dict, after: dict) -> str:
    rb, ra = _median_run(before), _median_run(after)
    gb, ga = grouped(rb), grouped(ra)
    summary = [
        "| part | before s | after s | before peak RSS MB | after peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for x, y in zip(gb, ga, strict=True):
        if x["seconds"] < 0.005 and y["seconds"] < 0.005:
            continue
        summary.append(
            f"| {x['name']} | {x['seconds']:.1f} | {y['seconds']:.1f} | {x['peak_rss_mb']:.0f} | "
            f"{y['peak_rss_mb']:.0f} |"
        )
    summary.append(
        f"| **whole process (wall)** | **{rb['wall_s']:.1f}** | **{ra['wall_s']:.1f}** | "
        f"**{rb['max_rss_mb']}** | **{ra['max_rss_mb']}** |"
    )
    summary.append(
        f"| user + sys CPU | {rb['user_s'] + rb['sys_s']:.0f} | {ra['user_s'] + ra['sys_s']:.0f} | | |"
    )

    def top(groups: list[dict]) -> list[str]:
        best = sorted(groups, key=lambda g: -g["seconds"])[:5]
        return [
            f"{i}. {g['name']}: {g['seconds']:.1f} s ({100 * g['share']:.0f} %)"
            for i, g in enumerate(best, 1)
        ]

    return "\n".join(
        [
            "# Whole-frame profile of `aquamvs reconstruct` (CPU)",
            "",
            *_header(
                after,
                "the default demo survey (9 cameras: 8 ring + 1 fisheye auxiliary, 640×480, "
                f"{_pairs(ra)} directed pairs)"
                if Path(after["survey"]).name == "demo"
                else f"a synthetic survey at `{after['survey']}` ({_pairs(ra)} directed pairs)",
            ),
            "",
            f"- **Before:** {before['label']} (commit {before['commit']}), {before['date']}. Runs: {_runs_line(before)}.",
            f"- **After:** {after['label']} (commit {after['commit']}), {after['date']}. Runs: {_runs_line(after)}.",
            "- Tables: the median run of each (of two, the faster).",
            *([f"- Order of the runs: {before['order']}."] if before.get("order") else []),
            "",
            *summary,
            "",
            "Top bottlenecks before:",
            "",
            *top(gb),
            "",
            "Top bottlenecks after:",
            "",
            *top(ga),
            "",
            "Accuracy of the output (fused cloud and mesh against the ground truth, cells seen by ≥ 2 cameras):",
            "",
            f"- before: {_quality(before)}",
            f"- after: {_quality(after)}",
            "",
            "## Every part, after",
            "",
            *_table(after),
            "",
            "## Every part, before",
            "",
            *_table(before),
            "",
        ]
    )


def _flat(tree: dict) -> dict:
    """``{"fusion": {"threads": 2}}`` → ``{"fusion.threads": 2}``."""
    import pandas as pd

    return pd.json_normalize(tree).to_dict("records")[0] if tree else {}


def _settings(result: dict) -> str:
    """The run's configuration overrides, as ``a=1 b.c=2`` (empty: the preset as it is)."""
    return " ".join(f"{k}={v}" for k, v in result.get("config", {}).items())


def render_rig(results: list[dict], title: str) -> str:
    runs = [_median_run(r) for r in results]
    names = [
        f"{_pairs(r)} pairs, {res['commit']}" + (f", {_settings(res)}" if _settings(res) else "")
        for r, res in zip(runs, results, strict=True)
    ]
    head = "| part | " + " | ".join(f"{name}: s | peak RSS MB" for name in names) + " |"
    lines = [head, "|---|" + "---|---|" * len(runs)]
    groups = [grouped(r) for r in runs]
    for i, (name, _) in enumerate(GROUPS):
        cells = [(g[i]["seconds"], g[i]["peak_rss_mb"]) for g in groups]
        if all(c[0] < 0.005 for c in cells):
            continue
        lines.append(f"| {name} | " + " | ".join(f"{sec:.1f} | {rss:.0f}" for sec, rss in cells) + " |")
    lines.append(
        "| **whole process (wall)** | "
        + " | ".join(f"**{r['wall_s']:.1f}** | **{r['max_rss_mb']}**" for r in runs)
        + " |"
    )
    return "\n".join(
        [
            f"# {title}",
            "",
            *_header(results[0], f"a synthetic survey at `{results[0]['survey']}`"),
            "",
            *[
                f"- {name} ({res.get('pair_neighbours', 4)} neighbours a camera), "
                f"{res['date']}: runs {_runs_line(res)}; accuracy: {_quality(res)}."
                for name, r, res in zip(names, runs, results, strict=True)
            ],
            "",
            *lines,
            "",
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("child")
    c.add_argument("--trace", required=True)
    c.add_argument("--pair-neighbours", type=int, default=None)
    c.add_argument("argv", nargs=argparse.REMAINDER)
    r = sub.add_parser("run")
    r.add_argument("--survey", default=str(ROOT / ".data" / "demo"))
    r.add_argument("--preset", default="balanced")
    r.add_argument("--frames", default="0")
    r.add_argument("--repeat", type=int, default=1)
    r.add_argument("--code", default=None, help="checkout to profile (default: this one)")
    r.add_argument("--label", default="this checkout")
    r.add_argument(
        "--pair-neighbours", type=int, default=None, help="stereo neighbours per camera (default 4)"
    )
    r.add_argument("--config", default=None, help="YAML of configuration overrides (reconstruct --config)")
    r.add_argument("--json", default=None)
    b = sub.add_parser("ab", help="before and after interleaved (B A B A ...), then render")
    b.add_argument("--before-code", required=True, help="checkout of the 'before' commit")
    b.add_argument("--survey", default=str(ROOT / ".data" / "demo"))
    b.add_argument("--preset", default="balanced")
    b.add_argument("--frames", default="0")
    b.add_argument("--rounds", type=int, default=2)
    b.add_argument(
        "--before-json", default=str(ROOT / "benchmarks" / "results" / "frame_profile_before.json")
    )
    b.add_argument("--after-json", default=str(ROOT / "benchmarks" / "results" / "frame_profile_after.json"))
    b.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "frame_profile_cpu.md"))
    d = sub.add_parser("render")
    d.add_argument("--before", required=True)
    d.add_argument("--after", required=True)
    d.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "frame_profile_cpu.md"))
    pl = sub.add_parser("plain", help="the real CLI without hooks, several runs, kernel-timed")
    pl.add_argument("--survey", default=str(ROOT / ".data" / "demo"))
    pl.add_argument("--preset", default="balanced")
    pl.add_argument("--frames", default="0")
    pl.add_argument("--repeat", type=int, default=2)
    pl.add_argument("--out", required=True, help="markdown table (a .json beside it)")
    g = sub.add_parser("render-rig")
    g.add_argument("runs", nargs="+", help="JSON results of `run` (e.g. two pair counts)")
    g.add_argument("--title", default="One frame at the real rig's size, CPU")
    g.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.mode == "child":
        argv = args.argv[1:] if args.argv and args.argv[0] == "--" else args.argv
        return child(args.trace, argv, args.pair_neighbours)
    if args.mode == "run":
        result = run_profile(args)
        print("\n".join(_table(result)))
        return 0
    if args.mode == "plain":
        result = run_plain(args)
        Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=1))
        text = render_plain(result)
        Path(args.out).write_text(text)
        print(text)
        return 0
    if args.mode == "ab":
        before, after = interleaved(args)
        text = render(before, after)
        Path(args.out).write_text(text)
        print(text)
        return 0
    if args.mode == "render-rig":
        text = render_rig([json.loads(Path(p).read_text()) for p in args.runs], args.title)
    else:
        text = render(json.loads(Path(args.before).read_text()), json.loads(Path(args.after).read_text()))
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
