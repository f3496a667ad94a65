"""Resources: the survey (calibration + inputs) and the Zarr store."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from aquamvs_core.calibration import Rig, load_calibration
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
