"""Jobs: ingestion (calibration + frames) and the reconstruction jobs, built from the one registry
of stages (:data:`aquamvs_core.steps.STAGES`). A Dagster job's assets share one partitioning, so
consecutive stages with the same partitioning (frame, or frame × pair) form one job."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

import dagster as dg

from aquamvs_core.steps import STAGES

INGEST_JOB = "ingest"

ingest_job = dg.define_asset_job(
    INGEST_JOB,
    selection=dg.AssetSelection.assets("survey_calibration", "frames"),
    description="Register the calibration and ingest (decode, undistort, store) survey frames.",
)

frames_job = dg.define_asset_job(
    "ingest_frames",
    selection=dg.AssetSelection.assets("frames"),
    description="Ingest survey frames only (the calibration is already in the store).",
)


@dataclass(frozen=True)
class StageJob:
    """A reconstruction job: consecutive stages that share a partitioning."""

    name: str
    assets: tuple[str, ...]
    per_pair: bool  # partitioned by frame × pair


def _stage_jobs() -> list[StageJob]:
    jobs = []
    for per_pair, group in groupby(STAGES, key=lambda s: s.per_pair):
        names = tuple(s.name for s in group)
        suffix = names[0] if len(names) == 1 else f"{names[0]}_to_{names[-1]}"
        jobs.append(StageJob(f"reconstruct_{suffix}", names, per_pair))
    return jobs


#: The reconstruction jobs in data-flow order.
RECONSTRUCTION_JOBS: list[StageJob] = _stage_jobs()

reconstruction_jobs = [
    dg.define_asset_job(
        job.name,
        selection=dg.AssetSelection.assets(*job.assets),
        description=f"Reconstruction: {', '.join(job.assets)}",
    )
    for job in RECONSTRUCTION_JOBS
]
