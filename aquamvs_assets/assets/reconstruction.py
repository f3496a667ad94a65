"""Reconstruction assets: sparse matches → sparse cloud → pairwise depths → camera depths → fused
cloud → mesh, plus the ground-truth quality check. Each asset calls one step of
:mod:`aquamvs_core.reconstruct`, which reads its inputs from the store and writes its product.

Per-pair assets are partitioned by frame × pair (keys ``"<frame>|<ref>-<src>"``); per-frame assets by
frame. A run may cover several partitions (single-run backfills): the steps loop over
``context.partition_keys`` sharing loaded cameras and models.
"""

import base64
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import dagster as dg

from aquamvs_assets.assets.ingestion import frames
from aquamvs_assets.resources import ReconstructionSettings, ZarrStoreResource
from aquamvs_core import reconstruct as steps
from aquamvs_core.pairs import CameraPair
from aquamvs_core.preview import encode_png, height_map_preview
from aquamvs_core.profiling import Profiler

QUALITY_CHECK = "reconstruction_quality"
GROUP = "reconstruction"


def _by_frame(context: dg.AssetExecutionContext) -> list[str]:
    return list(dict.fromkeys(context.partition_keys))


@contextmanager
def _stage(
    context: dg.AssetExecutionContext, settings: ReconstructionSettings, metadata: dict
) -> Iterator[None]:
    """Profile the asset's work when ``settings.profile`` (the run-config flag): log it and add
    ``profile_*`` metadata (seconds, MB)."""
    if not settings.profile:
        yield
        return
    profiler = Profiler()
    with profiler.stage(context.asset_key.to_user_string()):
        yield
    r = profiler.records[-1]
    context.log.info(
        f"profile: wall {r.wall_s:.2f} s, CPU {r.cpu_s:.2f} s, peak RSS {r.peak_rss_mb:.0f} MB"
        + (f", CUDA {r.cuda_s:.2f} s / {r.cuda_peak_mb:.0f} MB" if r.cuda_s is not None else "")
    )
    metadata.update(
        profile_wall_s=round(r.wall_s, 3),
        profile_cpu_s=round(r.cpu_s, 3),
        profile_peak_rss_mb=round(r.peak_rss_mb, 1),
    )
    if r.cuda_s is not None:
        metadata.update(profile_cuda_s=round(r.cuda_s, 3), profile_cuda_peak_mb=round(r.cuda_peak_mb, 1))


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
        profiled, profile_meta = ExitStack(), {}
        profiled.enter_context(_stage(context, reconstruction, profile_meta))
        cams = steps.StoreCameras.load(zs)
        model_cache: dict = {}
        features: dict = {}  # per-image features of the current frame, shared by its pairs
        current = None
        summaries = {}
        for key in sorted(context.partition_keys):
            frame, pair = split(key)
            if frame != current:
                features, current = {}, frame
            summaries[key] = steps.sparse_step(zs, frame, pair, config, cams, model_cache, features)
            context.log.info(f"{key}: {summaries[key]['kept']}/{summaries[key]['matches']} matches kept")
        last = summaries[context.partition_keys[-1]]
        profiled.close()
        return dg.MaterializeResult(
            metadata={
                **profile_meta,
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
        profiled, profile_meta = ExitStack(), {}
        profiled.enter_context(_stage(context, reconstruction, profile_meta))
        for frame in _by_frame(context):
            summary = steps.sparse_cloud_step(zs, frame, pairs, config)
            context.log.info(f"{frame}: {summary['points']} sparse points")
        ranges = summary["depth_ranges"]
        profiled.close()
        return dg.MaterializeResult(
            metadata={
                **profile_meta,
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
        backfill_policy=dg.BackfillPolicy.single_run(),
        automation_condition=dg.AutomationCondition.eager(),
        description="Refractive plane-sweep depth and confidence of the reference camera of a pair.",
    )
    def pairwise_depths(
        context: dg.AssetExecutionContext, store: ZarrStoreResource, reconstruction: ReconstructionSettings
    ) -> dg.MaterializeResult:
        zs, config = store.get(), reconstruction.config()
        profiled, profile_meta = ExitStack(), {}
        profiled.enter_context(_stage(context, reconstruction, profile_meta))
        cams = steps.StoreCameras.load(zs)
        summaries = {}
        for n, key in enumerate(context.partition_keys, start=1):
            frame, pair = split(key)
            if pair.src in zs.read_rig().auxiliary_names and not config.use_auxiliary_sources:
                continue
            summaries[key] = s = steps.pair_depth_step(zs, frame, pair, config, cams)
            context.log.info(
                f"{key}: {s['valid_fraction']:.1%} pixels with depth, {s['seconds']:.1f} s "
                f"({n}/{len(context.partition_keys)})"
            )
        last = next(reversed(summaries.values()), {})
        profiled.close()
        return dg.MaterializeResult(
            metadata={
                **profile_meta,
                "partitions": len(summaries),
                "valid_fraction": last.get("valid_fraction"),
                "seconds": last.get("seconds"),
                "num_depths": config.plane_sweep.num_depths,
            }
        )

    used_pairs = pairs

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
        profiled, profile_meta = ExitStack(), {}
        profiled.enter_context(_stage(context, reconstruction, profile_meta))
        aux = set(zs.read_rig().auxiliary_names)
        chosen = [p for p in used_pairs if config.use_auxiliary_sources or p.src not in aux]
        for frame in _by_frame(context):
            summary = steps.camera_depth_step(zs, frame, chosen, config)
        profiled.close()
        return dg.MaterializeResult(
            metadata={
                **profile_meta,
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
        profiled, profile_meta = ExitStack(), {}
        profiled.enter_context(_stage(context, reconstruction, profile_meta))
        for frame in _by_frame(context):
            cloud = steps.fusion_step(zs, frame, config)
            context.log.info(f"{frame}: {len(cloud)} fused points {cloud.stats}")
        profiled.close()
        return dg.MaterializeResult(
            metadata={
                **profile_meta,
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
        profiled, profile_meta = ExitStack(), {}
        profiled.enter_context(_stage(context, reconstruction, profile_meta))
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
                report = steps.quality_report(zs, frame, ground_truth, config)
                check_results.append(
                    dg.AssetCheckResult(
                        check_name=QUALITY_CHECK,
                        passed=report["passed"],
                        severity=dg.AssetCheckSeverity.WARN,
                        metadata={k: v for k, v in report.items() if k != "passed" and v is not None},
                    )
                )
        profiled.close()
        return dg.MaterializeResult(
            metadata={
                **profile_meta,
                "vertices": len(result.vertices),
                "triangles": len(result.triangles),
                "method": config.mesh.method,
                "watertight": bool(result.is_watertight()),
            },
            check_results=check_results[-1:],
        )

    return [sparse_matches, sparse_cloud, pairwise_depths, camera_depths, fused_cloud, mesh]
