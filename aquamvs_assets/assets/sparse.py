"""Sparse assets: ``sparse_matches`` [frame × pair] → ``sparse_cloud`` [frame]. Each calls one step of
:mod:`aquamvs_core.steps.sparse`, which reads its inputs from the store and writes its product.

A run may cover several partitions (single-run backfills): the steps loop over
``context.partition_keys``, sharing the loaded cameras, models and each frame's image features.
"""

import dagster as dg

from aquamvs_assets.metadata import profiled
from aquamvs_assets.partitions import frame_partitions
from aquamvs_assets.resources import ReconstructionSettings, ZarrStoreResource
from aquamvs_core import steps
from aquamvs_core.stages.pairs import CameraPair
from aquamvs_core.survey import split_frame_pair_key

GROUP = "reconstruction"
#: Per-(frame, pair) assets read their frame's per-frame upstreams, and vice versa, through this.
TO_FRAME = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="frame")


def frames_of(context: dg.AssetExecutionContext) -> list[str]:
    """The run's frame partition keys, in order, without repeats."""
    return list(dict.fromkeys(context.partition_keys))


def build_sparse_assets(
    pairs: list[CameraPair], frame_pairs: dg.MultiPartitionsDefinition
) -> list[dg.AssetsDefinition]:
    """``sparse_matches`` and ``sparse_cloud`` for one rig (its pairs)."""
    pair_of = {p.key: p for p in pairs}

    @dg.asset(
        partitions_def=frame_pairs,
        deps=[dg.AssetDep("frames", partition_mapping=TO_FRAME)],
        group_name=GROUP,
        kinds={"zarr"},
        backfill_policy=dg.BackfillPolicy.single_run(),
        automation_condition=dg.AutomationCondition.eager(),
        description="Keypoints and matches of a directed pair (SIFT or LightGlue), triangulated through "
        "the water with angle and reprojection filters.",
    )
    def sparse_matches(
        context: dg.AssetExecutionContext, store: ZarrStoreResource, reconstruction: ReconstructionSettings
    ) -> dg.MaterializeResult:
        survey_store, config = store.get(), reconstruction.config()
        with profiled(context, reconstruction.profile) as profile:
            cams = steps.StoreCameras.load(survey_store)
            model_cache: dict = {}
            features: dict = {}  # per-image features of the current frame, shared by its pairs
            current = None
            summaries = {}
            for key in sorted(context.partition_keys):
                frame, pair_key = split_frame_pair_key(key)
                if frame != current:
                    features, current = {}, frame
                summaries[key] = steps.sparse_matches_step(
                    survey_store, frame, pair_of[pair_key], config, cams, model_cache, features
                )
                context.log.info(f"{key}: {summaries[key]['kept']}/{summaries[key]['matches']} matches kept")
        last = summaries[context.partition_keys[-1]]
        return dg.MaterializeResult(
            metadata={
                **profile,
                "partitions": len(summaries),
                "matches": last["matches"],
                "kept": last["kept"],
                "median_reprojection_px": last["median_reprojection_px"],
                "matcher": config.matching.method,
            }
        )

    @dg.asset(
        partitions_def=frame_partitions,
        deps=[dg.AssetDep(sparse_matches, partition_mapping=TO_FRAME)],
        group_name=GROUP,
        kinds={"zarr"},
        automation_condition=dg.AutomationCondition.eager(),
        description="All kept sparse points of a frame, and each camera's depth search range.",
    )
    def sparse_cloud(
        context: dg.AssetExecutionContext, store: ZarrStoreResource, reconstruction: ReconstructionSettings
    ) -> dg.MaterializeResult:
        survey_store, config = store.get(), reconstruction.config()
        with profiled(context, reconstruction.profile) as profile:
            for frame in frames_of(context):
                summary = steps.sparse_cloud_step(survey_store, frame, pairs, config)
                context.log.info(f"{frame}: {summary['points']} sparse points")
        ranges = summary["depth_ranges"]
        return dg.MaterializeResult(
            metadata={
                **profile,
                "points": summary["points"],
                "depth_ranges": dg.MetadataValue.table(
                    [
                        dg.TableRecord(
                            {
                                "camera": c,
                                "z_min_m": round(r["z_min"], 4),
                                "z_max_m": round(r["z_max"], 4),
                                "source": r["source"],
                                "points": r["n_points"],
                            }
                        )
                        for c, r in ranges.items()
                    ],
                    schema=dg.TableSchema(
                        columns=[
                            dg.TableColumn("camera", "string"),
                            dg.TableColumn("z_min_m", "float"),
                            dg.TableColumn("z_max_m", "float"),
                            dg.TableColumn("source", "string"),
                            dg.TableColumn("points", "int"),
                        ]
                    ),
                ),
            }
        )

    return [sparse_matches, sparse_cloud]
