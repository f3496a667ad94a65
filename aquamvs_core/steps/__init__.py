"""Store-level steps, one per asset: each reads its inputs from the survey's store, runs one stage
of :mod:`aquamvs_core.stages`, and writes one product (atomically) named after its asset. The
Dagster assets, the CLI and the Python API call these.

Products (under ``products/`` in the store; names: :class:`aquamvs_core.survey.Product`)::

    sparse_matches/<frame>/<ref>-<src>   matches and triangulated points of a pair (SparsePair arrays)
    sparse_cloud/<frame>                 kept points of all pairs; attrs: per-camera depth ranges
    pairwise_depths/<frame>/<ref>-<src>  depth of ref against src: PairDepth arrays (plane sweep) or
                                         WarpPairDepth arrays on the warp grid (pathway roma)
    camera_depths/<frame>/<camera>       a camera's combined depth: depth, confidence, support
    fused_cloud/<frame>                  fused cloud: points, colors, normals, support
    mesh/<frame>                         mesh: vertices, triangles, colors, normals

In data-flow order: :mod:`.ingestion` (calibration, frames), :mod:`.sparse`, :mod:`.depth`,
:mod:`.surface`; :mod:`.common` holds the stage registry (:data:`STAGES`) and what they share.
"""

from aquamvs_core.steps.common import DENSE_STAGES, STAGES, Stage, StoreCameras, dense_pairs, provenance
from aquamvs_core.steps.depth import (
    PAIR_DEPTH_ARRAYS,
    camera_depth_maps,
    camera_depths_step,
    pairwise_depths_step,
    read_pair_depth,
    read_roma_pair_depth,
    roma_pairwise_depths_step,
)
from aquamvs_core.steps.ingestion import IngestedFrame, ingest_frames, write_calibration
from aquamvs_core.steps.sparse import depth_range, sparse_cloud_step, sparse_matches_step
from aquamvs_core.steps.surface import (
    StoreViews,
    arrays_to_mesh,
    export_frame,
    fuse_frame,
    fused_cloud_step,
    mesh_step,
    mesh_to_arrays,
    read_cloud,
    read_mesh,
)

__all__ = [
    "DENSE_STAGES",
    "PAIR_DEPTH_ARRAYS",
    "STAGES",
    "IngestedFrame",
    "Stage",
    "StoreCameras",
    "StoreViews",
    "arrays_to_mesh",
    "camera_depth_maps",
    "camera_depths_step",
    "dense_pairs",
    "depth_range",
    "export_frame",
    "fuse_frame",
    "fused_cloud_step",
    "ingest_frames",
    "mesh_step",
    "mesh_to_arrays",
    "pairwise_depths_step",
    "provenance",
    "read_cloud",
    "read_mesh",
    "read_pair_depth",
    "read_roma_pair_depth",
    "roma_pairwise_depths_step",
    "sparse_cloud_step",
    "sparse_matches_step",
    "write_calibration",
]
