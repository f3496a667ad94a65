"""The default code location: ``defs`` for the survey named by ``$AQUAMVS_SURVEY``, else the
built-in demo survey (made by ``aquamvs demo``). Loading it writes nothing and generates nothing:
without a survey it fails with a message that says what to do.

For several rigs in one instance, each survey is its own code location: ``aquamvs location add
SURVEY.yaml`` writes a two-line module next to the survey and lists it in ``workspace.yaml``."""

from __future__ import annotations

from aquamvs_assets.definitions import build_definitions
from aquamvs_assets.project import DEMO_SURVEY_DIR, SURVEY_ENV, default_survey_file
from aquamvs_core.survey import SurveyError

survey_file = default_survey_file()
if not survey_file.is_file():
    hint = (
        "run `aquamvs demo` (or scripts/demo.sh) to make the built-in demo survey"
        if survey_file.parent == DEMO_SURVEY_DIR
        else f"check ${SURVEY_ENV}"
    )
    raise SurveyError(f"no survey file at {survey_file}: {hint}, or set ${SURVEY_ENV} to a survey YAML")

defs = build_definitions(survey_file)
