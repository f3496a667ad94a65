"""Ingestion steps: the calibration (with the undistorted intrinsics and validity masks) and the
undistorted frames, written to the store. Each frame is written atomically (see
:mod:`aquamvs_core.store.commit`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aquamvs_core.camera.calibration import Rig
from aquamvs_core.stages.ingest import Undistorter
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Survey, frame_key

log = logging.getLogger("aquamvs.ingest")


def write_calibration(store: SurveyStore, rig: Rig, undistorter: Undistorter) -> None:
    """Record the calibration, the stored images' intrinsics, validity masks and which cameras keep
    their original pixel grid, in the store."""
    store.write_calibration(rig, undistorter.K_new, undistorter.valid_masks, undistorter.lens_cameras)


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

    ``on_frame(frame, done, total)`` is called after each frame for progress reporting.
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
