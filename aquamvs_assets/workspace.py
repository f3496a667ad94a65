"""Several rigs in one instance: one Dagster code location per survey, all listed in one
``workspace.yaml``. :func:`add_survey_location` writes a survey's location module next to its survey
file and lists it in the workspace (replacing an entry of the same name)."""

from __future__ import annotations

from pathlib import Path

import yaml

from aquamvs_core.files import atomic_write_text
from aquamvs_core.survey import load_survey_spec

LOCATION_MODULE = "aquamvs_location.py"

_MODULE = '''"""Dagster code location of the survey {name!r} (written by `aquamvs location add`)."""

from pathlib import Path

from aquamvs_assets.definitions import build_definitions

defs = build_definitions(Path(__file__).with_name({survey_file!r}))
'''


def add_survey_location(survey_file: str | Path, workspace_file: str | Path) -> Path:
    """Make ``survey_file`` a code location of ``workspace_file`` (created if missing); returns the
    location module's path. The survey file is validated first; nothing is written if it is bad."""
    survey_file = Path(survey_file).resolve()
    spec = load_survey_spec(survey_file)
    workspace_file = Path(workspace_file).resolve()
    data = yaml.safe_load(workspace_file.read_text()) if workspace_file.exists() else None
    data = data or {}
    if not isinstance(data, dict) or not isinstance(data.get("load_from", []), list):
        raise ValueError(f"{workspace_file}: not a Dagster workspace file (expected a 'load_from' list)")
    module = survey_file.with_name(LOCATION_MODULE)
    atomic_write_text(module, _MODULE.format(name=spec.name, survey_file=survey_file.name))
    entries = [e for e in data.get("load_from", []) if _location_name(e) != spec.name]
    entries.append({"python_file": {"relative_path": str(module), "location_name": spec.name}})
    data["load_from"] = entries
    atomic_write_text(workspace_file, yaml.safe_dump(data, sort_keys=False))
    return module


def _location_name(entry: object) -> str | None:
    if isinstance(entry, dict):
        for value in entry.values():
            if isinstance(value, dict):
                return value.get("location_name")
    return None
