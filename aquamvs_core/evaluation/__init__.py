"""Evaluation: how good and how fast a reconstruction is.

* :mod:`.metrics` — accuracy and completeness against a ground-truth heightfield, visibility,
  completeness split by view count (2, 3, 4–5, 6+) and inside / outside the silt;
* :mod:`.visibility` — how many cameras see each cell in their original images (lens, fold guard);
* :mod:`.quality` — a frame's quality report (the ``reconstruction_quality`` check);
* :mod:`.profiling` — per-stage wall, CPU, peak RSS (and CUDA) profiler;
* :mod:`.benchmark` — :func:`~.benchmark.profile_frame` and the pathway × preset matrix.
"""
