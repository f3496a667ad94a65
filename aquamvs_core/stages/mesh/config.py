"""Parameters of the meshing stage (:class:`MeshConfig`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MeshConfig(BaseModel):
    """Parameters of :func:`build_mesh`.

    Attributes:
        method: ``"heightfield"`` (default: a bed is 2.5-D; exact, fast, no extrapolation),
            ``"poisson"`` or ``"bpa"`` (see the module docstring).
        poisson_depth: octree depth of the Poisson solve; 9 gives cells of ~1/512 of the cloud's
            extent (~2.5 mm over 1.3 m), about the detail the fused cloud supports.
        poisson_scale: ratio of the reconstruction cube to the cloud's bounding cube.
        poisson_density_quantile: vertices whose Poisson density is below this quantile are removed
            (the weakly supported, extrapolated surface). 0: keep everything (closed surfaces).
        poisson_crop_margin_mm: the Poisson mesh is cropped to the cloud's bounding box grown by this
            margin, mm (None: no crop).
        poisson_max_distance_mm: vertices farther than this from every cloud point are removed, mm
            (None: three times the median point spacing; 0: keep all). Trims the surface Poisson
            extrapolates past the rim of an open cloud, which density trimming alone leaves.
        heightfield_cell_mm: grid cell of the heightfield, mm (None: twice the median distance from a
            point to its 4th nearest neighbour, at least 1 mm: about 2 mm for a cloud fused with the
            default 1 mm voxels). Cells must be larger than the point spacing or the mesh is full of
            holes; the 4th neighbour is not fooled by near-duplicates from different cameras.
        heightfield_min_points: points a cell needs to get a vertex.
        bpa_radii_mm: ball radii for ball pivoting, mm (None: 1, 2 and 4 times the median spacing of
            the points).
        target_triangles: decimate (quadric error) to at most this many triangles (None: no).
        color_source: ``"views"`` (best view that sees the vertex, needs cameras and images) or
            ``"cloud"`` (nearest cloud point).
        view_selection: ``"frontal"`` (smallest angle between the refracted ray and the normal) or
            ``"confidence"`` (highest depth-map confidence at the pixel).
        occlusion_tol_mm: tolerance between a vertex's ray depth and a depth map, mm. A mesh vertex
            is a smoothed estimate, so a few mm.
        threads: torch threads while colouring with one worker (see
            :class:`~aquamvs_core.stages.fusion.FusionConfig`).
        workers: cameras scored at once while colouring, in threads with one torch thread each
            (None: the CPU cores this process may use, at most 4). The colours do not depend on it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["heightfield", "poisson", "bpa"] = "heightfield"
    poisson_depth: int = Field(9, ge=4, le=13)
    poisson_scale: float = Field(1.1, ge=1.0, le=3.0)
    poisson_density_quantile: float = Field(0.02, ge=0.0, lt=1.0)
    poisson_crop_margin_mm: float | None = Field(2.0, ge=0.0)
    poisson_max_distance_mm: float | None = Field(None, ge=0.0)
    heightfield_cell_mm: float | None = Field(None, gt=0.0, le=1000.0)
    heightfield_min_points: int = Field(1, ge=1)
    bpa_radii_mm: tuple[float, ...] | None = None
    target_triangles: int | None = Field(None, ge=4)
    color_source: Literal["views", "cloud"] = "views"
    view_selection: Literal["frontal", "confidence"] = "frontal"
    occlusion_tol_mm: float = Field(3.0, gt=0.0)
    threads: int | None = Field(1, ge=1)
    workers: int | None = Field(None, ge=1)
