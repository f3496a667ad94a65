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


#: The embedded instance configuration (SQLite under $DAGSTER_HOME, run queue, GPU pool).
INSTANCE_TEMPLATE = PROJECT_ROOT / "dagster.yaml"


def ensure_dagster_home(home: str | os.PathLike | None = None) -> Path:
    """Make ``home`` (default ``$DAGSTER_HOME``, else ``<project>/.dagster_home``) ready and export
    it as ``$DAGSTER_HOME``.

    An instance that already has a ``dagster.yaml`` (SQLite or a production PostgreSQL one) is used as
    it is: the file is never written over. A new home gets the project's embedded ``dagster.yaml``
    with its SQLite storage in that home.
    """
    path = (
        Path(home or os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / ".dagster_home").expanduser().resolve()
    )
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        settings = yaml.safe_load(INSTANCE_TEMPLATE.read_text())
        settings["storage"] = {"sqlite": {"base_dir": str(path)}}
        tmp = config.with_name(f".dagster.yaml.{os.getpid()}.tmp")
        tmp.write_text(yaml.safe_dump(settings, sort_keys=False))
        try:
            os.link(tmp, config)  # atomic, and fails if another process created it meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        _initialise_storage(path)
    os.environ["DAGSTER_HOME"] = str(path)
    return path


def _initialise_storage(home: Path) -> None:
    """Create a new instance's databases now, in one process: the daemon, the webserver and their
    code servers starting together on an empty SQLite home would otherwise race to create them."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)
