"""aquamvs_assets: the Dagster layer that wires :mod:`aquamvs_core` stages into assets.

``definitions.py`` builds the code location; ``assets/``, ``resources.py``, ``partitions.py``,
``sensors.py`` and ``jobs.py`` sit beside it. Nothing in :mod:`aquamvs_core` imports from here.
"""
