"""Launch a survey's jobs in-process, recording the runs in an instance: the calibration, then one run
per frame (its whole chain). Used by the CLI and the Python API; the Dagster UI, sensors and the
daemon launch the same jobs.

Every step reuses the store products that are current (see :mod:`aquamvs_core.steps.common`), so a
re-run after a finished or killed one redoes only what is missing or stale. A run whose process
died (``kill -9``) stays "started" in the instance until
:func:`~aquamvs_assets.run_health.reap_dead_runs` marks it failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from aquamvs_assets.definitions import build_definitions
from aquamvs_assets.jobs import CALIBRATION_JOB, CHANGE_SUMMARY_JOB, FRAMES_JOB, RECONSTRUCT_JOB
from aquamvs_assets.partitions import SurveyNamespace
from aquamvs_assets.resources import ReconstructionSettings, RomaMatcher
from aquamvs_assets.run_health import reap_dead_runs, worker_tags
from aquamvs_assets.sensors import SURVEY_TAG
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Survey, SurveyError, frame_index, frame_key, load_survey_spec

log = logging.getLogger("aquamvs.cli")


def register_frames(instance: dg.DagsterInstance, ns: SurveyNamespace, keys: Sequence[str]) -> list[str]:
    """Add frame partitions that the instance does not have yet; returns the added keys."""
    existing = set(instance.get_dynamic_partitions(ns.frames.name))
    new = [k for k in keys if k not in existing]
    if new:
        try:
            instance.add_dynamic_partitions(ns.frames.name, new)
        except Exception:  # another process added some of them in between (a unique-key error)
            now = set(instance.get_dynamic_partitions(ns.frames.name))
            if not set(new) <= now:
                raise
            return []  # registered, by the other process
    return new


def _root_cause(error) -> str:
    """The innermost error message of a step failure (the user's error, not Dagster's wrapper)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error.message.strip()


def run_job(
    job: dg.JobDefinition, instance: dg.DagsterInstance, partition_key: str | None, survey: str
) -> dg.ExecuteInProcessResult:
    """Execute ``job`` in this process for one partition (or none); raises on a failed run, with the
    root cause of the first failed step."""
    tags = {SURVEY_TAG: survey, **worker_tags()}
    result = job.execute_in_process(
        instance=instance, partition_key=partition_key, tags=tags, raise_on_error=False
    )
    if not result.success:
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        where = f"step {failure.step_key}" if failure else "a step"
        reason = _root_cause(failure.event_specific_data.error) if failure else "see the run's logs"
        raise RuntimeError(
            f"run {result.run_id} of {job.name} ({partition_key or 'all'}) failed in {where}: {reason}"
        )
    return result


def selected_frame_keys(survey: Survey, frames: Sequence[int] | None, what: str = "frames") -> list[str]:
    """Keys of ``frames`` (default: the survey's selection), checked against the open ``survey``'s
    inputs; ``what`` names the frames in the errors (e.g. a CLI option)."""
    indices = survey.frame_indices if frames is None else list(frames)
    bad = [i for i in indices if not 0 <= i < survey.num_frames]
    if bad:
        raise SurveyError(
            f"{what}: {bad} are outside the survey's {survey.num_frames} frames ({survey.spec.inputs})"
        )
    if not indices:
        raise SurveyError(f"{survey.spec.name}: the frame selection is empty")
    return [frame_key(i) for i in indices]


def frame_keys(survey_file: Path, frames: list[int] | None) -> list[str]:
    """:func:`selected_frame_keys` of the survey of ``survey_file`` (opened for it)."""
    with Survey.open(load_survey_spec(survey_file)) as survey:
        return selected_frame_keys(survey, frames)


def _ensure_calibration(defs: dg.Definitions, instance: dg.DagsterInstance, survey_file: Path) -> None:
    """Materialize the calibration unless the store already holds this calibration."""
    spec = load_survey_spec(survey_file)
    from aquamvs_core.camera.calibration import load_calibration

    current = load_calibration(spec.calibration).content_hash
    store = SurveyStore(spec.store, survey=spec.name)
    if store.has_calibration() and store.read_calibration()["calibration_hash"] == current:
        return
    run_job(defs.resolve_job_def(CALIBRATION_JOB), instance, None, spec.name)


def run_ingestion(
    survey_file: Path, instance: dg.DagsterInstance, frames: list[int] | None = None
) -> list[dg.ExecuteInProcessResult]:
    """Register the survey's frames as partitions and ingest them (one run per frame)."""
    keys = frame_keys(survey_file, frames)
    defs = build_definitions(survey_file)
    ns = SurveyNamespace(load_survey_spec(survey_file).name)
    reap_dead_runs(instance)
    added = register_frames(instance, ns, keys)
    log.info("frames: %d selected, %d newly registered as partitions", len(keys), len(added))
    _ensure_calibration(defs, instance, survey_file)
    job = defs.resolve_job_def(FRAMES_JOB)
    return [run_job(job, instance, key, ns.survey) for key in keys]


@dataclass
class StageProfileRow:
    """One asset's profile in a run (``profile: true``): seconds and MB."""

    frame: str
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
        """The ``n`` slowest profiled assets (summed over frames), as sentences."""
        per_asset: dict[str, list[float]] = {}
        for p in self.profiles:
            row = per_asset.setdefault(p.asset, [0.0, 0.0, 0.0])
            row[0] += p.wall_s
            row[1] += p.cpu_s
            row[2] = max(row[2], p.peak_rss_mb)
        total = sum(r[0] for r in per_asset.values()) or 1.0
        return [
            f"{asset}: {wall:.2f} s ({100 * wall / total:.0f} % of the time), CPU {cpu:.2f} s, "
            f"peak RSS {rss:.0f} MB"
            for asset, (wall, cpu, rss) in sorted(per_asset.items(), key=lambda kv: -kv[1][0])[:n]
        ]


def run_reconstruction(
    survey_file: Path,
    instance: dg.DagsterInstance,
    settings: ReconstructionSettings,
    frames: list[int] | None = None,
    roma: RomaMatcher | None = None,
    on_frame: Callable[[str, int, int], None] | None = None,
    keys: Sequence[str] | None = None,
) -> ReconstructionRun:
    """Store the calibration if needed, then run each frame's whole chain (one run per frame, in
    frame order, so that each frame's bed change finds the frame before it), then the change
    table. ``on_frame(frame, done, total)`` is called after each frame. ``keys``: the frame keys
    already checked by :func:`selected_frame_keys` (then ``frames`` is not used and the survey's
    inputs are not opened again)."""
    keys = sorted(set(keys if keys is not None else frame_keys(survey_file, frames)), key=frame_index)
    defs = build_definitions(survey_file, settings, roma)
    ns = SurveyNamespace(load_survey_spec(survey_file).name)
    reap_dead_runs(instance)
    register_frames(instance, ns, keys)
    _ensure_calibration(defs, instance, survey_file)
    job = defs.resolve_job_def(RECONSTRUCT_JOB)
    outcome = ReconstructionRun(keys)
    for n, key in enumerate(keys, start=1):
        log.info("frame %s (%d/%d)", key, n, len(keys))
        result = run_job(job, instance, key, ns.survey)
        outcome.checks += result.get_asset_check_evaluations()
        for event in result.get_asset_materialization_events():
            materialization = event.event_specific_data.materialization
            meta = materialization.metadata
            if "profile_wall_s" in meta:
                outcome.profiles.append(
                    StageProfileRow(
                        key,
                        materialization.asset_key.path[-1],
                        meta["profile_wall_s"].value,
                        meta["profile_cpu_s"].value,
                        meta["profile_peak_rss_mb"].value,
                    )
                )
        if on_frame is not None:
            on_frame(key, n, len(keys))
    run_job(defs.resolve_job_def(CHANGE_SUMMARY_JOB), instance, None, ns.survey)
    return outcome
