"""Where things live on disk for the embedded (single-machine) setup."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

#: Repository root (this package is installed in editable mode from it).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: Built-in synthetic demo survey, generated on first use (git-ignored).
DEMO_SURVEY_DIR = PROJECT_ROOT / ".data" / "demo"
SURVEY_ENV = "AQUAMVS_SURVEY"


def default_survey_file() -> Path:
    """``$AQUAMVS_SURVEY`` if set, else the built-in demo survey's ``survey.yaml``."""
    env = os.environ.get(SURVEY_ENV)
    return Path(env).expanduser().resolve() if env else DEMO_SURVEY_DIR / "survey.yaml"


def ensure_dagster_home(home: str | os.PathLike | None = None) -> Path:
    """Make ``home`` (default ``$DAGSTER_HOME`` or ``<project>/.dagster_home``) ready and export it.

    The instance configuration is the project's ``dagster.yaml`` with its SQLite ``base_dir`` set
    to this folder (written on every call, so it follows the project file).
    """
    path = Path(home or os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / ".dagster_home").resolve()
    path.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    config["storage"] = {"sqlite": {"base_dir": str(path)}}
    (path / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    os.environ["DAGSTER_HOME"] = str(path)
    return path
