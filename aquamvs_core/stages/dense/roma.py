"""RoMa (v1, outdoor) dense matcher from the ``romatch`` package, loaded offline from local files.

Lifetime is explicit: :func:`load_roma` returns a :class:`RomaSession` that owns the model;
:meth:`RomaSession.close` drops it, runs ``gc.collect()`` and empties the CUDA cache. Nothing is
downloaded: both checkpoints are local files (:class:`RomaCheckpoints`), checked before any import
of the model code, and a missing one raises :class:`MissingWeightsError` naming the paths.

**Images** are given to RoMa as RGB (``store.read_frame`` returns RGB uint8), through romatch's own
PIL path: it resizes to ``coarse_res`` and applies the ImageNet normalisation it was trained with.

**Warp** (romatch's convention): ``(h, w, 4)`` on a regular ``h × w = coarse_res²`` grid over image
A, channels ``(x_A, y_A, x_B, y_B)`` in normalised coordinates, ``-1``/``+1`` being the outer *edges*
of the image (``align_corners=False``); ``certainty`` is ``(h, w)`` in [0, 1].

**Installing** (see README): ``romatch`` and ``torchvision`` are installed with ``--no-deps``
(romatch's metadata pulls training-only packages and an unpinned torchvision that would replace the
CPU torch), torchvision pinned to the build made for torch 2.13.0 by ``constraints.txt``. That wheel's
compiled ops need CUDA; on a CPU-only machine :func:`import_romatch` gives torchvision the two
operator schemas its import registers fake kernels for, and nothing else (RoMa uses no torchvision op).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import psutil
import torch
from pydantic import BaseModel, ConfigDict, Field

from aquamvs_core.checkpoints import CheckpointError, load_checkpoint
from aquamvs_core.runtime import TorchDevice
from aquamvs_core.stages.dense.correspondence_depth import DEFAULT_CERTAINTY_THRESHOLD, WarpMatch

log = logging.getLogger("aquamvs.roma")

#: Where checkpoints are looked for by default: ``$AQUAMVS_WEIGHTS_DIR`` or ``~/.cache/aquamvs/weights``.
DEFAULT_WEIGHTS_DIR = Path(
    os.environ.get("AQUAMVS_WEIGHTS_DIR", Path.home() / ".cache" / "aquamvs" / "weights")
)
MATCHER_FILE = "roma_outdoor.pth"
DINOV2_FILE = "dinov2_vitl14_pretrain.pth"
#: Where the official checkpoints are published (fetch them on a machine with internet access).
CHECKPOINT_SOURCES = {
    MATCHER_FILE: "https://github.com/Parskatt/storage/releases/download/roma/roma_outdoor.pth",
    DINOV2_FILE: "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
}
#: DINOv2 ViT-L/14 as RoMa builds it (romatch.models.encoders.CNNandDinov2).
_DINOV2_KWARGS = {
    "img_size": 518,
    "patch_size": 14,
    "init_values": 1.0,
    "ffn_layer": "mlp",
    "block_chunks": 0,
}


class MissingWeightsError(FileNotFoundError):
    """A RoMa checkpoint file is missing; the message names the paths and how to obtain them."""


@dataclass(frozen=True)
class RomaCheckpoints:
    """Local checkpoint files: the RoMa outdoor matcher and its DINOv2 ViT-L/14 backbone."""

    matcher: Path
    dinov2: Path

    @classmethod
    def in_dir(cls, folder: str | Path = DEFAULT_WEIGHTS_DIR) -> RomaCheckpoints:
        folder = Path(folder).expanduser()
        return cls(folder / MATCHER_FILE, folder / DINOV2_FILE)

    def check(self) -> None:
        """Raise :class:`MissingWeightsError` unless both files exist."""
        expected = (
            (Path(self.matcher).expanduser(), MATCHER_FILE),
            (Path(self.dinov2).expanduser(), DINOV2_FILE),
        )
        missing = [(path, name) for path, name in expected if not path.is_file()]
        if not missing:
            return
        lines = "\n".join(f"  {p}  (missing; published as {CHECKPOINT_SOURCES[name]})" for p, name in missing)
        raise MissingWeightsError(
            "RoMa weights not found; nothing is downloaded at run time. Expected:\n"
            f"{lines}\n"
            "Download them on a machine with internet access and copy them to those paths (or set "
            "AQUAMVS_WEIGHTS_DIR, or the matcher's checkpoint paths), then check them with "
            "`aquamvs roma-verify`."
        )


class RomaSettings(BaseModel):
    """How the matcher is built and how its warp is turned into correspondences."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Literal["auto"] | TorchDevice = Field(
        "auto", description="torch device, or 'auto' (CUDA when available)"
    )
    matcher_checkpoint: str = Field(str(DEFAULT_WEIGHTS_DIR / MATCHER_FILE), description="RoMa outdoor .pth")
    dinov2_checkpoint: str = Field(str(DEFAULT_WEIGHTS_DIR / DINOV2_FILE), description="DINOv2 ViT-L/14 .pth")
    coarse_res: int = Field(
        560, ge=14, multiple_of=14, description="square matching resolution, px (RoMa's default 560)"
    )
    certainty_threshold: float = Field(
        DEFAULT_CERTAINTY_THRESHOLD,
        ge=0.0,
        le=1.0,
        description="warp cells below this certainty give no correspondence",
    )
    sample_budget: int | None = Field(
        None,
        ge=1,
        description="correspondences per pair drawn by romatch's certainty-balanced sampler; None: every "
        "warp cell above the threshold (dense). The sampler's density estimate needs ~32·budget² bytes",
    )
    seed: int = Field(0, description="seed of the sampler (it draws at random)")

    @property
    def checkpoints(self) -> RomaCheckpoints:
        return RomaCheckpoints(
            Path(self.matcher_checkpoint).expanduser(), Path(self.dinov2_checkpoint).expanduser()
        )

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


# --------------------------------------------------------------------------------------------
# Import and construction
# --------------------------------------------------------------------------------------------

_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_schema_library: torch.library.Library | None = None  # kept alive: dropping it unregisters the schemas


def _import_torchvision() -> ModuleType:
    """Import torchvision; on a CPU-only machine with the CUDA wheel, define the two operator
    schemas whose fake kernels its import registers unconditionally, and import again."""
    global _schema_library
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::nms does not exist" not in str(exc):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _schema_library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _TORCHVISION_SCHEMAS:
            _schema_library.define(schema)
        import torchvision
    return torchvision


def import_romatch() -> ModuleType:
    """The ``romatch`` package, or ImportError saying how to install the RoMa extra."""
    try:
        _import_torchvision()
        import romatch
    except ImportError as exc:
        raise ImportError(
            f"the RoMa pathway needs romatch and torchvision ({exc}); install them with "
            "scripts/install.sh (pip install -c constraints.txt -e '.[roma]' && "
            "pip install -c constraints.txt --no-deps romatch==0.1.2 torchvision==0.28.0)"
        ) from exc
    return romatch


def _dinov2_architecture() -> torch.nn.Module:
    import_romatch()
    from romatch.models.transformer import vit_large

    return vit_large(**_DINOV2_KWARGS)


def build_roma(
    matcher_state: dict[str, torch.Tensor],
    dinov2_state: dict[str, torch.Tensor],
    settings: RomaSettings,
) -> torch.nn.Module:
    """romatch's RoMa outdoor model from state dicts (both loaded strictly), in eval mode.

    One-directional (``symmetric=False``: the warp of image A into B only), no high-resolution
    refinement pass (``upsample_preds=False``), and romatch's CUDA-only correlation kernel only when
    running on CUDA with ``fused_local_corr`` installed.
    """
    romatch = import_romatch()
    device = settings.resolved_device()
    custom_corr = device.type == "cuda" and _has_module("fused_local_corr")
    try:
        model = romatch.roma_outdoor(
            device,
            weights=matcher_state,
            dinov2_weights=dinov2_state,
            coarse_res=settings.coarse_res,
            upsample_preds=False,
            symmetric=False,
            use_custom_corr=custom_corr,
        )
    except RuntimeError as exc:  # load_state_dict(strict=True) mismatches
        raise CheckpointError(f"checkpoint does not match RoMa outdoor / DINOv2 ViT-L/14: {exc}") from None
    return model.eval()


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def random_checkpoints(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Seeded *untrained* state dicts with RoMa outdoor's architecture: for contract tests and
    benchmarks of memory and time, never for accuracy. Returns (matcher, dinov2) state dicts."""
    import_romatch()
    from unittest import mock

    from romatch.models.matcher import RegressionMatcher
    from romatch.models.model_zoo.roma_models import roma_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dinov2 = _dinov2_architecture().state_dict()
        # romatch's builder always ends by loading a matcher state dict; skip that one call to keep
        # the freshly initialised weights.
        with mock.patch.object(RegressionMatcher, "load_state_dict", lambda *args, **kwargs: None):
            model = roma_model(
                resolution=(112, 112), upsample_preds=False, weights={}, dinov2_weights=dinov2,
                device="cpu", use_custom_corr=False, symmetric=False,
            )  # fmt: skip
    return model.state_dict(), dinov2


# --------------------------------------------------------------------------------------------
# Session: one loaded model with an explicit end
# --------------------------------------------------------------------------------------------


def memory_in_use() -> str:
    """Resident memory of this process, and CUDA memory allocated, for log lines."""
    text = f"RSS {psutil.Process().memory_info().rss / 2**20:.0f} MB"
    if torch.cuda.is_available():
        text += f", CUDA allocated {torch.cuda.memory_allocated() / 2**20:.0f} MB"
    return text


class RomaSession:
    """A loaded RoMa model. Use as a context manager, or call :meth:`close`; afterwards nothing in
    this object refers to the model any more."""

    def __init__(self, model: torch.nn.Module, settings: RomaSettings):
        self._model: torch.nn.Module | None = model
        self.settings = settings
        self.device = settings.resolved_device()

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            raise RuntimeError("this RoMa session is closed")
        return self._model

    @property
    def num_parameters(self) -> int:
        """Parameters of the matcher plus its (separately held) DINOv2 backbone."""
        m = self.model
        backbone = m.encoder.dinov2_vitl14[0]
        return sum(p.numel() for p in m.parameters()) + sum(p.numel() for p in backbone.parameters())

    @torch.no_grad()
    def match(
        self, image_a: np.ndarray, image_b: np.ndarray, names: tuple[str, str] | None = None
    ) -> WarpMatch:
        """Warp of ``image_a`` into ``image_b``: (H, W, 3) uint8 **RGB** images (any sizes); ``names``
        is unused (RoMa sees only pixels)."""
        from PIL import Image

        for name, im in (("image_a", image_a), ("image_b", image_b)):
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError(f"{name} must be an (H, W, 3) uint8 RGB image, got {im.shape} {im.dtype}")
        warp, certainty = self.model.match(
            Image.fromarray(image_a, mode="RGB"), Image.fromarray(image_b, mode="RGB"), device=self.device
        )
        return WarpMatch(warp[0].float(), certainty[0].float())

    def sample(
        self, warp: torch.Tensor, certainty: torch.Tensor, num: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """romatch's certainty-balanced sampling: (num, 4) normalised matches and their certainty."""
        return self.model.sample(warp, certainty, num=num)

    def to_pixel_coordinates(
        self, matches: torch.Tensor, size_a: tuple[int, int], size_b: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """romatch's conversion of (N, 4) normalised matches into pixel coordinates of A and B
        (``size`` = (W, H)); romatch's pixel coordinates put pixel centres at ``i + 0.5``."""
        (w_a, h_a), (w_b, h_b) = size_a, size_b
        return self.model.to_pixel_coordinates(matches, h_a, w_a, h_b, w_b)

    def close(self) -> None:
        """Drop the model, collect garbage and empty the CUDA cache."""
        if self._model is None:
            return
        self._model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        log.debug("RoMa disposed of (%s)", memory_in_use())

    def __enter__(self) -> RomaSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load_roma(settings: RomaSettings | None = None) -> RomaSession:
    """Load RoMa from ``settings``' local checkpoints (:class:`MissingWeightsError` if absent)."""
    settings = settings or RomaSettings()
    checkpoints = settings.checkpoints
    checkpoints.check()
    matcher_state = load_checkpoint(checkpoints.matcher, unwrap="model")
    dinov2_state = load_checkpoint(checkpoints.dinov2, unwrap="model")
    model = build_roma(matcher_state, dinov2_state, settings)
    del matcher_state, dinov2_state
    session = RomaSession(model, settings)
    log.debug(
        "RoMa loaded on %s: %.1f M parameters, coarse resolution %d (%s)",
        session.device, session.num_parameters / 1e6, settings.coarse_res, memory_in_use(),
    )  # fmt: skip
    return session


def verify_checkpoints(checkpoints: RomaCheckpoints) -> dict[str, int]:
    """Load both checkpoints strictly into the RoMa outdoor architecture on the CPU; returns the
    parameter counts (``matcher``, ``dinov2``, ``total``). Raises MissingWeightsError or CheckpointError."""
    checkpoints.check()
    settings = RomaSettings(
        device="cpu", matcher_checkpoint=str(checkpoints.matcher), dinov2_checkpoint=str(checkpoints.dinov2)
    )
    with load_roma(settings) as session:
        backbone = session.model.encoder.dinov2_vitl14[0]
        dinov2 = sum(p.numel() for p in backbone.parameters())
        total = session.num_parameters
    return {"matcher": total - dinov2, "dinov2": dinov2, "total": total}
