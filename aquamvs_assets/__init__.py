"""aquamvs_assets: the Dagster layer that wires :mod:`aquamvs_core` steps into assets.

``definitions.py`` builds one code location per survey from ``assets/``, ``partitions.py``,
``resources.py``, ``sensors.py`` and ``jobs.py``; ``metadata.py`` renders previews and tables;
``runner.py`` runs the jobs in-process for the CLI (``cli.py``: arguments and printing only) and the
Python API. Nothing in :mod:`aquamvs_core` imports from here, and nothing here is science.
"""

from aquamvs_core.runtime import tune_allocator

# Before any thread has a heap of its own: glibc's arena limit only binds threads that have none
# yet. Set later (when the definitions are built, after Dagster's instance and imports had run) the
# pair workers landed on different heaps and a 1600×1200 frame peaked at 6.7 GB instead of 3.4 GB.
tune_allocator()
