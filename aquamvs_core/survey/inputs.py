"""A survey's inputs: one video or image folder per calibrated camera (:func:`discover_inputs`),
opened together with the calibration as a :class:`Survey` that reads synchronised frames."""

from __future__ import annotations

import operator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from aquamvs_core.camera.calibration import Rig, load_calibration
from aquamvs_core.runtime import available_cores
from aquamvs_core.survey.sources import VIDEO_SUFFIXES, FrameSource, open_source
from aquamvs_core.survey.spec import SurveyError, SurveySpec


def discover_inputs(inputs_dir: str | Path, camera_names: list[str]) -> dict[str, Path]:
    """Each camera's input in ``inputs_dir``: a video ``<camera>.mp4`` (.avi .mov .mkv, any case) or
    an image folder ``<camera>/``. Hidden entries and other files are ignored.

    Returns:
        camera name → input path, in ``camera_names`` order.

    Raises:
        SurveyError: missing directory, an input for an unknown camera, a camera without input, or a
            camera with more than one input.
    """
    d = Path(inputs_dir)
    if not d.is_dir():
        raise SurveyError(f"inputs directory {d} not found")
    found: dict[str, list[Path]] = {}
    for entry in sorted(d.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found.setdefault(entry.name, []).append(entry)
        elif entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES:
            found.setdefault(entry.stem, []).append(entry)
    names = list(camera_names)
    unknown = [n for n in found if n not in names]
    if unknown:
        label = "camera" if len(unknown) == 1 else "cameras"
        raise SurveyError(f"unknown {label} {', '.join(map(repr, unknown))} in {d}; calibration has {names}")
    for name, paths in found.items():
        if len(paths) > 1:
            kinds = "both a video and an image folder" if any(p.is_dir() for p in paths) else "several videos"
            raise SurveyError(f"camera {name!r} has {kinds} in {d}: {[p.name for p in paths]}; keep one")
    missing = [n for n in names if n not in found]
    if missing:
        raise SurveyError(
            f"camera(s) {missing} have no input in {d} "
            f"(expected <camera>{'/'.join(VIDEO_SUFFIXES)} or an image folder <camera>/)"
        )
    return {n: found[n][0] for n in names}


class Survey:
    """An opened survey: the calibrated rig and one open frame source per camera.

    Use :meth:`open`; the constructor takes already-opened parts and checks their consistency
    (on error the caller keeps ownership of ``sources``).

    Raises:
        SurveyError: sources do not match the rig's cameras, frame counts differ, or an image size
            differs from the calibration's.
    """

    def __init__(self, spec: SurveySpec, rig: Rig, sources: dict[str, FrameSource]):
        if set(sources) != set(rig.camera_names):
            raise SurveyError(
                f"sources {sorted(sources)} do not match the calibration's cameras {rig.camera_names}"
            )
        counts = {cam: sources[cam].num_frames for cam in rig.camera_names}
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"{cam}: {n}" for cam, n in counts.items())
            raise SurveyError(f"{spec.inputs}: cameras have different frame counts ({listing})")
        for cam in rig.camera_names:
            got, want = sources[cam].image_size, rig[cam].image_size
            if tuple(got) != tuple(want):
                raise SurveyError(
                    f"camera {cam!r}: {sources[cam].path} has image size {got[0]}x{got[1]}, "
                    f"but the calibration {rig.source} has {want[0]}x{want[1]}"
                )
        self._spec = spec
        self._rig = rig
        self._sources = {cam: sources[cam] for cam in rig.camera_names}
        self._num_frames = next(iter(counts.values()))
        self._indices = spec.frames.indices(self._num_frames)

    @classmethod
    def open(cls, spec: SurveySpec) -> Survey:
        """Load the calibration, discover and open every camera's input, and check them.

        Raises:
            CalibrationError: invalid calibration.
            SurveyError: inconsistent inputs (see :func:`discover_inputs` and the class).
            FrameSourceError: an unreadable input.
        """
        rig = load_calibration(spec.calibration)
        inputs = discover_inputs(spec.inputs, rig.camera_names)
        sources = _open_sources(inputs)
        try:
            return cls(spec, rig, sources)
        except BaseException:
            for src in sources.values():
                src.close()
            raise

    @property
    def spec(self) -> SurveySpec:
        return self._spec

    @property
    def rig(self) -> Rig:
        return self._rig

    @property
    def sources(self) -> dict[str, FrameSource]:
        """Camera name → frame source, in rig order."""
        return dict(self._sources)

    @property
    def num_frames(self) -> int:
        """Frames per camera (the same for all)."""
        return self._num_frames

    @property
    def frame_indices(self) -> list[int]:
        """The spec's frame selection applied to :attr:`num_frames`."""
        return list(self._indices)

    def read_frame(self, index: int) -> dict[str, np.ndarray]:
        """Every camera's raw (distorted) image of frame ``index``: camera → (H, W, 3) uint8 RGB."""
        i = operator.index(index)
        if not 0 <= i < self._num_frames:
            raise IndexError(
                f"frame index {i} out of range; survey {self._spec.name!r} has {self._num_frames} frames"
            )
        return {cam: src.read(i) for cam, src in self._sources.items()}

    def close(self) -> None:
        for src in self._sources.values():
            src.close()

    def __enter__(self) -> Survey:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_sources(inputs: dict[str, Path]) -> dict[str, FrameSource]:
    """Every camera's source, opened side by side in threads (opening a video decodes its first
    frame; the decoders release the GIL), in ``inputs`` order. When one fails, the others are closed
    and the first failure in camera order is raised."""
    workers = max(1, min(len(inputs), available_cores()))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aquamvs-open") as pool:
        futures = {cam: pool.submit(open_source, path) for cam, path in inputs.items()}
    failed = next((f.exception() for f in futures.values() if f.exception() is not None), None)
    if failed is not None:
        for f in futures.values():
            if f.exception() is None:
                f.result().close()
        raise failed
    return {cam: f.result() for cam, f in futures.items()}
