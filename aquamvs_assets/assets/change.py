"""Change assets: ``heightfield`` [frame] → ``bed_change`` [frame] → ``change_summary``. Each calls
one step of :mod:`aquamvs_core.steps.change` and renders its metadata.

**Lineage of the two frames of a change.** Dagster 1.13 has no partition mapping to "the previous
partition" of a ``DynamicPartitionsDefinition`` (``TimeWindowPartitionMapping`` offsets need time
partitions), a custom ``PartitionMapping`` subclass is unsupported (Dagster warns that non-built-in
mappings do not work with automation, and only built-in ones reach the UI), and an asset depends
on another asset through one mapping only. So ``bed_change`` depends on the *same* frame's
``heightfield`` (identity: Dagster's lineage, staleness and automation), and the earlier frames
are resolved when it runs, from the registered frame partitions and the heightfields in the store
(:func:`aquamvs_core.steps.compared_frames`), then recorded: in the materialization's metadata
(``from_frame``, ``reference_frame``, links to both heightfield partitions) and in the product's
attrs (the two heightfields' fingerprints and write times). The ``reconstruct`` job ends with the
frame's bed change, and the CLI runs frames in order, so each frame is compared with the frame
before it; a frame whose previous frame is not reconstructed yet is compared with the latest one
that is (a note in the metadata says so).
"""

import dagster as dg
import pandas as pd

from aquamvs_assets.metadata import png, profiled, table
from aquamvs_assets.partitions import SurveyNamespace
from aquamvs_assets.resources import ReconstructionSettings, ZarrStoreResource
from aquamvs_core import steps
from aquamvs_core.preview import change_map, hillshade, line_chart
from aquamvs_core.survey import Product, product_path

GROUP = "change"
#: Volumes are shown in millilitres (cm³) in the UI; the store keeps SI units.
ML_PER_M3 = 1e6


def _link(key: dg.AssetKey, frame: str | None) -> str:
    """Markdown link to an asset partition in the Dagster UI."""
    if not frame:
        return "none"
    return f"[{key.path[-1]} {frame}](/assets/{'/'.join(key.path)}?view=partitions&partition={frame})"


def _ml(rows: list[dict]) -> pd.DataFrame:
    """The volume rows for display: volumes in mL, areas in cm², |dz| in mm."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    out = frame[[c for c in ("frame", "from_frame", "kinds", "region") if c in frame]].copy()
    for key in ("deepened", "raised", "net", "deepened_detected", "raised_detected"):
        out[f"{key}_mL"] = (frame[f"{key}_m3"] * ML_PER_M3).round(3)
    out["area_changed_cm2"] = (frame["area_changed_m2"] * 1e4).round(2)
    out["median_abs_dz_mm"] = frame["median_abs_dz_mm"].round(4)
    return out


def build_change_assets(ns: SurveyNamespace) -> list[dg.AssetsDefinition]:
    """``heightfield`` [frame], ``bed_change`` [frame] and ``change_summary`` of one survey."""

    @dg.asset(
        key=ns.key("heightfield"),
        partitions_def=ns.frames,
        deps=[ns.key("fused_cloud")],
        group_name=GROUP,
        kinds={"zarr"},
        code_version=steps.CODE_VERSIONS[Product.HEIGHTFIELD],
        automation_condition=dg.AutomationCondition.eager(),
        description="The bed as world Z on the survey's grid (1 mm cells by default, the same grid "
        "for every frame): per cell the height, point and camera counts and an uncertainty; NaN "
        "where nothing was reconstructed. Stored as tiles in the Zarr store.",
    )
    def heightfield(
        context: dg.AssetExecutionContext, store: ZarrStoreResource, reconstruction: ReconstructionSettings
    ) -> dg.MaterializeResult:
        survey_store, config, frame = store.get(), reconstruction.config(), context.partition_key
        with profiled(context, reconstruction.profile) as profile:
            bed = steps.heightfield_step(survey_store, frame, config)
            context.log.info(f"{frame}: {bed.stats()}")
            if reconstruction.export_dir:
                context.log.info(
                    f"exported {steps.export_heightfield(survey_store, frame, reconstruction.export_dir)}"
                )
        attrs = survey_store.product_attrs(product_path(Product.HEIGHTFIELD, frame))
        grid = bed.grid
        return dg.MaterializeResult(
            data_version=dg.DataVersion(steps.data_version(survey_store, Product.HEIGHTFIELD, frame)),
            metadata={
                **profile,
                **attrs["stats"],
                "grid": dg.MetadataValue.json(
                    {
                        **grid.attrs(),
                        "x_m": [float(grid.x[0]), float(grid.x[-1])],
                        "y_m": [float(grid.y[0]), float(grid.y[-1])],
                    }
                ),
                "psf_sigma_mm": round(1e3 * attrs["psf_sigma_m"], 3),
                "gsd_mm": round(1e3 * attrs["gsd_m"], 3),
                "hillshade": png(hillshade(bed.z, grid.cell), f"heightfield {frame}"),
            },
        )

    @dg.asset(
        key=ns.key("bed_change"),
        partitions_def=ns.frames,
        deps=[heightfield],
        group_name=GROUP,
        kinds={"zarr"},
        code_version=steps.CODE_VERSIONS[Product.BED_CHANGE],
        automation_condition=dg.AutomationCondition.eager(),
        description="Change of the bed from the previous frame and from the reference frame "
        "(default: the first): dz (positive = deeper), its level of detection, volumes deepened "
        "and raised. The earlier frames are in the metadata (from_frame, reference_frame).",
    )
    def bed_change(
        context: dg.AssetExecutionContext, store: ZarrStoreResource, reconstruction: ReconstructionSettings
    ) -> dg.MaterializeResult:
        survey_store, config, frame = store.get(), reconstruction.config(), context.partition_key
        frames = ns.frames.get_partition_keys(dynamic_partitions_store=context.instance)
        with profiled(context, reconstruction.profile) as profile:
            result = steps.bed_change_step(survey_store, frame, frames, config)  # logs its choices
        hf_key = ns.key("heightfield")
        meta = {
            **profile,
            "from_frame": result.previous or "none",
            "reference_frame": result.reference or "none",
            "lineage": dg.MetadataValue.md(
                f"{_link(hf_key, result.previous)} → {_link(hf_key, frame)} (previous); "
                f"{_link(hf_key, result.reference)} → {_link(hf_key, frame)} (reference)"
            ),
            "notes": "; ".join(result.notes) or "none",
        }
        if result.rows:
            meta["volumes"] = table(_ml(result.rows))
        for kind, earlier in (("previous", result.previous), ("reference", result.reference)):
            if earlier is None:
                continue
            change = result.changes[earlier]
            row = next(r for r in result.rows if r["from_frame"] == earlier and r["region"] == "all")
            meta[f"{kind}_deepened_mL"] = round(row["deepened_m3"] * ML_PER_M3, 3)
            meta[f"{kind}_raised_mL"] = round(row["raised_m3"] * ML_PER_M3, 3)
            meta[f"{kind}_area_changed_cm2"] = round(row["area_changed_m2"] * 1e4, 2)
            title = f"dz {earlier} -> {frame} ({100 * change.confidence:.0f} % LoD grey)"
            meta[f"{kind}_change_map"] = png(
                change_map(change.dz, change.lod, change.grid.cell, title=title), title
            )
        version = (
            steps.data_version(survey_store, Product.BED_CHANGE, frame)
            if result.changes
            else f"none-{steps.data_version(survey_store, Product.HEIGHTFIELD, frame)}"
        )
        return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata=meta)

    @dg.asset(
        key=ns.key("change_summary"),
        deps=[dg.AssetDep(bed_change, partition_mapping=dg.AllPartitionMapping())],
        group_name=GROUP,
        kinds={"pandas", "csv"},
        automation_condition=dg.AutomationCondition.eager(),
        description="Every frame's bed change in one table (volumes, area changed, median |dz|) and "
        "the volumes against time.",
    )
    def change_summary(context: dg.AssetExecutionContext, store: ZarrStoreResource) -> dg.MaterializeResult:
        survey_store = store.get()
        frames = ns.frames.get_partition_keys(dynamic_partitions_store=context.instance)
        summary = steps.change_summary_step(survey_store, frames)
        overall = summary[summary.region == "all"]
        meta = {
            "frames": int(overall.frame.nunique()),
            "path": dg.MetadataValue.path(survey_store.table_url(steps.CHANGE_SUMMARY_TABLE)),
        }
        if overall.empty:
            context.log.warning("no bed change stored yet: materialize bed_change for two frames or more")
            return dg.MaterializeResult(metadata=meta)
        meta["summary"] = table(_ml(overall.to_dict("records")))
        since_reference = overall[overall.kinds.str.contains("reference")].sort_values("frame_index")
        if not since_reference.empty:  # the reference frame itself is the origin, zero change
            x = [float(since_reference.from_index.iloc[0]), *since_reference.frame_index.astype(float)]
            series = {
                k: [0.0, *since_reference[f"{k}_m3"] * ML_PER_M3] for k in ("deepened", "raised", "net")
            }
            title = "volume since the reference frame (mL)"
            meta["volume_since_reference"] = png(line_chart(x, series, title, "frame"), title)
        per_step = overall[overall.kinds.str.contains("previous")].sort_values("frame_index")
        if not per_step.empty:
            x = list(per_step.frame_index.astype(float))
            series = {k: list(per_step[f"{k}_m3"] * ML_PER_M3) for k in ("deepened", "raised", "net")}
            title = "volume from the previous frame (mL)"
            meta["volume_per_step"] = png(line_chart(x, series, title, "frame"), title)
        return dg.MaterializeResult(metadata=meta)

    return [heightfield, bed_change, change_summary]
