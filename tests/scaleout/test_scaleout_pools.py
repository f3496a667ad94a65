"""The ``gpu`` pool across Celery workers: two runs at once on two workers never run their
``gpu``-pool steps (the dense depths) at the same time, while their other steps do overlap."""

from __future__ import annotations

import dagster as dg
import pytest
from harness import launch, run_by_tag, step_events, step_key, up_to, wait
from servers import log_tail

from aquamvs_assets.assets.depth import GPU_POOL
from aquamvs_core.survey import frame_key

pytestmark = [pytest.mark.scaleout, pytest.mark.xdist_group("scaleout")]  # one worker: shared servers


def _intervals(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    """Step key → (start, end) timestamps of its successful execution."""
    starts = {e.step_key: e.timestamp for e in step_events(instance, run_id, dg.DagsterEventType.STEP_START)}
    ends = {e.step_key: e.timestamp for e in step_events(instance, run_id, dg.DagsterEventType.STEP_SUCCESS)}
    return {key: (starts[key], ends[key]) for key in ends}


def test_gpu_pool_holds_across_workers(calibrated, workers, deployment, instance, scale_survey, log_dir):
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1  # deploy/dagster.yaml
    # Frames 0 and 1 are reconstructed (up to their dense depths at least) by the earlier tests:
    # every step reuses its product, so the steps are short and the two runs' steps meet on the two
    # workers. The runs go up to the dense depths, the pool's step.
    selection = up_to(scale_survey, "pairwise_depths")
    launched = [
        launch(deployment, "reconstruct", frame_key(i), log_dir / f"pool_f{i}.log", selection) for i in (0, 1)
    ]
    for (_, proc), i in zip(launched, (0, 1), strict=True):
        wait(proc, 400, log_dir / f"pool_f{i}.log")
    runs = [run_by_tag(instance, tag) for tag, _ in launched]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), log_tail(log_dir / "pool_f1.log", 40)

    gpu_step = step_key(scale_survey, "pairwise_depths")
    first, second = (_intervals(instance, r.run_id) for r in runs)
    (a0, a1), (b0, b1) = first[gpu_step], second[gpu_step]
    assert a1 <= b0 or b1 <= a0, f"the {GPU_POOL} pool's steps overlapped: {(a0, a1)} and {(b0, b1)}"

    # The control: the runs did execute at the same time (steps outside the pool overlapped), so the
    # assertion above could fail.
    overlaps = [
        key
        for key, (s0, s1) in first.items()
        for other, (t0, t1) in second.items()
        if key != gpu_step and other != gpu_step and s0 < t1 and t0 < s1
    ]
    assert overlaps, "the two runs never ran steps at the same time: the pool was not exercised"
