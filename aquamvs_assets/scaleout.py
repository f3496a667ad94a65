"""Scale-out execution: the executor of a survey's jobs, chosen by the environment, and the Celery
settings that the runs and the Celery workers share (deploy/README.md explains the deployment).

Environment:

* ``AQUAMVS_EXECUTOR``: ``in_process`` (default: every step in the run's process) or ``celery``
  (every step a Celery task, run by ``celery -A dagster_celery.app worker`` processes);
* ``AQUAMVS_CELERY_BROKER``: the broker URL (``redis://host:6379/0``), required for ``celery``;
* ``AQUAMVS_CELERY_BACKEND``: the result backend URL (default: the broker);
* ``AQUAMVS_CELERY_VISIBILITY_TIMEOUT_S``: seconds after which Redis hands a step whose worker died
  to another worker (default 7200). It must exceed the longest step, or a step still running is
  started a second time; it is also how long recovery from a lost worker host takes.

A killed worker is recovered by Celery, not Dagster: the broker message of a step is acknowledged
only after the step ran (``task_acks_late``); a pool child that dies is requeued at once
(``task_reject_on_worker_lost``); a whole worker that dies leaves its message unacknowledged, and
Redis restores it after the visibility timeout. Steps are idempotent (store commits), so a rerun
is safe. The ``gpu`` pool holds across workers because the run claims pool slots in the instance
(PostgreSQL) before it submits a step.
"""

import os
import time
from collections.abc import Mapping
from typing import Any

import dagster as dg

EXECUTOR_ENV = "AQUAMVS_EXECUTOR"
BROKER_ENV = "AQUAMVS_CELERY_BROKER"
BACKEND_ENV = "AQUAMVS_CELERY_BACKEND"
VISIBILITY_TIMEOUT_ENV = "AQUAMVS_CELERY_VISIBILITY_TIMEOUT_S"
#: The queue dagster_celery sends every step to (a worker serves it with ``-Q dagster``).
CELERY_QUEUE = "dagster"
EXECUTORS = ("in_process", "celery")


class BrokerUnavailableError(RuntimeError):
    """The Celery broker cannot be reached, or no worker answers on it."""


def celery_settings(visibility_timeout_s: int) -> dict[str, Any]:
    """Celery settings (lower-case names) for the executor's ``config_source`` and the workers."""
    return {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": CELERY_QUEUE,
        "broker_connection_retry_on_startup": True,
        "result_expires": 24 * 3600,
        "broker_transport_options": {
            # dagster_celery's own defaults, which setting this dict replaces
            "max_retries": 3,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
            # Redis: unacknowledged messages of dead workers go to live ones after this
            "visibility_timeout": visibility_timeout_s,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        },
    }


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise dg.DagsterInvariantViolationError(
            f"${EXECUTOR_ENV}=celery needs ${name} (the Celery broker URL, e.g. redis://host:6379/0)"
        )
    return value


def celery_urls(environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """``(broker, backend)`` URLs from the environment."""
    broker = _required(environ, BROKER_ENV)
    return broker, environ.get(BACKEND_ENV, "").strip() or broker


def visibility_timeout_s(environ: Mapping[str, str] = os.environ) -> int:
    return int(environ.get(VISIBILITY_TIMEOUT_ENV, "7200"))


def worker_config(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """What a Celery worker's ``dagster_celery_config`` module holds (deploy/celery/)."""
    broker, backend = celery_urls(environ)
    return {"broker_url": broker, "result_backend": backend, **celery_settings(visibility_timeout_s(environ))}


def broker_preflight(broker_url: str, timeout_s: float = 3.0, min_workers: int = 1) -> list[str]:
    """Check that the broker answers and that at least ``min_workers`` Celery workers answer a ping
    on it; returns the workers' names. A run launched without either would fail late with a
    misleading message, or wait for ever.

    Raises:
        BrokerUnavailableError: naming the broker and what to do.
    """
    from dagster_celery.make_app import make_app
    from kombu import Connection

    try:
        with Connection(broker_url, connect_timeout=timeout_s) as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout_s)
    except Exception as exc:  # kombu's OperationalError wraps the socket error
        raise BrokerUnavailableError(
            f"the Celery broker {broker_url} is unreachable ({exc}); start it, or check ${BROKER_ENV}"
        ) from None
    app = make_app({"broker": broker_url, "backend": None, "include": [], "config_source": None})
    deadline = time.monotonic() + timeout_s
    workers: list[str] = []
    error: Exception | None = None
    try:
        while True:  # a broker that was just restarted may drop the first connections
            try:
                replies = app.control.ping(timeout=1.0) or []
                workers, error = sorted(name for reply in replies for name in reply), None
            except Exception as exc:
                error = exc
                time.sleep(0.2)
            if len(workers) >= min_workers or time.monotonic() >= deadline:
                break
    finally:
        app.close()
    if error is not None:
        raise BrokerUnavailableError(f"the Celery broker {broker_url}: worker ping failed ({error})")
    if len(workers) < min_workers:
        raise BrokerUnavailableError(
            f"the Celery broker {broker_url} is up but {len(workers)} worker(s) answered (need "
            f"{min_workers}): start workers with the command in deploy/README.md"
        )
    return workers


def _celery_executor() -> dg.ExecutorDefinition:
    try:
        from dagster._core.execution.retries import RetryMode  # what dagster_celery uses too
        from dagster_celery import celery_executor
        from dagster_celery.executor import CeleryExecutor
    except ImportError:
        raise dg.DagsterInvariantViolationError(
            f"${EXECUTOR_ENV}=celery needs the scale-out extra: pip install 'aquamvs[scale]'"
        ) from None

    class CheckedCeleryExecutor(CeleryExecutor):
        """dagster_celery's executor, which first checks the broker and its workers: a run that
        cannot be executed fails at once, saying why, instead of failing late or waiting for ever."""

        def execute(self, plan_context, execution_plan):
            broker_preflight(self.broker)
            yield from super().execute(plan_context, execution_plan)

    @dg.executor(
        name="aquamvs_celery",
        config_schema=celery_executor.config_schema,
        requirements=dg.multiple_process_executor_requirements(),
    )
    def checked_celery_executor(init_context: dg.InitExecutorContext) -> CheckedCeleryExecutor:
        config = init_context.executor_config
        return CheckedCeleryExecutor(
            broker=config.get("broker"),
            backend=config.get("backend"),
            config_source=config.get("config_source"),
            include=config.get("include"),
            retries=RetryMode.from_config(config["retries"]),
        )

    broker, backend = celery_urls()
    return checked_celery_executor.configured(
        {
            "broker": broker,
            "backend": backend,
            "config_source": celery_settings(visibility_timeout_s()),
        },
        name="aquamvs_celery",
    )


def executor_from_env() -> dg.ExecutorDefinition:
    """The executor named by ``$AQUAMVS_EXECUTOR`` (module docstring); in-process by default."""
    choice = os.environ.get(EXECUTOR_ENV, "in_process").strip() or "in_process"
    if choice not in EXECUTORS:
        raise dg.DagsterInvariantViolationError(f"${EXECUTOR_ENV}={choice!r}: expected one of {EXECUTORS}")
    return _celery_executor() if choice == "celery" else dg.in_process_executor


#: Retries of a step that failed on a transient error (an object store unreachable for a while).
TRANSIENT_RETRY = dg.RetryPolicy(max_retries=2, delay=3, backoff=dg.Backoff.EXPONENTIAL)
