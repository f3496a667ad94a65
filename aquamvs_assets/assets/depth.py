"""Dense depth assets of one survey, per frame: ``pairwise_depths`` (every dense pair of the frame)
→ ``camera_depths``. Each calls steps of :mod:`aquamvs_core.steps.depth`. ``pairwise_depths`` is in
the ``gpu`` concurrency pool; on the ``roma`` pathway it loads RoMa for its materialization and
disposes of it afterwards."""

import dagster as dg

from aquamvs_assets.assets.sparse import GROUP
from aquamvs_assets.metadata import profiled
from aquamvs_assets.partitions import SurveyNamespace
from aquamvs_assets.resources import ReconstructionSettings, RomaMatcher, ZarrStoreResource
from aquamvs_core import steps
from aquamvs_core.stages.pairs import CameraPair
from aquamvs_core.survey import Product

#: Concurrency pool of the GPU-bound assets (limit 1 in dagster.yaml: one model per card).
GPU_POOL = "gpu"


def build_depth_assets(ns: SurveyNamespace, pairs: list[CameraPair]) -> list[dg.AssetsDefinition]:
    """``pairwise_depths`` and ``camera_depths`` of one survey (its rig's pairs)."""

    @dg.asset(
        key=ns.key("pairwise_depths"),
        partitions_def=ns.frames,
        deps=[ns.key("frames"), ns.key("sparse_cloud")],
        group_name=GROUP,
        kinds={"zarr", "torch"},
        pool=GPU_POOL,
        code_version=steps.CODE_VERSIONS[Product.PAIRWISE_DEPTHS],
        automation_condition=dg.AutomationCondition.eager(),
        description="Depth and confidence of the reference camera of every dense pair of a frame: the "
        "refractive plane sweep, or (pathway roma) RoMa's dense warp triangulated through the water.",
    )
    def pairwise_depths(
        context: dg.AssetExecutionContext,
        store: ZarrStoreResource,
        reconstruction: ReconstructionSettings,
        roma: RomaMatcher,
    ) -> dg.MaterializeResult:
        survey_store, config, frame = store.get(), reconstruction.config(), context.partition_key
        with profiled(context, reconstruction.profile) as profile:
            cams = steps.StoreCameras.load(survey_store)
            todo = steps.dense_pairs(survey_store, pairs, config)
            rows = []

            def report(pair: CameraPair, s: dict) -> None:
                rows.append({"pair": pair.key, **s})
                context.log.info(
                    f"{frame} {pair.key}: {s['valid_fraction']:.1%} with depth, {s['seconds']:.1f} s"
                    f"{' (reused)' if s.get('reused') else ''} ({len(rows)}/{len(todo)})"
                )

            if config.pathway == "roma":
                with roma.session(context.log) as session:  # one model for every pair of the frame
                    for pair in todo:
                        s = steps.roma_pairwise_depths_step(
                            survey_store, frame, pair, config, session, session.settings, cams
                        )
                        report(pair, s)
            else:  # steps.pair_workers(config) pairs at once, reported as they finish
                steps.sweep_frame_pairs(survey_store, frame, todo, config, cams, on_done=report)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(steps.data_version(survey_store, Product.PAIRWISE_DEPTHS, frame)),
            metadata={
                **profile,
                "pathway": config.pathway,
                "pairs": len(rows),
                "reused": sum(bool(r.get("reused")) for r in rows),
                "valid_fraction": dg.MetadataValue.json({r["pair"]: r["valid_fraction"] for r in rows}),
                "seconds": round(sum(r["seconds"] for r in rows if not r.get("reused")), 3),
            },
        )

    @dg.asset(
        key=ns.key("camera_depths"),
        partitions_def=ns.frames,
        deps=[pairwise_depths],
        group_name=GROUP,
        kinds={"zarr"},
        code_version=steps.CODE_VERSIONS[Product.CAMERA_DEPTHS],
        automation_condition=dg.AutomationCondition.eager(),
        description="Each camera's depth, combining its pairs (robust agreement), with confidence.",
    )
    def camera_depths(
        context: dg.AssetExecutionContext, store: ZarrStoreResource, reconstruction: ReconstructionSettings
    ) -> dg.MaterializeResult:
        survey_store, config, frame = store.get(), reconstruction.config(), context.partition_key
        with profiled(context, reconstruction.profile) as profile:
            chosen = steps.dense_pairs(survey_store, pairs, config)
            summary = steps.camera_depths_step(survey_store, frame, chosen, config)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(steps.data_version(survey_store, Product.CAMERA_DEPTHS, frame)),
            metadata={
                **profile,
                "cameras": len(summary),
                "reused": sum(bool(s.get("reused")) for s in summary.values()),
                "valid_fraction": dg.MetadataValue.json({c: s["valid_fraction"] for c, s in summary.items()}),
            },
        )

    return [pairwise_depths, camera_depths]
