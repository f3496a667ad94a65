"""Surface assets: ``fused_cloud`` [frame] → ``mesh`` [frame], with the ground-truth quality check
(``reconstruction_quality``) when the survey has a ground truth. Each calls one step of
:mod:`aquamvs_core.steps.surface`."""

from pathlib import Path

import dagster as dg

from aquamvs_assets.assets.sparse import GROUP, frames_of
from aquamvs_assets.metadata import png, profiled
from aquamvs_assets.partitions import frame_partitions
from aquamvs_assets.resources import ReconstructionSettings, ZarrStoreResource
from aquamvs_core import steps
from aquamvs_core.evaluation.quality import quality_report
from aquamvs_core.preview import height_map_preview

QUALITY_CHECK = "reconstruction_quality"


def build_surface_assets(ground_truth: Path | None) -> list[dg.AssetsDefinition]:
    """``fused_cloud`` and ``mesh`` (with the quality check when ``ground_truth`` is given)."""

    @dg.asset(
        partitions_def=frame_partitions,
        deps=["camera_depths"],
        group_name=GROUP,
        kinds={"zarr", "open3d"},
        automation_condition=dg.AutomationCondition.eager(),
        description="Fused point cloud: 3-D consistency across cameras, merged, de-duplicated, "
        "outliers removed, with normals and colours.",
    )
    def fused_cloud(
        context: dg.AssetExecutionContext, store: ZarrStoreResource, reconstruction: ReconstructionSettings
    ) -> dg.MaterializeResult:
        survey_store, config = store.get(), reconstruction.config()
        with profiled(context, reconstruction.profile) as profile:
            for frame in frames_of(context):
                cloud = steps.fused_cloud_step(survey_store, frame, config)
                context.log.info(f"{frame}: {len(cloud)} fused points {cloud.stats}")
        return dg.MaterializeResult(
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
            }
        )

    check_specs = (
        [
            dg.AssetCheckSpec(
                QUALITY_CHECK,
                asset="mesh",
                description="Fused cloud and mesh against the "
                "survey's ground-truth heightfield (median/p90 error, outliers, completeness).",
            )
        ]
        if ground_truth
        else []
    )

    @dg.asset(
        partitions_def=frame_partitions,
        deps=[fused_cloud],
        group_name=GROUP,
        kinds={"zarr", "open3d"},
        check_specs=check_specs,
        automation_condition=dg.AutomationCondition.eager(),
        description="Surface mesh of the bed (heightfield, Poisson or ball pivoting) coloured from the "
        "best view that sees each vertex through the water.",
    )
    def mesh(
        context: dg.AssetExecutionContext,
        store: ZarrStoreResource,
        reconstruction: ReconstructionSettings,
    ) -> dg.MaterializeResult:
        survey_store, config = store.get(), reconstruction.config()
        check_results = []
        with profiled(context, reconstruction.profile) as profile:
            for frame in frames_of(context):
                result = steps.mesh_step(survey_store, frame, config)
                context.log.info(
                    f"{frame}: {len(result.vertices)} vertices, {len(result.triangles)} triangles"
                )
                for fmt in reconstruction.export_formats:
                    path = (
                        steps.export_frame(survey_store, frame, reconstruction.export_dir, [fmt])[-1]
                        if reconstruction.export_dir
                        else None
                    )
                    if path:
                        context.log.info(f"exported {path}")
                if ground_truth:
                    report = quality_report(survey_store, frame, ground_truth, config)
                    check_results.append(
                        dg.AssetCheckResult(
                            check_name=QUALITY_CHECK,
                            passed=report["passed"],
                            severity=dg.AssetCheckSeverity.WARN,
                            metadata={k: v for k, v in report.items() if k != "passed" and v is not None},
                        )
                    )
        return dg.MaterializeResult(
            metadata={
                **profile,
                "vertices": len(result.vertices),
                "triangles": len(result.triangles),
                "method": config.mesh.method,
                "watertight": bool(result.is_watertight()),
            },
            check_results=check_results[-1:],
        )

    return [fused_cloud, mesh]
