"""The code location: ``defs`` for the survey named by ``$AQUAMVS_SURVEY`` (default: the built-in
synthetic demo, generated on first load). Several rigs are several code locations, each a module
that calls :func:`build_definitions` with its survey file."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg

from aquamvs_assets.assets.benchmarks import benchmark_summary, benchmark_tables
from aquamvs_assets.assets.depth import build_depth_assets
from aquamvs_assets.assets.ingestion import build_pair_geometry_asset, frames, survey_calibration
from aquamvs_assets.assets.sparse import build_sparse_assets
from aquamvs_assets.assets.surface import build_surface_assets
from aquamvs_assets.jobs import frames_job, ingest_job, reconstruction_jobs
from aquamvs_assets.partitions import camera_pair_partitions, frame_pair_partitions
from aquamvs_assets.project import DEMO_SURVEY_DIR, default_survey_file
from aquamvs_assets.resources import ReconstructionSettings, RomaMatcher, SurveyResource, ZarrStoreResource
from aquamvs_assets.sensors import new_frames_sensor
from aquamvs_core.camera.calibration import load_calibration
from aquamvs_core.stages.pairs import survey_pairs
from aquamvs_core.survey import load_survey_spec

log = logging.getLogger("aquamvs.definitions")


def build_definitions(
    survey_file: str | Path,
    reconstruction: ReconstructionSettings | None = None,
    roma: RomaMatcher | None = None,
) -> dg.Definitions:
    """Definitions for one survey (one rig): its assets, jobs, sensor and resources.

    ``reconstruction`` sets the default reconstruction configuration and ``roma`` the RoMa matcher's
    (launchpad runs can change both).
    """
    spec = load_survey_spec(survey_file)
    pairs = survey_pairs(load_calibration(spec.calibration), spec)
    pair_partitions = camera_pair_partitions(pairs)
    frame_pairs = frame_pair_partitions(pair_partitions)
    return dg.Definitions(
        assets=[
            survey_calibration,
            frames,
            build_pair_geometry_asset(pairs, pair_partitions),
            *build_sparse_assets(pairs, frame_pairs),
            *build_depth_assets(pairs, frame_pairs),
            *build_surface_assets(spec.ground_truth),
            benchmark_tables,
            benchmark_summary,
        ],
        jobs=[ingest_job, frames_job, *reconstruction_jobs],
        sensors=[new_frames_sensor],
        resources={
            "survey": SurveyResource(survey_file=str(Path(survey_file).resolve())),
            "store": ZarrStoreResource(root=spec.store),
            "reconstruction": reconstruction or ReconstructionSettings(),
            "roma": roma or RomaMatcher(),
        },
    )


def _load_default() -> dg.Definitions:
    survey_file = default_survey_file()
    if not survey_file.exists() and survey_file.parent == DEMO_SURVEY_DIR:
        from aquamvs_core.synthetic import generate_survey

        log.warning("built-in demo survey not found: generating it in %s", DEMO_SURVEY_DIR)
        generate_survey(DEMO_SURVEY_DIR)
    return build_definitions(survey_file)


defs = _load_default()
