"""The Celery settings of an AquaMVS worker. ``celery -A dagster_celery.app worker`` imports a module
of this name when it is importable: put this folder on the worker's PYTHONPATH (deploy/README.md).
The settings are the ones the runs' executor uses (:func:`aquamvs_assets.scaleout.worker_config`),
read from the same environment variables, so the two sides cannot disagree."""

from aquamvs_assets.scaleout import worker_config

globals().update(worker_config())
