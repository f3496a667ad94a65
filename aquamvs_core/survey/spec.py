"""A survey: a calibration, one frame source per camera, a frame selection and a store.

A survey is defined by a YAML file (:class:`SurveySpec`)::

    name: reef-2024-06
    calibration: calibration.json     # AquaCal JSON, relative to this file
    inputs: inputs/                   # <camera>.mp4 (.avi .mov .mkv) or <camera>/ image folders
    frames: {start: 0, stop: 100, step: 5}
    store: store.zarr                 # local path (relative to this file) or fsspec URL
    pair_neighbours: 4                # sources per camera chosen by view overlap and angle
    water_depth_m: [0.3, 0.7]         # where the bed lies (m below the surface), for view selection
    ground_truth: null

Frames are named by :func:`~aquamvs_core.survey.keys.frame_key` (``f000123``) in the store and as
partition keys.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aquamvs_core.files import atomic_write_text

#: Water depths (metres below the surface) between which the bed is expected (view selection).
DEFAULT_WATER_DEPTH_M: tuple[float, float] = (0.3, 0.7)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


class SurveyError(ValueError):
    """An invalid survey definition or inconsistent inputs; the message names the file or camera."""


def is_url(location: str) -> bool:
    """Whether ``location`` is a URL (``scheme://...``) rather than a plain path."""
    return bool(_URL.match(location))


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
        pair_neighbours: stereo sources per reference camera, chosen by shared view of the bed and
            triangulation angle (see :func:`aquamvs_core.stages.pairs.select_pairs`); pairs that the
            coverage guarantee needs come on top.
        water_depth_m: (low, high) water depths between which the bed lies, metres below the
            surface: where the view selection measures the cameras' shared footprints.
        ground_truth: optional ground-truth file (synthetic surveys).
        quality_blocking: whether a failed ground-truth quality check blocks the assets downstream
            of the mesh in the same run (else it is a warning).
        reconstruction: the survey's default reconstruction settings (``preset``, ``pathway``,
            ``config_file``, ``overrides_yaml``): what runs that nobody configured (sensors,
            automation) use; a launchpad run can override them.

    The name identifies the survey in a Dagster instance shared by several rigs (its asset keys and
    frame partitions are prefixed with it), so it is letters, digits, ``_``, ``-`` and ``.``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    calibration: Path
    inputs: Path
    frames: FrameSelection = Field(default_factory=FrameSelection)
    store: str = Field(min_length=1)
    pair_neighbours: int = Field(4, ge=1)
    water_depth_m: tuple[float, float] = DEFAULT_WATER_DEPTH_M
    ground_truth: Path | None = None
    quality_blocking: bool = False
    reconstruction: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_depths(self) -> SurveySpec:
        lo, hi = self.water_depth_m
        if not 0 < lo <= hi:
            raise ValueError(f"water_depth_m must be 0 < low <= high metres, got {list(self.water_depth_m)}")
        return self

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
        return atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


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
