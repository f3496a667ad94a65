"""Camera pair selection for stereo: each primary camera with its k nearest neighbours, plus auxiliaries.

A pair is *directed*: ``ref`` is the camera whose depth map is computed, ``src`` the camera it is
matched against. Its partition key is ``"<ref>-<src>"``; keys are looked up, never split, so
camera names that contain ``-`` stay unambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aquamvs_core.calibration import Rig


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
