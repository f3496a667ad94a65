"""Helpers of the Dagster-layer tests: surveys with image-folder inputs, a real webserver, GraphQL."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
from graphql_client import graphql

from aquamvs_assets.project import PROJECT_ROOT
from aquamvs_assets.resources import SurveyResource, ZarrStoreResource
from aquamvs_core.survey import SurveySpec, load_survey_spec
from aquamvs_core.survey.video import VideoSource

ALL_FRAMES = ["f000000", "f000001", "f000002"]
BIN = Path(sys.executable).parent


def survey_resources(survey_file: Path) -> dict:
    spec = load_survey_spec(survey_file)
    return {
        "survey": SurveyResource(survey_file=str(survey_file)),
        "store": ZarrStoreResource(root=spec.store),
    }


def as_image_folders(spec: SurveySpec, dest: Path, n_frames: int) -> None:
    """Decode the survey's videos into ``<camera>/000000.png`` folders with the first ``n_frames``."""
    for video in sorted(Path(spec.inputs).glob("*.mp4")):
        folder = dest / video.stem
        folder.mkdir(parents=True, exist_ok=True)
        source = VideoSource(video)
        for i in range(n_frames):
            path = folder / f"{i:06d}.png"
            if not path.exists():
                cv2.imwrite(str(path), source.read(i)[..., ::-1])
        source.close()


def image_folder_survey(synthetic_small_survey: Path, tmp_path: Path, n_frames: int, name: str | None = None):
    """A copy of the small survey whose inputs are image folders holding its first ``n_frames``
    (more can be added later, as frames arriving), with a private store. Returns its survey file."""
    spec = load_survey_spec(synthetic_small_survey)
    inputs = tmp_path / "frames"
    as_image_folders(spec, inputs, n_frames)
    update = {"inputs": inputs, "store": str(tmp_path / "store.zarr")}
    if name:
        update["name"] = name
    return spec.model_copy(update=update).to_yaml(tmp_path / "survey.yaml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def webserver(home: Path, workspace: Path, log_path: Path, env: dict | None = None):
    """A real ``dagster-webserver`` on 127.0.0.1 for ``workspace`` and the instance at ``home``;
    yields its port once GraphQL answers with assets. Stopped in any case."""
    port = free_port()
    full_env = {**os.environ, "DAGSTER_HOME": str(home), **(env or {})}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)],
            env=full_env,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                with contextlib.suppress(OSError, KeyError, TypeError):
                    if graphql(port, "{ assetNodes { id } }")["data"]["assetNodes"]:
                        break
                assert time.monotonic() < deadline, "webserver not ready:\n" + log_path.read_text()[-3000:]
                time.sleep(1.0)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
