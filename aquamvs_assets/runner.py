"""Launch asset jobs over frame (and frame × pair) partitions in-process, recording runs in an
instance. Used by the CLI and the Python API; the Dagster UI and daemon do the same with backfills."""

import logging
from collections.abc import Sequence

import dagster as dg

from aquamvs_assets.partitions import FRAMES_PARTITION_NAME

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
        ranges = [(f"{frame_keys[0]}|{pair_keys[0]}", f"{frame_keys[-1]}|{pair_keys[-1]}")]
        if not _contiguous(instance, frame_keys):
            ranges = [(f"{f}|{pair_keys[0]}", f"{f}|{pair_keys[-1]}") for f in frame_keys]
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
