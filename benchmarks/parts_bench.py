"""Parts of a frame, each old way against new way on the same inputs, in one process, interleaved.

Usage (from the repository root, on a store that a ``reconstruct`` of the survey left behind)::

    python benchmarks/parts_bench.py STORE [--rounds 3] [--out benchmarks/results/parts_rig1600_cpu.md]

STORE: e.g. ``OUT/.aquamvs/store.zarr`` of ``aquamvs reconstruct CALIBRATION VIDEOS OUT``. Parts:

- **lens grid**: a camera's whole-image lens inverse (:meth:`PixelInverse._solve_grid`) solved at
  once against in bands of rows (``lens._GRID_BAND``); the values must be equal.
- **camera depth combination**: one camera's pair depths combined in one band against bands of rows
  (``combine._COMBINE_BAND``); the maps must be equal.
- **hole filling between pyramid levels**: the pairs' stored world-Z maps at level 1 (2 × 2
  means: NaN outside the pair's overlap), filled 6 times (what the sweep does for a 9-pixel window)
  on the whole map at every iteration against only on the finite region's front
  (:func:`~aquamvs_core.stages.stereo.refine.fill_nan`); the maps must be equal.
- **plane sweep**: pairs of the frame with ``plane_step_px=None`` (always ``num_depths`` planes)
  against the default (as many planes as the range needs), two pairs at once in two threads as a
  ``reconstruct`` runs them; the depths are compared (median and p99 of |ΔZ| where both are valid).

Each round runs old then new (then the next round), torch with one thread (the project's default).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aquamvs_core.camera import lens as lens_module  # noqa: E402
from aquamvs_core.config import build_config  # noqa: E402
from aquamvs_core.runtime import map_in_threads  # noqa: E402
from aquamvs_core.stages.pairs import CameraPair  # noqa: E402
from aquamvs_core.stages.stereo import combine as combine_module  # noqa: E402
from aquamvs_core.stages.stereo.plane_sweep import sweep_pair  # noqa: E402
from aquamvs_core.stages.stereo.refine import fill_nan, smooth_surface  # noqa: E402
from aquamvs_core.steps.common import StoreCameras  # noqa: E402
from aquamvs_core.steps.depth import frame_views, read_pair_depth  # noqa: E402
from aquamvs_core.steps.sparse import depth_range  # noqa: E402
from aquamvs_core.store import SurveyStore  # noqa: E402
from aquamvs_core.survey import Product, product_path  # noqa: E402


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(
        torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
    )


def lens_grid(cams: StoreCameras, rounds: int) -> dict:
    inverse = next((c._inverse for c in cams.cameras.values() if c._inverse is not None), None)
    if inverse is None:
        return {"skipped": "no camera on its original grid (no lens inverse)"}
    w, h = inverse.image_size
    times: dict[str, list[float]] = {"old": [], "new": []}
    banded = lens_module._GRID_BAND
    grids = {}
    for _ in range(rounds):
        for side, band in (("old", w * h), ("new", banded)):
            lens_module._GRID_BAND = band
            t = time.perf_counter()
            grids[side] = inverse._solve_grid(torch.device("cpu"))
            times[side].append(time.perf_counter() - t)
    lens_module._GRID_BAND = banded
    return {"times": times, "same": _same(grids["old"], grids["new"]), "size": f"{w}×{h}"}


def combination(store: SurveyStore, frame: str, camera: str, rounds: int) -> dict:
    keys = [
        k
        for k in store.list_products(product_path(Product.PAIRWISE_DEPTHS, frame))
        if k.startswith(f"{camera}-")
    ]
    pairs = [read_pair_depth(store, frame, CameraPair(*k.split("-", 1))) for k in keys]
    config = build_config(preset="balanced").plane_sweep
    banded = combine_module._COMBINE_BAND
    times: dict[str, list[float]] = {"old": [], "new": []}
    out = {}
    for _ in range(rounds):
        for side, band in (("old", 1 << 62), ("new", banded)):
            combine_module._COMBINE_BAND = band
            t = time.perf_counter()
            out[side] = combine_module.combine_pair_depths(pairs, config)
            times[side].append(time.perf_counter() - t)
    combine_module._COMBINE_BAND = banded
    same = all(
        _same(getattr(out["old"], k).float(), getattr(out["new"], k).float())
        for k in ("depth", "confidence", "support")
    )
    return {"times": times, "same": same, "pairs": len(pairs), "camera": camera}


def _whole_map_fill(z: torch.Tensor, iterations: int) -> torch.Tensor:
    """The hole filling as it was: every iteration on the whole map."""
    for _ in range(iterations):
        finite = torch.isfinite(z)
        if bool(finite.all()) or not bool(finite.any()):
            break
        z = torch.where(finite, z, smooth_surface(z, 3))
    return z


def hole_filling(store: SurveyStore, frame: str, rounds: int, n_maps: int, iterations: int = 6) -> dict:
    keys = sorted(store.list_products(product_path(Product.PAIRWISE_DEPTHS, frame)))[:n_maps]
    maps = []
    for key in keys:
        z = torch.from_numpy(store.read_product(product_path(Product.PAIRWISE_DEPTHS, frame, key))["world_z"])
        maps.append(torch.nn.functional.avg_pool2d(z[None, None], 2)[0, 0])
    times: dict[str, list[float]] = {"old": [], "new": []}
    same = True
    for _ in range(rounds):
        for side, fill in (("old", _whole_map_fill), ("new", fill_nan)):
            t = time.perf_counter()
            filled = [fill(z, iterations) for z in maps]
            times[side].append(time.perf_counter() - t)
            if side == "old":
                reference = filled
        same &= all(_same(a, b) for a, b in zip(reference, filled, strict=True))
    holes = statistics.mean(float(torch.isnan(z).float().mean()) for z in maps)
    size = f"{maps[0].shape[1]}×{maps[0].shape[0]}"
    return {"times": times, "same": same, "maps": len(maps), "holes": holes, "size": size}


def sweep(store: SurveyStore, frame: str, cams: StoreCameras, rounds: int, n_pairs: int) -> dict:
    config = build_config(preset="balanced")
    views = frame_views(store, frame, cams, config, budget_mb=4096)
    keys = sorted(store.list_products(product_path(Product.PAIRWISE_DEPTHS, frame)))[:n_pairs]
    pairs = [tuple(k.split("-", 1)) for k in keys]
    for ref, _ in pairs:  # first-use costs (lens grid, ray directions, views) outside the timing
        views.get(ref)
    for _, src in pairs:
        views.get(src)

    def run(step: float | None) -> tuple[float, list]:
        c = config.plane_sweep.model_copy(update={"plane_step_px": step})

        def one(p: tuple[str, str]):
            r, s = p
            return sweep_pair(
                views.get(r),
                views.get(s),
                cams.cameras[r],
                cams.cameras[s],
                config=c,
                z_range=depth_range(store, frame, r),
            )

        t = time.perf_counter()
        results = [x for _, x in map_in_threads(one, pairs, 2, in_order=True)]
        return time.perf_counter() - t, results

    run(config.plane_sweep.plane_step_px)  # warm-up: every camera's first-use costs
    times: dict[str, list[float]] = {"old": [], "new": []}
    out = {}
    for _ in range(rounds):
        for side, step in (("old", None), ("new", config.plane_sweep.plane_step_px)):
            seconds, out[side] = run(step)
            times[side].append(seconds)
    diffs, valid = [], {"old": 0.0, "new": 0.0}
    for a, b in zip(out["old"], out["new"], strict=True):
        both = a.valid & b.valid
        diffs.append((a.world_z - b.world_z)[both].abs().double() * 1e3)
        valid["old"] += float(a.valid.float().mean()) / len(pairs)
        valid["new"] += float(b.valid.float().mean()) / len(pairs)
    d = torch.cat(diffs)
    return {
        "times": times,
        "pairs": len(pairs),
        "planes": (out["old"][0].planes, sorted({r.planes for r in out["new"]})),
        "dz_median_mm": float(d.median()),
        "dz_p99_mm": float(torch.quantile(d[torch.randperm(d.numel())[: 1 << 22]], 0.99)),
        "valid": valid,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=6, help="pairs of the plane-sweep part")
    parser.add_argument("--out", default=None, help="markdown table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = SurveyStore(args.store, read_only=True)
    frame = store.list_frames()[0]
    cams = StoreCameras.load(store)
    load0 = os.getloadavg()[0]
    grid = lens_grid(cams, args.rounds)
    camera = sorted(cams.cameras)[0]
    comb = combination(store, frame, camera, args.rounds)
    fill = hole_filling(store, frame, args.rounds, args.pairs)
    sw = sweep(store, frame, cams, args.rounds, args.pairs)
    load1 = os.getloadavg()[0]

    def med(t: list[float]) -> str:
        return f"{statistics.median(t):.3f} s"

    rows = [
        "| part | old way | new way | old s (median) | new s (median) | result |",
        "|---|---|---|---|---|---|",
    ]
    if "times" in grid:
        rows.append(
            f"| lens grid, one camera ({grid['size']}) | whole image at once | bands of "
            f"{lens_module._GRID_BAND} pixels | {med(grid['times']['old'])} | {med(grid['times']['new'])} | "
            f"{'equal' if grid['same'] else '**differs**'} |"
        )
    rows.append(
        f"| camera depth combination, {comb['camera']} ({comb['pairs']} pairs) | one band | bands of "
        f"{combine_module._COMBINE_BAND} tests | {med(comb['times']['old'])} | {med(comb['times']['new'])} | "
        f"{'equal' if comb['same'] else '**differs**'} |"
    )
    rows.append(
        f"| hole filling, {fill['maps']} level-1 maps ({fill['size']}, {100 * fill['holes']:.0f} % missing), "
        f"6 iterations | whole map | the front | {med(fill['times']['old'])} | {med(fill['times']['new'])} | "
        f"{'equal' if fill['same'] else '**differs**'} |"
    )
    rows.append(
        f"| plane sweep, {sw['pairs']} pairs in 2 threads | {sw['planes'][0]} planes | "
        f"{'–'.join(map(str, (min(sw['planes'][1]), max(sw['planes'][1]))))} planes | {med(sw['times']['old'])} | "
        f"{med(sw['times']['new'])} | |ΔZ| median {sw['dz_median_mm']:.4f} mm, p99 {sw['dz_p99_mm']:.3f} mm; "
        f"valid {100 * sw['valid']['old']:.2f} → {100 * sw['valid']['new']:.2f} % |"
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip()
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        "",
    )
    text = "\n".join(
        [
            f"# Parts of a frame, old way against new way ({Path(args.store).resolve()})",
            "",
            f"Made by `benchmarks/parts_bench.py` on {stamp} (commit {commit}); {cpu}, {os.cpu_count()} cores, torch "
            f"1 thread; load (1 min) {load0:.2f} → {load1:.2f}; {args.rounds} rounds, each old then new, the "
            "same inputs in one process; every time is one call (the sweep: all its pairs), median over the rounds.",
            "",
            *rows,
            "",
            "All rounds (s): "
            + "; ".join(
                f"{name} old {', '.join(f'{t:.3f}' for t in part['times']['old'])} / new "
                f"{', '.join(f'{t:.3f}' for t in part['times']['new'])}"
                for name, part in (
                    ("lens grid", grid),
                    ("combination", comb),
                    ("hole filling", fill),
                    ("sweep", sw),
                )
                if "times" in part
            ),
            "",
        ]
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if not math.isfinite(sw["dz_median_mm"]):
        raise SystemExit("no pair had depths in both runs")


if __name__ == "__main__":
    main()
