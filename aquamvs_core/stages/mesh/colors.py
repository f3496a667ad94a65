"""Vertex colours from the views (:func:`vertex_colors_from_views`).

Each vertex is projected into every camera (exact refractive projection); a camera is a candidate
when the pixel is in the image, inside the camera's validity mask, the vertex faces the camera (the
refracted ray makes an angle under 90° with the normal) and the camera's depth map confirms that
nothing hides the vertex (the vertex's ray depth matches the depth map at that pixel within
``occlusion_tol_mm``; a depth map that says "farther" rejects the view too). The best candidate is
the most frontal one (or the most confident); cameras whose depth map has no depth there are used
only if no camera confirms the vertex.

The cameras are visited ``MeshConfig.workers`` at a time, in threads (their maps loaded through a
:data:`~aquamvs_core.stages.fusion.ViewLoader`-like callable), and read with fusion's fast
projection and witness read (:func:`~aquamvs_core.stages.fusion.project_points`,
:func:`~aquamvs_core.stages.fusion.views.sample_view`: the same values as the generic samplers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.runtime import default_workers, map_in_threads, torch_threads
from aquamvs_core.stages.depth_map import DepthMap
from aquamvs_core.stages.fusion import FusionView
from aquamvs_core.stages.fusion.projection import project_xyz
from aquamvs_core.stages.fusion.views import PreparedView, prepare_view, sample_view
from aquamvs_core.stages.mesh.config import MeshConfig

#: Camera name → its depth map and image (None, or an image of None: the camera gives no colour).
ColourViews = Callable[[str], FusionView | None]


def views_in_memory(
    images: Mapping[str, np.ndarray], depth_maps: Mapping[str, DepthMap] | None = None
) -> ColourViews:
    """:data:`ColourViews` of images and depth maps in memory (a camera without a depth map gets
    an empty one: its views are "unconfirmed")."""

    def load(name: str) -> FusionView | None:
        if name not in images:
            return None
        image = np.asarray(images[name])
        dm = (depth_maps or {}).get(name)
        if dm is None:
            empty = torch.full(image.shape[:2], math.nan)
            dm = DepthMap(name, empty, torch.zeros_like(empty))
        elif tuple(dm.depth.shape) != image.shape[:2]:
            raise ValueError(f"camera {name!r}: depth map {tuple(dm.depth.shape)} vs image {image.shape[:2]}")
        return FusionView(dm, image)

    return load


def vertex_colors_from_views(
    vertices: np.ndarray,
    normals: np.ndarray,
    cameras: Mapping[str, RefractiveCamera],
    images: Mapping[str, np.ndarray] | None = None,
    depth_maps: Mapping[str, DepthMap] | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
    config: MeshConfig | None = None,
    chunk_size: int = 1 << 16,
    views: ColourViews | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Colour of each vertex from the best camera that sees it (see the module docstring).

    Args:
        vertices: (V, 3) world points, metres. normals: (V, 3) unit normals facing the cameras.
        cameras, images: camera name → refractive camera / (H, W, 3) uint8 RGB image of its grid;
            only cameras with an image are used.
        depth_maps: camera name → :class:`DepthMap` for the occlusion test (cameras without one
            count as "unconfirmed" views).
        masks: camera name → (H, W) bool validity of the image.
        views: instead of ``images`` and ``depth_maps``: camera name → its maps, loaded one
            camera at a time.

    Returns:
        colors: (V, 3) uint8 (0 where no camera sees the vertex).
        view: (V,) int32 index into ``list(cameras)`` of the chosen camera, -1 for none.
    """
    config = config or MeshConfig()
    if views is None:
        views = views_in_memory(images or {}, depth_maps)
    v_all = torch.from_numpy(np.ascontiguousarray(np.asarray(vertices, dtype=np.float64).T))  # (3, V)
    n_all = torch.from_numpy(np.ascontiguousarray(np.asarray(normals, dtype=np.float64).T))
    nv = v_all.shape[1]
    tol = config.occlusion_tol_mm * 1e-3

    def camera_scores(item: tuple[str, RefractiveCamera]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Score (V,) float64 and colour (3, V) float32 of one camera for every vertex."""
        name, cam = item
        loaded = views(name)
        if loaded is None or loaded.image is None:
            return None
        with torch.no_grad():
            view = prepare_view(name, loaded, cam, 0.0, torch.device("cpu"))
            mask = None
            if masks is not None and name in masks:
                mask = torch.as_tensor(np.asarray(masks[name], dtype=bool)).reshape(-1)
            parts = [
                _view_score(
                    view,
                    v_all[:, start : start + chunk_size],
                    n_all[:, start : start + chunk_size],
                    mask,
                    tol,
                    config,
                )
                for start in range(0, nv, chunk_size)
            ]
        return torch.cat([s for s, _ in parts]), torch.cat([c for _, c in parts], dim=1)

    best_score = torch.full((nv,), -math.inf, dtype=torch.float64)
    best_color = torch.zeros(3, nv, dtype=torch.float32)
    best_view = torch.full((nv,), -1, dtype=torch.int32)
    index = {name: ci for ci, name in enumerate(cameras)}
    workers = config.workers or default_workers()
    with torch.no_grad(), torch_threads(config.threads):
        # Cameras side by side, compared in camera order (an earlier camera wins a tie): the same
        # colours for any number of workers.
        found = map_in_threads(camera_scores, list(cameras.items()), workers, in_order=True)
        for (name, _), scored in found:
            if scored is None:
                continue
            score, color = scored
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            best_color = torch.where(better, color, best_color)
            best_view = torch.where(better, index[name], best_view)
            del scored, score, color
    colors = np.clip(np.round(best_color.T.numpy()), 0, 255).astype(np.uint8)
    return colors, best_view.numpy()


def _view_score(
    view: PreparedView,
    x: torch.Tensor,
    normal: torch.Tensor,
    mask: torch.Tensor | None,
    tol: float,
    config: MeshConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score (n,) of a camera for vertices ``x`` (3, n) (-inf where it does not see them) and the
    colour (3, n) it sees. Confirmed views score in [2, 3], unconfirmed ones (no depth there) in
    [0, 1]."""
    h, w = view.height, view.width
    # float32 is plenty for a colour and a 3 mm occlusion test (pixels to ~1e-4 px).
    x32 = x.float()
    p = project_xyz(view.camera, x32[0], x32[1], x32[2])
    u, v = p.u, p.v
    ok = p.valid & (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)
    u, v = torch.where(ok, u, -10.0), torch.where(ok, v, -10.0)
    if mask is not None:
        pixel = torch.round(v).clamp(0, h - 1).long() * w + torch.round(u).clamp(0, w - 1).long()
        ok = ok & mask.index_select(0, pixel)
    # The refracted ray through the pixel runs from its crossing o to the vertex.
    rx, ry, rz = x32[0] - p.cross_x, x32[1] - p.cross_y, x32[2] - view.camera.water_z
    s = torch.sqrt(rx * rx + ry * ry + rz * rz)
    n32 = normal.float()
    cos = -(n32[0] * rx + n32[1] * ry + n32[2] * rz) / s
    ok = ok & (cos > 0)
    sample = sample_view(view, u, v, torch.full_like(s, math.inf))
    known = sample.seen
    agrees = (sample.depth - s).abs() <= tol
    ok = ok & (~known | agrees)
    confirmed = known & agrees
    quality = cos if config.view_selection == "frontal" else sample.conf
    score = quality.clamp(0, 1).double() + 2.0 * confirmed.double()
    score = torch.where(ok & sample.color_ok, score, -math.inf)
    return score, sample.color
