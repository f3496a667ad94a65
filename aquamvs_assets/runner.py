"""Launch asset jobs over frame (and frame × pair) partitions in-process, recording runs in an
instance: the ingestion and the whole reconstruction of a survey's frames. Used by the CLI and the
Python API; the Dagster UI and daemon do the same with backfills."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from aquamvs_assets.assets.change import BED_CHANGE_JOB, CHANGE_SUMMARY_JOB
from aquamvs_assets.definitions import build_definitions
from aquamvs_assets.jobs import INGEST_JOB, RECONSTRUCTION_JOBS
from aquamvs_assets.partitions import FRAMES_PARTITION_NAME
from aquamvs_assets.resources import ReconstructionSettings, RomaMatcher
from aquamvs_core.survey import Survey, SurveyError, frame_key, frame_pair_key, load_survey_spec

log = logging.getLogger("aquamvs.cli")
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def register_frames(instance: dg.DagsterInstance, keys: Sequence[str]) -> list[str]:
    """Add frame partitions that the instance does not have yet; returns the added keys."""
    existing = set(instance.get_dynamic_partitions(FRAMES_PARTITION_NAME))
    new = [k for k in keys if k not in existing]
    if new:
        instance.add_dynamic_partitions(FRAMES_PARTITION_NAME, new)
    return new


def _contiguous(instance: dg.DagsterInstance, keys: Sequence[str]) -> bool:
    registered = instance.get_dynamic_partitions(FRAMES_PARTITION_NAME)
    try:
        i, j = registered.index(keys[0]), registered.index(keys[-1])
    except ValueError:
        return False
    return registered[i : j + 1] == list(keys)


def _root_cause(error) -> str:
    """The innermost error message of a step failure (the user's error, not Dagster's wrapper)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error.message.strip()


def run_stage(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    frame_keys: Sequence[str],
    pair_keys: Sequence[str] | None = None,
) -> list[dg.ExecuteInProcessResult]:
    """Materialize ``job`` for ``frame_keys`` (× all ``pair_keys`` for frame × pair assets) in as few
    runs as possible: one run over the partition range when the frames are contiguous partitions
    (a box over frame × pair), else one run per frame. Raises on a failed run."""
    if not frame_keys:
        raise ValueError("no frames to run")
    if pair_keys:
        first, last = pair_keys[0], pair_keys[-1]
        ranges = [(frame_pair_key(frame_keys[0], first), frame_pair_key(frame_keys[-1], last))]
        if not _contiguous(instance, frame_keys):
            ranges = [(frame_pair_key(f, first), frame_pair_key(f, last)) for f in frame_keys]
    elif _contiguous(instance, frame_keys):
        ranges = [(frame_keys[0], frame_keys[-1])]
    else:
        ranges = [(f, f) for f in frame_keys]
    results = []
    for start, end in ranges:
        log.info("%s: partitions %s … %s", job.name, start, end)
        tags = {RANGE_START: start, RANGE_END: end}
        result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        if not result.success:
            failure = next((e for e in result.all_events if e.is_step_failure), None)
            reason = _root_cause(failure.event_specific_data.error) if failure else "see the run's logs"
            raise RuntimeError(f"run {result.run_id} of {job.name} failed: {reason}")
        results.append(result)
    return results


def frame_keys(survey_file: Path, frames: list[int] | None) -> list[str]:
    """Keys of ``frames`` (default: the survey's selection), checked against the survey's inputs."""
    spec = load_survey_spec(survey_file)
    with Survey.open(spec) as survey:
        indices = survey.frame_indices if frames is None else frames
        bad = [i for i in indices if not 0 <= i < survey.num_frames]
        if bad:
            raise SurveyError(f"frames {bad} are outside the survey's {survey.num_frames} frames")
    if not indices:
        raise SurveyError(f"{survey_file}: the frame selection is empty")
    return [frame_key(i) for i in indices]


def run_ingestion(
    survey_file: Path, instance: dg.DagsterInstance, frames: list[int] | None = None
) -> list[dg.ExecuteInProcessResult]:
    """Register the survey's frames as partitions and materialize the ingestion job over them."""
    keys = frame_keys(survey_file, frames)
    added = register_frames(instance, keys)
    log.info("frames: %d selected, %d newly registered as partitions", len(keys), len(added))
    return run_stage(build_definitions(survey_file).resolve_job_def(INGEST_JOB), instance, keys)


@dataclass
class StageProfileRow:
    """One asset's profile in a run (``profile: true``): seconds and MB."""

    asset: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float


@dataclass
class ReconstructionRun:
    """What :func:`run_reconstruction` did: the frames, the quality-check evaluations (when the
    survey has ground truth) and the stage profiles (when profiling was on)."""

    frame_keys: list[str]
    checks: list[dg.AssetCheckEvaluation] = field(default_factory=list)
    profiles: list[StageProfileRow] = field(default_factory=list)

    def bottlenecks(self, n: int = 3) -> list[str]:
        """The ``n`` slowest profiled assets, as sentences."""
        total = sum(p.wall_s for p in self.profiles) or 1.0
        return [
            f"{p.asset}: {p.wall_s:.2f} s ({100 * p.wall_s / total:.0f} % of the time), CPU {p.cpu_s:.2f} s, "
            f"peak RSS {p.peak_rss_mb:.0f} MB"
            for p in sorted(self.profiles, key=lambda p: -p.wall_s)[:n]
        ]


def run_reconstruction(
    survey_file: Path,
    instance: dg.DagsterInstance,
    settings: ReconstructionSettings,
    frames: list[int] | None = None,
    roma: RomaMatcher | None = None,
) -> ReconstructionRun:
    """Ingest the frames, then materialize every reconstruction job for them."""
    keys = frame_keys(survey_file, frames)
    register_frames(instance, keys)
    defs = build_definitions(survey_file, settings, roma)
    pair_keys = (
        defs.resolve_assets_def("sparse_matches")
        .partitions_def.get_partitions_def_for_dimension("pair")
        .get_partition_keys()
    )
    run_stage(defs.resolve_job_def(INGEST_JOB), instance, keys)
    outcome = ReconstructionRun(keys)
    for n, job in enumerate(RECONSTRUCTION_JOBS, start=1):
        log.info("stage %d/%d: %s", n, len(RECONSTRUCTION_JOBS), ", ".join(job.assets))
        results = run_stage(
            defs.resolve_job_def(job.name), instance, keys, pair_keys if job.per_pair else None
        )
        for result in results:
            outcome.checks += result.get_asset_check_evaluations()
            for asset in job.assets:
                for event in result.asset_materializations_for_node(asset):
                    meta = event.metadata
                    if "profile_wall_s" in meta:
                        outcome.profiles.append(
                            StageProfileRow(
                                asset,
                                meta["profile_wall_s"].value,
                                meta["profile_cpu_s"].value,
                                meta["profile_peak_rss_mb"].value,
                            )
                        )
    run_change_jobs(defs, instance, keys)
    return outcome


def run_change_jobs(defs: dg.Definitions, instance: dg.DagsterInstance, keys: Sequence[str]) -> None:
    """The bed changes of ``keys`` (after their heightfields), then the change summary."""
    run_stage(defs.resolve_job_def(BED_CHANGE_JOB), instance, keys)
    result = defs.resolve_job_def(CHANGE_SUMMARY_JOB).execute_in_process(
        instance=instance, raise_on_error=False
    )
    if not result.success:
        raise RuntimeError(f"run {result.run_id} of {CHANGE_SUMMARY_JOB} failed: see the run's logs")
