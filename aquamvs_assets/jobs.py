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
