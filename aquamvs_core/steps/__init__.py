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
    heightfield/<frame>                  the bed on the survey grid: z, count, cameras, sigma
    bed_change/<frame>/<earlier>         dz = z_frame − z_earlier and its level of detection

In data-flow order: :mod:`.ingestion` (calibration, frames), :mod:`.sparse`, :mod:`.depth`,
:mod:`.surface`, :mod:`.change`, then the files of :mod:`.export`; :mod:`.common` holds the stage
registry (:data:`STAGES`) and what they share. The bed change is not in the registry: it needs two
frames (:data:`BED_CHANGE_STAGE`).
"""

from aquamvs_core.steps.change import (
    CHANGE_SUMMARY_TABLE,
    FrameChanges,
    bed_change_step,
    change_summary_step,
    compared_frames,
    export_changes,
    export_heightfield,
    heightfield_frames,
    heightfield_step,
    read_bed_change,
    read_heightfield,
    survey_grid,
)
from aquamvs_core.steps.common import (
    BED_CHANGE_STAGE,
    CODE_VERSIONS,
    DENSE_STAGES,
    STAGES,
    Stage,
    StoreCameras,
    data_version,
    dense_pairs,
    fingerprint,
    provenance,
)
from aquamvs_core.steps.depth import (
    PAIR_DEPTH_ARRAYS,
    camera_depth_maps,
    camera_depths_step,
    pair_workers,
    pairwise_depths_step,
    read_pair_depth,
    read_roma_pair_depth,
    roma_pairwise_depths_step,
    sweep_frame_pairs,
)
from aquamvs_core.steps.export import export_frames
from aquamvs_core.steps.ingestion import (
    IngestedFrame,
    ingest_frames,
    source_hash,
    verify_frames,
    write_calibration,
)
from aquamvs_core.steps.sparse import (
    depth_range,
    match_frame_pairs,
    match_workers,
    sparse_cloud_step,
    sparse_matches_step,
)
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
    "BED_CHANGE_STAGE",
    "CHANGE_SUMMARY_TABLE",
    "CODE_VERSIONS",
    "DENSE_STAGES",
    "PAIR_DEPTH_ARRAYS",
    "STAGES",
    "FrameChanges",
    "IngestedFrame",
    "Stage",
    "StoreCameras",
    "StoreViews",
    "arrays_to_mesh",
    "bed_change_step",
    "camera_depth_maps",
    "camera_depths_step",
    "change_summary_step",
    "compared_frames",
    "data_version",
    "dense_pairs",
    "depth_range",
    "export_changes",
    "export_frame",
    "export_frames",
    "export_heightfield",
    "fingerprint",
    "fuse_frame",
    "fused_cloud_step",
    "heightfield_frames",
    "heightfield_step",
    "ingest_frames",
    "match_frame_pairs",
    "match_workers",
    "mesh_step",
    "mesh_to_arrays",
    "pair_workers",
    "pairwise_depths_step",
    "provenance",
    "read_bed_change",
    "read_cloud",
    "read_heightfield",
    "read_mesh",
    "read_pair_depth",
    "read_roma_pair_depth",
    "roma_pairwise_depths_step",
    "source_hash",
    "sparse_cloud_step",
    "sparse_matches_step",
    "survey_grid",
    "sweep_frame_pairs",
    "verify_frames",
    "write_calibration",
]
