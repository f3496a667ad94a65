"""The files of reconstructed frames, written side by side (:func:`export_frames`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aquamvs_core.runtime import default_workers, map_in_threads
from aquamvs_core.steps.change import export_heightfield
from aquamvs_core.steps.surface import export_frame
from aquamvs_core.store import SurveyStore

__all__ = ["export_frames"]


def export_frames(
    store: SurveyStore,
    frames: Sequence[str],
    out_dir: str | Path,
    mesh_formats: Sequence[str] = ("ply",),
    workers: int | None = None,
) -> list[Path]:
    """Write each frame's cloud and mesh files (:func:`~aquamvs_core.steps.surface.export_frame`)
    and its heightfield file (:func:`~aquamvs_core.steps.change.export_heightfield`), ``workers``
    files at a time (None: the CPU cores this process may use, at most 4). Returns the paths
    written, frame by frame, each frame's cloud and mesh first (whatever the order they finish in).
    """

    def export(job: tuple[str, bool]) -> list[Path]:
        frame, heightfield = job
        if heightfield:
            return [export_heightfield(store, frame, out_dir)]
        return export_frame(store, frame, out_dir, mesh_formats)

    jobs = [(frame, heightfield) for frame in frames for heightfield in (False, True)]
    done = map_in_threads(export, jobs, workers or default_workers(), in_order=True)
    return [path for _, paths in done for path in paths]
