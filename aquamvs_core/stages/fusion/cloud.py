"""The fused point cloud (:class:`FusedCloud`): world points with colours, normals and support, its
store arrays, Open3D conversions and binary PLY I/O; and nearest-neighbour distances between clouds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open3d as o3d
import open3d.core as o3c

from aquamvs_core.files import atomic_path


@dataclass
class FusedCloud:
    """A fused, cleaned point cloud in world coordinates (metres, Z down).

    Attributes:
        points: (N, 3) float64 world points, metres.
        colors: (N, 3) uint8 RGB.
        normals: (N, 3) float32 unit normals, oriented towards the cameras.
        support: (N,) int32 number of cameras whose depth maps agree on the point (source included;
            for a point merged from several in a voxel, their mean, rounded).
        stats: point counts after each stage (informative).
    """

    points: np.ndarray
    colors: np.ndarray
    normals: np.ndarray
    support: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.points.shape[0]
        shapes = {
            "points": (self.points.shape, (n, 3)),
            "colors": (self.colors.shape, (n, 3)),
            "normals": (self.normals.shape, (n, 3)),
            "support": (self.support.shape, (n,)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise ValueError(f"FusedCloud.{name} has shape {got}, expected {want}")

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @classmethod
    def empty(cls) -> FusedCloud:
        return cls(
            points=np.zeros((0, 3)),
            colors=np.zeros((0, 3), dtype=np.uint8),
            normals=np.zeros((0, 3), dtype=np.float32),
            support=np.zeros(0, dtype=np.int32),
        )

    def as_arrays(self) -> dict[str, np.ndarray]:
        """The four arrays by field name (e.g. for a store product group)."""
        return {
            "points": self.points,
            "colors": self.colors,
            "normals": self.normals,
            "support": self.support,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FusedCloud:
        """Inverse of :meth:`as_arrays` (dtypes are normalised)."""
        return cls(
            points=np.asarray(arrays["points"], dtype=np.float64),
            colors=np.asarray(arrays["colors"], dtype=np.uint8),
            normals=np.asarray(arrays["normals"], dtype=np.float32),
            support=np.asarray(arrays["support"], dtype=np.int32),
        )

    def to_open3d(self) -> o3d.geometry.PointCloud:
        """Legacy Open3D point cloud (points, colours in [0, 1], normals)."""
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(self.points, dtype=np.float64)))
        pcd.colors = o3d.utility.Vector3dVector(self.colors.astype(np.float64) / 255.0)
        pcd.normals = o3d.utility.Vector3dVector(self.normals.astype(np.float64))
        return pcd

    def to_tensor_cloud(self) -> o3d.t.geometry.PointCloud:
        """Open3D tensor point cloud with ``positions`` (float64), ``colors``, ``normals``, ``support``."""
        pcd = o3d.t.geometry.PointCloud(o3c.Tensor(np.ascontiguousarray(self.points, dtype=np.float64)))
        pcd.point.colors = o3c.Tensor(np.ascontiguousarray(self.colors, dtype=np.uint8))
        pcd.point.normals = o3c.Tensor(np.ascontiguousarray(self.normals, dtype=np.float32))
        pcd.point["support"] = o3c.Tensor(np.ascontiguousarray(self.support, dtype=np.int32).reshape(-1, 1))
        return pcd

    def write_ply(self, path: str | Path) -> Path:
        """Write a binary PLY (x y z as double, normals, RGB, an int ``support`` property), atomically:
        a temporary file in the same folder, renamed onto ``path``. Returns ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, ".ply") as tmp:
            if not o3d.t.io.write_point_cloud(str(tmp), self.to_tensor_cloud()):
                raise OSError(f"{path}: Open3D could not write the point cloud")
        return path

    @classmethod
    def read_ply(cls, path: str | Path) -> FusedCloud:
        """Read a PLY written by :meth:`write_ply` (missing attributes get neutral values)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such point cloud")
        pcd = o3d.t.io.read_point_cloud(str(path))
        if "positions" not in pcd.point:
            return cls.empty()
        pts = pcd.point.positions.numpy().astype(np.float64)
        n = pts.shape[0]

        def attr(name: str, default: np.ndarray) -> np.ndarray:
            return pcd.point[name].numpy() if name in pcd.point else default

        colors = attr("colors", np.full((n, 3), 128, dtype=np.uint8))
        if colors.dtype != np.uint8:  # float colours in [0, 1]
            colors = np.clip(np.round(colors * 255.0), 0, 255).astype(np.uint8)
        normals = attr("normals", np.zeros((n, 3), dtype=np.float32)).astype(np.float32)
        support = attr("support", np.ones((n, 1), dtype=np.int32)).reshape(-1).astype(np.int32)
        return cls(points=pts, colors=colors, normals=normals, support=support)


def nearest_distances(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(M,) 3-D distance from each of ``queries`` (M, 3) to its nearest of ``points`` (N, 3), metres
    (Open3D KD-tree search; inf when ``points`` is empty)."""
    q = np.ascontiguousarray(np.asarray(queries, dtype=np.float64).reshape(-1, 3))
    p = np.ascontiguousarray(np.asarray(points, dtype=np.float64).reshape(-1, 3))
    if p.shape[0] == 0 or q.shape[0] == 0:
        return np.full(q.shape[0], np.inf)
    nns = o3c.nns.NearestNeighborSearch(o3c.Tensor(p))
    nns.knn_index()
    _, dist2 = nns.knn_search(o3c.Tensor(q), 1)
    return np.sqrt(dist2.numpy()[:, 0])
