"""Dense depth assets: ``pairwise_depths`` [frame × pair] → ``camera_depths`` [frame]. Each calls one
step of :mod:`aquamvs_core.steps.depth`. ``pairwise_depths`` is in the ``gpu`` concurrency pool; on
the ``roma`` pathway it loads RoMa once for every partition of the run and disposes of it after."""

import dagster as dg

from aquamvs_assets.assets.sparse import GROUP, TO_FRAME, frames_of
from aquamvs_assets.metadata import profiled
from aquamvs_assets.partitions import frame_partitions
from aquamvs_assets.resources import ReconstructionSettings, RomaMatcher, ZarrStoreResource
from aquamvs_core import steps
from aquamvs_core.stages.pairs import CameraPair
from aquamvs_core.survey import split_frame_pair_key

#: Concurrency pool of the GPU-bound assets (limit 1 in dagster.yaml: one model per card).
GPU_POOL = "gpu"


def build_depth_assets(
    pairs: list[CameraPair], frame_pairs: dg.MultiPartitionsDefinition
) -> list[dg.AssetsDefinition]:
    """``pairwise_depths`` and ``camera_depths`` for one rig (its pairs)."""
    pair_of = {p.key: p for p in pairs}

    @dg.asset(
        partitions_def=frame_pairs,
        deps=[
            dg.AssetDep("frames", partition_mapping=TO_FRAME),
            dg.AssetDep("sparse_cloud", partition_mapping=TO_FRAME),
        ],
        group_name=GROUP,
        kinds={"zarr", "torch"},
        pool=GPU_POOL,
        backfill_policy=dg.BackfillPolicy.single_run(),
        automation_condition=dg.AutomationCondition.eager(),
        description="Depth and confidence of the reference camera of a pair: the refractive plane "
        "sweep, or (pathway roma) RoMa's dense warp triangulated through the water.",
    )
    def pairwise_depths(
        context: dg.AssetExecutionContext,
        store: ZarrStoreResource,
        reconstruction: ReconstructionSettings,
        roma: RomaMatcher,
    ) -> dg.MaterializeResult:
        survey_store, config = store.get(), reconstruction.config()
        with profiled(context, reconstruction.profile) as profile:
            cams = steps.StoreCameras.load(survey_store)
            chosen = {p.key for p in steps.dense_pairs(survey_store, pairs, config)}
            todo = []
            for key in context.partition_keys:
                frame, pair_key = split_frame_pair_key(key)
                if pair_key in chosen:
                    todo.append((key, frame, pair_of[pair_key]))
            summaries = {}

            def report(n: int, key: str, s: dict) -> None:
                context.log.info(
                    f"{key}: {s['valid_fraction']:.1%} with depth, {s['seconds']:.1f} s ({n}/{len(todo)})"
                )

            if config.pathway == "roma":
                with roma.session(context.log) as session:  # loaded once for every partition of the run
                    for n, (key, frame, pair) in enumerate(todo, start=1):
                        summaries[key] = steps.roma_pairwise_depths_step(
                            survey_store, frame, pair, config, session, session.settings, cams
                        )
                        report(n, key, summaries[key])
            else:
                for n, (key, frame, pair) in enumerate(todo, start=1):
                    summaries[key] = steps.pairwise_depths_step(survey_store, frame, pair, config, cams)
                    report(n, key, summaries[key])
        last = next(reversed(summaries.values()), {})
        return dg.MaterializeResult(
            metadata={
                **profile,
                "pathway": config.pathway,
                "partitions": len(summaries),
                "valid_fraction": last.get("valid_fraction"),
                "seconds": last.get("seconds"),
            }
        )

    @dg.asset(
        partitions_def=frame_partitions,
        deps=[dg.AssetDep(pairwise_depths, partition_mapping=TO_FRAME)],
        group_name=GROUP,
        kinds={"zarr"},
        automation_condition=dg.AutomationCondition.eager(),
        description="Each camera's depth, combining its pairs (robust agreement), with confidence.",
    )
    def camera_depths(
        context: dg.AssetExecutionContext, store: ZarrStoreResource, reconstruction: ReconstructionSettings
    ) -> dg.MaterializeResult:
        survey_store, config = store.get(), reconstruction.config()
        with profiled(context, reconstruction.profile) as profile:
            chosen = steps.dense_pairs(survey_store, pairs, config)
            for frame in frames_of(context):
                summary = steps.camera_depths_step(survey_store, frame, chosen, config)
        return dg.MaterializeResult(
            metadata={
                **profile,
                "cameras": len(summary),
                "valid_fraction": dg.MetadataValue.json({c: s["valid_fraction"] for c, s in summary.items()}),
            }
        )

    return [pairwise_depths, camera_depths]
