"""Surface steps: the fused cloud (``fused_cloud``) and the mesh (``mesh``) of a frame, their
readers, and the export of both to files.

Both stream the cameras from the store (:class:`StoreViews`): a camera's depth map and image are
read when the stage needs them, so the memory these steps need does not grow with the number of
cameras."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open3d as o3d
import torch

from aquamvs_core.config import ReconstructionConfig
from aquamvs_core.stages.depth_map import DepthMap
from aquamvs_core.stages.fusion import FusedCloud, FusionView, fuse_views
from aquamvs_core.stages.mesh import build_mesh, export_mesh
from aquamvs_core.steps.common import (
    StoreCameras,
    fingerprint,
    frame_fingerprint,
    product_fingerprint,
    provenance,
    reusable,
)
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Product, frame_index, product_path


class StoreViews:
    """A frame's per-camera fusion inputs, read from the store on demand: ``views(name)`` is the
    camera's combined depth map (``camera_depths/<frame>/<name>``) and its undistorted image."""

    def __init__(self, store: SurveyStore, frame: str, images: bool = True):
        self.store, self.frame, self.images = store, frame, images
        self.names = store.list_products(product_path(Product.CAMERA_DEPTHS, frame))
        self.seconds = 0.0  # spent reading

    def __call__(self, name: str) -> FusionView:
        t0 = time.perf_counter()
        key = product_path(Product.CAMERA_DEPTHS, self.frame, name)
        arrays = self.store.read_product(key, ["depth", "confidence"])
        image = self.store.read_frame(self.frame, [name])[name] if self.images else None
        self.seconds += time.perf_counter() - t0
        depth = DepthMap(name, torch.from_numpy(arrays["depth"]), torch.from_numpy(arrays["confidence"]))
        return FusionView(depth, image)


def fuse_frame(
    store: SurveyStore, frame: str, cams: StoreCameras, config: ReconstructionConfig
) -> FusedCloud:
    """The frame's fused cloud from its camera depth maps, streamed from the store (not written)."""
    views = StoreViews(store, frame)
    if not views.names:
        raise FileNotFoundError(f"{store.root}: frame {frame} has no camera depth maps")
    sizes = {name: cams.masks[name].shape for name in views.names}
    cloud = fuse_views(views, sizes, cams.cameras, config.fusion)
    cloud.stats["read_seconds"] = round(views.seconds, 3)
    return cloud


def fused_cloud_step(store: SurveyStore, frame: str, config: ReconstructionConfig) -> FusedCloud:
    """Fuse the frame's camera depth maps; writes ``fused_cloud/<frame>`` (reused when current)."""
    cameras = store.list_products(product_path(Product.CAMERA_DEPTHS, frame))
    if not cameras:
        raise FileNotFoundError(f"{store.root}: frame {frame} has no camera depth maps")
    path = product_path(Product.FUSED_CLOUD, frame)
    expected = fingerprint(Product.FUSED_CLOUD, _camera_depth_inputs(store, frame, cameras), config.fusion)
    if (stored := reusable(store, path, expected)) is not None:
        cloud = read_cloud(store, frame)
        cloud.stats = dict(stored.get("stats", {}))
        return cloud
    cams = StoreCameras.load(store)
    t0 = time.perf_counter()
    cloud = fuse_frame(store, frame, cams, config)
    summary = {"points": len(cloud), "seconds": round(time.perf_counter() - t0, 3)}
    store.write_product(
        path, cloud.as_arrays(), provenance(cams, frame, config, expected, summary, stats=cloud.stats)
    )
    return cloud


def _camera_depth_inputs(store: SurveyStore, frame: str, cameras: Sequence[str]) -> list[str]:
    """Fingerprints of the frame (its colours) and of its camera depth maps."""
    paths = [product_path(Product.CAMERA_DEPTHS, frame, c) for c in cameras]
    return [frame_fingerprint(store, frame), *(product_fingerprint(store, p) for p in paths)]


def read_cloud(store: SurveyStore, frame: str) -> FusedCloud:
    return FusedCloud.from_arrays(store.read_product(product_path(Product.FUSED_CLOUD, frame)))


def mesh_to_arrays(mesh: o3d.geometry.TriangleMesh) -> dict[str, np.ndarray]:
    return {
        "vertices": np.asarray(mesh.vertices, dtype=np.float64),
        "triangles": np.asarray(mesh.triangles, dtype=np.int32),
        "colors": (np.clip(np.asarray(mesh.vertex_colors), 0, 1) * 255).round().astype(np.uint8),
        "normals": np.asarray(mesh.vertex_normals, dtype=np.float32),
    }


def arrays_to_mesh(arrays: dict[str, np.ndarray]) -> o3d.geometry.TriangleMesh:
    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(arrays["vertices"]), o3d.utility.Vector3iVector(arrays["triangles"])
    )
    if len(arrays["colors"]):
        mesh.vertex_colors = o3d.utility.Vector3dVector(arrays["colors"].astype(np.float64) / 255.0)
    if len(arrays["normals"]):
        mesh.vertex_normals = o3d.utility.Vector3dVector(arrays["normals"].astype(np.float64))
    return mesh


def mesh_step(store: SurveyStore, frame: str, config: ReconstructionConfig) -> o3d.geometry.TriangleMesh:
    """Mesh the frame's fused cloud, colour vertices from the best view; writes ``mesh/<frame>``
    (reused when current). The views that colour it are the cameras with a depth map, read one at
    a time."""
    cameras = store.list_products(product_path(Product.CAMERA_DEPTHS, frame))
    path = product_path(Product.MESH, frame)
    cloud_fp = product_fingerprint(store, product_path(Product.FUSED_CLOUD, frame))
    expected = fingerprint(Product.MESH, cloud_fp, _camera_depth_inputs(store, frame, cameras), config.mesh)
    if reusable(store, path, expected) is not None:
        return read_mesh(store, frame)
    cloud = read_cloud(store, frame)
    cams = StoreCameras.load(store)
    views = StoreViews(store, frame)
    cameras = {name: cams.cameras[name] for name in views.names}
    t0 = time.perf_counter()
    mesh = build_mesh(cloud, config.mesh, cameras, masks=cams.masks, views=views)
    summary = {"vertices": len(mesh.vertices), "seconds": round(time.perf_counter() - t0, 3)}
    store.write_product(
        path,
        mesh_to_arrays(mesh),
        provenance(cams, frame, config, expected, summary, method=config.mesh.method),
    )
    return mesh


def read_mesh(store: SurveyStore, frame: str) -> o3d.geometry.TriangleMesh:
    return arrays_to_mesh(store.read_product(product_path(Product.MESH, frame)))


def export_frame(
    store: SurveyStore, frame: str, out_dir: str | Path, mesh_formats: Sequence[str] = ("ply",)
) -> list[Path]:
    """Write ``<out_dir>/<frame_NNNNNN>/fused_cloud.ply`` and ``mesh.<fmt>`` (world frame, metres,
    Z down) from the store; each file is written atomically."""
    folder = Path(out_dir) / f"frame_{frame_index(frame):06d}"
    folder.mkdir(parents=True, exist_ok=True)
    written = [read_cloud(store, frame).write_ply(folder / "fused_cloud.ply")]
    mesh = read_mesh(store, frame)
    written += [export_mesh(mesh, folder / f"mesh.{fmt.lstrip('.').lower()}") for fmt in mesh_formats]
    return written
