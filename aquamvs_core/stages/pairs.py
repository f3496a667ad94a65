"""Camera pair selection for stereo: each primary camera with its k nearest neighbours, plus auxiliaries.

A pair is *directed*: ``ref`` is the camera whose depth map is computed, ``src`` the camera it is
matched against. Its partition key is ``"<ref>-<src>"``; keys are looked up, never split, so
camera names that contain ``-`` stay unambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aquamvs_core.camera.calibration import Rig
from aquamvs_core.camera.refraction import RefractiveCamera, point_at_ray_depth, world_z_to_ray_depth


@dataclass(frozen=True, order=True)
class CameraPair:
    """A directed stereo pair: depth for ``ref`` computed against ``src``."""

    ref: str
    src: str

    @property
    def key(self) -> str:
        return f"{self.ref}-{self.src}"


def select_pairs(rig: Rig, k: int = 4, include_auxiliary: bool = True) -> list[CameraPair]:
    """Directed pairs: every primary camera with its ``k`` nearest primary cameras (by centre
    distance), and every auxiliary camera as an extra source of each primary camera.

    Args:
        rig: the calibrated rig.
        k: neighbours per reference camera (clipped to the number of other primary cameras).
        include_auxiliary: add (primary, auxiliary) pairs.

    Returns:
        Pairs sorted by reference camera in rig order, then by distance.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    primary = rig.primary_names
    if len(primary) < 2:
        raise ValueError(f"pair selection needs at least two primary cameras, the rig has {primary}")
    centers = np.stack([rig[n].center for n in primary])
    dist = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    k = min(k, len(primary) - 1)
    pairs: list[CameraPair] = []
    for i, ref in enumerate(primary):
        order = np.argsort(dist[i], kind="stable")[:k]
        pairs.extend(CameraPair(ref, primary[j]) for j in order)
        if include_auxiliary:
            pairs.extend(CameraPair(ref, aux) for aux in rig.auxiliary_names)
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


def pair_geometry(rig: Rig, pair: CameraPair, bottom_z: float, K_undistorted: dict | None = None) -> dict:
    """Geometry of a directed pair: centre baseline (m) and overlap of ``ref``'s view of the plane
    ``Z = bottom_z`` with ``src``'s image, through the water (JSON-ready dict).

    ``K_undistorted`` maps camera → (3, 3) intrinsics of the undistorted images (default: the
    calibrated K).
    """
    Ks = K_undistorted or {}
    ref = RefractiveCamera.from_calibration(rig[pair.ref], rig.interface, Ks.get(pair.ref))
    src = RefractiveCamera.from_calibration(rig[pair.src], rig.interface, Ks.get(pair.src))
    baseline = float(np.linalg.norm(rig[pair.ref].center - rig[pair.src].center))
    return {
        "ref": pair.ref,
        "src": pair.src,
        "baseline_m": round(baseline, 6),
        "bottom_z_m": bottom_z,
        "overlap": round(pair_overlap(ref, src, bottom_z), 4),
        "src_is_auxiliary": rig[pair.src].is_auxiliary,
        "calibration_hash": rig.content_hash,
    }
