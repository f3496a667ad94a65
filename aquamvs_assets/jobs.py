"""Jobs of one survey, built from the one registry of stages (:data:`aquamvs_core.steps.STAGES`).

* ``calibration``: the calibration and the camera pairs' geometry (unpartitioned);
* ``ingest_frames``: the undistorted frames (what the new-frames sensor requests);
* ``reconstruct``: a frame's whole chain, from its frames to its mesh, heightfield and bed change.
  Every asset of the chain is partitioned by frame, so one run per frame materializes them all in
  one process;
* ``summarize_changes``: the change table over all frames (unpartitioned).
"""

from __future__ import annotations

import dagster as dg

from aquamvs_assets.partitions import SurveyNamespace
from aquamvs_core.steps import BED_CHANGE_STAGE, STAGES

CALIBRATION_JOB = "calibration"
FRAMES_JOB = "ingest_frames"
RECONSTRUCT_JOB = "reconstruct"
CHANGE_SUMMARY_JOB = "summarize_changes"


def reconstruction_asset_keys(ns: SurveyNamespace) -> list[dg.AssetKey]:
    """The frame-partitioned assets of the reconstruction chain, in data-flow order (the bed change
    last: it compares the frame's heightfield with earlier frames')."""
    return [ns.key("frames"), *(ns.key(stage.name) for stage in (*STAGES, BED_CHANGE_STAGE))]


def build_jobs(
    ns: SurveyNamespace, retry_policy: dg.RetryPolicy | None = None
) -> list[dg.UnresolvedAssetJobDefinition]:
    """The survey's jobs; ``retry_policy`` applies to every step."""
    return [
        dg.define_asset_job(
            CALIBRATION_JOB,
            selection=dg.AssetSelection.assets(ns.key("survey_calibration"), ns.key("camera_pair_geometry")),
            op_retry_policy=retry_policy,
            description="Validate and store the calibration (undistorted intrinsics, validity masks) and "
            "the camera pairs' geometry.",
        ),
        dg.define_asset_job(
            FRAMES_JOB,
            selection=dg.AssetSelection.assets(ns.key("frames")),
            op_retry_policy=retry_policy,
            description="Decode, undistort and store survey frames (the calibration must be stored).",
        ),
        dg.define_asset_job(
            RECONSTRUCT_JOB,
            selection=dg.AssetSelection.assets(*reconstruction_asset_keys(ns)),
            op_retry_policy=retry_policy,
            description="A frame's whole chain: frames, sparse matches and cloud, pairwise and camera "
            "depths, fused cloud, mesh, heightfield, bed change.",
        ),
        dg.define_asset_job(
            CHANGE_SUMMARY_JOB,
            selection=dg.AssetSelection.assets(ns.key("change_summary")),
            op_retry_policy=retry_policy,
            description="The change table and volume charts over the survey's frames.",
        ),
    ]
