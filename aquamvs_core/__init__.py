"""aquamvs_core: refractive multi-view stereo science, as a plain library (no Dagster import).

Stages, in data-flow order:

* :mod:`~aquamvs_core.camera.calibration` — AquaCal JSON, validation, content hash; **states the
  project's frame, pixel and depth conventions**.
* :mod:`~aquamvs_core.camera.refraction` — the refractive camera: ``cast_ray`` and exact ``project``.
* :mod:`~aquamvs_core.camera.distortion` — lens distortion and image undistortion to a new K.
* :mod:`~aquamvs_core.stages.pairs` — stereo pair selection.
* :mod:`~aquamvs_core.survey.spec` — a survey: calibration + one video or image folder per camera.
* :mod:`~aquamvs_core.survey.frames` — frame decoding (videos, image folders).
* :mod:`~aquamvs_core.store.survey_store` — the Zarr store layout and atomic writes.
* :mod:`~aquamvs_core.synthetic` — the built-in synthetic survey (exact refractive ray tracing).
"""

__version__ = "0.1.0"
