"""Sensors of one survey.

* ``new_frames_sensor`` watches the survey's inputs: it stores the calibration first (and again when
  the calibration file changes, then re-ingests every registered frame), registers frames that
  appear as dynamic partitions and requests their ingestion, and retries a failed ingestion (for
  example of a frame whose files were still being copied) up to :data:`MAX_INGEST_ATTEMPTS` times,
  with the reason in the run's tags and the sensor's log.
* ``automation`` evaluates the assets' automation conditions (the reconstruction chain follows new
  frames on its own). Dagster's default automation sensor starts stopped; this one runs by default.
"""

from __future__ import annotations

import json

import dagster as dg

from aquamvs_assets.jobs import CALIBRATION_JOB, FRAMES_JOB
from aquamvs_assets.partitions import SurveyNamespace
from aquamvs_assets.resources import SurveyResource, ZarrStoreResource
from aquamvs_assets.run_health import reap_dead_runs
from aquamvs_core.survey import frame_key

#: Ingestion runs of one frame before the sensor gives up on it.
MAX_INGEST_ATTEMPTS = 3
SURVEY_TAG = "aquamvs/survey"
ATTEMPT_TAG = "aquamvs/attempt"
REASON_TAG = "aquamvs/retry_reason"
PARTITION_TAG = "dagster/partition"


def _failure_reason(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """The first step failure's message of a failed run (shortened), or its status."""
    records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE, limit=1)
    for record in records.records:
        event = record.event_log_entry.dagster_event
        error = getattr(event.event_specific_data, "error", None) if event else None
        while getattr(error, "cause", None) is not None:
            error = error.cause
        if error is not None:
            return error.message.strip().splitlines()[0][:300]
    return f"run {run.run_id} {run.status.value}"


def _retries(
    context: dg.SensorEvaluationContext, survey: str, registered: set[str], calibration: str
) -> list[dg.RunRequest]:
    """Run requests that retry the frames whose latest ingestion run failed."""
    runs = context.instance.get_runs(
        filters=dg.RunsFilter(job_name=FRAMES_JOB, tags={SURVEY_TAG: survey}), limit=500
    )
    latest: dict[str, dg.DagsterRun] = {}
    for run in runs:  # newest first
        frame = run.tags.get(PARTITION_TAG)
        if frame in registered and frame not in latest:
            latest[frame] = run
    requests = []
    for frame, run in sorted(latest.items()):
        if run.status != dg.DagsterRunStatus.FAILURE:
            continue
        attempt = int(run.tags.get(ATTEMPT_TAG, "0")) + 1
        reason = _failure_reason(context.instance, run)
        if attempt >= MAX_INGEST_ATTEMPTS:
            context.log.warning(f"{frame}: ingestion failed {attempt} times, not retried: {reason}")
            continue
        context.log.info(f"{frame}: retrying ingestion (attempt {attempt + 1}) after: {reason}")
        requests.append(
            dg.RunRequest(
                run_key=f"{calibration[:12]}:{frame}:{attempt}",
                job_name=FRAMES_JOB,
                partition_key=frame,
                tags={SURVEY_TAG: survey, ATTEMPT_TAG: str(attempt), REASON_TAG: reason},
            )
        )
    return requests


def build_sensors(
    ns: SurveyNamespace,
    jobs: list[dg.UnresolvedAssetJobDefinition],
    minimum_interval_seconds: int = 30,
) -> list[dg.SensorDefinition]:
    """The survey's new-frames sensor (targeting its calibration and frames ``jobs``) and its
    running automation sensor."""
    targets = [job for job in jobs if job.name in (CALIBRATION_JOB, FRAMES_JOB)]

    @dg.sensor(
        name="new_frames_sensor",
        jobs=targets,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Stores the calibration (again when it changes, then re-ingests every frame), "
        "registers frames that appear in the survey's inputs and requests their ingestion, and retries a "
        f"failed ingestion up to {MAX_INGEST_ATTEMPTS} times.",
    )
    def new_frames_sensor(
        context: dg.SensorEvaluationContext, survey: SurveyResource, store: ZarrStoreResource
    ) -> dg.SensorResult:
        for run_id in reap_dead_runs(context.instance):
            context.log.warning(f"run {run_id}: its process is gone; marked failed")
        try:
            with survey.open() as sv:
                keys = [frame_key(i) for i in sv.frame_indices]
                calibration = sv.rig.content_hash
        except (OSError, ValueError) as exc:  # inputs mid-copy or inconsistent: report, retry next tick
            return dg.SensorResult(skip_reason=f"survey inputs not readable yet: {exc}")
        cursor = json.loads(context.cursor) if context.cursor else {}
        survey_store = store.get()
        stored = (
            survey_store.read_calibration()["calibration_hash"] if survey_store.has_calibration() else None
        )
        if stored != calibration:
            context.log.info(f"storing calibration {calibration[:12]} (the store has {str(stored)[:12]})")
            return dg.SensorResult(
                run_requests=[
                    dg.RunRequest(
                        run_key=f"calibration:{calibration}",
                        job_name=CALIBRATION_JOB,
                        tags={SURVEY_TAG: ns.survey},
                    )
                ],
            )
        registered = set(context.instance.get_dynamic_partitions(ns.frames.name))
        new_keys = [k for k in keys if k not in registered]
        requests = [
            dg.RunRequest(
                run_key=f"{calibration[:12]}:{k}:0",
                job_name=FRAMES_JOB,
                partition_key=k,
                tags={SURVEY_TAG: ns.survey, ATTEMPT_TAG: "0"},
            )
            for k in new_keys
        ]
        if cursor.get("calibration") not in (None, calibration):  # the calibration changed: re-ingest
            context.log.info(
                f"calibration changed to {calibration[:12]}: re-ingesting {len(registered)} frames"
            )
            requests += [
                dg.RunRequest(
                    run_key=f"{calibration[:12]}:{k}:0",
                    job_name=FRAMES_JOB,
                    partition_key=k,
                    tags={SURVEY_TAG: ns.survey, ATTEMPT_TAG: "0"},
                )
                for k in sorted(registered)
            ]
        requests += _retries(context, ns.survey, registered, calibration)
        if new_keys:
            context.log.info(f"registering {len(new_keys)} new frame(s): {new_keys[0]} … {new_keys[-1]}")
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[ns.frames.build_add_request(new_keys)] if new_keys else [],
            cursor=json.dumps({"calibration": calibration}),
            skip_reason=None if requests else f"no new frames ({len(registered)} registered)",
        )

    automation = dg.AutomationConditionSensorDefinition(
        "automation",
        target=dg.AssetSelection.key_prefixes(ns.prefix),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description="Evaluates the assets' automation conditions: the reconstruction follows new frames.",
    )
    return [new_frames_sensor, automation]
