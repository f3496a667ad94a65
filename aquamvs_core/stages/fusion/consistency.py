"""Multi-view consistency of one source camera's depths against its witnesses (steps 1 and 2 of
:mod:`aquamvs_core.stages.fusion.fuse`), streamed: views are loaded on demand through a bounded
cache, and a witness is read only where the source's points can project into it.

**Which witness pixels are consulted.** The source image is cut into tiles of ``TILE`` × ``TILE``
source points (``TILE · stride`` pixels a side with a pixel stride); the 8 corners of the 3-D
bounding box of each tile's points are projected into each other camera, and a tile is tested
against a camera only if the pixel box of those corners, grown by a margin, meets the camera's
image. Cameras that no tile meets are never loaded. Over a tile the
refractive projection is almost affine, so the projected points stay inside the corners' pixel box
to well under the margin (``TILE_MARGIN_PX`` plus 10 % of the box): the tiles left out are ones
whose points would all have fallen outside the image, where nothing is sampled anyway.

**The test itself** is the one the fusion docstring states; the witness's ray through the
projected pixel passes through ``X`` by construction, so its point at the sampled ray depth
``s_j`` is ``X'_j = o_j + s_j (X − o_j) / |X − o_j|`` (``o_j``: where that ray crosses the water),
and ``|X − X'_j| = |s_j − |X − o_j||``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.camera.sampling import SampleMode
from aquamvs_core.stages.fusion.projection import project_points, project_xyz
from aquamvs_core.stages.fusion.views import PreparedView, sample_view

#: Side of the source tiles whose bounding boxes decide which witnesses a pixel is tested against,
#: in source points (pixels times the pixel stride): tiles of as many points whatever the stride, so
#: that the corners projected per point stay the same (8 for 256 points; with 16-pixel tiles at a
#: stride of 2 they cost as much as the witness tests themselves at 1600×1200).
TILE = 16
#: Margin around a tile's projected corner box, pixels (plus 10 % of the box).
TILE_MARGIN_PX = 4.0
#: Working precision of the per-witness test (pixels to ~1e-4 px, points to ~0.1 µm).
WORK_DTYPE = torch.float32
#: A witness test gathers the points that project near the image first when they are fewer than this
#: fraction of the chunk.
COMPACT_BELOW = 0.5


@dataclass
class SourcePoints:
    """The source camera's points with a depth, in :data:`WORK_DTYPE`: ``cols`` (4, n) world X, Y, Z
    (metres) and tolerance (metres) — one gather reads them —, unit ray directions ``d`` (3, n),
    confidence ``conf`` (n,), colour ``color`` (3, n) or None, and tile index ``tile`` (n,). Rows,
    not columns: element-wise work on a contiguous row is several times faster than on a column."""

    cols: torch.Tensor
    d: torch.Tensor
    conf: torch.Tensor
    color: torch.Tensor | None
    tile: torch.Tensor
    n_tiles: int

    def __len__(self) -> int:
        return int(self.cols.shape[1])


#: Depth pixels sampled to measure a camera's footprint on the bed.
FOOTPRINT_SAMPLES = 2048


def pixel_footprint_mm(view: PreparedView, samples: int = FOOTPRINT_SAMPLES) -> float:
    """Median distance (mm) between the world points of a pixel and of its right and lower
    neighbours at the pixel's own ray depth: how far apart one pixel's neighbours sit on the bed.

    Measured on up to ``samples`` pixels with a depth, evenly spread over them (exact refracted rays,
    float64). NaN when the view has no depth."""
    h, w = view.height, view.width
    inner = torch.isfinite(view.planes[0])
    inner[h - 1, :] = False
    inner[:, w - 1] = False
    flat_idx = torch.nonzero(inner.reshape(-1)).squeeze(1)
    if flat_idx.numel() == 0:
        return math.nan
    pick = torch.linspace(0, flat_idx.numel() - 1, min(samples, flat_idx.numel()), device=flat_idx.device)
    idx = flat_idx.index_select(0, pick.round().long())
    pix = torch.stack([idx % w, idx // w], dim=1).to(torch.float64)
    s = view.at_pixels(idx)[0].to(torch.float64).unsqueeze(1)
    steps = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64, device=pix.device)
    o, d, ok = view.camera.cast_ray(pix.unsqueeze(0) + steps.unsqueeze(1))  # (3, n, ...)
    x = o + s.unsqueeze(0) * d
    ok = ok.all(dim=0)
    gaps = torch.stack([(x[1] - x[0]).norm(dim=-1), (x[2] - x[0]).norm(dim=-1)])[:, ok]
    if gaps.numel() == 0:
        return math.nan
    return float(gaps.median()) * 1e3


def auto_pixel_stride(view: PreparedView, source_spacing_mm: float, max_stride: int = 8) -> int:
    """The largest source-pixel stride whose points stay within ``source_spacing_mm`` of each other
    on the bed: ``floor(source_spacing_mm / footprint)`` (:func:`pixel_footprint_mm`), in
    ``[1, max_stride]``; 1 when the footprint cannot be measured."""
    footprint = pixel_footprint_mm(view)
    if not math.isfinite(footprint) or footprint <= 0:
        return 1
    return int(min(max_stride, max(1, math.floor(source_spacing_mm / footprint))))


def source_points(
    view: PreparedView, pixel_stride: int, tol_3d_mm: float, tol_rel: float, chunk: int
) -> tuple[SourcePoints, int]:
    """The source pixels with a usable depth (every ``pixel_stride``-th of every ``pixel_stride``-th
    row) turned into world points (rays in float64). Also returns the number of source pixels with a
    depth."""
    h, w = view.height, view.width
    source = torch.isfinite(view.planes[0])
    if pixel_stride > 1:
        grid = torch.zeros_like(source)
        grid[::pixel_stride, ::pixel_stride] = True
        source &= grid
    flat_idx = torch.nonzero(source.reshape(-1)).squeeze(1)
    side = TILE * pixel_stride  # tile side, pixels
    parts: list[tuple[torch.Tensor | None, ...]] = []
    for start in range(0, flat_idx.numel(), chunk):
        idx = flat_idx[start : start + chunk]
        pix = torch.stack([idx % w, idx // w], dim=1).to(torch.float64)
        o, d, ok = view.camera.cast_ray(pix)
        keep = torch.nonzero(ok).squeeze(1)
        idx, pix, o, d = (t.index_select(0, keep) for t in (idx, pix, o, d))
        vals = view.at_pixels(idx)  # (C, n)
        s = vals[0].to(torch.float64)
        x = o + s.unsqueeze(1) * d
        tol = tol_3d_mm * 1e-3 + tol_rel * s
        cols = torch.cat([x.T, tol.unsqueeze(0)]).to(WORK_DTYPE)
        tile = (pix[:, 1].long() // side) * math.ceil(w / side) + pix[:, 0].long() // side
        color = vals[2:] if view.has_image else None
        parts.append((cols, d.T.to(WORK_DTYPE), vals[1].clamp_min(1e-3), color, tile))
    n_tiles = math.ceil(h / side) * math.ceil(w / side)
    dev = view.planes.device
    if not parts:
        empty = torch.zeros(3, 0, dtype=WORK_DTYPE, device=dev)
        none = torch.zeros(0, dtype=WORK_DTYPE, device=dev)
        cols = torch.zeros(4, 0, dtype=WORK_DTYPE, device=dev)
        return SourcePoints(cols, empty, none, empty if view.has_image else None, none.long(), n_tiles), 0
    cols, d = torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)
    conf, tile = torch.cat([p[2] for p in parts]), torch.cat([p[4] for p in parts])
    color = torch.cat([p[3] for p in parts], dim=1) if view.has_image else None
    return SourcePoints(cols, d, conf, color, tile, n_tiles), int(flat_idx.numel())


def tile_boxes(points: SourcePoints) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiles that have points (m,) and the 8 corners of each one's 3-D bounding box (m, 8, 3),
    float64."""
    x = points.cols[:3].T.to(torch.float64)
    index = points.tile.unsqueeze(1).expand(-1, 3)
    lo = x.new_full((points.n_tiles, 3), math.inf).scatter_reduce(0, index, x, "amin")
    hi = x.new_full((points.n_tiles, 3), -math.inf).scatter_reduce(0, index, x, "amax")
    used = torch.nonzero(torch.isfinite(lo[:, 0])).squeeze(1)
    lo, hi = lo.index_select(0, used), hi.index_select(0, used)
    bits = torch.tensor(
        [[(k >> 0) & 1, (k >> 1) & 1, (k >> 2) & 1] for k in range(8)], dtype=torch.bool, device=x.device
    )
    corners = torch.where(bits.unsqueeze(0), hi.unsqueeze(1), lo.unsqueeze(1))
    return used, corners


def tiles_seen(
    camera: RefractiveCamera, size: tuple[int, int], used: torch.Tensor, corners: torch.Tensor, n_tiles: int
) -> torch.Tensor:
    """(n_tiles,) bool: tiles whose points may project into ``camera``'s (H, W) image (see the
    module docstring)."""
    h, w = size
    p = project_points(camera, corners.reshape(-1, 3))
    u, v, ok = p.u.view(-1, 8), p.v.view(-1, 8), p.valid.view(-1, 8)
    u0, u1, v0, v1 = u.amin(1), u.amax(1), v.amin(1), v.amax(1)
    margin = TILE_MARGIN_PX + 0.1 * torch.maximum(u1 - u0, v1 - v0)
    meets = (u1 > -1 - margin) & (u0 < w + margin) & (v1 > -1 - margin) & (v0 < h + margin)
    seen = torch.zeros(n_tiles, dtype=torch.bool, device=corners.device)
    all_ok, any_ok = ok.all(1), ok.any(1)
    # Corners that do not project (behind the camera) say nothing about the box: keep the tile when
    # some do and some do not; drop it when none does (it lies far outside any field of view).
    seen[used] = (all_ok & meets) | (any_ok & ~all_ok)
    return seen


class Agreement:
    """Per-source-point sums over the agreeing views (the source included), as rows: weights ``w``
    (n,), weighted points ``wx`` (3, n) float64, weighted directions back to the cameras ``wview``
    (3, n), colours ``col`` (3, n) and their number ``ncol`` (n,), agreeing other cameras
    ``count`` (n,), cameras seeing through ``through`` (n,)."""

    def __init__(self, points: SourcePoints):
        n, dev = len(points), points.cols.device
        self.w = points.conf.clone()
        self.wx = points.conf.to(torch.float64) * points.cols[:3].to(torch.float64)
        self.wview = -points.conf * points.d
        has_color = points.color is not None
        self.col = points.color.clone() if has_color else torch.zeros(3, n, dtype=WORK_DTYPE, device=dev)
        self.ncol = torch.full((n,), 1.0 if has_color else 0.0, dtype=WORK_DTYPE, device=dev)
        self.count = torch.zeros(n, dtype=torch.int32, device=dev)
        self.through = torch.zeros(n, dtype=torch.int32, device=dev)


def _adder(idx: torch.Tensor):
    """``add(target, values)``: ``target[..., idx] += values`` (a slice when ``idx`` is a run)."""
    first, n = int(idx[0]), idx.numel()
    if int(idx[-1]) - first + 1 == n:  # sorted and unique: a run

        def add(target: torch.Tensor, values: torch.Tensor) -> None:
            target[..., first : first + n] += values.to(target.dtype)
    else:

        def add(target: torch.Tensor, values: torch.Tensor) -> None:
            target.index_add_(target.ndim - 1, idx, values.to(target.dtype))

    return add


def check_witness(
    points: SourcePoints, idx: torch.Tensor, witness: PreparedView, acc: Agreement, sampling: SampleMode
) -> None:
    """Test source points ``idx`` (sorted, unique) against ``witness`` and add what it says to ``acc``.

    Everything is computed on whole chunks with arithmetic masks (only the points that project near
    the image are gathered first, when they are few): on a CPU, gathers and ``torch.where`` cost
    more than the arithmetic they would save."""
    first, n = int(idx[0]), idx.numel()
    run = int(idx[-1]) - first + 1 == n
    cols = points.cols[:, first : first + n] if run else points.cols.index_select(1, idx)
    p = project_xyz(witness.camera, cols[0], cols[1], cols[2])
    h, w = witness.height, witness.width
    near = p.valid & (p.u > -1) & (p.u < w) & (p.v > -1) & (p.v < h)  # False where NaN
    n_near = int(torch.count_nonzero(near))
    if n_near == 0:
        return
    if n_near < COMPACT_BELOW * n:
        sub = torch.nonzero(near).squeeze(1)
        idx = idx.index_select(0, sub)
        packed = torch.stack([*cols.unbind(0), p.u, p.v, p.cross_x, p.cross_y]).index_select(1, sub)
        x, y, z, tol, u, v, cross_x, cross_y = packed.unbind(0)
    else:
        x, y, z, tol = cols.unbind(0)
        # Pixels that cannot be read are moved well outside the map (they come back unseen).
        far = (~near).to(WORK_DTYPE) * 1e4
        u, v, cross_x, cross_y = (
            torch.nan_to_num(p.u) - far,
            torch.nan_to_num(p.v) - far,
            p.cross_x,
            p.cross_y,
        )
    sample = sample_view(witness, u, v, tol, bilinear=sampling == "bilinear")
    # The witness's ray from its crossing o_j through X, and X's ray depth t along it.
    rx, ry, rz = x - cross_x, y - cross_y, z - witness.camera.water_z
    t = torch.sqrt(rx * rx + ry * ry + rz * rz)
    diff = sample.depth - t  # s_j − t
    agree = sample.seen & (diff.abs() <= tol)
    add = _adder(idx)
    # j's surface lies beyond X along j's ray: j sees through the place where X would be.
    add(acc.through, sample.seen & (diff > tol))
    if int(torch.count_nonzero(agree)) == 0:
        return
    w_j = sample.conf.clamp_min(1e-3) * agree.to(WORK_DTYPE)
    inv_t = 1.0 / t
    dx, dy, dz = rx * inv_t, ry * inv_t, rz * inv_t
    # X'_j = o_j + s_j d_j = X + (s_j − t) d_j, weighted.
    add(acc.w, w_j)
    add(acc.wx, torch.stack([w_j * (x + diff * dx), w_j * (y + diff * dy), w_j * (z + diff * dz)]))
    add(acc.wview, torch.stack([-w_j * dx, -w_j * dy, -w_j * dz]))
    add(acc.count, agree)
    if sample.color is not None:
        use = (agree & sample.color_ok).to(WORK_DTYPE)
        add(acc.col, sample.color * use)
        add(acc.ncol, use)
