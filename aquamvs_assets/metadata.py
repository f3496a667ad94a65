"""Materialization metadata helpers: PNG previews as markdown, pandas tables as table metadata,
and the per-asset stage profile (the ``profile`` run-config flag)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from aquamvs_core.evaluation.profiling import Profiler
from aquamvs_core.preview import encode_png

__all__ = ["png", "profiled", "table"]


def png(image: np.ndarray | bytes, alt: str = "preview") -> dg.MetadataValue:
    """An (H, W, 3) uint8 RGB image (or encoded PNG bytes) as inline markdown the UI shows."""
    data = image if isinstance(image, bytes) else encode_png(image)
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})")


def table(frame: pd.DataFrame) -> dg.MetadataValue:
    """A pandas table as Dagster table metadata (text columns as strings, the others as floats)."""
    columns = [dg.TableColumn(c, "string" if frame[c].dtype == object else "float") for c in frame.columns]
    records = [
        dg.TableRecord({k: (v if isinstance(v, str) else float(v)) for k, v in row.items()})
        for row in frame.to_dict("records")
    ]
    return dg.MetadataValue.table(records, schema=dg.TableSchema(columns=columns))


@contextmanager
def profiled(context: dg.AssetExecutionContext, enabled: bool) -> Iterator[dict[str, Any]]:
    """Profile the block as the asset's stage when ``enabled``. The yielded dict is filled, when the
    block ends, with ``profile_*`` metadata (seconds, MB), which is also logged; it stays empty
    when profiling is off."""
    metadata: dict[str, Any] = {}
    if not enabled:
        yield metadata
        return
    profiler = Profiler()
    with profiler.stage(context.asset_key.to_user_string()):
        yield metadata
    r = profiler.records[-1]
    context.log.info(
        f"profile: wall {r.wall_s:.2f} s, CPU {r.cpu_s:.2f} s, peak RSS {r.peak_rss_mb:.0f} MB"
        + (f", CUDA {r.cuda_s:.2f} s / {r.cuda_peak_mb:.0f} MB" if r.cuda_s is not None else "")
    )
    metadata.update(
        profile_wall_s=round(r.wall_s, 3),
        profile_cpu_s=round(r.cpu_s, 3),
        profile_peak_rss_mb=round(r.peak_rss_mb, 1),
    )
    if r.cuda_s is not None:
        metadata.update(profile_cuda_s=round(r.cuda_s, 3), profile_cuda_peak_mb=round(r.cuda_peak_mb, 1))
