"""Resources: the survey (calibration + inputs), the Zarr store, the reconstruction settings, and the
RoMa matcher (a model loaded for one materialization and disposed of when it ends)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import yaml
from pydantic import Field

from aquamvs_assets.run_health import worker_tags
from aquamvs_core.camera.calibration import Rig, load_calibration
from aquamvs_core.config import ReconstructionConfig, build_config
from aquamvs_core.stages.dense.roma import (
    RomaSession,
    RomaSettings,
    load_roma,
    memory_in_use,
)
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Survey, SurveySpec, load_survey_spec


class SurveyResource(dg.ConfigurableResource):
    """A survey definition file (YAML, see :class:`aquamvs_core.survey.spec.SurveySpec`)."""

    survey_file: str = Field(description="Path of the survey YAML (calibration, inputs, frame selection).")

    def spec(self) -> SurveySpec:
        return load_survey_spec(self.survey_file)

    def rig(self) -> Rig:
        return load_calibration(self.spec().calibration)

    def open(self) -> Survey:
        """Open the survey's calibration and frame sources (use as a context manager)."""
        return Survey.open(self.spec())


class ZarrStoreResource(dg.ConfigurableResource):
    """The Zarr store root: a local path (default) or any fsspec URL (e.g. ``s3://bucket/survey``).

    For S3 the endpoint and credentials come from the environment (``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``) unless set here; set them here with
    ``dg.EnvVar`` or ``{env: NAME}`` in run config, never as literals in the repository.
    """

    root: str = Field(description="Store root: local path or fsspec URL.")
    endpoint_url: str | None = Field(None, description="S3 endpoint URL (default: $AWS_ENDPOINT_URL)")
    access_key_id: str | None = Field(None, description="S3 access key (default: $AWS_ACCESS_KEY_ID)")
    secret_access_key: str | None = Field(None, description="S3 secret key (default: $AWS_SECRET_ACCESS_KEY)")

    def storage_options(self) -> dict[str, str]:
        """The s3fs options that are set (empty for a local store or the environment's defaults)."""
        options = {
            "endpoint_url": self.endpoint_url,
            "key": self.access_key_id,
            "secret": self.secret_access_key,
        }
        return {name: value for name, value in options.items() if value}

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Record the process executing the run (see :mod:`aquamvs_assets.run_health`)."""
        run = context.run
        if context.instance is not None and run is not None:
            context.instance.add_run_tags(run.run_id, worker_tags())

    def get(self) -> SurveyStore:
        return SurveyStore(self.root, storage_options=self.storage_options())


class ReconstructionSettings(dg.ConfigurableResource):
    """Reconstruction configuration for a run, settable in the launchpad (``resources:
    reconstruction: config: ...``): a preset, the pathway, an optional YAML file and YAML overrides."""

    preset: str = Field("balanced", description="fast | balanced | quality")
    pathway: str = Field("sift", description="sift | lightglue | roma")
    config_file: str | None = Field(None, description="YAML file with any subset of the configuration")
    overrides_yaml: str = Field("", description="YAML overrides, e.g. 'plane_sweep: {num_depths: 96}'")
    export_dir: str | None = Field(
        None, description="also write <dir>/frame_NNNNNN/ files from the mesh asset"
    )
    profile: bool = Field(
        False,
        description="profile each reconstruction stage (wall, CPU, peak RSS, CUDA) into metadata and logs",
    )
    export_formats: list[str] = Field(default_factory=lambda: ["ply"], description="mesh formats to export")

    def config(self) -> ReconstructionConfig:
        overrides = yaml.safe_load(self.overrides_yaml) if self.overrides_yaml.strip() else None
        return build_config(self.preset, self.pathway, self.config_file, overrides)


def _roma_field(name: str):
    """A resource field with the default and description of :class:`RomaSettings`' field."""
    field = RomaSettings.model_fields[name]
    return Field(field.default, description=field.description)


class RomaMatcher(dg.ConfigurableResource):
    """RoMa (v1, outdoor) from local checkpoints, for the ``roma`` pathway's pairwise depths.

    :meth:`session` loads the model when a materialization needs it and disposes of it when the
    block ends (model deleted, ``gc.collect()``, CUDA cache emptied), logging both with the memory in
    use. One materialization over many frame × pair partitions (a single-run backfill) loads it once.
    Nothing is downloaded: missing files raise an error naming the paths (``aquamvs roma-verify``
    checks a checkpoint).
    """

    device: str = _roma_field("device")
    matcher_checkpoint: str = _roma_field("matcher_checkpoint")
    dinov2_checkpoint: str = _roma_field("dinov2_checkpoint")
    coarse_res: int = _roma_field("coarse_res")
    certainty_threshold: float = _roma_field("certainty_threshold")
    sample_budget: int | None = _roma_field("sample_budget")
    seed: int = _roma_field("seed")

    def settings(self) -> RomaSettings:
        """The validated core settings (an invalid value raises, naming the field)."""
        return RomaSettings(**{name: getattr(self, name) for name in RomaSettings.model_fields})

    @contextmanager
    def session(self, log: logging.Logger | dg.DagsterLogManager | None = None) -> Iterator[RomaSession]:
        """The loaded model for the duration of the block; disposed of afterwards, also on errors."""
        log = log or logging.getLogger("aquamvs.roma")
        session = load_roma(self.settings())
        log.info(
            f"RoMa loaded on {session.device} ({session.num_parameters / 1e6:.0f} M parameters, "
            f"coarse resolution {self.coarse_res}): {memory_in_use()}"
        )
        try:
            yield session
        finally:
            session.close()
            log.info(f"RoMa disposed of: {memory_in_use()}")
