"""Camera pair selection for stereo (by the geometry of the views through the water, see
:mod:`aquamvs_core.stages.view_selection`), and each pair's overlap through the water.

A pair is *directed*: ``ref`` is the camera whose depth map is computed, ``src`` the camera it is
matched against. Its partition key is ``"<ref>-<src>"``; keys are looked up, never split, so
camera names that contain ``-`` stay unambiguous.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from aquamvs_core.camera.calibration import Rig
from aquamvs_core.camera.refraction import RefractiveCamera, point_at_ray_depth, world_z_to_ray_depth
from aquamvs_core.runtime import torch_threads
from aquamvs_core.stages.view_selection import angle_weight, cover_pairs, pair_angles, pair_scores, sample_bed
from aquamvs_core.survey.spec import DEFAULT_WATER_DEPTH_M, SurveySpec


@dataclass(frozen=True, order=True)
class CameraPair:
    """A directed stereo pair: depth for ``ref`` computed against ``src``."""

    ref: str
    src: str

    @property
    def key(self) -> str:
        return f"{self.ref}-{self.src}"


_CACHE: dict[tuple, list[CameraPair]] = {}


def select_pairs(
    rig: Rig,
    k: int = 4,
    include_auxiliary: bool = True,
    water_depth_m: tuple[float, float] = DEFAULT_WATER_DEPTH_M,
) -> list[CameraPair]:
    """Directed stereo pairs chosen by the geometry of the views through the water
    (:mod:`aquamvs_core.stages.view_selection`): every camera (auxiliary ones included) gets the ``k``
    sources with the highest score (shared bed points weighted by their triangulation angle), and
    then the coverage guarantee adds pairs, both ways, until every bed point seen by two or more
    cameras (with a usable angle) has at least two cameras with a depth there.

    A pure, deterministic function of the calibration and ``water_depth_m`` (cached by the
    calibration's content hash).

    Args:
        rig: the calibrated rig.
        k: sources per reference camera by score (clipped to the cameras that share any view).
        include_auxiliary: use the auxiliary cameras (as references and sources).
        water_depth_m: (low, high) water depths of the bed, metres below the surface.

    Returns:
        Pairs sorted by reference camera in rig order, then by decreasing score.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    primary = rig.primary_names
    if len(primary) < 2:
        raise ValueError(f"pair selection needs at least two primary cameras, the rig has {primary}")
    key = (rig.content_hash or id(rig), k, include_auxiliary, tuple(float(d) for d in water_depth_m))
    if key not in _CACHE or not rig.content_hash:
        _CACHE[key] = _select(rig, k, include_auxiliary, water_depth_m)
    return list(_CACHE[key])


def survey_pairs(rig: Rig, spec: SurveySpec) -> list[CameraPair]:
    """:func:`select_pairs` with a survey's settings (``pair_neighbours``, ``water_depth_m``)."""
    return select_pairs(rig, spec.pair_neighbours, water_depth_m=spec.water_depth_m)


def _select(
    rig: Rig, k: int, include_auxiliary: bool, water_depth_m: tuple[float, float]
) -> list[CameraPair]:
    names = rig.camera_names if include_auxiliary else rig.primary_names
    with torch_threads(1):  # small tensors: one thread is much faster on a busy CPU
        bed = sample_bed(rig, names, water_depth_m)
    angles = pair_angles(bed)
    score = pair_scores(angles)
    n = len(names)
    sources: list[set[int]] = [set() for _ in range(n)]
    for a in range(n):
        order = sorted((b for b in range(n) if b != a and score[a, b] > 0), key=lambda b: (-score[a, b], b))
        sources[a].update(order[:k])
    usable = angle_weight(np.nan_to_num(angles, nan=0.0)) > 0
    cover_pairs(bed.seen, usable, sources)
    pairs = []
    for a in range(n):
        for b in sorted(sources[a], key=lambda b: (-score[a, b], b)):
            pairs.append(CameraPair(names[a], names[b]))
    return pairs


def pair_overlap(ref: RefractiveCamera, src: RefractiveCamera, bottom_z: float, grid: int = 48) -> float:
    """Fraction of ``ref``'s image whose view of the plane ``Z = bottom_z`` (world, metres) is also
    inside ``src``'s image, through the water. Both cameras need ``image_size``.

    A ``grid`` × ``grid`` lattice of ``ref`` pixels is cast to the plane and projected into ``src``.
    """
    w, h = ref.image_size
    u = torch.linspace(0, w - 1, grid, dtype=torch.float64)
    v = torch.linspace(0, h - 1, grid, dtype=torch.float64)
    pixels = torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1).reshape(-1, 2)
    origins, directions, valid = ref.cast_ray(pixels)
    depth = world_z_to_ray_depth(directions, torch.full_like(pixels[:, 0], bottom_z), ref.water_z)
    uv, ok = src.project(point_at_ray_depth(origins, directions, depth))
    seen = valid & ok & src.in_image(uv)
    return float(seen.double().mean())


def pair_geometry(
    rig: Rig, pair: CameraPair, bottom_z: float, cameras: dict[str, RefractiveCamera] | None = None
) -> dict:
    """Geometry of a directed pair: centre baseline (m) and overlap of ``ref``'s view of the plane
    ``Z = bottom_z`` with ``src``'s image, through the water, on the original images (lens model,
    fold guard) (JSON-ready dict). ``cameras``: those cameras, built once for many pairs
    (:func:`lens_cameras`)."""
    cameras = cameras if cameras is not None else lens_cameras(rig, [pair.ref, pair.src])
    baseline = float(np.linalg.norm(rig[pair.ref].center - rig[pair.src].center))
    return {
        "ref": pair.ref,
        "src": pair.src,
        "baseline_m": round(baseline, 6),
        "bottom_z_m": bottom_z,
        "overlap": round(pair_overlap(cameras[pair.ref], cameras[pair.src], bottom_z), 4),
        "src_is_auxiliary": rig[pair.src].is_auxiliary,
        "calibration_hash": rig.content_hash,
    }


def lens_cameras(rig: Rig, names: Sequence[str] | None = None) -> dict[str, RefractiveCamera]:
    """The refractive cameras of the original images (lens model) of ``names`` (default: all), each
    built once (its lens inverse caches a lattice: ~35 ms a camera at 1600×1200)."""
    return {
        n: RefractiveCamera.from_calibration(rig[n], rig.interface, with_lens=True)
        for n in (rig.camera_names if names is None else names)
    }
