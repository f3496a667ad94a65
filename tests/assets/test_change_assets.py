"""The change assets through Dagster on a store of exact ground-truth clouds: per-frame
materializations, the lineage of the two frames of each change, the previews and tables, a
single run over a range of frames, and the summary over all frames."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest
import yaml

from aquamvs_assets.assets.change import bed_change, change_summary, heightfield
from aquamvs_assets.partitions import frame_partitions
from aquamvs_assets.resources import ReconstructionSettings, ZarrStoreResource
from aquamvs_core import steps

FUSED_CLOUD = dg.AssetSpec("fused_cloud", partitions_def=frame_partitions)


def _resources(spec, store) -> dict:
    cams = steps.StoreCameras.load(store)
    c = np.mean([cam.center.numpy()[:2] for cam in cams.cameras.values()], axis=0)
    extent = [float(c[0] - 0.15), float(c[0] + 0.15), float(c[1] - 0.15), float(c[1] + 0.15)]
    overrides = {"heightfield": {"extent_m": extent, "psf_sigma_mm": 0.0}}
    return {
        "store": ZarrStoreResource(root=spec.store),
        "reconstruction": ReconstructionSettings(preset="fast", overrides_yaml=yaml.safe_dump(overrides)),
    }


def _meta(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(asset)[-1].metadata.items()}


def test_change_assets_record_both_frames_of_each_change(change_store):
    spec, store, _gt, frames = change_store
    resources = _resources(spec, store)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("frames", frames)
        for frame in frames:  # frame by frame, as the automation does when frames arrive
            result = dg.materialize(
                [FUSED_CLOUD, heightfield, bed_change],
                partition_key=frame,
                instance=instance,
                resources=resources,
            )
            assert result.success
        hf = _meta(result, "heightfield")
        assert hf["valid_cells"] > 40_000 and hf["psf_sigma_mm"] == 0.0
        assert "data:image/png;base64," in hf["hillshade"]
        meta = _meta(result, "bed_change")
        assert (meta["from_frame"], meta["reference_frame"]) == ("f000001", "f000000")
        assert "/assets/heightfield?view=partitions&partition=f000001" in meta["lineage"]
        assert "/assets/heightfield?view=partitions&partition=f000000" in meta["lineage"]
        for kind in ("previous", "reference"):
            assert "data:image/png;base64," in meta[f"{kind}_change_map"]
            assert meta[f"{kind}_deepened_mL"] > 1.0 and meta[f"{kind}_raised_mL"] > 1.0  # sand moved
        # Twice the time, about twice the volume of the nest's deepening and the mound's growth.
        assert meta["reference_deepened_mL"] == pytest.approx(2 * meta["previous_deepened_mL"], rel=0.15)
        rows = {r.data["from_frame"]: r.data for r in meta["volumes"].records}
        assert rows["f000001"]["kinds"] == "previous" and rows["f000000"]["kinds"] == "reference"
        assert instance.get_materialized_partitions(dg.AssetKey("bed_change")) == set(frames)

        summary = dg.materialize(
            [bed_change, change_summary], selection=[change_summary], instance=instance, resources=resources
        )
        assert summary.success
        meta = _meta(summary, "change_summary")
        assert meta["frames"] == 2 and len(meta["summary"].records) == 3  # 0→1, 1→2, 0→2
        assert "data:image/png;base64," in meta["volume_since_reference"]
        assert "data:image/png;base64," in meta["volume_per_step"]
        table = store.read_table(steps.CHANGE_SUMMARY_TABLE)
        assert set(zip(table.from_index, table.frame_index, strict=True)) == {(0, 1), (1, 2), (0, 2)}


def test_a_range_of_frames_is_one_run_in_frame_order(change_store):
    spec, store, _gt, frames = change_store
    resources = _resources(spec, store)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("frames", frames)
        tags = {
            "dagster/asset_partition_range_start": frames[0],
            "dagster/asset_partition_range_end": frames[-1],
        }
        defs = dg.Definitions(
            assets=[FUSED_CLOUD, heightfield, bed_change],
            jobs=[dg.define_asset_job("change_range", selection=[heightfield, bed_change])],
            resources=resources,
        )
        result = defs.resolve_job_def("change_range").execute_in_process(instance=instance, tags=tags)
        assert result.success and len(instance.get_runs()) == 1
        meta = _meta(result, "bed_change")
        volumes = {(r.data["from_frame"], r.data["frame"]) for r in meta["run_volumes"].records}
        assert volumes == {("f000000", "f000001"), ("f000001", "f000002"), ("f000000", "f000002")}
    change, _ = steps.read_bed_change(store, frames[2], frames[1])
    assert np.isfinite(change.dz).sum() > 40_000
