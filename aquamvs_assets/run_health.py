"""Runs whose process died. A run killed with ``kill -9`` cannot report its own end, and Dagster's
default run launcher cannot check a run worker's health, so such a run would stay "started" (its
partitions in progress) for ever. Every run records the process that executes it
(:func:`worker_tags`, set by the store resource); :func:`reap_dead_runs` (called by the CLI and by
the new-frames sensor) marks a started run failed when that process is gone."""

from __future__ import annotations

import os
import socket

import dagster as dg

PID_TAG = "aquamvs/pid"
HOST_TAG = "aquamvs/host"


def worker_tags() -> dict[str, str]:
    """Tags that identify the process executing a run."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def reap_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark as failed the started runs whose executing process on this host no longer exists, and
    free the concurrency slots they held (a killed run's ``gpu`` slot would otherwise block every
    later run of the pool). Returns their run ids."""
    host = socket.gethostname()
    reaped = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        pid = run.tags.get(PID_TAG)
        if pid and run.tags.get(HOST_TAG) == host and not _alive(int(pid)):
            instance.report_run_failed(run, f"the process {pid} executing this run is gone (killed?)")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            reaped.append(run.run_id)
    return reaped
