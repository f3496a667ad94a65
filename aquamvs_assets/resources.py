"""Resources: the survey (calibration + inputs) and the Zarr store."""

from __future__ import annotations

import dagster as dg
import yaml
from pydantic import Field

from aquamvs_core.calibration import Rig, load_calibration
from aquamvs_core.config import ReconstructionConfig, build_config
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Survey, SurveySpec, load_survey_spec


class SurveyResource(dg.ConfigurableResource):
    """A survey definition file (YAML, see :class:`aquamvs_core.survey.SurveySpec`)."""

    survey_file: str = Field(description="Path of the survey YAML (calibration, inputs, frame selection).")

    def spec(self) -> SurveySpec:
        return load_survey_spec(self.survey_file)

    def rig(self) -> Rig:
        return load_calibration(self.spec().calibration)

    def open(self) -> Survey:
        """Open the survey's calibration and frame sources (use as a context manager)."""
        return Survey.open(self.spec())


class ZarrStoreResource(dg.ConfigurableResource):
    """The Zarr store root: a local path (default) or any fsspec URL (e.g. ``s3://bucket/survey``)."""

    root: str = Field(description="Store root: local path or fsspec URL.")

    def get(self) -> SurveyStore:
        return SurveyStore(self.root)


class ReconstructionSettings(dg.ConfigurableResource):
    """Reconstruction configuration for a run, settable in the launchpad (``resources:
    reconstruction: config: ...``): a preset, the pathway, an optional YAML file and YAML overrides."""

    preset: str = Field("balanced", description="fast | balanced | quality")
    pathway: str = Field("sift", description="sift | lightglue | roma")
    config_file: str | None = Field(None, description="YAML file with any subset of the configuration")
    overrides_yaml: str = Field("", description="YAML overrides, e.g. 'plane_sweep: {num_depths: 96}'")
    export_dir: str | None = Field(
        None, description="also write <dir>/frame_NNNNNN/ files from the mesh asset"
    )
    profile: bool = Field(
        False,
        description="profile each reconstruction stage (wall, CPU, peak RSS, CUDA) into metadata and logs",
    )
    export_formats: list[str] = Field(default_factory=lambda: ["ply"], description="mesh formats to export")

    def config(self) -> ReconstructionConfig:
        overrides = yaml.safe_load(self.overrides_yaml) if self.overrides_yaml.strip() else None
        return build_config(self.preset, self.pathway, self.config_file, overrides)
