"""What every store-level step shares: the registry of stages (one per asset, named after it), the
cameras of the store's undistorted images, the pairs the dense stages use, and provenance attrs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.config import ReconstructionConfig
from aquamvs_core.stages.pairs import CameraPair
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Product


@dataclass(frozen=True)
class Stage:
    """A reconstruction stage: the asset (and store product) it makes, and its partitioning."""

    product: Product
    per_pair: bool  # partitioned by frame × pair (else by frame)

    @property
    def name(self) -> str:
        return self.product.value


#: The reconstruction stages in data-flow order (the assets after ``frames``).
STAGES: tuple[Stage, ...] = (
    Stage(Product.SPARSE_MATCHES, per_pair=True),
    Stage(Product.SPARSE_CLOUD, per_pair=False),
    Stage(Product.PAIRWISE_DEPTHS, per_pair=True),
    Stage(Product.CAMERA_DEPTHS, per_pair=False),
    Stage(Product.FUSED_CLOUD, per_pair=False),
    Stage(Product.MESH, per_pair=False),
)
#: The dense stages (those that the pathway's dense depth feeds).
DENSE_STAGES: tuple[Stage, ...] = STAGES[2:]


@dataclass(frozen=True)
class StoreCameras:
    """The refractive cameras of a store's undistorted images, and their validity masks."""

    cameras: dict[str, RefractiveCamera]
    masks: dict[str, np.ndarray]
    calibration_hash: str

    @classmethod
    def load(cls, store: SurveyStore) -> StoreCameras:
        rig = store.read_rig()
        Ks = store.read_undistorted_K()
        masks = store.read_valid_masks()
        lens = set(store.read_lens_cameras())
        cams = {}
        for n in rig.camera_names:
            if n in lens:
                cams[n] = RefractiveCamera.from_calibration(rig[n], rig.interface, with_lens=True)
            else:
                h, w = masks[n].shape
                cams[n] = RefractiveCamera.from_calibration(rig[n], rig.interface, Ks[n], (w, h))
        return cls(cams, masks, rig.content_hash)


def dense_pairs(
    store: SurveyStore, pairs: Sequence[CameraPair], config: ReconstructionConfig
) -> list[CameraPair]:
    """The pairs the plane sweep uses: all of them, or without auxiliary sources when
    ``config.use_auxiliary_sources`` is off."""
    if config.use_auxiliary_sources:
        return list(pairs)
    aux = set(store.read_rig().auxiliary_names)
    return [p for p in pairs if p.src not in aux]


def provenance(store_cams: StoreCameras, frame: str, config: ReconstructionConfig, **extra: Any) -> dict:
    return {
        "frame": frame,
        "calibration_hash": store_cams.calibration_hash,
        "preset": config.preset,
        "pathway": config.pathway,
        **extra,
    }
