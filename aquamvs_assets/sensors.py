"""Sensors: discover new survey frames, add them as dynamic partitions and request their ingestion."""

import dagster as dg

from aquamvs_assets.jobs import frames_job
from aquamvs_assets.partitions import FRAMES_PARTITION_NAME, frame_partitions
from aquamvs_assets.resources import SurveyResource
from aquamvs_core.survey import frame_key


def plan_new_frames(survey: SurveyResource, existing: set[str]) -> tuple[list[str], str]:
    """Frame keys selected by the survey but not yet registered, and the calibration hash."""
    with survey.open() as sv:
        keys = [frame_key(i) for i in sv.frame_indices]
        return [k for k in keys if k not in existing], sv.rig.content_hash


@dg.sensor(
    job=frames_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Looks for frames in the survey inputs that are not yet partitions; adds them and "
    "requests one ingestion run per new frame (run keys make every request unique).",
)
def new_frames_sensor(context: dg.SensorEvaluationContext, survey: SurveyResource) -> dg.SensorResult:
    existing = set(context.instance.get_dynamic_partitions(FRAMES_PARTITION_NAME))
    try:
        new_keys, calib_hash = plan_new_frames(survey, existing)
    except (OSError, ValueError) as exc:  # inputs mid-copy or inconsistent: report, retry next tick
        return dg.SensorResult(skip_reason=f"survey inputs not readable yet: {exc}")
    if not new_keys:
        return dg.SensorResult(skip_reason=f"no new frames ({len(existing)} registered)")
    context.log.info(f"registering {len(new_keys)} new frame(s): {new_keys[0]} … {new_keys[-1]}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"{calib_hash[:12]}:{k}", partition_key=k) for k in new_keys],
        dynamic_partitions_requests=[frame_partitions.build_add_request(new_keys)],
    )
