"""Change steps: a frame's heightfield on the survey grid (``heightfield``), its bed change from the
previous frame and from the reference frame (``bed_change``), the survey's change table
(``change_summary``), and the export of heightfields and changes to files.

Products (tiles of :data:`TILE` × :data:`TILE` cells)::

    heightfield/<frame>            z, count, cameras, sigma; attrs: grid, psf_sigma_m, gsd_m, stats
    bed_change/<frame>/<earlier>   dz = z_<frame> − z_<earlier>, lod; attrs: from_frame, to_frame, kinds
                                   ("previous", "reference"), the volumes per region, the heightfields'
                                   write times (the lineage of the two frames)

The grid is the same for every frame of a survey (:func:`survey_grid`, from the calibration and
``config.heightfield`` only).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aquamvs_core.config import ReconstructionConfig
from aquamvs_core.files import atomic_path, atomic_write_npz
from aquamvs_core.stages.bed_grid import BedGrid, ground_sampling_distance, window_psf_sigma
from aquamvs_core.stages.change import VOLUME_KEYS, BedChange, change_rows, compute_change
from aquamvs_core.stages.heightfield import Heightfield, build_heightfield, survey_grid_for
from aquamvs_core.steps.common import StoreCameras, fingerprint, product_fingerprint, provenance, reusable
from aquamvs_core.steps.surface import read_cloud
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Product, frame_index, frame_key, product_path

log = logging.getLogger("aquamvs.change")

#: Cells per side of a stored tile (chunk) of the heightfield and change arrays.
TILE = 256
CHANGE_SUMMARY_TABLE = "change_summary"
CHANGES_DIR = "changes"
VOLUMES_FILE = "volumes.csv"

_GRIDS: dict[tuple[str, str], BedGrid] = {}


def tiles(data: np.ndarray) -> tuple[int, ...]:
    """Chunk shape of a per-cell array: :data:`TILE` × :data:`TILE` tiles."""
    return tuple(min(TILE, n) for n in data.shape)


def survey_grid(
    store: SurveyStore, config: ReconstructionConfig, cams: StoreCameras | None = None
) -> BedGrid:
    """The survey's grid (:func:`~aquamvs_core.stages.heightfield.survey_grid_for` the stored
    calibration), computed once per calibration and configuration in a process."""
    cams = cams or StoreCameras.load(store)
    key = (cams.calibration_hash, config.heightfield.model_dump_json())
    if key not in _GRIDS:
        _GRIDS[key] = survey_grid_for(cams.cameras, cams.masks, config.heightfield)
    return _GRIDS[key]


def heightfield_step(store: SurveyStore, frame: str, config: ReconstructionConfig) -> Heightfield:
    """The frame's heightfield from its fused cloud; writes ``heightfield/<frame>`` (reused when
    current: same fused cloud and heightfield configuration)."""
    path = product_path(Product.HEIGHTFIELD, frame)
    cloud_fp = product_fingerprint(store, product_path(Product.FUSED_CLOUD, frame))
    hf_config = config.heightfield
    # the plane sweep's window enters the blur compensation; RoMa has no window to compensate
    window = None if config.pathway == "roma" else config.plane_sweep.window
    expected = fingerprint(Product.HEIGHTFIELD, cloud_fp, hf_config, window)
    if reusable(store, path, expected) is not None:
        return read_heightfield(store, frame)
    cloud = read_cloud(store, frame)
    if len(cloud) == 0:
        raise ValueError(f"{store.root}: frame {frame} has an empty fused cloud")
    cams = StoreCameras.load(store)
    t0 = time.perf_counter()
    grid = survey_grid(store, config, cams)
    gsd = ground_sampling_distance(cams.cameras, float(np.median(cloud.points[:, 2])))
    if hf_config.psf_sigma_mm is not None:
        psf = hf_config.psf_sigma_mm * 1e-3
    else:
        psf = 0.0 if window is None else window_psf_sigma(window, gsd)
    bed = build_heightfield(cloud.points, cloud.normals, cloud.support, grid, hf_config, psf, gsd)
    summary = {"seconds": round(time.perf_counter() - t0, 3)}
    store.write_product(
        path,
        bed.as_arrays(),
        provenance(
            cams,
            frame,
            config,
            expected,
            summary,
            grid=grid.attrs(),
            psf_sigma_m=psf,
            gsd_m=gsd,
            stats=bed.stats(),
        ),
        chunking=tiles,
    )
    return bed


def read_heightfield(store: SurveyStore, frame: str) -> Heightfield:
    path = product_path(Product.HEIGHTFIELD, frame)
    grid = BedGrid.from_attrs(store.product_attrs(path)["grid"])
    return Heightfield.from_arrays(grid, store.read_product(path))


def _by_index(frames: Iterable[str]) -> list[str]:
    return sorted(set(frames), key=frame_index)


def heightfield_frames(store: SurveyStore) -> list[str]:
    """Frames with a committed heightfield, in frame order."""
    return _by_index(store.list_products(Product.HEIGHTFIELD.value))


@dataclass
class FrameChanges:
    """What :func:`bed_change_step` did for one frame.

    Attributes:
        frame: the frame (B). previous: the earlier frame it was compared with (None: none).
        reference: the reference frame (None: none, or the frame itself).
        changes: earlier frame → :class:`BedChange` (``dz = z_frame − z_earlier``).
        rows: the volume rows (:func:`~aquamvs_core.stages.change.change_rows`) with
            ``frame``, ``from_frame`` and ``kinds``.
        notes: why a comparison was skipped.
    """

    frame: str
    previous: str | None = None
    reference: str | None = None
    changes: dict[str, BedChange] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def compared_frames(
    frame: str, frames: Sequence[str], available: Iterable[str], config: ReconstructionConfig
) -> tuple[str | None, str | None, list[str]]:
    """The previous and the reference frame of ``frame`` among the selected ``frames``.

    The previous frame is the latest selected frame before ``frame`` that has a heightfield in
    ``available`` (a note says so when it is not the one right before); the reference frame is
    ``config.change.reference_frame`` (default: the first selected frame), None when it is
    ``frame`` itself or has no heightfield (with a note). Returns (previous, reference, notes)."""
    have, notes = set(available), []
    ordered = _by_index([*frames, frame])
    before = ordered[: ordered.index(frame)]
    previous = next((f for f in reversed(before) if f in have), None)
    if before and previous != before[-1]:
        notes.append(f"{before[-1]} has no heightfield: previous frame is {previous}")
    ref_index = config.change.reference_frame
    reference = frame_key(ref_index) if ref_index is not None else ordered[0]
    if reference == frame:
        reference = None
    elif reference not in have:
        notes.append(f"reference frame {reference} has no heightfield: no change from the reference")
        reference = None
    return previous, reference, notes


def bed_change_step(
    store: SurveyStore, frame: str, frames: Sequence[str], config: ReconstructionConfig
) -> FrameChanges:
    """The change of ``frame`` from its previous and its reference frame among ``frames`` (see
    :func:`compared_frames`); writes ``bed_change/<frame>/<earlier>`` for each."""
    available = heightfield_frames(store)
    if frame not in available:
        raise FileNotFoundError(
            f"{store.root}: frame {frame} has no heightfield (materialize heightfield first)"
        )
    previous, reference, notes = compared_frames(frame, frames, available, config)
    for note in notes:
        log.warning("%s: %s", frame, note)
    result = FrameChanges(frame, previous, reference, notes=notes)
    kinds: dict[str, list[str]] = {}
    for kind, earlier in (("previous", previous), ("reference", reference)):
        if earlier is not None:
            kinds.setdefault(earlier, []).append(kind)
    cams = StoreCameras.load(store)
    bed_b = read_heightfield(store, frame)
    hf_b = store.product_attrs(product_path(Product.HEIGHTFIELD, frame))
    for earlier, why in kinds.items():
        path = product_path(Product.BED_CHANGE, frame, earlier)
        hf_a = store.product_attrs(product_path(Product.HEIGHTFIELD, earlier))
        expected = fingerprint(
            Product.BED_CHANGE, hf_a.get("fingerprint"), hf_b.get("fingerprint"), config.change, why
        )
        if (stored := reusable(store, path, expected)) is not None:
            result.changes[earlier] = read_bed_change(store, frame, earlier)[0]
            result.rows += stored["volumes"]
            continue
        t0 = time.perf_counter()
        window = _window_cells(store, (earlier, frame), bed_b.grid)
        change = compute_change(read_heightfield(store, earlier), bed_b, config.change, window)
        rows = [
            {"frame": frame, "from_frame": earlier, "kinds": "+".join(why), **row}
            for row in change_rows(change, config.change.regions)
        ]
        store.write_product(
            path,
            change.as_arrays(),
            provenance(
                cams,
                frame,
                config,
                expected,
                {"seconds": round(time.perf_counter() - t0, 3)},
                from_frame=earlier,
                to_frame=frame,
                kinds=why,
                confidence=change.confidence,
                grid=change.grid.attrs(),
                volumes=rows,
                heightfields_written_at={earlier: hf_a.get("written_at"), frame: hf_b.get("written_at")},
            ),
            chunking=tiles,
        )
        result.changes[earlier] = change
        result.rows += rows
        log.info("%s: change from %s (%s): %s", frame, earlier, "+".join(why), rows[0])
    return result


def _window_cells(store: SurveyStore, frames: Iterable[str], grid: BedGrid) -> float:
    """The local-RMS window of the LoD (cells): the larger blur the two heightfields compensated."""
    psf = [store.product_attrs(product_path(Product.HEIGHTFIELD, f)).get("psf_sigma_m", 0.0) for f in frames]
    return max(psf) / grid.cell


def read_bed_change(store: SurveyStore, frame: str, earlier: str) -> tuple[BedChange, dict[str, Any]]:
    """The stored change ``z_frame − z_earlier`` and its product attrs."""
    path = product_path(Product.BED_CHANGE, frame, earlier)
    attrs = store.product_attrs(path)
    arrays = store.read_product(path)
    return BedChange(
        BedGrid.from_attrs(attrs["grid"]), arrays["dz"], arrays["lod"], attrs["confidence"]
    ), attrs


def change_summary_step(store: SurveyStore, frames: Sequence[str] | None = None) -> pd.DataFrame:
    """Every stored bed change of ``frames`` (default: all frames with a heightfield) as one table,
    one row per (frame, earlier frame, region), in frame order; written as ``tables/change_summary``."""
    rows = []
    for frame in _by_index(frames if frames is not None else heightfield_frames(store)):
        for earlier in store.list_products(product_path(Product.BED_CHANGE, frame)):
            attrs = store.product_attrs(product_path(Product.BED_CHANGE, frame, earlier))
            rows += attrs["volumes"]
    table = pd.DataFrame(rows, columns=["frame", "from_frame", "kinds", "region", *VOLUME_KEYS])
    table.insert(1, "frame_index", [frame_index(f) for f in table["frame"]])
    table.insert(3, "from_index", [frame_index(f) for f in table["from_frame"]])
    store.write_table(CHANGE_SUMMARY_TABLE, table)
    return table


# --------------------------------------------------------------------------------------------
# Export (CLI and Python API)
# --------------------------------------------------------------------------------------------


def export_heightfield(store: SurveyStore, frame: str, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/frame_NNNNNN/heightfield.npz`` (atomically): ``x`` (nx,), ``y`` (ny,), ``z``
    (ny, nx) world metres, Z down, NaN where unknown, ``z[j, i]`` at ``(x[i], y[j])``; also ``sigma``
    (metres), ``count`` and ``cameras``."""
    bed = read_heightfield(store, frame)
    path = Path(out_dir) / f"frame_{frame_index(frame):06d}" / "heightfield.npz"
    arrays = {
        "x": bed.grid.x,
        "y": bed.grid.y,
        "z": bed.z.astype(np.float64),
        "sigma": bed.sigma.astype(np.float64),
        "count": bed.count,
        "cameras": bed.cameras,
    }
    return atomic_write_npz(path, arrays)


def export_changes(
    store: SurveyStore, frames: Sequence[str], out_dir: str | Path, config: ReconstructionConfig
) -> list[Path]:
    """For each pair of consecutive ``frames`` A, B: ``<out_dir>/changes/frame_AAAAAA_to_BBBBBB.npz``
    with ``x``, ``y``, ``dz`` (= z_B − z_A, metres) and ``lod`` (metres) on the heightfields' grid;
    and ``<out_dir>/changes/volumes.csv``, one row per pair and region. The stored bed change is used
    when there is one, else it is computed from the two heightfields (nothing is written to the store).
    Every file is written atomically."""
    folder = Path(out_dir) / CHANGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    ordered, written, rows = _by_index(frames), [], []
    for earlier, frame in itertools.pairwise(ordered):
        if earlier in store.list_products(product_path(Product.BED_CHANGE, frame)):
            change, _ = read_bed_change(store, frame, earlier)
        else:
            a, b = read_heightfield(store, earlier), read_heightfield(store, frame)
            change = compute_change(a, b, config.change, _window_cells(store, (earlier, frame), a.grid))
        name = f"frame_{frame_index(earlier):06d}_to_{frame_index(frame):06d}.npz"
        arrays = {
            "x": change.grid.x,
            "y": change.grid.y,
            "dz": change.dz.astype(np.float64),
            "lod": change.lod.astype(np.float64),
        }
        written.append(atomic_write_npz(folder / name, arrays))
        for row in change_rows(change, config.change.regions):
            rows.append({"from_frame": frame_index(earlier), "to_frame": frame_index(frame), **row})
    table = pd.DataFrame(rows, columns=["from_frame", "to_frame", "region", *VOLUME_KEYS])
    with atomic_path(folder / VOLUMES_FILE) as tmp:
        table.to_csv(tmp, index=False)
    written.append(folder / VOLUMES_FILE)
    return written
