"""Write a synthetic survey to disk.

Layout of ``out_dir``::

    calibration.json      AquaCal "1.0", with "metadata": {"generator", "generator_version", "seed", "config"}
    videos/<camera>.mp4   one video per camera (lossless libx264rgb by default)
    ground_truth.npz      x (Nx,), y (Ny,), z (F, Ny, Nx) world Z of the bottom, frame_indices (F,),
                          silt_mask (Ny, Nx) where there is silt
    survey.yaml           the SurveySpec (calibration, inputs=videos, store=store.zarr, ground_truth)

Everything is written into a temporary sibling directory that is renamed to ``out_dir`` at the end,
so an interrupted run never leaves a survey that looks complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from aquamvs_core.camera.calibration import save_calibration
from aquamvs_core.runtime import torch_threads
from aquamvs_core.survey import SurveySpec
from aquamvs_core.survey.video_writer import write_video
from aquamvs_core.synthetic.config import GENERATOR_NAME, SyntheticSurveyConfig
from aquamvs_core.synthetic.ground_truth import save_ground_truth
from aquamvs_core.synthetic.heightfield import Heightfield
from aquamvs_core.synthetic.lenses import lens_report
from aquamvs_core.synthetic.photometry import CameraPhotometry
from aquamvs_core.synthetic.render import RenderSettings, render_frames
from aquamvs_core.synthetic.rig import make_rig
from aquamvs_core.synthetic.terrain import make_terrain

log = logging.getLogger("aquamvs.synthetic")

SURVEY_NAME = "synthetic-demo"
SURVEY_FILE = "survey.yaml"
CALIBRATION_FILE = "calibration.json"
VIDEOS_DIR = "videos"
GROUND_TRUTH_FILE = "ground_truth.npz"
STORE_NAME = "store.zarr"


class SyntheticSurveyMismatch(ValueError):
    """``out_dir`` holds a survey that this configuration would not produce."""


def read_config(survey_dir: str | Path) -> SyntheticSurveyConfig:
    """The configuration a synthetic survey was generated with (from its calibration's metadata)."""
    meta = _read_metadata(Path(survey_dir))
    if meta is None or not isinstance(meta.get("config"), dict):
        raise SyntheticSurveyMismatch(f"{survey_dir}: not a survey made by the {GENERATOR_NAME!r} generator")
    return SyntheticSurveyConfig.model_validate(meta["config"])


def _read_metadata(survey_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((survey_dir / CALIBRATION_FILE).read_text())
    except (OSError, ValueError):
        return None
    meta = data.get("metadata") if isinstance(data, dict) else None
    if not isinstance(meta, dict) or meta.get("generator") != GENERATOR_NAME:
        return None
    return meta


def _check_existing(out_dir: Path, config: SyntheticSurveyConfig) -> None:
    """Raise unless ``out_dir`` is a complete survey made with exactly ``config``."""
    hint = "pass overwrite=True (CLI: --overwrite / --regenerate) to regenerate it"
    meta = _read_metadata(out_dir)
    if meta is None:
        raise SyntheticSurveyMismatch(
            f"{out_dir} has a {SURVEY_FILE} but is not a survey made by the {GENERATOR_NAME!r} generator "
            f"(no matching metadata in {CALIBRATION_FILE}); {hint}"
        )
    expected = config.metadata()
    diffs = [k for k in ("generator_version", "seed") if meta.get(k) != expected[k]]
    stored = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    diffs += sorted(
        k for k in set(stored) | set(expected["config"]) if stored.get(k) != expected["config"].get(k)
    )
    if diffs:
        raise SyntheticSurveyMismatch(
            f"{out_dir} holds a synthetic survey generated with a different configuration "
            f"(differs in: {', '.join(dict.fromkeys(diffs))}); {hint}"
        )
    rig = make_rig(config)
    missing = [GROUND_TRUTH_FILE] if not (out_dir / GROUND_TRUTH_FILE).is_file() else []
    missing += [
        f"{VIDEOS_DIR}/{n}.mp4" for n in rig.camera_names if not (out_dir / VIDEOS_DIR / f"{n}.mp4").is_file()
    ]
    if missing:
        raise SyntheticSurveyMismatch(
            f"{out_dir} is an incomplete synthetic survey (missing {missing}); {hint}"
        )


def _is_replaceable(out_dir: Path) -> bool:
    """Whether ``overwrite`` may delete ``out_dir``: empty, or a synthetic survey."""
    return not any(out_dir.iterdir()) or _read_metadata(out_dir) is not None


def _logged(frames: Iterator[np.ndarray], camera: str, n_frames: int) -> Iterator[np.ndarray]:
    t0 = time.perf_counter()
    for i, frame in enumerate(frames):
        log.info(
            "camera %s: frame %d/%d rendered (%.1f s)", camera, i + 1, n_frames, time.perf_counter() - t0
        )
        t0 = time.perf_counter()
        yield frame


def _write_survey(root: Path, config: SyntheticSurveyConfig, workers: int | None) -> None:
    t_start = time.perf_counter()
    rig = make_rig(config)
    save_calibration(rig, root / CALIBRATION_FILE)
    log.info("rig: %d cameras %s, water at Z=%.3f m", len(rig.cameras), rig.camera_names, config.water_z)
    for name in rig.camera_names:
        lens = lens_report(rig[name])
        log.info(
            "lens %s: folds %.1f° off axis, image corners at %.1f°; %.1f %% of the pixels inside the "
            "model's valid range; undistortion keeps %.1f %% of the image",
            name,
            lens.fold_deg,
            lens.corner_deg,
            100 * lens.valid_fraction,
            100 * lens.kept_by_undistortion,
        )

    t0 = time.perf_counter()
    terrain = make_terrain(config)
    z = terrain.z
    log.info(
        "terrain: %d x %d nodes (%.1f mm cells), Z in [%.4f, %.4f] m, %d frames, texture %d x %d (%.2f s)",
        terrain.x.size,
        terrain.y.size,
        1e3 * config.terrain_cell,
        z.min(),
        z.max(),
        z.shape[0],
        terrain.texture.shape[1],
        terrain.texture.shape[0],
        time.perf_counter() - t0,
    )
    save_ground_truth(
        root / GROUND_TRUTH_FILE, terrain.x, terrain.y, terrain.z, terrain.frame_indices, terrain.silt_mask
    )
    if terrain.bowers or terrain.silt:
        log.info(
            "conditions: %d bowers (walls up to slope %.2f), %d silt patches over %.1f %% of the terrain",
            len(terrain.bowers),
            config.bower_max_slope if terrain.bowers else 0.0,
            len(terrain.silt),
            100 * float(terrain.silt_mask.mean()) if terrain.silt_mask is not None else 0.0,
        )

    # Cameras are rendered in parallel Python threads, each with one torch thread (torch releases
    # the GIL): this uses the cores without torch's intra-op synchronisation (see RenderSettings).
    settings = dataclasses.replace(RenderSettings.from_config(config), threads=None)
    frames = terrain.frame_indices.tolist()
    heightfields = {f: Heightfield.from_terrain(terrain, f) for f in frames}

    def render_camera(name: str) -> None:
        t0 = time.perf_counter()
        photometry = CameraPhotometry.from_config(config, rig.camera_names.index(name))
        images = render_frames(rig[name], rig.interface, terrain, frames, settings, heightfields, photometry)
        write_video(
            root / VIDEOS_DIR / f"{name}.mp4",
            _logged(images, name, len(frames)),
            fps=config.fps,
            lossless=config.lossless_video,
            crf=config.crf,
        )
        log.info("camera %s: video written (%.1f s)", name, time.perf_counter() - t0)

    n_workers = max(1, min(workers or os.cpu_count() or 1, len(rig.cameras)))
    with torch_threads(1), ThreadPoolExecutor(max_workers=n_workers) as pool:
        jobs = [pool.submit(render_camera, name) for name in rig.camera_names]
        try:
            for job in jobs:
                job.result()
        except BaseException:
            for job in jobs:  # do not render the cameras still queued
                job.cancel()
            raise

    SurveySpec(
        name=SURVEY_NAME,
        calibration=root / CALIBRATION_FILE,
        inputs=root / VIDEOS_DIR,
        store=str(root / STORE_NAME),
        ground_truth=root / GROUND_TRUTH_FILE,
    ).to_yaml(root / SURVEY_FILE)
    log.info("synthetic survey generated in %.1f s", time.perf_counter() - t_start)


def generate_survey(
    out_dir: str | Path,
    config: SyntheticSurveyConfig | None = None,
    overwrite: bool = False,
    workers: int | None = None,
) -> Path:
    """Generate the synthetic survey in ``out_dir`` (see the module docstring); returns its survey.yaml.

    If ``out_dir`` already holds a survey (a ``survey.yaml``) and ``overwrite`` is False, nothing is
    generated: the existing survey is returned after checking that it was made with ``config`` (else
    :class:`SyntheticSurveyMismatch`). With ``overwrite``, an existing ``out_dir`` is replaced, but only
    if it is empty or a synthetic survey (anything else raises ``FileExistsError``).

    ``workers`` cameras are rendered at once (default: the number of CPUs); the output does not
    depend on it. Progress is logged on the ``aquamvs.synthetic`` logger.
    """
    config = config or SyntheticSurveyConfig()
    out_dir = Path(out_dir).expanduser().absolute()
    survey_file = out_dir / SURVEY_FILE
    if survey_file.exists() and not overwrite:
        _check_existing(out_dir, config)
        log.info("synthetic survey already present in %s (seed %d): reusing it", out_dir, config.seed)
        return survey_file
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a directory")
        if overwrite and not _is_replaceable(out_dir):
            raise FileExistsError(
                f"refusing to replace {out_dir}: it is neither empty nor a synthetic survey"
            )
        if not overwrite and any(out_dir.iterdir()):
            raise FileExistsError(
                f"{out_dir} exists, is not empty and has no {SURVEY_FILE}; "
                "pass overwrite=True to replace it, or choose another directory"
            )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{tag}"
    log.info("generating synthetic survey (seed %d) in %s", config.seed, out_dir)
    try:
        tmp.mkdir()
        _write_survey(tmp, config, workers)
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{tag}"
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                tmp.rename(out_dir)
            except OSError:
                # Another process finished the same survey first: keep theirs if it matches.
                if not survey_file.exists():
                    raise
                _check_existing(out_dir, config)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return survey_file
