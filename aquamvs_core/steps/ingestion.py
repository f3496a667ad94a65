"""Ingestion steps: the calibration (with each camera's stored grid: intrinsics, validity mask and
whether the lens stays in the camera model) and the frames on those grids, written to the store.
Each frame is written atomically (see :mod:`aquamvs_core.store.commit`)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from aquamvs_core.camera.calibration import Rig
from aquamvs_core.stages.ingest import Undistorter
from aquamvs_core.steps.common import fingerprint
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Survey, SurveySpec, frame_key

log = logging.getLogger("aquamvs.ingest")


def write_calibration(store: SurveyStore, rig: Rig, undistorter: Undistorter) -> None:
    """Record the calibration, the stored images' intrinsics, validity masks and which cameras keep
    their original pixel grid, in the store."""
    store.write_calibration(rig, undistorter.K_new, undistorter.valid_masks, undistorter.lens_cameras)


def source_hash(images: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the decoded raw (distorted) images of a frame, in camera-name order: what the
    ``frames_complete`` check re-derives from the inputs independently."""
    digest = hashlib.sha256()
    for name in sorted(images):
        image = np.ascontiguousarray(images[name])
        digest.update(f"{name}:{image.shape}:{image.dtype};".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class IngestedFrame:
    """What one frame ingestion wrote (``reused``: the stored frame already held this input)."""

    key: str
    index: int
    cameras: tuple[str, ...]
    seconds: float
    source_hash: str = ""
    reused: bool = False


def ingest_frames(
    survey: Survey,
    store: SurveyStore,
    indices: Iterable[int],
    undistorter: Undistorter | None = None,
    on_frame: Callable[[IngestedFrame, int, int], None] | None = None,
) -> list[IngestedFrame]:
    """Decode, undistort and store frames ``indices`` of ``survey`` (one store group per frame).

    A frame already in the store with the same decoded input and calibration (its fingerprint) is
    not written again. Each frame records ``source_hash`` (see :func:`source_hash`) and its
    ``fingerprint``. ``on_frame(frame, done, total)`` is called after each frame for progress.
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
        raw = survey.read_frame(index)
        digest = source_hash(raw)
        expected = fingerprint("frames", digest, survey.rig.content_hash, undistorter.canvas)
        reused = store.has_frame(key) and store.frame_attrs(key).get("fingerprint") == expected
        if not reused:
            store.write_frame(
                key,
                undistorter.apply(raw),
                attrs={
                    "frame_index": index,
                    "calibration_hash": survey.rig.content_hash,
                    "sources": sources,
                    "source_hash": digest,
                    "fingerprint": expected,
                },
            )
        record = IngestedFrame(key, index, tuple(raw), time.perf_counter() - t0, digest, reused)
        done.append(record)
        log.info(
            "%s frame %s (%d/%d) in %.2f s",
            "kept" if reused else "ingested", key, n, len(indices), record.seconds,
        )  # fmt: skip
        if on_frame is not None:
            on_frame(record, n, len(indices))
    return done


def verify_frames(spec: SurveySpec, store: SurveyStore, indices: Iterable[int]) -> dict[str, list[str]]:
    """Check ingested frames against their inputs, independently of the decoders that wrote them.

    The survey is opened again (fresh decoders: another access path than the ingestion's forward
    decoding), and for each frame: its index is within every camera's frame count; its decoded raw
    images hash to the ``source_hash`` recorded at ingestion (a video replaced or still being
    copied, or a decoder that lands on the wrong frame, shows here); the stored images have the
    rig's cameras and the size of each camera's stored grid (its validity mask: the original image,
    or the undistortion canvas); and the calibration hash is the survey's.

    Returns:
        frame key → problems (empty list: the frame is verified).
    """
    problems: dict[str, list[str]] = {}
    with Survey.open(spec) as fresh:
        rig = fresh.rig
        grids = {c: m.shape for c, m in store.read_valid_masks().items()}  # each camera's stored grid
        for index in indices:
            key = frame_key(index)
            found = problems.setdefault(key, [])
            counts = {cam: src.num_frames for cam, src in fresh.sources.items()}
            short = [cam for cam, n in counts.items() if index >= n]
            if short:
                found.append(f"frame {index} is beyond the inputs of {short} ({counts})")
                continue
            attrs = store.frame_attrs(key)
            if attrs.get("calibration_hash") != rig.content_hash:
                found.append(
                    f"stored with calibration {attrs.get('calibration_hash')!r}, not {rig.short_hash}"
                )
            if attrs.get("source_hash") != source_hash(fresh.read_frame(index)):
                found.append("the inputs decode to other images than were ingested")
            images = store.read_frame(key)
            if set(images) != set(rig.camera_names):
                found.append(f"cameras {sorted(images)} are not the rig's {rig.camera_names}")
            wrong = [c for c, im in images.items() if im.shape != (*grids.get(c, (-1, -1)), 3)]
            if wrong:
                found.append(f"wrong image shape for {wrong}")
    return problems
