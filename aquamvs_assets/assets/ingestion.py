"""Ingestion assets: the survey calibration, the undistorted frames (with the ``frames_complete``
check) and each camera pair's geometry."""

import dagster as dg
from pydantic import Field

from aquamvs_assets.metadata import png
from aquamvs_assets.partitions import frame_partitions
from aquamvs_assets.resources import SurveyResource, ZarrStoreResource
from aquamvs_core.preview import mosaic
from aquamvs_core.stages.ingest import Undistorter
from aquamvs_core.stages.pairs import CameraPair, pair_geometry, survey_pairs
from aquamvs_core.steps import ingest_frames, write_calibration
from aquamvs_core.survey import frame_index

FRAMES_CHECK = "frames_complete"


@dg.asset(
    group_name="ingestion",
    kinds={"zarr"},
    description="The validated AquaCal calibration, undistorted intrinsics and per-camera validity "
    "masks, written to the store. Its data version is the calibration's content hash.",
)
def survey_calibration(
    context: dg.AssetExecutionContext, survey: SurveyResource, store: ZarrStoreResource
) -> dg.MaterializeResult:
    spec = survey.spec()
    rig = survey.rig()
    undistorter = Undistorter.for_rig(rig)
    write_calibration(store.get(), rig, undistorter)
    pairs = survey_pairs(rig, spec)
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
            "valid_fraction": dg.MetadataValue.json({n: round(float(m.mean()), 4) for n, m in masks.items()}),
            "store": store.root,
        },
    )


@dg.asset(
    partitions_def=frame_partitions,
    deps=[survey_calibration],
    group_name="ingestion",
    kinds={"zarr"},
    code_version="1",
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=16),
    check_specs=[
        dg.AssetCheckSpec(
            FRAMES_CHECK,
            asset="frames",
            description="Every camera's image was "
            "written completely, with the expected size and calibration hash.",
        )
    ],
    description="Undistorted RGB frames of every camera, one Zarr group per survey frame.",
)
def frames(
    context: dg.AssetExecutionContext, survey: SurveyResource, store: ZarrStoreResource
) -> dg.MaterializeResult:
    survey_store = store.get()
    keys = context.partition_keys
    with survey.open() as sv:
        stored = survey_store.read_calibration() if survey_store.has_calibration() else None
        if stored is None or stored.get("calibration_hash") != sv.rig.content_hash:
            raise dg.Failure(
                f"the store at {store.root} holds no calibration matching {sv.rig.source} "
                f"(hash {sv.rig.short_hash}); materialize survey_calibration first"
            )
        records = ingest_frames(
            sv,
            survey_store,
            [frame_index(k) for k in keys],
            on_frame=lambda r, n, total: context.log.info(
                f"frame {r.key}: {len(r.cameras)} cameras undistorted and stored "
                f"({n}/{total}, {r.seconds:.2f} s)"
            ),
        )
        w, h = sv.rig.image_size
        expected = set(sv.rig.camera_names)
        grids = survey_store.read_valid_masks()  # the stored grid of each camera
        problems = []
        for r in records:
            attrs = survey_store.frame_attrs(r.key)
            images = survey_store.read_frame(r.key)
            if set(images) != expected:
                problems.append(f"{r.key}: cameras {sorted(images)} != {sorted(expected)}")
            bad = [c for c, im in images.items() if c in grids and im.shape != (*grids[c].shape, 3)]
            if bad:
                problems.append(f"{r.key}: wrong image shape for {bad}")
            if attrs.get("calibration_hash") != sv.rig.content_hash:
                problems.append(f"{r.key}: calibration hash mismatch")
        preview = png(mosaic(images, tile_width=160), f"frame {records[-1].key}")
    return dg.MaterializeResult(
        metadata={
            "frames": dg.MetadataValue.json([r.key for r in records]),
            "cameras": len(expected),
            "image_size": f"{w}x{h}",
            "seconds_per_frame": round(sum(r.seconds for r in records) / len(records), 3),
            "calibration_hash": sv.rig.content_hash,
            "store_path": f"{store.root}/frames/{records[-1].key}",
            "preview": preview,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=FRAMES_CHECK,
                passed=not problems,
                metadata={"problems": dg.MetadataValue.json(problems), "frames_checked": len(records)},
            )
        ],
    )


class PairGeometryConfig(dg.Config):
    """Launchpad configuration of ``camera_pair_geometry``."""

    water_depth_m: float = Field(
        0.5, gt=0.0, description="Nominal water depth below the surface (m) at which overlap is measured."
    )


def build_pair_geometry_asset(
    pairs: list[CameraPair], partitions_def: dg.StaticPartitionsDefinition
) -> dg.AssetsDefinition:
    """The ``camera_pair_geometry`` asset for one rig's pairs."""
    by_key = {p.key: p for p in pairs}

    @dg.asset(
        partitions_def=partitions_def,
        deps=[survey_calibration],
        group_name="ingestion",
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
        for key in context.partition_keys:
            geometry = pair_geometry(rig, by_key[key], bottom_z)
            survey_store.write_pair_geometry(key, geometry)
            rows.append(geometry)
            context.log.info(
                f"pair {key}: baseline {geometry['baseline_m']:.3f} m, overlap {geometry['overlap']:.2f}"
            )
        first = rows[0]
        return dg.MaterializeResult(
            metadata={
                "baseline_m": first["baseline_m"],
                "overlap": first["overlap"],
                "pairs": len(rows),
                "bottom_z_m": bottom_z,
                "calibration_hash": rig.content_hash,
            }
        )

    return camera_pair_geometry
