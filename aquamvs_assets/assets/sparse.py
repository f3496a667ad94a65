"""Sparse assets of one survey, per frame: ``sparse_matches`` (every camera pair of the frame) →
``sparse_cloud``. Each calls steps of :mod:`aquamvs_core.steps.sparse`, which read their inputs from
the store, reuse the products that are current, and write the others."""

import dagster as dg

from aquamvs_assets.metadata import profiled
from aquamvs_assets.partitions import SurveyNamespace
from aquamvs_assets.resources import ReconstructionSettings, ZarrStoreResource
from aquamvs_core import steps
from aquamvs_core.stages.pairs import CameraPair
from aquamvs_core.survey import Product

GROUP = "reconstruction"


def build_sparse_assets(ns: SurveyNamespace, pairs: list[CameraPair]) -> list[dg.AssetsDefinition]:
    """``sparse_matches`` and ``sparse_cloud`` of one survey (its rig's pairs)."""

    @dg.asset(
        key=ns.key("sparse_matches"),
        partitions_def=ns.frames,
        deps=[ns.key("frames")],
        group_name=GROUP,
        kinds={"zarr"},
        code_version=steps.CODE_VERSIONS[Product.SPARSE_MATCHES],
        automation_condition=dg.AutomationCondition.eager(),
        description="Keypoints and matches of every directed camera pair of a frame (SIFT or LightGlue), "
        "triangulated through the water with angle and reprojection filters.",
    )
    def sparse_matches(
        context: dg.AssetExecutionContext, store: ZarrStoreResource, reconstruction: ReconstructionSettings
    ) -> dg.MaterializeResult:
        survey_store, config, frame = store.get(), reconstruction.config(), context.partition_key
        with profiled(context, reconstruction.profile) as profile:
            rows = []

            def report(pair: CameraPair, s: dict) -> None:  # in this thread, as each pair finishes
                rows.append({"pair": pair.key, **s})
                context.log.info(
                    f"{frame} {pair.key}: {s['kept']}/{s['matches']} matches kept"
                    f"{' (reused)' if s.get('reused') else ''} ({len(rows)}/{len(pairs)})"
                )

            # steps.match_workers(config) pairs at once, sharing each image's features
            steps.match_frame_pairs(survey_store, frame, pairs, config, on_done=report)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(steps.data_version(survey_store, Product.SPARSE_MATCHES, frame)),
            metadata={
                **profile,
                "pairs": len(rows),
                "reused": sum(bool(r.get("reused")) for r in rows),
                "matches": sum(r["matches"] for r in rows),
                "kept": sum(r["kept"] for r in rows),
                "kept_per_pair": dg.MetadataValue.json({r["pair"]: r["kept"] for r in rows}),
                "matcher": config.matching.method,
            },
        )

    @dg.asset(
        key=ns.key("sparse_cloud"),
        partitions_def=ns.frames,
        deps=[sparse_matches],
        group_name=GROUP,
        kinds={"zarr"},
        code_version=steps.CODE_VERSIONS[Product.SPARSE_CLOUD],
        automation_condition=dg.AutomationCondition.eager(),
        description="All kept sparse points of a frame, and each camera's depth search range.",
    )
    def sparse_cloud(
        context: dg.AssetExecutionContext, store: ZarrStoreResource, reconstruction: ReconstructionSettings
    ) -> dg.MaterializeResult:
        survey_store, config, frame = store.get(), reconstruction.config(), context.partition_key
        with profiled(context, reconstruction.profile) as profile:
            summary = steps.sparse_cloud_step(survey_store, frame, pairs, config)
            context.log.info(f"{frame}: {summary['points']} sparse points")
        ranges = summary["depth_ranges"]
        return dg.MaterializeResult(
            data_version=dg.DataVersion(steps.data_version(survey_store, Product.SPARSE_CLOUD, frame)),
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
            },
        )

    return [sparse_matches, sparse_cloud]
