"""Change steps on a store whose fused clouds are the exact ground truth of three frames: the
heightfield product (tiles, one grid), the bed change against the exact change, the choice of the
previous and reference frames, the summary table and the file exports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

from aquamvs_core import steps
from aquamvs_core.config import build_config
from aquamvs_core.evaluation.change_metrics import change_metrics, gt_on_grid
from aquamvs_core.store.commit import committed_contents
from aquamvs_core.survey import Product, product_path


def _config(store, **change):
    """A grid of 1 mm cells over the 0.3 m square around the rig's centre; no blur compensation
    (the clouds are exact)."""
    cams = steps.StoreCameras.load(store)
    centre = np.mean([c.center.numpy()[:2] for c in cams.cameras.values()], axis=0)
    extent = [centre[0] - 0.15, centre[0] + 0.15, centre[1] - 0.15, centre[1] + 0.15]
    return build_config(
        "fast", overrides={"heightfield": {"extent_m": extent, "psf_sigma_mm": 0.0}, "change": change}
    )


def test_heightfield_product_is_tiled_on_one_grid_and_exact(change_store):
    spec, store, gt, frames = change_store
    config = _config(store)
    beds = [steps.heightfield_step(store, f, config) for f in frames]
    assert len({b.grid for b in beds}) == 1 and beds[0].grid.shape == (301, 301)
    group = zarr.open_group(spec.store, mode="r")[f"products/heightfield/{frames[0]}"]
    assert committed_contents(group)["z"].chunks == (256, 256) and group.attrs["complete"] is True
    assert group.attrs["grid"] == beds[0].grid.attrs() and group.attrs["psf_sigma_m"] == 0.0
    read = steps.read_heightfield(store, frames[0])
    np.testing.assert_array_equal(read.z, beds[0].z)
    for index, bed in enumerate(beds):
        err = np.abs(bed.z - gt_on_grid(gt, index, bed.grid))[bed.count > 0]
        assert err.size > 35_000 and err.max() < 1e-9  # points at the cell centres: exact
        filled = np.abs(bed.z - gt_on_grid(gt, index, bed.grid))[bed.filled]
        # 15 % of the cells, from local planes: ripples curve by ~24 /m, so ~0.01 mm over 1 mm.
        assert filled.size > 4000 and np.median(filled) < 1e-5 and filled.max() < 5e-5
        assert np.isnan(bed.z[:, :20]).all()  # outside the cloud's disc: nothing
    assert steps.heightfield_frames(store) == frames


def test_default_grid_is_the_footprint_and_the_blur_follows_the_window(change_store):
    _spec, store, gt, frames = change_store
    config = build_config("fast")
    grid = steps.survey_grid(store, config)
    centre = gt.x.mean(), gt.y.mean()
    assert grid.x[0] < centre[0] - 0.3 < centre[0] + 0.3 < grid.x[-1]  # the ring is 0.6 m across
    bed = steps.heightfield_step(store, frames[0], config)
    attrs = store.product_attrs(product_path(Product.HEIGHTFIELD, frames[0]))
    assert attrs["psf_sigma_m"] == pytest.approx(config.plane_sweep.window * attrs["gsd_m"] / 12**0.5)
    assert bed.grid == grid and attrs["stats"]["valid_cells"] == int(bed.valid.sum())


def test_bed_change_matches_the_exact_change_and_names_its_frames(change_store):
    _spec, store, gt, frames = change_store
    config = _config(store)
    for f in frames:
        steps.heightfield_step(store, f, config)
    first = steps.bed_change_step(store, frames[0], frames, config)
    assert first.changes == {} and first.previous is None and first.reference is None
    last = steps.bed_change_step(store, frames[2], frames, config)
    assert (last.previous, last.reference) == (frames[1], frames[0])
    assert sorted(store.list_products(f"bed_change/{frames[2]}")) == [frames[0], frames[1]]
    change, attrs = steps.read_bed_change(store, frames[2], frames[0])
    assert (attrs["from_frame"], attrs["to_frame"], attrs["kinds"]) == (frames[0], frames[2], ["reference"])
    assert set(attrs["heightfields_written_at"]) == {frames[0], frames[2]}
    m = change_metrics(change, gt, 0, 2)
    assert m["median_abs_error_mm"] < 1e-3  # exact clouds: exact change
    assert m["deepened_rel_error"] == pytest.approx(0.0, abs=0.01)
    assert m["raised_rel_error"] == pytest.approx(0.0, abs=0.01)
    assert m["deepened_gt_m3"] > 5e-6  # the nest deepened by 1.6 mm: millilitres of sand
    bed_a, bed_b = steps.read_heightfield(store, frames[0]), steps.read_heightfield(store, frames[2])
    np.testing.assert_array_equal(change.dz, bed_b.z - bed_a.z)


def test_previous_frame_skips_a_frame_without_heightfield_and_reference_is_configurable(change_store):
    _spec, store, _gt, frames = change_store
    config = _config(store, reference_frame=1)
    for f in (frames[0], frames[2]):
        steps.heightfield_step(store, f, config)
    previous, reference, notes = steps.compared_frames(
        frames[2], frames, steps.heightfield_frames(store), config
    )
    assert previous == frames[0] and reference is None
    assert any("f000001 has no heightfield: previous frame is f000000" in n for n in notes)
    assert any("reference frame f000001 has no heightfield" in n for n in notes)
    with pytest.raises(FileNotFoundError, match="f000001 has no heightfield"):
        steps.bed_change_step(store, frames[1], frames, config)
    steps.heightfield_step(store, frames[1], config)
    result = steps.bed_change_step(store, frames[2], frames, config)
    assert list(result.changes) == [frames[1]] and {r["kinds"] for r in result.rows} == {"previous+reference"}
    early = steps.bed_change_step(store, frames[0], frames, config)  # the reference is later: compared too
    assert list(early.changes) == [frames[1]] and early.rows[0]["kinds"] == "reference"


def test_change_summary_and_exports(change_store, tmp_path):
    _spec, store, gt, frames = change_store
    circle = {"name": "nest", "center_m": [float(gt.x.mean()), float(gt.y.mean())], "radius_m": 0.08}
    config = _config(store, regions=[circle])
    for f in frames:
        steps.heightfield_step(store, f, config)
    for f in frames:
        steps.bed_change_step(store, f, frames, config)
    table = steps.change_summary_step(store)
    assert set(zip(table.frame, table.from_frame, table.region, strict=True)) == {
        (b, a, r)
        for a, b in ((frames[0], frames[1]), (frames[1], frames[2]), (frames[0], frames[2]))
        for r in ("all", "nest")
    }
    assert store.read_table(steps.CHANGE_SUMMARY_TABLE).shape == table.shape

    path = steps.export_heightfield(store, frames[1], tmp_path)
    assert path == tmp_path / "frame_000001" / "heightfield.npz"
    with np.load(path) as hf:
        x, y, z = hf["x"], hf["y"], hf["z"]
        assert z.shape == (y.size, x.size) and z.dtype == np.float64
        j, i = np.argwhere(np.isfinite(z))[len(x)]
        assert z[j, i] == pytest.approx(gt.height_at(1, np.array([[x[i], y[j]]]))[0], abs=1e-6)
    written = steps.export_changes(store, frames[::2] + frames[1:2], tmp_path, config)  # any order
    names = [p.name for p in written]
    assert names == ["frame_000000_to_000001.npz", "frame_000001_to_000002.npz", "volumes.csv"]
    with np.load(tmp_path / "changes" / names[1]) as ch, np.load(path) as hf:
        assert set(ch.files) == {"x", "y", "dz", "lod"}
        np.testing.assert_array_equal(ch["x"], hf["x"])
        z2 = steps.read_heightfield(store, frames[2]).z
        np.testing.assert_array_equal(ch["dz"], z2 - hf["z"])
        assert (ch["lod"][np.isfinite(ch["dz"])] > 0).all()
    volumes = pd.read_csv(tmp_path / "changes" / "volumes.csv")
    assert list(volumes.from_frame) == [0, 0, 1, 1] and list(volumes.region) == ["all", "nest", "all", "nest"]
    assert (volumes.deepened_m3 > 0).all() and not list(tmp_path.rglob(".*tmp*"))
