"""Reconstruction configuration: one typed model for every stage, with presets.

A configuration is built from, in order of precedence (later wins):

1. the preset (``fast``, ``balanced`` — the default — or ``quality``), see :data:`PRESETS`;
2. a YAML file (same structure as :class:`ReconstructionConfig`, any subset of fields);
3. explicit overrides (a nested dict, e.g. from the Dagster launchpad or the CLI).

Every section is validated by its stage's own pydantic model, so a typo or an out-of-range value
fails with the field's name before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aquamvs_core.stages.change import ChangeConfig
from aquamvs_core.stages.dense.correspondence_depth import WarpDepthConfig
from aquamvs_core.stages.fusion import FusionConfig
from aquamvs_core.stages.heightfield import HeightfieldConfig
from aquamvs_core.stages.mesh import MeshConfig
from aquamvs_core.stages.sparse.depth_ranges import DepthRangeConfig
from aquamvs_core.stages.sparse.matching import SparseMatchConfig
from aquamvs_core.stages.sparse.triangulation import TriangulationConfig
from aquamvs_core.stages.stereo.config import PRESETS as SWEEP_PRESETS
from aquamvs_core.stages.stereo.config import PlaneSweepConfig

Preset = Literal["fast", "balanced", "quality"]
Pathway = Literal["sift", "lightglue", "roma"]

#: Matcher used by each sparse pathway ("roma" is the dense learned pathway, which also needs
#: sparse points for its depth ranges: it uses SIFT for those).
PATHWAY_MATCHER = {"sift": "sift", "lightglue": "aliked", "roma": "sift"}


class ConfigError(ValueError):
    """An invalid configuration; the message names the source and the field."""


class QualityTargets(BaseModel):
    """Accuracy targets that the ground-truth quality check asserts (vertical errors, mm)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    median_abs_error_mm: float = Field(0.3, gt=0.0)
    p90_abs_error_mm: float = Field(1.0, gt=0.0)
    outlier_fraction: float = Field(0.005, ge=0.0, le=1.0, description="errors over outlier_mm")
    outlier_mm: float = Field(10.0, gt=0.0)
    completeness: float = Field(0.9, ge=0.0, le=1.0, description="of cells seen by >= min_views cameras")
    completeness_radius_mm: float = Field(5.0, gt=0.0)
    min_views: int = Field(2, ge=1)


class ReconstructionConfig(BaseModel):
    """Every threshold of the reconstruction, by stage (see each stage's model for the fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Preset = Field("balanced", description="the preset this configuration started from")
    pathway: Pathway = Field(
        "sift",
        description="sift or lightglue (ALIKED): sparse matches, then the refractive plane sweep; roma: "
        "SIFT sparse points for depth ranges, then RoMa's dense warps turned into depth",
    )
    torch_threads: int | None = Field(
        1,
        ge=1,
        description="torch intra-op threads for the matching steps, and for the plane sweep when it runs"
        " one pair at a time (pair_workers 1; None: torch's default); one is fastest on small shared CPUs",
    )
    pair_workers: int | None = Field(
        None,
        ge=1,
        description="plane-sweep pairs of a frame computed at once (and cameras combined from them, and"
        " SIFT pairs matched), in threads with one torch thread each"
        " (None: the CPU cores this process may use, at most 4, and 1 on CUDA, the roma pathway or "
        "LightGlue matching); "
        "each worker holds one pair's working memory",
    )
    use_auxiliary_sources: bool = Field(
        True, description="sweep each camera against the auxiliary cameras too (their pairs exist)"
    )
    matching: SparseMatchConfig = SparseMatchConfig()
    triangulation: TriangulationConfig = TriangulationConfig()
    depth_range: DepthRangeConfig = DepthRangeConfig()
    plane_sweep: PlaneSweepConfig = PlaneSweepConfig()
    roma: WarpDepthConfig = WarpDepthConfig()
    fusion: FusionConfig = FusionConfig()
    mesh: MeshConfig = MeshConfig()
    heightfield: HeightfieldConfig = HeightfieldConfig()
    change: ChangeConfig = ChangeConfig()
    quality: QualityTargets = QualityTargets()


def _changed(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(exclude_defaults=True, mode="json")


#: What each preset changes relative to the defaults (``balanced`` is the defaults).
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {
        "matching": {"max_keypoints": 2048},
        "plane_sweep": _changed(SWEEP_PRESETS["fast"]),
        # 2 mm voxels: the 2-view periphery stays covered. Fusion's "auto" source stride keeps every
        # pixel at 640×480 (a fixed pixel_stride 2 there cost 1.4 points of completeness and failed
        # the 90 % gate; benchmarks/results/pipeline_cpu.md).
        "fusion": {"voxel_size_mm": 2.0},
    },
    "balanced": {"plane_sweep": _changed(SWEEP_PRESETS["balanced"])},
    "quality": {
        "matching": {"max_keypoints": 8192},
        "plane_sweep": _changed(SWEEP_PRESETS["quality"]),
        # Every source pixel at any resolution (the auto stride takes every second one from
        # 1600×1200 up: a third of fusion's time there, 0.1 point of completeness).
        "fusion": {"voxel_size_mm": 0.75, "pixel_stride": 1},
    },
}


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, recursively for nested dicts (neither is modified)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of configuration sections")
    return data


def build_config(
    preset: str | None = None,
    pathway: str | None = None,
    yaml_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> ReconstructionConfig:
    """The configuration for ``preset`` (default: the YAML's, else ``balanced``), updated by the YAML
    file and ``overrides``; ``pathway`` also selects the matcher (see :data:`PATHWAY_MATCHER`)."""
    from_file = _read_yaml(yaml_file) if yaml_file else {}
    layered = deep_merge(from_file, overrides or {})
    preset = preset or layered.get("preset", "balanced")
    if preset not in PRESETS:
        raise ConfigError(f"preset: unknown preset {preset!r} (choose from {sorted(PRESETS)})")
    pathway = pathway or layered.get("pathway", "sift")
    if pathway not in PATHWAY_MATCHER:
        raise ConfigError(f"pathway: unknown pathway {pathway!r} (choose from {sorted(PATHWAY_MATCHER)})")
    data = deep_merge(PRESETS[preset], {"matching": {"method": PATHWAY_MATCHER[pathway]}})
    data = deep_merge(data, layered)
    data.update(preset=preset, pathway=pathway)
    try:
        return ReconstructionConfig.model_validate(data)
    except ValidationError as exc:
        source = f"{yaml_file}: " if yaml_file else ""
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"{source}invalid configuration: {problems}") from None
