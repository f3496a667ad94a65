"""Write and read time, and size, of the store's arrays under Zarr compressors.

What the store writes most at the real rig's size are 1600×1200 float32 maps (pairwise and camera
depths, confidences) and (N, 3) float64 point tables. This writes and reads each kind ``--repeat``
times into a local Zarr group with each codec (one chunk per map, as the store does) and reports
the median times and the bytes on disk. The maps are a smooth depth with 0.1 mm noise and 5 % NaN
holes, like a depth map; the points a (1M, 3) cloud on a bed. Single process; Blosc's own threads
as numcodecs sets them.

    python benchmarks/store_codec_bench.py [--repeat 7] [--out benchmarks/results/store_codec_cpu.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aquamvs_core.store.commit import STORE_COMPRESSORS  # noqa: E402

CODECS = {
    "Zarr's default (zstd level 0)": "auto",
    "zstd level 1": (ZstdCodec(level=1),),
    "Blosc lz4, byte shuffle (the store's)": STORE_COMPRESSORS,
    "none": None,
}


def samples() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1200, 0:1600]
    depth = (0.5 + 1e-4 * xx + 5e-5 * yy + rng.normal(0, 1e-4, xx.shape)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.05] = np.nan
    xy = rng.uniform(-0.5, 0.5, (1 << 20, 2))
    points = np.column_stack([xy, 1.2 + 0.01 * np.sin(20 * xy[:, 0]) + rng.normal(0, 1e-4, len(xy))])
    return {"depth map 1600×1200 float32": depth, "points (1M, 3) float64": points}


def measure(data: np.ndarray, compressors, repeat: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        group = zarr.open_group(tmp, mode="w")
        writes, reads = [], []
        for i in range(repeat):
            t0 = time.perf_counter()
            group.create_array(f"a{i}", data=data, chunks=data.shape, overwrite=True, compressors=compressors)
            writes.append(time.perf_counter() - t0)
        for i in range(repeat):
            t0 = time.perf_counter()
            back = group[f"a{i}"][...]
            reads.append(time.perf_counter() - t0)
        np.testing.assert_array_equal(back, data)  # lossless
        size = sum(os.path.getsize(Path(d) / f) for d, _, fs in os.walk(tmp) for f in fs) / repeat
    return statistics.median(writes), statistics.median(reads), size


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "store_codec_cpu.md"))
    args = parser.parse_args()
    load = os.getloadavg()
    rows = []
    for kind, data in samples().items():
        for name, comp in CODECS.items():
            w, r, size = measure(data, comp, args.repeat)
            rows.append(
                f"| {kind} | {name} | {1e3 * w:.0f} | {1e3 * r:.0f} | {size / 1e6:.1f} | {100 * size / data.nbytes:.0f} % |"
            )
    lines = [
        f"# Store codecs: write, read, size ({time.strftime('%Y-%m-%d')})",
        "",
        f"Script: `benchmarks/store_codec_bench.py` (median of {args.repeat}; one chunk per array, local disk). "
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, shared; load (1 min) {load[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after; zarr {zarr.__version__}.",
        "",
        "| array | compressor | write ms | read ms | MB on disk | of raw |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
