"""Refractive camera model: a pinhole camera in air looking through a flat, horizontal water surface.

Frames, units and pixel conventions are those of :mod:`aquamvs_core.camera.calibration` (world Z down,
water plane ``Z = water_z``, pixels ``(u, v)`` with integer values at pixel centres).

**Depth convention.** A refracted ray starts at its *origin* ``o`` on the water plane and has a
unit direction ``d`` pointing down into the water. Its **ray depth** ``s >= 0`` is the distance in
metres along that refracted ray: ``X = o + s * d`` (:func:`point_at_ray_depth`). The world Z of
that point is ``water_z + s * d_z`` (:func:`ray_depth_to_world_z`). Nothing in this project uses
the camera-frame z as "depth" for underwater points.

**Lens.** Without a :class:`~aquamvs_core.camera.lens.Lens` the camera is an ideal pinhole with
intrinsics ``K`` (e.g. of an undistorted image). With one, ``K`` is the calibrated intrinsics of the
*original* image and pixels are original pixels: :meth:`RefractiveCamera.cast_ray` inverts the lens
model exactly and :meth:`RefractiveCamera.project` applies it, reporting points beyond the model's
fold as invalid (they would otherwise land on wrong pixels, see :mod:`aquamvs_core.camera.lens`).

All methods are batched and run on the device and dtype of their inputs (float32 or float64).
"""

from __future__ import annotations

import numpy as np
import torch

from aquamvs_core.camera.calibration import CameraCalibration, Interface
from aquamvs_core.camera.lens import Lens, PixelInverse
from aquamvs_core.camera.sampling import ArrayLike


def _as64(x: ArrayLike) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float64)


def point_at_ray_depth(origins: torch.Tensor, directions: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Points ``origins + depth[..., None] * directions``: (..., 3) from (..., 3), (..., 3), (...)."""
    return origins + depth.unsqueeze(-1) * directions


def ray_depth_to_world_z(directions: torch.Tensor, depth: torch.Tensor, water_z: float) -> torch.Tensor:
    """World Z (metres) of the points at ray depth ``depth`` (...) along unit ``directions`` (..., 3)."""
    return water_z + depth * directions[..., 2]


def world_z_to_ray_depth(directions: torch.Tensor, world_z: torch.Tensor, water_z: float) -> torch.Tensor:
    """Ray depth (metres) at which rays with unit ``directions`` (..., 3) reach world Z ``world_z``."""
    return (world_z - water_z) / directions[..., 2]


def refract(incident: torch.Tensor, n1: float, n2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Refract unit directions (..., 3) travelling down (+Z) through a horizontal interface.

    Vector form of Snell's law with the surface normal ``[0, 0, -1]`` (pointing back against the
    incident ray). Returns the unit refracted directions (..., 3) and a mask (...) that is False
    where the incident ray does not go down or is totally internally reflected.
    """
    eta = n1 / n2
    cos_i = incident[..., 2]
    sin2_t = eta * eta * (1.0 - cos_i * cos_i)
    valid = (cos_i > 0) & (sin2_t <= 1.0)
    cos_t = torch.sqrt(torch.clamp(1.0 - sin2_t, min=0.0))
    normal = torch.zeros_like(incident)
    normal[..., 2] = -1.0
    refracted = eta * incident + (eta * cos_i - cos_t).unsqueeze(-1) * normal
    return refracted / refracted.norm(dim=-1, keepdim=True), valid


class RefractiveCamera:
    """A camera in air above the flat water plane ``Z = water_z`` (world Z down).

    Args:
        K: (3, 3) intrinsics: of the undistorted image, or of the original image with ``lens``.
        R: (3, 3) world→camera rotation.
        t: (3,) world→camera translation, metres (``p_cam = R @ p_world + t``).
        water_z: world Z of the water surface, metres; the camera centre must be above it.
        n_air, n_water: refractive indices.
        image_size: optional (width, height), used by :meth:`in_image` (required with ``lens``).
        lens: the lens model of the original image (None: an ideal pinhole).
    """

    def __init__(
        self,
        K: ArrayLike,
        R: ArrayLike,
        t: ArrayLike,
        water_z: float,
        n_air: float = 1.0,
        n_water: float = 1.333,
        image_size: tuple[int, int] | None = None,
        lens: Lens | None = None,
    ):
        self.K = _as64(K).reshape(3, 3).cpu()
        self.R = _as64(R).reshape(3, 3).cpu()
        self.t = _as64(t).reshape(3).cpu()
        self.water_z = float(water_z)
        self.n_air = float(n_air)
        self.n_water = float(n_water)
        self.image_size = image_size
        self.center = -self.R.T @ self.t
        if not self.center[2] < self.water_z:
            raise ValueError(
                f"camera centre Z={float(self.center[2]):.4f} m is not above "
                f"the water surface Z={self.water_z}"
            )
        if not (self.n_air > 0 and self.n_water > 0):
            raise ValueError("refractive indices must be positive")
        self.K_inv = torch.linalg.inv(self.K)
        self.lens = lens
        self._inverse: PixelInverse | None = None
        if lens is not None:
            if image_size is None:
                raise ValueError("a camera with a lens model needs image_size")
            self._inverse = PixelInverse(self.K.numpy(), lens, image_size)
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    @classmethod
    def from_calibration(
        cls,
        camera: CameraCalibration,
        interface: Interface,
        K_undistorted: ArrayLike | None = None,
        image_size: tuple[int, int] | None = None,
        with_lens: bool = False,
    ) -> RefractiveCamera:
        """Build from a calibrated camera.

        Args:
            camera, interface: the calibration.
            K_undistorted: intrinsics of the undistorted image (default: the calibrated K).
            image_size: (width, height) of that image (default: the calibrated size).
            with_lens: the camera of the *original* image: calibrated K and size, with the lens model
                (``K_undistorted`` and ``image_size`` must then be None).
        """
        if with_lens:
            if K_undistorted is not None or image_size is not None:
                raise ValueError("with_lens uses the calibrated K and image size")
            return cls(
                camera.K,
                camera.R,
                camera.t,
                interface.water_z,
                interface.n_air,
                interface.n_water,
                camera.image_size,
                Lens.of(camera),
            )
        K = camera.K if K_undistorted is None else K_undistorted
        size = camera.image_size if image_size is None else (int(image_size[0]), int(image_size[1]))
        return cls(K, camera.R, camera.t, interface.water_z, interface.n_air, interface.n_water, size)

    def _params(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (like.device, like.dtype)
        if key not in self._cache:
            params = (self.K, self.K_inv, self.R, self.t, self.center)
            self._cache[key] = tuple(x.to(device=like.device, dtype=like.dtype) for x in params)
        return self._cache[key]

    @staticmethod
    def _check(x: torch.Tensor, last: int, what: str) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{what} must be a floating-point torch tensor")
        if x.ndim == 0 or x.shape[-1] != last:
            raise ValueError(f"{what} must have shape (..., {last}), got {tuple(x.shape)}")

    # ---------------------------------------------------------------------------------------
    # Pixel → refracted ray
    # ---------------------------------------------------------------------------------------

    def air_rays(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit world-frame directions (..., 3) of the rays in air through ``pixels`` (..., 2), and
        their validity (...) (False where the lens model cannot be inverted: beyond its fold)."""
        self._check(pixels, 2, "pixels")
        _, K_inv, R, _, _ = self._params(pixels)
        if self._inverse is None:
            homog = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1)
            d_cam = homog @ K_inv.T
            ok = torch.ones(pixels.shape[:-1], dtype=torch.bool, device=pixels.device)
        else:
            xy, ok = self._inverse.ideal(pixels)
            xy = torch.where(ok.unsqueeze(-1), xy.to(pixels.dtype), torch.zeros_like(pixels))
            d_cam = torch.cat([xy, torch.ones_like(xy[..., :1])], dim=-1)
        d_world = d_cam @ R  # R^T @ d for row vectors
        return d_world / d_world.norm(dim=-1, keepdim=True), ok

    def cast_ray(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cast refracted rays for ``pixels`` (..., 2) in (u, v) order (of the undistorted image, or of
        the original image for a camera with a lens).

        Returns:
            origins: (..., 3) intersection of the air ray with the water plane (world, metres).
            directions: (..., 3) unit refracted direction in water (world frame, d_z > 0).
            valid: (...) bool; False where the air ray does not point down towards the water, or
            where the pixel lies beyond the lens model's fold. Invalid entries hold finite placeholder
            values.
        """
        d_air, lens_ok = self.air_rays(pixels)
        center = self._params(pixels)[4]
        dz = d_air[..., 2]
        down = dz > 0
        safe_dz = torch.where(down, dz, torch.ones_like(dz))
        s = (self.water_z - center[2]) / safe_dz
        origins = center + s.unsqueeze(-1) * d_air
        directions, ok = refract(d_air, self.n_air, self.n_water)
        valid = down & ok & lens_ok & torch.isfinite(origins).all(dim=-1)
        origins = torch.where(valid.unsqueeze(-1), origins, center.expand_as(origins))
        return origins, directions, valid

    # ---------------------------------------------------------------------------------------
    # World point → pixel
    # ---------------------------------------------------------------------------------------

    def refraction_points(
        self, points: torch.Tensor, max_iter: int = 100
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Where light from underwater ``points`` (..., 3) crosses the water surface towards the camera.

        In the vertical plane through the camera centre and the point, the crossing lies at horizontal
        distance ``r`` from the camera's nadir, in ``[0, rho]`` (``rho``: horizontal camera–point
        distance), and satisfies Snell's law ``g(r) = n_air·sin θ_air − n_water·sin θ_water = 0``.
        ``g`` is strictly increasing with ``g(0) <= 0 <= g(rho)``, so a safeguarded Newton iteration
        that falls back to bisection whenever a step leaves the bracket converges for every point.
        Iteration stops when every bracket or Newton step is below a few ulps of the scene scale.

        Returns:
            crossings: (..., 3) points on the water plane (Z = water_z).
            valid: (...) False for points not below the water or where the solve did not converge.
        """
        self._check(points, 3, "points")
        center = self._params(points)[4]
        dtype = points.dtype
        h_c = self.water_z - center[2]  # camera height above water, > 0
        h_p = points[..., 2] - self.water_z  # point depth below water
        below = h_p > 0
        h_p = torch.where(below, h_p, torch.ones_like(h_p))
        delta = points[..., :2] - center[:2]
        rho = delta.norm(dim=-1)
        n_a, n_w = self.n_air, self.n_water

        def g_and_dg(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            a = torch.sqrt(r * r + h_c * h_c)
            q = rho - r
            b = torch.sqrt(q * q + h_p * h_p)
            g = n_a * r / a - n_w * q / b
            dg = n_a * h_c * h_c / a**3 + n_w * h_p * h_p / b**3
            return g, dg

        lo = torch.zeros_like(rho)
        hi = rho.clone()
        # Paraxial initial guess: n_a r / h_c = n_w (rho - r) / h_p.
        r = n_w * rho * h_c / (n_a * h_p + n_w * h_c)
        eps = torch.finfo(dtype).eps
        tol = 4 * eps * torch.clamp(rho + h_c + h_p, min=1.0)
        converged = rho <= tol
        r = torch.where(converged, torch.zeros_like(r), r)
        for _ in range(max_iter):
            g, dg = g_and_dg(r)
            lo = torch.where(g <= 0, r, lo)
            hi = torch.where(g >= 0, r, hi)
            step = g / dg
            newton = r - step
            in_bracket = torch.isfinite(newton) & (newton >= lo) & (newton <= hi)
            r_new = torch.where(in_bracket, newton, 0.5 * (lo + hi))
            done = (in_bracket & (step.abs() <= tol)) | ((hi - lo) <= tol)
            r = torch.where(converged, r, r_new)
            converged = converged | done
            if bool(converged.all()):
                break
        unit = delta / torch.clamp(rho, min=torch.finfo(dtype).tiny).unsqueeze(-1)
        xy = center[:2] + r.unsqueeze(-1) * unit
        crossings = torch.cat([xy, torch.full_like(r, self.water_z).unsqueeze(-1)], dim=-1)
        return crossings, below & converged

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project underwater world ``points`` (..., 3) to pixels (..., 2) in (u, v).

        Exact: the refraction point is solved to convergence (see :meth:`refraction_points`).
        ``valid`` (...) is False for points at or above the water surface, for crossings behind the
        camera, where the solve did not converge, and (with a lens) where the direction lies beyond
        the lens model's fold. Pixels outside the image are still ``valid`` here; use
        :meth:`in_image` for that test.
        """
        uv, valid, _ = self._project(points)
        return uv, valid

    def project_rays(
        self, points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`project`, plus the refracted ray of the projected pixel: ``(uv, valid, origins,
        directions)``, the ray ``origins + s directions`` (on the water plane; unit, down) passing
        through each point — what :meth:`cast_ray` of ``uv`` returns, without inverting the lens."""
        uv, valid, crossings = self._project(points)
        d = points - crossings
        d = d / d.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(points.dtype).tiny)
        return uv, valid, crossings, d

    def _project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._check(points, 3, "points")
        K, _, R, _, center = self._params(points)
        crossings, valid = self.refraction_points(points)
        p_cam = (crossings - center) @ R.T  # = R·Q + t, without the cancellation
        z = p_cam[..., 2]
        valid = valid & (z > 0)
        z_safe = torch.where(valid, z, torch.ones_like(z))
        xy = p_cam[..., :2] / z_safe.unsqueeze(-1)
        if self._inverse is None:
            uv = xy @ K[:2, :2].T + K[:2, 2]
        else:
            uv, unfolded = self._inverse.pixels(xy)
            valid = valid & unfolded
        return uv, valid, crossings

    def in_image(self, pixels: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
        """(...) mask of pixels (..., 2) inside the image (pixel centres span [-0.5, W-0.5])."""
        if self.image_size is None:
            raise ValueError("image_size is not set on this camera")
        w, h = self.image_size
        u, v = pixels[..., 0], pixels[..., 1]
        return (u >= -0.5 + margin) & (u <= w - 0.5 - margin) & (v >= -0.5 + margin) & (v <= h - 0.5 - margin)
