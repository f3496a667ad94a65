"""Ingestion assets of one survey: the calibration, the frames on each camera's stored grid (with the
``frames_complete`` check against the inputs) and the camera pairs' geometry."""

import dagster as dg
import pandas as pd
from pydantic import Field

from aquamvs_assets.metadata import png, table
from aquamvs_assets.partitions import SurveyNamespace
from aquamvs_assets.resources import SurveyResource, ZarrStoreResource
from aquamvs_core.preview import mosaic
from aquamvs_core.stages.ingest import Undistorter
from aquamvs_core.stages.pairs import CameraPair, lens_cameras, pair_geometry
from aquamvs_core.steps import CODE_VERSIONS, ingest_frames, verify_frames, write_calibration
from aquamvs_core.survey import frame_index

GROUP = "ingestion"
FRAMES_CHECK = "frames_complete"


class PairGeometryConfig(dg.Config):
    """Launchpad configuration of ``camera_pair_geometry``."""

    water_depth_m: float = Field(
        0.5, gt=0.0, description="Nominal water depth below the surface (m) at which overlap is measured."
    )


def build_ingestion_assets(ns: SurveyNamespace, pairs: list[CameraPair]) -> list[dg.AssetsDefinition]:
    """``survey_calibration``, ``frames`` [frame] and ``camera_pair_geometry`` of one survey."""

    @dg.asset(
        key=ns.key("survey_calibration"),
        group_name=GROUP,
        kinds={"zarr"},
        description="The validated AquaCal calibration and each camera's stored grid (intrinsics, "
        "validity mask, whether the lens stays in the camera model), written to the store. Its data "
        "version is the calibration's content hash.",
    )
    def survey_calibration(
        context: dg.AssetExecutionContext, survey: SurveyResource, store: ZarrStoreResource
    ) -> dg.MaterializeResult:
        rig = survey.rig()
        undistorter = Undistorter.for_rig(rig)
        write_calibration(store.get(), rig, undistorter)
        masks = undistorter.valid_masks
        context.log.info(f"calibration {rig.short_hash}: {len(rig.cameras)} cameras, {len(pairs)} pairs")
        w, h = rig.image_size
        return dg.MaterializeResult(
            data_version=dg.DataVersion(rig.content_hash),
            metadata={
                "calibration_hash": rig.content_hash,
                "source": dg.MetadataValue.path(rig.source),
                "cameras": len(rig.cameras),
                "auxiliary_cameras": dg.MetadataValue.json(rig.auxiliary_names),
                "image_size": f"{w}x{h}",
                "water_z_m": rig.interface.water_z,
                "n_water": rig.interface.n_water,
                "camera_pairs": len(pairs),
                "valid_fraction": dg.MetadataValue.json(
                    {n: round(float(m.mean()), 4) for n, m in masks.items()}
                ),
                "store": store.root,
            },
        )

    @dg.asset(
        key=ns.key("frames"),
        partitions_def=ns.frames,
        deps=[survey_calibration],
        group_name=GROUP,
        kinds={"zarr"},
        code_version=CODE_VERSIONS["frames"],
        check_specs=[
            dg.AssetCheckSpec(
                FRAMES_CHECK,
                asset=ns.key("frames"),
                partitions_def=ns.frames,
                description="Checked against the inputs, with fresh decoders: the frame exists in every "
                "camera's input, its decoded images hash to what was ingested, and the stored images "
                "have the rig's cameras, size and calibration.",
            )
        ],
        description="RGB frames of every camera on its stored grid (by default as recorded, the lens in "
        "the camera model), one Zarr group per survey frame.",
    )
    def frames(
        context: dg.AssetExecutionContext, survey: SurveyResource, store: ZarrStoreResource
    ) -> dg.MaterializeResult:
        survey_store = store.get()
        key = context.partition_key
        spec = survey.spec()
        with survey.open() as sv:
            stored = survey_store.read_calibration() if survey_store.has_calibration() else None
            if stored is None or stored.get("calibration_hash") != sv.rig.content_hash:
                raise dg.Failure(
                    f"the store at {store.root} holds no calibration matching {sv.rig.source} "
                    f"(hash {sv.rig.short_hash}); materialize survey_calibration first"
                )
            (record,) = ingest_frames(sv, survey_store, [frame_index(key)])
        context.log.info(
            f"frame {key}: {len(record.cameras)} cameras "
            f"{'already stored' if record.reused else 'stored'} ({record.seconds:.2f} s)"
        )
        problems = verify_frames(spec, survey_store, [record.index])[key]
        images = survey_store.read_frame(key)
        w, h = next(iter(images.values())).shape[1::-1]
        attrs = survey_store.frame_attrs(key)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(attrs["fingerprint"]),
            metadata={
                "cameras": len(images),
                "image_size": f"{w}x{h}",
                "seconds": round(record.seconds, 3),
                "reused": record.reused,
                "source_hash": record.source_hash,
                "calibration_hash": attrs["calibration_hash"],
                "store_path": f"{store.root}/frames/{key}",
                "preview": png(mosaic(images, tile_width=160), f"frame {key}"),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=FRAMES_CHECK,
                    passed=not problems,
                    metadata={"problems": dg.MetadataValue.json(problems)},
                )
            ],
        )

    @dg.asset(
        key=ns.key("camera_pair_geometry"),
        deps=[survey_calibration],
        group_name=GROUP,
        kinds={"zarr"},
        description="Baseline and overlap through the water of each directed stereo pair (ref-src).",
    )
    def camera_pair_geometry(
        context: dg.AssetExecutionContext, config: PairGeometryConfig, store: ZarrStoreResource
    ) -> dg.MaterializeResult:
        survey_store = store.get()
        rig = survey_store.read_rig()
        bottom_z = rig.interface.water_z + config.water_depth_m
        rows = []
        cameras = lens_cameras(rig, sorted({n for p in pairs for n in (p.ref, p.src)}))
        for pair in pairs:
            geometry = pair_geometry(rig, pair, bottom_z, cameras)
            survey_store.write_pair_geometry(pair.key, geometry)
            rows.append({k: geometry[k] for k in ("ref", "src", "baseline_m", "overlap")})
        context.log.info(f"{len(rows)} pairs at {bottom_z:.3f} m")
        return dg.MaterializeResult(
            metadata={
                "pairs": table(pd.DataFrame(rows)),
                "bottom_z_m": bottom_z,
                "calibration_hash": rig.content_hash,
            }
        )

    return [survey_calibration, frames, camera_pair_geometry]
