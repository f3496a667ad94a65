"""Exact refractive ray tracing of the synthetic bottom.

For every (supersampled) pixel of the *distorted* image:

1. the pixel is undistorted to ideal normalized coordinates
   (:func:`~aquamvs_core.camera.distortion.undistort_normalized`; pixels whose inversion does not converge
   are dropped) and expressed as a pixel of an ideal pinhole camera with the same ``K``;
2. :meth:`~aquamvs_core.camera.refraction.RefractiveCamera.cast_ray` gives the refracted ray
   ``X(s) = o + s d`` (``o`` on the water plane, ``d`` unit);
3. the ray is intersected with the bilinear heightfield (:class:`Heightfield`): the *first* root of
   ``f(s) = Z(s) - h(x(s), y(s))`` is bracketed by marching from the top of the relief band, then
   refined by the Illinois method to ``|Δs| < 1e-10`` m or ``|f| < 1e-13`` m;
4. the hit is shaded: bilinear texture lookup at ``(x, y)``, Lambertian shading from the exact normal
   of the bilinear surface, attenuation along the light path in water (vertically down to the hit,
   then the ray's path ``s`` back up), and a backscatter haze that grows with the ray's in-water
   path: ``colour = exposure (albedo · shade · exp(-c (down + s)) + B (1 - exp(-b s)))`` per channel,
   ``c`` the attenuation, ``b`` the backscatter coefficients, ``B`` the water colour;
5. supersamples are averaged; the camera's photometry (gain, white balance, vignetting, noise:
   :mod:`.photometry`, optional) maps the radiance to pixel values, quantised to uint8 RGB.


The intersection with the heightfield (marching and refinement) is :mod:`aquamvs_core.synthetic.heightfield`.

Rays that leave the terrain's square before hitting it, that enter it below the surface (through
its side), that miss the water, or whose pixel cannot be undistorted get
:attr:`RenderSettings.miss_colour`. Everything is vectorised torch (float64 geometry), chunked over
rays, under ``torch.no_grad``. The whole terrain must lie below the water surface.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from aquamvs_core.camera.calibration import CameraCalibration, Interface
from aquamvs_core.camera.distortion import undistort_normalized
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.runtime import torch_threads
from aquamvs_core.synthetic.config import SyntheticSurveyConfig
from aquamvs_core.synthetic.heightfield import DTYPE, Heightfield
from aquamvs_core.synthetic.photometry import CameraPhotometry
from aquamvs_core.synthetic.terrain import Terrain


@dataclass(frozen=True)
class RenderSettings:
    """Shading and sampling parameters (colours are linear-ish RGB in [0, 1]).

    Attributes:
        supersample: samples per pixel side (``supersample²`` rays per pixel, box-filtered).
        attenuation: RGB attenuation coefficients of the water, 1/m, applied along the light path
            (vertically down from the surface to the hit, then along the viewing ray back up).
        water_colour: RGB colour of the backscatter the viewing path adds.
        light: direction *towards* the light (world; Z down, so up is negative Z).
        ambient: fraction of the flat-bottom brightness that does not depend on the normal.
        exposure: overall gain.
        miss_colour: RGB of rays that do not hit the terrain.
        backscatter: RGB backscatter coefficients of the haze, 1/m (None: ``attenuation``).
        chunk_size: rays processed at once (bounds memory).
        threads: torch intra-op threads while rendering (None: leave torch's setting alone). One by
            default: on small CPUs shared with other busy processes, multi-threaded torch ops on
            chunk-sized tensors can slow down tenfold or more (threads waiting for each other);
            :func:`~aquamvs_core.synthetic.generate.generate_survey` renders cameras in parallel instead.
    """

    supersample: int = 2
    attenuation: tuple[float, float, float] = (0.30, 0.09, 0.07)
    water_colour: tuple[float, float, float] = (0.05, 0.20, 0.24)
    light: tuple[float, float, float] = (0.6, -0.35, -1.0)
    ambient: float = 0.3
    exposure: float = 1.15
    miss_colour: tuple[float, float, float] = (0.02, 0.05, 0.07)
    chunk_size: int = 1 << 16
    threads: int | None = 1
    backscatter: tuple[float, float, float] | None = None

    @classmethod
    def from_config(cls, config: SyntheticSurveyConfig) -> RenderSettings:
        return cls(
            supersample=config.supersample,
            attenuation=config.water_attenuation,
            water_colour=config.water_colour,
            backscatter=config.backscatter,
        )


# --------------------------------------------------------------------------------------------
# Rays of a camera
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraRays:
    """Refracted rays of a set of distorted pixels: ``o + s d``; ``valid`` False where undistortion
    did not converge or the air ray misses the water."""

    origins: torch.Tensor  # (N, 3) float64, on the water plane
    directions: torch.Tensor  # (N, 3) float64, unit
    valid: torch.Tensor  # (N,) bool


def pixel_rays(
    camera: CameraCalibration,
    interface: Interface,
    pixels: torch.Tensor | np.ndarray,
    chunk_size: int = 1 << 16,
) -> CameraRays:
    """Refracted rays of distorted pixels (N, 2) ``(u, v)`` of ``camera`` (computed in chunks)."""
    with torch.no_grad():
        px = torch.as_tensor(np.asarray(pixels) if not isinstance(pixels, torch.Tensor) else pixels)
        px = px.to(DTYPE).reshape(-1, 2)
        K = torch.as_tensor(np.asarray(camera.K, dtype=np.float64))
        cam = RefractiveCamera.from_calibration(camera, interface)
        n = px.shape[0]
        origins = torch.empty(n, 3, dtype=DTYPE)
        directions = torch.empty(n, 3, dtype=DTYPE)
        valid = torch.empty(n, dtype=torch.bool)
        for i in range(0, n, chunk_size):
            sl = slice(i, i + chunk_size)
            p = px[sl]
            y = (p[:, 1] - K[1, 2]) / K[1, 1]
            x = (p[:, 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
            xy, converged = undistort_normalized(
                torch.stack([x, y], dim=1), camera.dist_coeffs, camera.is_fisheye
            )
            u = K[0, 0] * xy[:, 0] + K[0, 1] * xy[:, 1] + K[0, 2]
            v = K[1, 1] * xy[:, 1] + K[1, 2]
            origins[sl], directions[sl], ok = cam.cast_ray(torch.stack([u, v], dim=1))
            valid[sl] = ok & converged & torch.isfinite(xy).all(dim=1)
        return CameraRays(origins, directions, valid)


def supersampled_pixels(image_size: tuple[int, int], supersample: int) -> torch.Tensor:
    """(H * W * n², 2) sample positions ``(u, v)``, ordered by row, column, then sub-sample (n × n
    regular grid inside each pixel, pixel centres at integers)."""
    w, h = image_size
    n = supersample
    sub = (torch.arange(n, dtype=DTYPE) + 0.5) / n - 0.5
    v = torch.arange(h, dtype=DTYPE)[:, None, None, None] + sub[None, None, :, None]
    u = torch.arange(w, dtype=DTYPE)[None, :, None, None] + sub[None, None, None, :]
    v, u = torch.broadcast_tensors(v, u)  # (H, W, n, n)
    return torch.stack([u, v], dim=-1).reshape(-1, 2)


# --------------------------------------------------------------------------------------------
# Shading
# --------------------------------------------------------------------------------------------


class _Shader:
    def __init__(self, terrain: Terrain, settings: RenderSettings, water_z: float):
        self.tex = torch.from_numpy(np.ascontiguousarray(terrain.texture, dtype=np.float32))
        self.th, self.tw, _ = self.tex.shape
        self.tex_flat = self.tex.reshape(-1, 3)
        self.ox, self.oy = terrain.texture_origin
        self.texel = terrain.texel_size
        self.water_z = water_z
        light = torch.tensor(settings.light, dtype=DTYPE)
        self.light = light / light.norm()
        self.ambient = settings.ambient
        self.diffuse = (1.0 - settings.ambient) / float(-self.light[2])  # flat bottom → 1
        self.atten = torch.tensor(settings.attenuation, dtype=torch.float32)
        b = settings.backscatter
        self.backscatter = self.atten if b is None else torch.tensor(b, dtype=torch.float32)
        self.water = torch.tensor(settings.water_colour, dtype=torch.float32)
        self.exposure = settings.exposure
        self.miss = torch.tensor(settings.miss_colour, dtype=torch.float32)

    def texture(self, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
        fu = ((px - self.ox) / self.texel).clamp(0, self.tw - 1)
        fv = ((py - self.oy) / self.texel).clamp(0, self.th - 1)
        j = torch.floor(fu).clamp_(max=self.tw - 2)
        i = torch.floor(fv).clamp_(max=self.th - 2)
        tu = (fu - j).to(torch.float32).unsqueeze(1)
        tv = (fv - i).to(torch.float32).unsqueeze(1)
        k = (i * self.tw + j).long()
        t00, t01 = self.tex_flat[k], self.tex_flat[k + 1]
        t10, t11 = self.tex_flat[k + self.tw], self.tex_flat[k + self.tw + 1]
        top = t00 + tu * (t01 - t00)
        bottom = t10 + tu * (t11 - t10)
        return top + tv * (bottom - top)

    def shade(
        self, hf: Heightfield, points: torch.Tensor, ray_depth: torch.Tensor, hit: torch.Tensor
    ) -> torch.Tensor:
        """(N, 3) float32 colours of hits (``miss_colour`` elsewhere)."""
        out = self.miss.expand(points.shape[0], 3).clone()
        sel = torch.nonzero(hit).squeeze(1)
        if sel.numel() == 0:
            return out
        p = points[sel]
        _, gx, gy = hf.height_and_gradient(p[:, 0], p[:, 1])
        # Upward normal of Z = h(x, y) (Z down): (h_x, h_y, -1) normalised.
        lam = (gx * self.light[0] + gy * self.light[1] - self.light[2]) / torch.sqrt(gx * gx + gy * gy + 1)
        shade = (self.ambient + self.diffuse * lam.clamp_min(0)).to(torch.float32).unsqueeze(1)
        albedo = self.texture(p[:, 0], p[:, 1])
        down = (p[:, 2] - self.water_z).to(torch.float32).unsqueeze(1)
        view = ray_depth[sel].to(torch.float32).unsqueeze(1)
        transmit = torch.exp(-self.atten * (down + view))
        colour = albedo * shade * transmit + self.water * (1 - torch.exp(-self.backscatter * view))
        out[sel] = colour * self.exposure
        return out


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayHits:
    """Where rays of pixels hit the bottom (numpy, float64)."""

    points: np.ndarray  # (N, 3) world points (NaN where no hit)
    ray_depth: np.ndarray  # (N,) distance along the refracted ray from the water surface (NaN where no hit)
    hit: np.ndarray  # (N,) bool


def _trace(rays: CameraRays, hf: Heightfield, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = rays.origins.shape[0]
    s = torch.empty(n, dtype=DTYPE)
    hit = torch.empty(n, dtype=torch.bool)
    for i in range(0, n, chunk):
        sl = slice(i, i + chunk)
        s[sl], hit[sl] = hf.intersect(rays.origins[sl], rays.directions[sl], rays.valid[sl])
    return s, hit


def trace_pixels(
    camera: CameraCalibration,
    interface: Interface,
    terrain: Terrain,
    frame_index: int,
    pixels: np.ndarray | torch.Tensor,
    chunk_size: int = 1 << 16,
    threads: int | None = 1,
) -> RayHits:
    """Hit points on the bottom of frame ``frame_index`` of distorted pixels (N, 2) of ``camera``
    (exactly the computation :func:`render_frames` shades)."""
    with torch.no_grad(), torch_threads(threads):
        rays = pixel_rays(camera, interface, pixels, chunk_size)
        hf = Heightfield.from_terrain(terrain, frame_index)
        hf.check_below(interface.water_z)
        s, hit = _trace(rays, hf, chunk_size)
        pts = rays.origins + s.unsqueeze(1) * rays.directions
        pts[~hit] = math.nan
        return RayHits(points=pts.numpy(), ray_depth=s.numpy(), hit=hit.numpy())


def render_frames(
    camera: CameraCalibration,
    interface: Interface,
    terrain: Terrain,
    frame_indices: Iterable[int] | None = None,
    settings: RenderSettings | None = None,
    heightfields: dict[int, Heightfield] | None = None,
    photometry: CameraPhotometry | None = None,
) -> Iterator[np.ndarray]:
    """Render ``camera``'s view of each frame (default: all of the terrain's frames), lazily.

    The camera's rays are computed once. ``heightfields`` (frame index → :class:`Heightfield`) may be
    shared between cameras to save rebuilding them. ``photometry``: the camera's gain, vignetting and
    noise (None: none). Yields (H, W, 3) uint8 RGB images.
    """
    settings = settings or RenderSettings()
    frames = list(terrain.frame_indices.tolist() if frame_indices is None else frame_indices)
    w, h = camera.image_size
    n = settings.supersample
    chunk = settings.chunk_size
    with torch.no_grad(), torch_threads(settings.threads):
        rays = pixel_rays(camera, interface, supersampled_pixels(camera.image_size, n), chunk)
        shader = _Shader(terrain, settings, interface.water_z)
    for frame in frames:
        with torch.no_grad(), torch_threads(settings.threads):
            hf = heightfields[frame] if heightfields and frame in heightfields else None
            hf = hf or Heightfield.from_terrain(terrain, frame)
            hf.check_below(interface.water_z)
            colour = torch.empty(rays.origins.shape[0], 3, dtype=torch.float32)
            for i in range(0, colour.shape[0], chunk):
                sl = slice(i, i + chunk)
                o, d = rays.origins[sl], rays.directions[sl]
                s, hit = hf.intersect(o, d, rays.valid[sl])
                pts = o + torch.nan_to_num(s).unsqueeze(1) * d
                colour[sl] = shader.shade(hf, pts, s, hit)
            img = colour.reshape(h, w, n * n, 3).mean(dim=2)
            if photometry is not None and not photometry.is_identity:
                img = torch.from_numpy(photometry.apply(img.numpy(), camera, frame))
            image = (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        yield image


def render_view(
    camera: CameraCalibration,
    interface: Interface,
    terrain: Terrain,
    frame_index: int = 0,
    settings: RenderSettings | None = None,
    photometry: CameraPhotometry | None = None,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB image of ``camera`` looking at the bottom of frame ``frame_index``."""
    return next(render_frames(camera, interface, terrain, [frame_index], settings, photometry=photometry))
