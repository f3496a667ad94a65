"""Jobs: the main ingestion job (calibration + frames, per frame partition)."""

from __future__ import annotations

import dagster as dg

from aquamvs_assets.assets.ingestion import frames, survey_calibration

INGEST_JOB = "ingest"

ingest_job = dg.define_asset_job(
    INGEST_JOB,
    selection=dg.AssetSelection.assets(survey_calibration, frames),
    description="Register the calibration and ingest (decode, undistort, store) survey frames.",
)

frames_job = dg.define_asset_job(
    "ingest_frames",
    selection=dg.AssetSelection.assets(frames),
    description="Ingest survey frames only (the calibration is already in the store).",
)

#: Reconstruction stages in order; each is one job (a job's assets share one partitioning).
RECONSTRUCTION_STAGES: list[tuple[str, list[str], bool]] = [
    # (job name, asset keys, partitioned by frame × pair)
    ("reconstruct_sparse_matches", ["sparse_matches"], True),
    ("reconstruct_sparse_cloud", ["sparse_cloud"], False),
    ("reconstruct_pairwise_depths", ["pairwise_depths"], True),
    ("reconstruct_surface", ["camera_depths", "fused_cloud", "mesh"], False),
]

reconstruction_jobs = [
    dg.define_asset_job(
        name, selection=dg.AssetSelection.assets(*keys), description=f"Reconstruction: {', '.join(keys)}"
    )
    for name, keys, _ in RECONSTRUCTION_STAGES
]
