"""Definitions of one survey (one rig, one code location): :func:`build_definitions`. Several rigs
are several code locations in one ``workspace.yaml`` (see :mod:`aquamvs_assets.location` and the
README's "Instance" section); each survey's asset keys and frame partitions carry its name, so
they never collide. Building definitions reads the survey and calibration files and writes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from aquamvs_assets.assets.benchmarks import build_benchmark_assets
from aquamvs_assets.assets.change import build_change_assets
from aquamvs_assets.assets.depth import build_depth_assets
from aquamvs_assets.assets.ingestion import build_ingestion_assets
from aquamvs_assets.assets.sparse import build_sparse_assets
from aquamvs_assets.assets.surface import build_surface_assets
from aquamvs_assets.jobs import build_jobs
from aquamvs_assets.partitions import SurveyNamespace
from aquamvs_assets.resources import ReconstructionSettings, RomaMatcher, SurveyResource, ZarrStoreResource
from aquamvs_assets.scaleout import TRANSIENT_RETRY, executor_from_env
from aquamvs_assets.sensors import build_sensors
from aquamvs_core.camera.calibration import load_calibration
from aquamvs_core.runtime import tune_allocator
from aquamvs_core.stages.pairs import survey_pairs
from aquamvs_core.survey import SurveyError, is_url, load_survey_spec


def survey_namespace(survey_file: str | Path) -> SurveyNamespace:
    """The names (asset key prefix, frame partitions) of the survey defined by ``survey_file``."""
    return SurveyNamespace(load_survey_spec(survey_file).name)


#: Seconds between evaluations of the new-frames and automation sensors (environment override).
SENSOR_INTERVAL_ENV = "AQUAMVS_SENSOR_INTERVAL_S"


def build_definitions(
    survey_file: str | Path,
    reconstruction: ReconstructionSettings | None = None,
    roma: RomaMatcher | None = None,
    sensor_interval_s: int | None = None,
) -> dg.Definitions:
    """Definitions for one survey (one rig): its assets, jobs, sensors and resources.

    Args:
        survey_file: the survey YAML (:class:`aquamvs_core.survey.SurveySpec`).
        reconstruction: the default reconstruction configuration (default: the survey file's
            ``reconstruction`` section; launchpad runs can change it).
        roma: the default RoMa matcher settings.
        sensor_interval_s: how often the new-frames and automation sensors evaluate (default:
            ``$AQUAMVS_SENSOR_INTERVAL_S``, else 30).

    The executor comes from the environment (:mod:`aquamvs_assets.scaleout`): in-process by
    default, Celery workers with ``AQUAMVS_EXECUTOR=celery``.

    Every process that loads the definitions (the CLI, a code server, each step worker) also gets
    the allocator setting of :func:`aquamvs_core.runtime.tune_allocator` (already set when
    :mod:`aquamvs_assets` was imported; repeating it is harmless).
    """
    tune_allocator()
    spec = load_survey_spec(survey_file)
    if reconstruction is None:
        try:
            reconstruction = ReconstructionSettings(**spec.reconstruction)
        except (ValueError, TypeError) as exc:
            raise SurveyError(f"{survey_file}: reconstruction: {exc}") from None
        reconstruction.config()  # an invalid preset or override names its field now
    if sensor_interval_s is None:
        sensor_interval_s = int(os.environ.get(SENSOR_INTERVAL_ENV, "30"))
    ns = SurveyNamespace(spec.name)
    pairs = survey_pairs(load_calibration(spec.calibration), spec)
    # Steps on an object store retry: a store unreachable for a while is a transient failure.
    jobs = build_jobs(ns, retry_policy=TRANSIENT_RETRY if is_url(spec.store) else None)
    return dg.Definitions(
        assets=[
            *build_ingestion_assets(ns, pairs),
            *build_sparse_assets(ns, pairs),
            *build_depth_assets(ns, pairs),
            *build_surface_assets(ns, spec.ground_truth, spec.quality_blocking),
            *build_benchmark_assets(ns, pairs),
            *build_change_assets(ns),
        ],
        jobs=jobs,
        sensors=build_sensors(ns, jobs, sensor_interval_s),
        resources={
            "survey": SurveyResource(survey_file=str(Path(survey_file).resolve())),
            "store": ZarrStoreResource(root=spec.store),
            "reconstruction": reconstruction,
            "roma": roma or RomaMatcher(),
        },
        executor=executor_from_env(),  # in-process unless $AQUAMVS_EXECUTOR says celery
    )
