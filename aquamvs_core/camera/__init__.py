"""Camera geometry: what a pixel of one camera means in the world.

* :mod:`.calibration` — AquaCal JSON → :class:`~.calibration.Rig` (validated, hashed); states the
  project's conventions (world Z down, pixels ``(u, v)`` at pixel centres, ray depth vs world Z);
* :mod:`.distortion` — lens models (pinhole 5/8 coefficients, fisheye 4), their fold limits, and
  undistortion maps onto new intrinsics;
* :mod:`.lens` — :class:`~.lens.Lens`: a camera's lens on its original pixel grid (the exact
  inverse of the model, and projection guarded by its fold limit);
* :mod:`.refraction` — :class:`~.refraction.RefractiveCamera`: ``cast_ray`` through the flat water
  surface and the exact inverse ``project``;
* :mod:`.sampling` — the pixel grid, sub-pixel sampling of maps, image tensors, the ``ArrayLike`` alias.
"""
