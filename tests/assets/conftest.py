"""Fixtures of the Dagster-layer tests (helpers: ``dagster_helpers.py``)."""

from __future__ import annotations

import pytest

from aquamvs_assets.definitions import survey_namespace
from aquamvs_assets.partitions import SurveyNamespace


@pytest.fixture
def ns(synthetic_survey_file) -> SurveyNamespace:
    """The names of the small synthetic survey's definitions."""
    return survey_namespace(synthetic_survey_file)
