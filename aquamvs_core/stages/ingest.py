"""Frame ingestion: decode a survey's frames, undistort them, and write them to the store.

This is the pure pipeline step that the Dagster ``frames`` asset, the CLI and the Python API all
call. It takes an open :class:`~aquamvs_core.survey.spec.Survey` and a
:class:`~aquamvs_core.store.survey_store.SurveyStore`; nothing here knows about Dagster.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from aquamvs_core.camera.calibration import Rig
from aquamvs_core.camera.distortion import (
    UndistortionMap,
    build_undistortion_map,
    undistort_image,
    undistorted_intrinsics,
)
from aquamvs_core.store.survey_store import SurveyStore
from aquamvs_core.survey.spec import Survey, frame_key

log = logging.getLogger("aquamvs.ingest")


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


def write_calibration(store: SurveyStore, rig: Rig, undistorter: Undistorter) -> None:
    """Record the calibration, the undistorted intrinsics and validity masks in the store."""
    store.write_calibration(rig, undistorter.K_new, undistorter.valid_masks)


@dataclass(frozen=True)
class IngestedFrame:
    """What one frame ingestion wrote."""

    key: str
    index: int
    cameras: tuple[str, ...]
    seconds: float


def ingest_frames(
    survey: Survey,
    store: SurveyStore,
    indices: Iterable[int],
    undistorter: Undistorter | None = None,
    on_frame: Callable[[IngestedFrame, int, int], None] | None = None,
) -> list[IngestedFrame]:
    """Decode, undistort and store frames ``indices`` of ``survey`` (one store group per frame).

    Each frame is written atomically (see :mod:`aquamvs_core.store.survey_store`). ``on_frame(frame, done, total)``
    is called after each frame for progress reporting.
    """
    indices = list(indices)
    unknown = [i for i in indices if i not in set(survey.frame_indices) and not 0 <= i < survey.num_frames]
    if unknown:
        raise IndexError(f"frame indices {unknown} are outside the survey's {survey.num_frames} frames")
    undistorter = undistorter or Undistorter.for_rig(survey.rig)
    sources = {name: src.path for name, src in survey.sources.items()}
    done: list[IngestedFrame] = []
    for n, index in enumerate(indices, start=1):
        t0 = time.perf_counter()
        key = frame_key(index)
        images = undistorter.apply(survey.read_frame(index))
        store.write_frame(
            key,
            images,
            attrs={
                "frame_index": index,
                "calibration_hash": survey.rig.content_hash,
                "sources": sources,
            },
        )
        record = IngestedFrame(key, index, tuple(images), time.perf_counter() - t0)
        done.append(record)
        log.info("ingested frame %s (%d/%d) in %.2f s", key, n, len(indices), record.seconds)
        if on_frame is not None:
            on_frame(record, n, len(indices))
    return done
