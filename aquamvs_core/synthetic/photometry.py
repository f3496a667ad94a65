"""The camera side of the synthetic images: per-camera gain and white balance, vignetting, and
sensor noise. None of it touches geometry: it maps the rendered radiance of a pixel to its value.

For camera ``i`` (its own random stream), with the image's linear radiance ``I`` (H, W, 3) in
``[0, 1]`` at full scale:

* gain ``g = exp(N(0, gain_spread))`` and white balance ``w_c = exp(N(0, white_balance_spread))``
  per channel;
* vignetting ``V = 1 - vignetting · ρ²``, ``ρ`` = distance of the pixel from the principal point
  over the distance of the farthest image corner (so the corners lose ``vignetting``);
* shot noise: ``Poisson(S · full_well) / full_well`` of the signal ``S = g w_c V I`` (photo-electrons
  at full scale), then read noise ``N(0, read_noise)``, drawn per frame from the camera's stream.

The result is clipped to ``[0, 1]`` and quantised by the renderer. With the defaults (all zero) it
is the identity and the renderer skips it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from aquamvs_core.camera.calibration import CameraCalibration
from aquamvs_core.synthetic.config import SyntheticSurveyConfig

PHOTOMETRY_STREAM = 8
NOISE_STREAM = 9


@dataclass(frozen=True)
class CameraPhotometry:
    """Radiometric model of one camera (see the module docstring).

    Attributes:
        gain: (3,) per-channel gain (overall gain times white balance).
        vignetting: brightness lost at the farthest image corner.
        full_well: photo-electrons at full scale (0: no shot noise).
        read_noise: std of the read noise, fraction of full scale.
        seed: the random stream of the noise (``[survey seed, NOISE_STREAM, camera index]``).
    """

    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    vignetting: float = 0.0
    full_well: float = 0.0
    read_noise: float = 0.0
    seed: tuple[int, ...] = (0,)

    @classmethod
    def from_config(cls, config: SyntheticSurveyConfig, camera_index: int) -> CameraPhotometry:
        rng = np.random.default_rng([config.seed, PHOTOMETRY_STREAM, camera_index])
        g = math.exp(rng.normal(0.0, config.gain_spread)) if config.gain_spread else 1.0
        wb = (
            np.exp(rng.normal(0.0, config.white_balance_spread, 3))
            if config.white_balance_spread
            else np.ones(3)
        )
        return cls(
            gain=tuple(float(g * w) for w in wb),
            vignetting=config.vignetting,
            full_well=config.full_well,
            read_noise=config.read_noise,
            seed=(config.seed, NOISE_STREAM, camera_index),
        )

    @property
    def is_identity(self) -> bool:
        return (
            self.gain == (1.0, 1.0, 1.0)
            and self.vignetting == 0
            and self.full_well == 0
            and self.read_noise == 0
        )

    def falloff(self, camera: CameraCalibration) -> np.ndarray:
        """(H, W) float64 vignetting factor ``V`` of ``camera``'s image."""
        w, h = camera.image_size
        cx, cy = float(camera.K[0, 2]), float(camera.K[1, 2])
        v, u = np.mgrid[0:h, 0:w].astype(np.float64)
        corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]])
        r_max = float(np.hypot(corners[:, 0] - cx, corners[:, 1] - cy).max())
        rho2 = ((u - cx) ** 2 + (v - cy) ** 2) / (r_max * r_max)
        return 1.0 - self.vignetting * rho2

    def signal(self, radiance: np.ndarray, camera: CameraCalibration) -> np.ndarray:
        """(H, W, 3) float64 noiseless signal ``g w_c V I`` of the radiance (H, W, 3)."""
        gain = np.asarray(self.gain, dtype=np.float64)
        return np.asarray(radiance, dtype=np.float64) * gain * self.falloff(camera)[..., None]

    def apply(self, radiance: np.ndarray, camera: CameraCalibration, frame_index: int) -> np.ndarray:
        """(H, W, 3) float32 pixel values (unclipped) of the radiance (H, W, 3) in frame ``frame_index``."""
        s = self.signal(radiance, camera)
        if self.full_well > 0 or self.read_noise > 0:
            rng = np.random.default_rng([*self.seed, frame_index])
            if self.full_well > 0:
                s = rng.poisson(np.clip(s, 0.0, None) * self.full_well) / self.full_well
            if self.read_noise > 0:
                s = s + rng.normal(0.0, self.read_noise, s.shape)
        return s.astype(np.float32)
