"""Ingestion: undistort a rig's raw frames onto the undistorted intrinsics used downstream
(:class:`Undistorter`). The store-level step that decodes, undistorts and writes frames is
:func:`aquamvs_core.steps.ingestion.ingest_frames`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aquamvs_core.camera.calibration import Rig
from aquamvs_core.camera.distortion import undistorted_intrinsics
from aquamvs_core.camera.undistortion import UndistortionMap, build_undistortion_map, undistort_image


@dataclass(frozen=True)
class Undistorter:
    """Per-camera undistortion maps to the undistorted intrinsics used downstream."""

    maps: dict[str, UndistortionMap]

    @classmethod
    def for_rig(cls, rig: Rig, device: str = "cpu") -> Undistorter:
        return cls(
            {
                name: build_undistortion_map(cam, undistorted_intrinsics(cam), device=device)
                for name, cam in rig.cameras.items()
            }
        )

    @property
    def K_new(self) -> dict[str, np.ndarray]:
        """(3, 3) undistorted intrinsics per camera."""
        return {name: m.K_new for name, m in self.maps.items()}

    @property
    def valid_masks(self) -> dict[str, np.ndarray]:
        """(H, W) bool per camera: undistorted pixels that have a source pixel in the raw image."""
        return {name: m.valid.cpu().numpy().astype(bool) for name, m in self.maps.items()}

    def apply(self, images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Undistort raw (H, W, 3) uint8 RGB images, keyed by camera."""
        return {name: undistort_image(img, self.maps[name]) for name, img in images.items()}
