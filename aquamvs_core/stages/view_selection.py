"""View selection by geometry: which cameras see the same bed, through the water, and at what angle.

The bed is modelled as a few horizontal planes spanning the expected water depths. On each plane a
lattice of bed points covers the union of the cameras' footprints. Every camera is modelled on its
*original* image with its lens (:class:`~aquamvs_core.camera.lens.Lens`, fold-guarded), so a
camera "sees" a point when its exact refractive projection lands inside the original image. For
every pair of cameras and every point both see, the **triangulation angle** is the angle between
the two refracted rays at the point.

* :func:`pair_scores`: for every camera pair, the sum over the shared points of an angle weight
  ``w(θ)`` (0 below ``min_angle_deg``, ``(θ / good_angle_deg)²`` up to 1, fading out beyond
  ``max_angle_deg``): footprint overlap times triangulation quality (as COLMAP scores its sources
  by shared points and angle);
* :func:`cover_pairs`: the coverage guarantee. A point seen by a set ``S`` of two or more cameras
  can be reconstructed when at least two cameras of ``S`` have a selected source in ``S`` (each
  then has a depth there, and fusion needs two depths that agree). Greedy set cover adds, both
  ways, the camera pair that makes the most uncovered points covered, until every point that any
  pair with a usable angle can cover is covered.

Everything is a pure, deterministic function of the calibration and the depth range (float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aquamvs_core.camera.calibration import Rig
from aquamvs_core.camera.refraction import RefractiveCamera, point_at_ray_depth, world_z_to_ray_depth


@dataclass(frozen=True)
class BedSampling:
    """Which camera sees which bed point, and the refracted ray towards it.

    Attributes:
        names: camera names, in rig order.
        seen: (C, N) bool, camera c sees point n (inside its original image, within its lens's fold).
        rays: (C, N, 3) float64 unit refracted directions from the water surface down to the point.
        plane: (N,) index of the depth plane of each point.
    """

    names: list[str]
    seen: np.ndarray
    rays: np.ndarray
    plane: np.ndarray


def sample_bed(
    rig: Rig,
    names: list[str],
    water_depth_m: tuple[float, float],
    n_planes: int = 3,
    grid: int = 64,
) -> BedSampling:
    """Lattice of bed points on ``n_planes`` planes ``Z = water_z + depth`` (``depth`` spanning
    ``water_depth_m``), ``grid`` × ``grid`` over the union of the footprints on each plane."""
    lo, hi = water_depth_m
    if not 0 < lo <= hi:
        raise ValueError(f"water_depth_m must be 0 < low <= high metres, got {water_depth_m}")
    cams = {n: RefractiveCamera.from_calibration(rig[n], rig.interface, with_lens=True) for n in names}
    water_z = rig.interface.water_z
    depths = np.linspace(lo, hi, n_planes) if n_planes > 1 else np.array([0.5 * (lo + hi)])
    points, planes = [], []
    with torch.no_grad():
        borders = {}
        for n, cam in cams.items():
            w, h = cam.image_size
            t = torch.linspace(0.0, 1.0, 17, dtype=torch.float64)
            border = torch.cat(
                [
                    torch.stack([t * (w - 1), torch.zeros_like(t)], -1),
                    torch.stack([t * (w - 1), torch.full_like(t, h - 1.0)], -1),
                    torch.stack([torch.zeros_like(t), t * (h - 1)], -1),
                    torch.stack([torch.full_like(t, w - 1.0), t * (h - 1)], -1),
                ]
            )
            o, d, ok = cam.cast_ray(border)
            borders[n] = (o[ok], d[ok])
        for i, depth in enumerate(depths):
            z = water_z + float(depth)
            corners = []
            for o, d in borders.values():
                s = world_z_to_ray_depth(d, torch.full_like(d[:, 0], z), water_z)
                corners.append(point_at_ray_depth(o, d, s)[:, :2].numpy())
            xy = np.concatenate(corners)
            (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
            xx, yy = np.meshgrid(np.linspace(x0, x1, grid), np.linspace(y0, y1, grid))
            points.append(np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, z)], -1))
            planes.append(np.full(xx.size, i))
        pts = torch.from_numpy(np.concatenate(points))
        seen = np.zeros((len(names), pts.shape[0]), dtype=bool)
        rays = np.zeros((len(names), pts.shape[0], 3))
        for c, n in enumerate(names):
            uv, ok, _, d = cams[n].project_rays(pts)
            seen[c] = (ok & cams[n].in_image(uv)).numpy()
            rays[c] = d.numpy()
    return BedSampling(names=list(names), seen=seen, rays=rays, plane=np.concatenate(planes))


def angle_weight(
    angle_deg: np.ndarray,
    min_angle_deg: float = 2.0,
    good_angle_deg: float = 10.0,
    max_angle_deg: float = 45.0,
) -> np.ndarray:
    """Weight of a triangulation angle (degrees): 0 below ``min_angle_deg``, ``(θ / good)²`` up to 1 at
    ``good_angle_deg``, 1 up to ``max_angle_deg``, then a Gaussian fall-off (15° wide)."""
    a = np.asarray(angle_deg, dtype=np.float64)
    w = np.minimum(1.0, (a / good_angle_deg) ** 2)
    w = np.where(a > max_angle_deg, np.exp(-(((a - max_angle_deg) / 15.0) ** 2)), w)
    return np.where(a >= min_angle_deg, w, 0.0)


def pair_angles(bed: BedSampling) -> np.ndarray:
    """(C, C, N) triangulation angle (degrees) of every camera pair at every point (NaN where not
    both see it)."""
    cos = np.einsum("anx,bnx->abn", bed.rays, bed.rays).clip(-1.0, 1.0)
    both = bed.seen[:, None, :] & bed.seen[None, :, :]
    return np.where(both, np.degrees(np.arccos(cos)), np.nan)


def pair_scores(angles: np.ndarray, **weight_args: float) -> np.ndarray:
    """(C, C) symmetric score: Σ over shared points of :func:`angle_weight` (0 on the diagonal)."""
    w = angle_weight(np.nan_to_num(angles, nan=0.0), **weight_args)
    score = w.sum(axis=-1)
    np.fill_diagonal(score, 0.0)
    return score


def coverage(seen: np.ndarray, sources: list[set[int]]) -> np.ndarray:
    """(N,) bool: points seen by >= 2 cameras of which at least two have a selected source that sees
    the point too (``sources[c]``: indices of camera c's sources)."""
    has = np.zeros_like(seen)
    for c, src in enumerate(sources):
        if src:
            has[c] = seen[c] & seen[sorted(src)].any(axis=0)
    return has.sum(axis=0) >= 2


def cover_pairs(
    seen: np.ndarray, usable: np.ndarray, sources: list[set[int]], max_added: int = 64
) -> list[tuple[int, int]]:
    """Greedy set cover (see the module docstring): adds camera pairs (both ways) to ``sources`` (in
    place) until every point that some usable pair could cover is covered.

    Args:
        seen: (C, N) bool visibility.
        usable: (C, C, N) bool: the pair's triangulation angle at the point is usable.
        sources: per camera, the indices of its selected sources (modified).
        max_added: stop after this many added pairs.

    Returns:
        The added unordered pairs ``(a, b)``, ``a < b``, in the order they were added.
    """
    n_cams = seen.shape[0]
    # Points that at least one usable pair sees: the only ones that can ever be covered.
    coverable = usable.any(axis=(0, 1))
    added: list[tuple[int, int]] = []
    for _ in range(max_added):
        covered = coverage(seen, sources)
        todo = coverable & ~covered
        if not todo.any():
            break
        has = np.zeros_like(seen)
        for c, src in enumerate(sources):
            if src:
                has[c] = seen[c] & seen[sorted(src)].any(axis=0)
        count = has.sum(axis=0)
        best, best_gain = None, 0
        for a in range(n_cams):
            for b in range(a + 1, n_cams):
                if b in sources[a] and a in sources[b]:
                    continue
                both = usable[a, b] & todo
                if not both.any():
                    continue
                # Adding a→b and b→a gives a and b a source wherever both see the point.
                gain_count = count + (both & ~has[a]) + (both & ~has[b])
                gain = int((todo & (gain_count >= 2)).sum())
                if gain > best_gain:
                    best, best_gain = (a, b), gain
        if best is None:
            break
        a, b = best
        sources[a].add(b)
        sources[b].add(a)
        added.append(best)
    return added
