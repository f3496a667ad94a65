"""A survey: a calibration, one frame source per camera, a frame selection and a store.

A survey is defined by a YAML file (:class:`SurveySpec`)::

    name: reef-2024-06
    calibration: calibration.json     # AquaCal JSON, relative to this file
    inputs: inputs/                   # <camera>.mp4 (.avi .mov .mkv) or <camera>/ image folders
    frames: {start: 0, stop: 100, step: 5}
    store: store.zarr                 # local path (relative to this file) or fsspec URL
    pair_neighbours: 4
    ground_truth: null

Frames are named by :func:`frame_key` (``f000123``) in the store and as partition keys.
"""

from __future__ import annotations

import operator
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aquamvs_core.camera.calibration import Rig, load_calibration
from aquamvs_core.survey.frames import VIDEO_SUFFIXES, FrameSource, open_source

FRAME_KEY_DIGITS = 6
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_FRAME_KEY = re.compile(r"f([0-9]{6,})")  # FRAME_KEY_DIGITS or more


class SurveyError(ValueError):
    """An invalid survey definition or inconsistent inputs; the message names the file or camera."""


def is_url(location: str) -> bool:
    """Whether ``location`` is a URL (``scheme://...``) rather than a plain path."""
    return bool(_URL.match(location))


# --------------------------------------------------------------------------------------------
# Frame keys
# --------------------------------------------------------------------------------------------


def frame_key(index: int) -> str:
    """Store and partition key of frame ``index``: ``"f"`` and at least 6 digits (``f000123``)."""
    i = operator.index(index)
    if i < 0:
        raise ValueError(f"frame index must be non-negative, got {i}")
    return f"f{i:0{FRAME_KEY_DIGITS}d}"


def frame_index(key: str) -> int:
    """Inverse of :func:`frame_key`; rejects anything that :func:`frame_key` would not produce."""
    m = _FRAME_KEY.fullmatch(key) if isinstance(key, str) else None
    if m is None or frame_key(int(m[1])) != key:
        raise ValueError(f"invalid frame key {key!r}: expected 'f' and at least 6 digits, e.g. 'f000123'")
    return int(m[1])


# --------------------------------------------------------------------------------------------
# Survey definition
# --------------------------------------------------------------------------------------------


class FrameSelection(BaseModel):
    """Frames to process: ``range(start, stop, step)``, ``stop`` clipped to the frame count."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: int = Field(0, ge=0)
    stop: int | None = None
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _stop_after_start(self) -> FrameSelection:
        if self.stop is not None and self.stop <= self.start:
            raise ValueError(f"stop ({self.stop}) must be greater than start ({self.start})")
        return self

    def indices(self, num_frames: int) -> list[int]:
        """Selected frame indices of a source with ``num_frames`` frames (may be empty)."""
        stop = num_frames if self.stop is None else min(self.stop, num_frames)
        return list(range(self.start, stop, self.step))


class SurveySpec(BaseModel):
    """A survey definition (see the module docstring for the YAML form).

    Attributes:
        name: survey name (recorded in the store).
        calibration: AquaCal calibration JSON file.
        inputs: directory with one video or image folder per calibrated camera.
        frames: the frame selection.
        store: Zarr store root, a local path or an fsspec URL.
        pair_neighbours: stereo neighbours per reference camera.
        ground_truth: optional ground-truth file (synthetic surveys).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    calibration: Path
    inputs: Path
    frames: FrameSelection = Field(default_factory=FrameSelection)
    store: str = Field(min_length=1)
    pair_neighbours: int = Field(4, ge=1)
    ground_truth: Path | None = None

    def resolve_paths(self, base: Path) -> SurveySpec:
        """A copy with relative paths (and a plain relative ``store``) made absolute against ``base``."""
        update: dict[str, Any] = {
            "calibration": _absolute(self.calibration, base),
            "inputs": _absolute(self.inputs, base),
        }
        if self.ground_truth is not None:
            update["ground_truth"] = _absolute(self.ground_truth, base)
        if not is_url(self.store):
            update["store"] = str(_absolute(Path(self.store), base))
        return self.model_copy(update=update)

    def to_yaml(self, path: str | Path) -> Path:
        """Write the definition as YAML (temp file, then rename). Paths inside the YAML's directory are
        written relative to it, so the survey folder can be moved; relative paths of this object are
        taken relative to the current directory."""
        path = Path(path)
        base = _absolute(path, Path.cwd()).parent
        data = self.model_dump(mode="json")
        for fld in ("calibration", "inputs", "ground_truth"):
            value = getattr(self, fld)
            if value is not None:
                data[fld] = _portable(value, base)
        if not is_url(self.store):
            data["store"] = _portable(Path(self.store), base)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        tmp.replace(path)
        return path


def _absolute(p: Path, base: Path) -> Path:
    p = p.expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


def _portable(p: Path, base: Path) -> str:
    """``p`` relative to ``base`` (POSIX form) when inside it, else absolute."""
    a = _absolute(p, Path.cwd())
    try:
        return a.relative_to(base).as_posix() or "."
    except ValueError:
        return str(a)


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def load_survey_spec(yaml_path: str | Path) -> SurveySpec:
    """Load a survey YAML; relative paths (and a plain relative store path) are resolved against the
    YAML's directory. Files are not opened here (see :meth:`Survey.open`).

    Raises:
        SurveyError: missing file, invalid YAML, or an invalid field (named, with the file).
    """
    path = Path(yaml_path)
    if not path.is_file():
        raise SurveyError(f"{path}: survey file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SurveyError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise SurveyError(f"{path}: expected a mapping of survey fields, got {type(data).__name__}")
    try:
        spec = SurveySpec.model_validate(data)
    except ValidationError as exc:
        raise SurveyError(f"{path}: {_format_validation_error(exc)}") from None
    return spec.resolve_paths(_absolute(path, Path.cwd()).parent)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


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
        sources: dict[str, FrameSource] = {}
        try:
            for cam, path in inputs.items():
                sources[cam] = open_source(path)
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
