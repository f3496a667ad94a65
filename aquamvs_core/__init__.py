"""aquamvs_core: refractive multi-view stereo science, as a plain library (no Dagster import).

Stages, in data-flow order:

* :mod:`~aquamvs_core.calibration` — AquaCal JSON, validation, content hash; **states the
  project's frame, pixel and depth conventions**.
* :mod:`~aquamvs_core.refraction` — the refractive camera: ``cast_ray`` and exact ``project``.
* :mod:`~aquamvs_core.distortion` — lens distortion and image undistortion to a new K.
* :mod:`~aquamvs_core.pairs` — stereo pair selection.
* :mod:`~aquamvs_core.survey` — a survey: calibration + one video or image folder per camera.
* :mod:`~aquamvs_core.frames` — frame decoding (videos, image folders).
* :mod:`~aquamvs_core.store` — the Zarr store layout and atomic writes.
* :mod:`~aquamvs_core.synthetic` — the built-in synthetic survey (exact refractive ray tracing).
"""

__version__ = "0.1.0"
