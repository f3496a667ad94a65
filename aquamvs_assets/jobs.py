"""Jobs: the main ingestion job (calibration + frames, per frame partition)."""

from __future__ import annotations

import dagster as dg

from aquamvs_assets.assets.ingestion import frames, survey_calibration
from aquamvs_assets.partitions import frame_partitions

INGEST_JOB = "ingest"

ingest_job = dg.define_asset_job(
    INGEST_JOB,
    selection=dg.AssetSelection.assets(survey_calibration, frames),
    partitions_def=frame_partitions,
    description="Register the calibration and ingest (decode, undistort, store) survey frames.",
)

frames_job = dg.define_asset_job(
    "ingest_frames",
    selection=dg.AssetSelection.assets(frames),
    partitions_def=frame_partitions,
    description="Ingest survey frames only (the calibration is already in the store).",
)
