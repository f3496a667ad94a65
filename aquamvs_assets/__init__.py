"""aquamvs_assets: the Dagster layer that wires :mod:`aquamvs_core` steps into assets.

``definitions.py`` builds one code location per survey from ``assets/``, ``partitions.py``,
``resources.py``, ``sensors.py`` and ``jobs.py``; ``metadata.py`` renders previews and tables;
``runner.py`` runs the jobs in-process for the CLI (``cli.py``: arguments and printing only) and the
Python API. Nothing in :mod:`aquamvs_core` imports from here, and nothing here is science.
"""
