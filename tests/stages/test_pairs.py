"""View selection by geometry on an inward-tilted ring with a central fisheye: the coverage guarantee
checked on an independent, finer bed grid; the angle weighting; determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.stages.pairs import CameraPair, select_pairs
from aquamvs_core.stages.view_selection import angle_weight, coverage
from aquamvs_core.synthetic import SyntheticSurveyConfig, make_rig

DEPTHS = (0.3, 0.7)


@pytest.fixture(scope="module")
def ring_rig():
    """12 cameras tilted 24° inwards on a 0.3 m ring, a central fisheye, 800×600."""
    config = SyntheticSurveyConfig(seed=4, n_ring_cameras=12, ring_tilt_deg=24.0, image_size=(800, 600))
    return make_rig(config)


def independent_views(rig, depths: list[float], n: int = 71):
    """(C, N) visibility and (C, N, 3) refracted rays of a bed grid unlike the selection's own: finer,
    on other depths, over a fixed square (exact refractive projections, original images, lens)."""
    cams = [
        RefractiveCamera.from_calibration(rig[c], rig.interface, with_lens=True) for c in rig.camera_names
    ]
    xs = np.linspace(-1.2, 0.6, n)
    ys = np.linspace(-0.9, 0.9, n)
    pts = []
    for d in depths:
        xx, yy = np.meshgrid(xs, ys)
        pts.append(np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, rig.interface.water_z + d)], -1))
    p = torch.from_numpy(np.concatenate(pts))
    seen, rays = [], []
    for cam in cams:
        uv, ok, _, d = cam.project_rays(p)
        seen.append((ok & cam.in_image(uv)).numpy())
        rays.append(d.numpy())
    return np.array(seen), np.array(rays)


def covered_fraction(rig, pairs: list[CameraPair], seen: np.ndarray, rays: np.ndarray) -> tuple[float, int]:
    """Fraction of the cells seen by >= 2 cameras (with a usable angle between two of them) where at
    least two of those cameras have a selected source that sees the cell too; and how many cells."""
    index = {n: i for i, n in enumerate(rig.camera_names)}
    sources = [set() for _ in rig.camera_names]
    for p in pairs:
        sources[index[p.ref]].add(index[p.src])
    cos = np.einsum("anx,bnx->abn", rays, rays).clip(-1, 1)
    both = seen[:, None] & seen[None]
    usable = both & (angle_weight(np.degrees(np.arccos(cos))) > 0)
    cells = usable.any(axis=(0, 1)) & (seen.sum(axis=0) >= 2)
    ok = coverage(seen, sources)
    return float(ok[cells].mean()), int(cells.sum())


def nearest_pairs(rig, k: int = 4) -> list[CameraPair]:
    """The previous rule: each primary camera's k nearest primaries by centre distance, plus the
    auxiliary as a source."""
    prim = rig.primary_names
    c = np.stack([rig[n].center for n in prim])
    dist = np.linalg.norm(c[:, None] - c[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    out = []
    for i, ref in enumerate(prim):
        out += [CameraPair(ref, prim[j]) for j in np.argsort(dist[i], kind="stable")[:k]]
        out += [CameraPair(ref, a) for a in rig.auxiliary_names]
    return out


def test_every_cell_seen_by_two_cameras_is_covered_on_a_tilted_ring(ring_rig):
    pairs = select_pairs(ring_rig, k=4, water_depth_m=DEPTHS)
    seen, rays = independent_views(ring_rig, [0.35, 0.5, 0.65])
    fraction, n_cells = covered_fraction(ring_rig, pairs, seen, rays)
    assert n_cells > 8000
    # Sampled independently of the selection (finer grid, other depths): the greedy cover's own
    # samples are all covered; between them only slivers at footprint edges can be missed.
    assert fraction > 0.998
    # The previous nearest-centre rule leaves the cells that only far-apart cameras share.
    old, _ = covered_fraction(ring_rig, nearest_pairs(ring_rig), seen, rays)
    assert old < 0.97
    # Cells seen by exactly two cameras: every one of them.
    two = seen.sum(axis=0) == 2
    index = {n: i for i, n in enumerate(ring_rig.camera_names)}
    selected = {(index[p.ref], index[p.src]) for p in pairs}
    pair_of = [tuple(np.flatnonzero(seen[:, i])) for i in np.flatnonzero(two)]
    both_ways = [(a, b) in selected and (b, a) in selected for a, b in pair_of]
    assert np.mean(both_ways) > 0.995


def test_selection_is_deterministic_and_uses_the_auxiliary(ring_rig):
    a = select_pairs(ring_rig, k=4, water_depth_m=DEPTHS)
    b = select_pairs(
        make_rig(SyntheticSurveyConfig(seed=4, n_ring_cameras=12, ring_tilt_deg=24.0, image_size=(800, 600))),
        k=4,
        water_depth_m=DEPTHS,
    )
    assert a == b and len(set(a)) == len(a)
    refs = {p.ref for p in a}
    assert refs == set(ring_rig.camera_names)  # the fisheye is a reference too (its 2-view cells)
    assert all(p.ref != p.src for p in a)
    per_ref = {r: sum(p.ref == r for p in a) for r in refs}
    assert min(per_ref.values()) >= 4
    # Without auxiliaries, none appears.
    prim = select_pairs(ring_rig, k=4, include_auxiliary=False, water_depth_m=DEPTHS)
    assert all(p.src in ring_rig.primary_names and p.ref in ring_rig.primary_names for p in prim)


def test_angle_weight():
    w = angle_weight(np.array([0.5, 1.9, 2.0, 5.0, 10.0, 30.0, 45.0, 60.0]))
    assert w[0] == 0 and w[1] == 0 and w[2] == pytest.approx(0.04)
    assert w[3] == pytest.approx(0.25) and w[4] == 1 and w[5] == 1 and w[6] == 1
    assert w[7] == pytest.approx(math.exp(-1.0))


def test_bad_arguments(ring_rig):
    with pytest.raises(ValueError, match="k must be >= 1"):
        select_pairs(ring_rig, k=0)
    with pytest.raises(ValueError, match="water_depth_m"):
        select_pairs(ring_rig, k=2, water_depth_m=(0.5, 0.2))


def test_pair_geometry_with_cameras_built_once_is_the_same(ring_rig):
    """The calibration job builds each camera once for all pairs (``lens_cameras``): the geometry is
    the one each pair's own cameras give; a camera overlaps itself fully, and ring neighbours tilted
    inwards share much of the bed."""
    from aquamvs_core.stages.pairs import lens_cameras, pair_geometry, pair_overlap

    pairs = select_pairs(ring_rig, 4)[:10]
    bottom_z = ring_rig.interface.water_z + 0.5
    cameras = lens_cameras(ring_rig)
    assert set(cameras) == set(ring_rig.camera_names)
    for pair in pairs:
        shared = pair_geometry(ring_rig, pair, bottom_z, cameras)
        assert shared == pair_geometry(ring_rig, pair, bottom_z)
        assert 0.3 < shared["overlap"] <= 1.0
    cam = cameras[ring_rig.primary_names[0]]
    assert pair_overlap(cam, cam, bottom_z) == pytest.approx(1.0, abs=1e-9)
