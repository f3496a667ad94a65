"""The change assets through Dagster on a store of exact ground-truth clouds: per-frame
materializations, the lineage of the two frames of each change, the previews and tables, a frame
whose previous frame is not reconstructed yet, and the summary over all frames."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest
import yaml

from aquamvs_assets.assets.change import build_change_assets
from aquamvs_assets.partitions import SurveyNamespace
from aquamvs_assets.resources import ReconstructionSettings, ZarrStoreResource
from aquamvs_core import steps


def _assets(ns: SurveyNamespace) -> tuple[dg.AssetSpec, dg.AssetsDefinition, ...]:
    """The fused cloud (an external spec: the fixture wrote it) and the three change assets."""
    return (dg.AssetSpec(ns.key("fused_cloud"), partitions_def=ns.frames), *build_change_assets(ns))


def _resources(spec, store) -> dict:
    cams = steps.StoreCameras.load(store)
    c = np.mean([cam.center.numpy()[:2] for cam in cams.cameras.values()], axis=0)
    extent = [float(c[0] - 0.15), float(c[0] + 0.15), float(c[1] - 0.15), float(c[1] + 0.15)]
    overrides = {"heightfield": {"extent_m": extent, "psf_sigma_mm": 0.0}}
    return {
        "store": ZarrStoreResource(root=spec.store),
        "reconstruction": ReconstructionSettings(preset="fast", overrides_yaml=yaml.safe_dump(overrides)),
    }


def _meta(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def test_change_assets_record_both_frames_of_each_change(change_store, ns):
    spec, store, _gt, frames = change_store
    fused, heightfield, bed_change, change_summary = _assets(ns)
    resources = _resources(spec, store)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ns.frames.name, frames)
        for frame in frames:  # frame by frame, as the reconstruct job and the automation do
            result = dg.materialize(
                [fused, heightfield, bed_change], partition_key=frame, instance=instance, resources=resources
            )
            assert result.success
        hf = _meta(result, heightfield.key)
        assert hf["valid_cells"] > 40_000 and hf["psf_sigma_mm"] == 0.0
        assert "data:image/png;base64," in hf["hillshade"]
        meta = _meta(result, bed_change.key)
        assert (meta["from_frame"], meta["reference_frame"]) == ("f000001", "f000000")
        link = f"/assets/{ns.survey}/heightfield?view=partitions&partition="
        assert f"{link}f000001" in meta["lineage"] and f"{link}f000000" in meta["lineage"]
        for kind in ("previous", "reference"):
            assert "data:image/png;base64," in meta[f"{kind}_change_map"]
            assert meta[f"{kind}_deepened_mL"] > 1.0 and meta[f"{kind}_raised_mL"] > 1.0  # sand moved
        # Twice the time, about twice the volume of the nest's deepening and the mound's growth.
        assert meta["reference_deepened_mL"] == pytest.approx(2 * meta["previous_deepened_mL"], rel=0.15)
        rows = {r.data["from_frame"]: r.data for r in meta["volumes"].records}
        assert rows["f000001"]["kinds"] == "previous" and rows["f000000"]["kinds"] == "reference"
        assert instance.get_materialized_partitions(bed_change.key) == set(frames)

        summary = dg.materialize(
            [bed_change, change_summary], selection=[change_summary], instance=instance, resources=resources
        )
        assert summary.success
        meta = _meta(summary, change_summary.key)
        assert meta["frames"] == 2 and len(meta["summary"].records) == 3  # 0→1, 1→2, 0→2
        assert "data:image/png;base64," in meta["volume_since_reference"]
        assert "data:image/png;base64," in meta["volume_per_step"]
        table = store.read_table(steps.CHANGE_SUMMARY_TABLE)
        assert set(zip(table.from_index, table.frame_index, strict=True)) == {(0, 1), (1, 2), (0, 2)}


def test_a_frame_before_its_predecessor_is_compared_with_the_latest_reconstructed(change_store, ns):
    """Frames 0 and 2 first, frame 1 later (as when the automation picks frames out of order): frame
    2's change is from frame 0 with a note; once frame 1 exists, re-materializing frame 2 compares
    it with frame 1, and an unchanged re-run keeps its data version (the stored change is reused)."""
    spec, store, _gt, frames = change_store
    fused, heightfield, bed_change, _summary = _assets(ns)
    resources = _resources(spec, store)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ns.frames.name, frames)

        def run(frame: str) -> tuple[dict, str]:
            result = dg.materialize(
                [fused, heightfield, bed_change], partition_key=frame, instance=instance, resources=resources
            )
            assert result.success
            event = next(
                e for e in result.get_asset_materialization_events() if e.asset_key == bed_change.key
            )
            return _meta(result, bed_change.key), event.materialization.tags["dagster/data_version"]

        run("f000000")
        meta, first = run("f000002")
        assert meta["from_frame"] == "f000000" and "f000001 has no heightfield" in meta["notes"]
        run("f000001")
        meta, second = run("f000002")
        assert (meta["from_frame"], meta["reference_frame"]) == ("f000001", "f000000")
        assert second != first  # compared with another frame: another version
        _meta_again, third = run("f000002")
        assert third == second  # nothing changed: the stored change is reused, same version
    change, _ = steps.read_bed_change(store, frames[2], frames[1])
    assert np.isfinite(change.dz).sum() > 40_000
