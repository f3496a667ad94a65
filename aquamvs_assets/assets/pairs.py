"""Camera-pair assets (partitioned by directed pair): the geometry of each stereo pair."""

import dagster as dg
from pydantic import Field

from aquamvs_assets.assets.ingestion import survey_calibration
from aquamvs_assets.resources import ZarrStoreResource
from aquamvs_core.stages.pairs import CameraPair, pair_geometry


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
        zarr_store = store.get()
        rig = zarr_store.read_rig()
        Ks = zarr_store.read_undistorted_K()
        bottom_z = rig.interface.water_z + config.water_depth_m
        rows = []
        for key in context.partition_keys:
            geometry = pair_geometry(rig, by_key[key], bottom_z, Ks)
            zarr_store.write_pair_geometry(key, geometry)
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
