"""Jobs of one survey, built from the one registry of stages (:data:`aquamvs_core.steps.STAGES`).

* ``calibration``: the calibration and the camera pairs' geometry (unpartitioned);
* ``ingest_frames``: the undistorted frames (what the new-frames sensor requests);
* ``reconstruct``: a frame's whole chain, from its frames to its mesh. Every asset of the chain is
  partitioned by frame, so one run per frame materializes them all in one process.
"""

from __future__ import annotations

import dagster as dg

from aquamvs_assets.partitions import SurveyNamespace
from aquamvs_core.steps import STAGES

CALIBRATION_JOB = "calibration"
FRAMES_JOB = "ingest_frames"
RECONSTRUCT_JOB = "reconstruct"


def reconstruction_asset_keys(ns: SurveyNamespace) -> list[dg.AssetKey]:
    """The frame-partitioned assets of the reconstruction chain, in data-flow order."""
    return [ns.key("frames"), *(ns.key(stage.name) for stage in STAGES)]


def build_jobs(
    ns: SurveyNamespace,
    extra_frame_assets: list[dg.AssetKey] | None = None,
    retry_policy: dg.RetryPolicy | None = None,
) -> list[dg.UnresolvedAssetJobDefinition]:
    """The survey's jobs; ``extra_frame_assets`` are frame-partitioned assets downstream of the mesh
    that the ``reconstruct`` job also materializes; ``retry_policy`` applies to every step."""
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
            partitions_def=ns.frames,
            op_retry_policy=retry_policy,
            description="Decode, undistort and store survey frames (the calibration must be stored).",
        ),
        dg.define_asset_job(
            RECONSTRUCT_JOB,
            selection=dg.AssetSelection.assets(*reconstruction_asset_keys(ns), *(extra_frame_assets or [])),
            partitions_def=ns.frames,
            op_retry_policy=retry_policy,
            description="A frame's whole chain: frames, sparse matches and cloud, pairwise and camera "
            "depths, fused cloud, mesh.",
        ),
    ]
