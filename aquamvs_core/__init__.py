"""aquamvs_core: refractive multi-view stereo science, as a plain library (no Dagster import).

Going down the packages is going along the data:

* :mod:`~aquamvs_core.camera` — calibration (AquaCal JSON; **states the frame, pixel and depth
  conventions**), lens distortion, the refractive camera (``cast_ray``, exact ``project``), pixel
  sampling;
* :mod:`~aquamvs_core.survey` — a survey's definition, its inputs (videos, image folders) and the
  keys that name frames, partitions and products;
* :mod:`~aquamvs_core.store` — the Zarr store: layout, the one commit protocol, :class:`SurveyStore`;
* :mod:`~aquamvs_core.stages` — the stages, pure functions on arrays and tensors, in flow order:
  ingest (undistortion), pairs (view selection), sparse, stereo (plane sweep), dense (RoMa),
  fusion, mesh;
* :mod:`~aquamvs_core.steps` — store-level steps, one per asset: read inputs, run a stage, write
  its product;
* :mod:`~aquamvs_core.synthetic` — the built-in synthetic survey and its exact ground truth;
* :mod:`~aquamvs_core.evaluation` — metrics against ground truth, the quality report, profiling and
  the benchmark matrix.

Beside them: :mod:`~aquamvs_core.config` (one typed configuration with presets),
:mod:`~aquamvs_core.runtime` (torch threads, devices), :mod:`~aquamvs_core.files` (atomic file
writes), :mod:`~aquamvs_core.checkpoints` (local model weights), :mod:`~aquamvs_core.preview`
(images for metadata).
"""

__version__ = "0.1.0"
