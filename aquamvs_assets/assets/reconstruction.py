"""Reconstruction assets: sparse matches → sparse cloud → pairwise depths → camera depths → fused
cloud → mesh, plus the ground-truth quality check. Each asset calls one step of
:mod:`aquamvs_core.steps`, which reads its inputs from the store and writes its product.

Per-pair assets are partitioned by frame × pair (keys ``"<frame>|<ref>-<src>"``); per-frame assets by
frame. A run may cover several partitions (single-run backfills): the steps loop over
``context.partition_keys`` sharing loaded cameras and models.
"""

import base64
from pathlib import Path

import dagster as dg

from aquamvs_assets.assets.ingestion import frames
from aquamvs_assets.resources import ReconstructionSettings, RomaMatcher, ZarrStoreResource
from aquamvs_core import steps as steps
from aquamvs_core.evaluation.profiling import Profiler
from aquamvs_core.evaluation.quality import quality_report
from aquamvs_core.preview import encode_png, height_map_preview
from aquamvs_core.stages.pairs import CameraPair

QUALITY_CHECK = "reconstruction_quality"
#: Concurrency pool of the GPU-bound assets (limit 1 in dagster.yaml: one model per card).
GPU_POOL = "gpu"
GROUP = "reconstruction"


def _by_frame(context: dg.AssetExecutionContext) -> list[str]:
    return list(dict.fromkeys(context.partition_keys))


class _StageProfile:
    """Profiles an asset's work when ``settings.profile`` (the run-config flag); :meth:`finish`
    logs it and returns ``profile_*`` metadata (seconds, MB), or nothing when profiling is off."""

    def __init__(self, context: dg.AssetExecutionContext, settings: ReconstructionSettings):
        self._context = context
        self._profiler = Profiler() if settings.profile else None
        self._stage = self._profiler.stage(context.asset_key.to_user_string()) if self._profiler else None
        if self._stage is not None:
            self._stage.__enter__()

    def finish(self) -> dict:
        if self._stage is None:
            return {}
        self._stage.__exit__(None, None, None)
        self._stage = None
        r = self._profiler.records[-1]
        self._context.log.info(
            f"profile: wall {r.wall_s:.2f} s, CPU {r.cpu_s:.2f} s, peak RSS {r.peak_rss_mb:.0f} MB"
            + (f", CUDA {r.cuda_s:.2f} s / {r.cuda_peak_mb:.0f} MB" if r.cuda_s is not None else "")
        )
        meta = {
            "profile_wall_s": round(r.wall_s, 3),
            "profile_cpu_s": round(r.cpu_s, 3),
            "profile_peak_rss_mb": round(r.peak_rss_mb, 1),
        }
        if r.cuda_s is not None:
            meta.update(profile_cuda_s=round(r.cuda_s, 3), profile_cuda_peak_mb=round(r.cuda_peak_mb, 1))
        return meta


def _png(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def build_reconstruction_assets(
    pairs: list[CameraPair],
    pair_partitions: dg.StaticPartitionsDefinition,
    frame_pairs: dg.MultiPartitionsDefinition,
    ground_truth: Path | None,
) -> list[dg.AssetsDefinition]:
    """The reconstruction assets for one rig (its pairs) and survey (its ground truth, if any)."""
    to_frame = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="frame")
    frame_pairs_of = {p.key: p for p in pairs}

    def split(key: str) -> tuple[str, CameraPair]:
        """``"<frame>|<pair>"`` (dimensions are sorted by name: frame, pair)."""
        frame, pair = key.split("|", 1)
        return frame, frame_pairs_of[pair]

    @dg.asset(
        partitions_def=frame_pairs,
        deps=[dg.AssetDep(frames, partition_mapping=to_frame)],
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
        zs, config = store.get(), reconstruction.config()
        profile = _StageProfile(context, reconstruction)
        cams = steps.StoreCameras.load(zs)
        model_cache: dict = {}
        features: dict = {}  # per-image features of the current frame, shared by its pairs
        current = None
        summaries = {}
        for key in sorted(context.partition_keys):
            frame, pair = split(key)
            if frame != current:
                features, current = {}, frame
            summaries[key] = steps.sparse_matches_step(zs, frame, pair, config, cams, model_cache, features)
            context.log.info(f"{key}: {summaries[key]['kept']}/{summaries[key]['matches']} matches kept")
        last = summaries[context.partition_keys[-1]]
        return dg.MaterializeResult(
            metadata={
                **profile.finish(),
                "partitions": len(summaries),
                "matches": last["matches"],
                "kept": last["kept"],
                "median_reprojection_px": last["median_reprojection_px"],
                "matcher": config.matching.method,
            }
        )

    @dg.asset(
        partitions_def=frames.partitions_def,
        deps=[dg.AssetDep(sparse_matches, partition_mapping=to_frame)],
        group_name=GROUP,
        kinds={"zarr"},
        automation_condition=dg.AutomationCondition.eager(),
        description="All kept sparse points of a frame, and each camera's depth search range.",
    )
    def sparse_cloud(
        context: dg.AssetExecutionContext, store: ZarrStoreResource, reconstruction: ReconstructionSettings
    ) -> dg.MaterializeResult:
        zs, config = store.get(), reconstruction.config()
        profile = _StageProfile(context, reconstruction)
        for frame in _by_frame(context):
            summary = steps.sparse_cloud_step(zs, frame, pairs, config)
            context.log.info(f"{frame}: {summary['points']} sparse points")
        ranges = summary["depth_ranges"]
        return dg.MaterializeResult(
            metadata={
                **profile.finish(),
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

    @dg.asset(
        partitions_def=frame_pairs,
        deps=[
            dg.AssetDep(frames, partition_mapping=to_frame),
            dg.AssetDep(sparse_cloud, partition_mapping=to_frame),
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
        zs, config = store.get(), reconstruction.config()
        profile = _StageProfile(context, reconstruction)
        cams = steps.StoreCameras.load(zs)
        chosen = {p.key for p in steps.dense_pairs(zs, pairs, config)}
        todo = [(key, *split(key)) for key in context.partition_keys if split(key)[1].key in chosen]
        summaries = {}

        def report(n: int, key: str, s: dict) -> None:
            context.log.info(
                f"{key}: {s['valid_fraction']:.1%} with depth, {s['seconds']:.1f} s ({n}/{len(todo)})"
            )

        if config.pathway == "roma":
            with roma.session(context.log) as session:  # loaded once for every partition of the run
                for n, (key, frame, pair) in enumerate(todo, start=1):
                    summaries[key] = steps.roma_pairwise_depths_step(
                        zs, frame, pair, config, session, session.settings, cams
                    )
                    report(n, key, summaries[key])
        else:
            for n, (key, frame, pair) in enumerate(todo, start=1):
                summaries[key] = steps.pairwise_depths_step(zs, frame, pair, config, cams)
                report(n, key, summaries[key])
        last = next(reversed(summaries.values()), {})
        return dg.MaterializeResult(
            metadata={
                **profile.finish(),
                "pathway": config.pathway,
                "partitions": len(summaries),
                "valid_fraction": last.get("valid_fraction"),
                "seconds": last.get("seconds"),
            }
        )

    @dg.asset(
        partitions_def=frames.partitions_def,
        deps=[dg.AssetDep(pairwise_depths, partition_mapping=to_frame)],
        group_name=GROUP,
        kinds={"zarr"},
        automation_condition=dg.AutomationCondition.eager(),
        description="Each camera's depth, combining its pairs (robust agreement), with confidence.",
    )
    def camera_depths(
        context: dg.AssetExecutionContext, store: ZarrStoreResource, reconstruction: ReconstructionSettings
    ) -> dg.MaterializeResult:
        zs, config = store.get(), reconstruction.config()
        profile = _StageProfile(context, reconstruction)
        chosen = steps.dense_pairs(zs, pairs, config)
        for frame in _by_frame(context):
            summary = steps.camera_depths_step(zs, frame, chosen, config)
        return dg.MaterializeResult(
            metadata={
                **profile.finish(),
                "cameras": len(summary),
                "valid_fraction": dg.MetadataValue.json({c: s["valid_fraction"] for c, s in summary.items()}),
            }
        )

    @dg.asset(
        partitions_def=frames.partitions_def,
        deps=[camera_depths],
        group_name=GROUP,
        kinds={"zarr", "open3d"},
        automation_condition=dg.AutomationCondition.eager(),
        description="Fused point cloud: 3-D consistency across cameras, merged, de-duplicated, "
        "outliers removed, with normals and colours.",
    )
    def fused_cloud(
        context: dg.AssetExecutionContext, store: ZarrStoreResource, reconstruction: ReconstructionSettings
    ) -> dg.MaterializeResult:
        zs, config = store.get(), reconstruction.config()
        profile = _StageProfile(context, reconstruction)
        for frame in _by_frame(context):
            cloud = steps.fused_cloud_step(zs, frame, config)
            context.log.info(f"{frame}: {len(cloud)} fused points {cloud.stats}")
        return dg.MaterializeResult(
            metadata={
                **profile.finish(),
                "points": len(cloud),
                "stats": dg.MetadataValue.json(cloud.stats),
                "z_range_m": [
                    round(float(cloud.points[:, 2].min()), 4),
                    round(float(cloud.points[:, 2].max()), 4),
                ]
                if len(cloud)
                else None,
                "preview": _png(encode_png(height_map_preview(cloud.points, cloud.colors)), "fused cloud"),
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
        partitions_def=frames.partitions_def,
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
        zs, config = store.get(), reconstruction.config()
        profile = _StageProfile(context, reconstruction)
        check_results = []
        for frame in _by_frame(context):
            result = steps.mesh_step(zs, frame, config)
            context.log.info(f"{frame}: {len(result.vertices)} vertices, {len(result.triangles)} triangles")
            for fmt in reconstruction.export_formats:
                path = (
                    steps.export_frame(zs, frame, reconstruction.export_dir, [fmt])[-1]
                    if reconstruction.export_dir
                    else None
                )
                if path:
                    context.log.info(f"exported {path}")
            if ground_truth:
                report = quality_report(zs, frame, ground_truth, config)
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
                **profile.finish(),
                "vertices": len(result.vertices),
                "triangles": len(result.triangles),
                "method": config.mesh.method,
                "watertight": bool(result.is_watertight()),
            },
            check_results=check_results[-1:],
        )

    return [sparse_matches, sparse_cloud, pairwise_depths, camera_depths, fused_cloud, mesh]
