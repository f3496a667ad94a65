"""Surface assets of one survey, per frame: ``fused_cloud`` → ``mesh``, with the ground-truth
quality check (``reconstruction_quality``) when the survey has a ground truth. Each calls one step
of :mod:`aquamvs_core.steps.surface`."""

from pathlib import Path

import dagster as dg

from aquamvs_assets.assets.sparse import GROUP
from aquamvs_assets.metadata import png, profiled
from aquamvs_assets.partitions import SurveyNamespace
from aquamvs_assets.resources import ReconstructionSettings, ZarrStoreResource
from aquamvs_core import steps
from aquamvs_core.evaluation.quality import quality_report
from aquamvs_core.preview import height_map_preview
from aquamvs_core.stages.mesh import is_watertight
from aquamvs_core.survey import Product

QUALITY_CHECK = "reconstruction_quality"
#: A blocking quality check fails as an error, a non-blocking one as a warning.
SEVERITY = {True: dg.AssetCheckSeverity.ERROR, False: dg.AssetCheckSeverity.WARN}


def build_surface_assets(
    ns: SurveyNamespace, ground_truth: Path | None, quality_blocking: bool = False
) -> list[dg.AssetsDefinition]:
    """``fused_cloud`` and ``mesh`` of one survey; with ``ground_truth``, the mesh carries the quality
    check, which blocks the mesh's downstream assets in the same run when ``quality_blocking``."""

    @dg.asset(
        key=ns.key("fused_cloud"),
        partitions_def=ns.frames,
        deps=[ns.key("camera_depths")],
        group_name=GROUP,
        kinds={"zarr", "open3d"},
        code_version=steps.CODE_VERSIONS[Product.FUSED_CLOUD],
        automation_condition=dg.AutomationCondition.eager(),
        description="Fused point cloud: 3-D consistency across cameras, merged, de-duplicated, "
        "outliers removed, with normals and colours.",
    )
    def fused_cloud(
        context: dg.AssetExecutionContext, store: ZarrStoreResource, reconstruction: ReconstructionSettings
    ) -> dg.MaterializeResult:
        survey_store, config, frame = store.get(), reconstruction.config(), context.partition_key
        with profiled(context, reconstruction.profile) as profile:
            cloud = steps.fused_cloud_step(survey_store, frame, config)
            context.log.info(f"{frame}: {len(cloud)} fused points {cloud.stats}")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(steps.data_version(survey_store, Product.FUSED_CLOUD, frame)),
            metadata={
                **profile,
                "points": len(cloud),
                "stats": dg.MetadataValue.json(cloud.stats),
                "z_range_m": [
                    round(float(cloud.points[:, 2].min()), 4),
                    round(float(cloud.points[:, 2].max()), 4),
                ]
                if len(cloud)
                else None,
                "preview": png(height_map_preview(cloud.points, cloud.colors), "fused cloud"),
            },
        )

    check_specs = (
        [
            dg.AssetCheckSpec(
                QUALITY_CHECK,
                asset=ns.key("mesh"),
                partitions_def=ns.frames,  # one verdict per frame
                blocking=quality_blocking,
                description="Fused cloud and mesh against the survey's ground-truth heightfield "
                "(median/p90 error, outliers, completeness)"
                + (
                    "; blocking: a failure skips the assets downstream of the mesh"
                    if quality_blocking
                    else ""
                ),
            )
        ]
        if ground_truth
        else []
    )

    @dg.asset(
        key=ns.key("mesh"),
        partitions_def=ns.frames,
        deps=[fused_cloud],
        group_name=GROUP,
        kinds={"zarr", "open3d"},
        check_specs=check_specs,
        code_version=steps.CODE_VERSIONS[Product.MESH],
        automation_condition=dg.AutomationCondition.eager(),
        description="Surface mesh of the bed (heightfield, Poisson or ball pivoting) coloured from the "
        "best view that sees each vertex through the water.",
    )
    def mesh(
        context: dg.AssetExecutionContext, store: ZarrStoreResource, reconstruction: ReconstructionSettings
    ) -> dg.MaterializeResult:
        survey_store, config, frame = store.get(), reconstruction.config(), context.partition_key
        with profiled(context, reconstruction.profile) as profile:
            result = steps.mesh_step(survey_store, frame, config)
            context.log.info(f"{frame}: {len(result.vertices)} vertices, {len(result.triangles)} triangles")
            if reconstruction.export_dir:
                for path in steps.export_frame(
                    survey_store, frame, reconstruction.export_dir, reconstruction.export_formats
                ):
                    context.log.info(f"exported {path}")
            check_results = []
            if ground_truth:
                report = quality_report(survey_store, frame, ground_truth, config)
                check_results.append(
                    dg.AssetCheckResult(
                        check_name=QUALITY_CHECK,
                        passed=report["passed"],
                        severity=SEVERITY[quality_blocking],
                        metadata={k: v for k, v in report.items() if k != "passed" and v is not None},
                    )
                )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(steps.data_version(survey_store, Product.MESH, frame)),
            metadata={
                **profile,
                "vertices": len(result.vertices),
                "triangles": len(result.triangles),
                "method": config.mesh.method,
                "watertight": is_watertight(result),
            },
            check_results=check_results,
        )

    return [fused_cloud, mesh]
