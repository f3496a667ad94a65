"""Images prepared for the sweep: grey, prefiltered, NaN where invalid, with a pyramid and cached
reference-window statistics; the per-level bundle (:class:`PyramidLevel`) that the sweep and the
refinement correlate on."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from aquamvs_core.camera.sampling import ArrayLike
from aquamvs_core.runtime import SingleFlight
from aquamvs_core.stages.stereo.config import PlaneSweepConfig
from aquamvs_core.stages.stereo.ncc import (
    GridFn,
    RefWindows,
    downsample,
    gaussian_blur,
    pad_nan,
    ref_windows,
    slice_ncc,
    to_grey,
)
from aquamvs_core.stages.stereo.plane_warp import LevelWarp, WarpField


@dataclass(eq=False)
class PreparedImage:
    """An image ready for matching (:func:`prepare_image`); its pyramid levels and reference window
    statistics are computed on first use and cached, so a view used in several pairs is prepared once
    (also by pairs in several threads: the cache is locked).

    Attributes:
        grey: (H, W) grey values in [0, 1] after the prefilter, NaN where invalid.
        blur_sigma: the Gaussian prefilter applied, pixels.
    """

    grey: torch.Tensor
    blur_sigma: float
    _cache: dict = field(default_factory=dict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def level(self, level: int) -> torch.Tensor:
        """(H_l, W_l) pyramid level ``level`` minus its mean over finite pixels."""
        key = ("level", level)
        with self._lock:
            if key not in self._cache:
                img = downsample(self.grey, level)
                self._cache[key] = img - torch.nan_to_num(torch.nanmean(img), nan=0.0)
            return self._cache[key]

    def windows(self, level: int, window: int, min_std: float) -> RefWindows:
        """Reference window statistics of pyramid level ``level``."""
        key = ("windows", level, window, min_std)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = ref_windows(self.level(level), window, min_std)
            return self._cache[key]

    @property
    def nbytes(self) -> int:
        """Bytes held: the image and everything computed from it so far."""
        with self._lock:
            held = [self.grey, *self._cache.values()]
        total = 0
        for item in held:
            tensors = [item] if isinstance(item, torch.Tensor) else vars(item).values()
            total += sum(t.nbytes for t in tensors if isinstance(t, torch.Tensor))
        return total


#: Prepared views kept for the pairs of a frame (:class:`PreparedViews`), MB: a 1600×1200 view takes
#: ~18 MB as a source and ~90 MB as a reference (its window statistics at three levels), so this
#: keeps the reference of a run of pairs and a few sources (a frame's pairs come grouped by
#: reference). 256 MB raised the peak of a 1600×1200 frame by ~300 MB (3.6 → 3.9 GB).
PREPARED_VIEWS_MB = 128.0


class PreparedViews:
    """The prepared images of one frame's cameras, for its pairs: each camera is read and prepared
    on first use and kept while the views held stay within ``budget_mb`` (the least recently used
    are dropped first; the pairs using a dropped view keep it until they finish, and a later pair
    prepares it again). Threads that ask for the same camera at once wait for one preparation.

    Args:
        load: camera name → its (H, W, 3) image and (H, W) bool validity mask (or None).
        config: the sweep's configuration (prefilter, device, dtype).
        budget_mb: memory budget, MB.
    """

    def __init__(
        self,
        load: Callable[[str], tuple[ArrayLike, ArrayLike | None]],
        config: PlaneSweepConfig,
        budget_mb: float = PREPARED_VIEWS_MB,
    ):
        self._load, self._config, self._budget = load, config, int(budget_mb * 2**20)
        self._views: OrderedDict[str, PreparedImage] = OrderedDict()
        self._lock = threading.Lock()
        self._preparing = SingleFlight()
        self.prepared = 0  # preparations so far (a dropped view counts again when it comes back)

    def get(self, name: str) -> PreparedImage:
        with self._preparing.hold(name):
            with self._lock:
                if name in self._views:
                    self._views.move_to_end(name)
                    return self._views[name]
            image, mask = self._load(name)
            view = prepare_image(image, mask, self._config)
            with self._lock:
                self.prepared += 1
                self._views[name] = view
                held = sum(v.nbytes for v in self._views.values())
                while len(self._views) > 1 and held > self._budget:
                    held -= self._views.popitem(last=False)[1].nbytes
            return view

    def clear(self) -> None:
        """Drop every view held (pairs still running keep theirs until they finish)."""
        with self._lock:
            self._views.clear()


@torch.no_grad()
def prepare_image(image: ArrayLike, mask: ArrayLike | None, config: PlaneSweepConfig) -> PreparedImage:
    """Grey image in [0, 1] on the config's device/dtype, NaN outside ``mask`` (H, W) bool, after the
    Gaussian prefilter ``config.image_blur_sigma``.

    The prefilter is normalized by the mask (``blur(image · mask) / blur(mask)``), so invalid (black)
    pixels do not bleed into valid ones.
    """
    device, dtype = torch.device(config.device), config.torch_dtype
    grey = to_grey(image, device, dtype)
    valid = torch.isfinite(grey)
    if mask is not None:
        m = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.asarray(mask))
        if tuple(m.shape) != tuple(grey.shape):
            raise ValueError(f"mask {tuple(m.shape)} does not match the image {tuple(grey.shape)}")
        valid = valid & m.to(device=device, dtype=torch.bool)
    sigma = config.image_blur_sigma
    if sigma > 0:
        if bool(valid.all()):
            grey = gaussian_blur(grey, sigma)
        else:
            both = gaussian_blur(torch.stack([torch.where(valid, grey, 0.0), valid.to(dtype)]), sigma)
            grey = both[0] / both[1].clamp_min(1e-6)
    return PreparedImage(torch.where(valid, grey, torch.full_like(grey, math.nan)), sigma)


def as_prepared(
    image: ArrayLike | PreparedImage, mask: ArrayLike | None, config: PlaneSweepConfig
) -> PreparedImage:
    if not isinstance(image, PreparedImage):
        return prepare_image(image, mask, config)
    if abs(image.blur_sigma - config.image_blur_sigma) > 1e-12:
        raise ValueError(
            f"image prepared with blur {image.blur_sigma}, the config asks for {config.image_blur_sigma}"
        )
    if image.grey.dtype != config.torch_dtype or image.grey.device != torch.device(config.device):
        raise ValueError(
            f"image prepared as {image.grey.dtype} on {image.grey.device}, the config asks for "
            f"{config.torch_dtype} on {config.device}"
        )
    return image


@dataclass
class PyramidLevel:
    """Everything a pyramid level needs."""

    level: int
    ref: RefWindows
    src_padded: torch.Tensor
    warp: LevelWarp


def make_level(
    level: int, ref_p: PreparedImage, src_p: PreparedImage, field_: WarpField, config: PlaneSweepConfig
) -> PyramidLevel:
    pad = 2  # NaN border of the sampled source: enough for bicubic taps
    src_l = src_p.level(level)
    warp = field_.level(
        level,
        (src_l.shape[1], src_l.shape[0]),
        pad,
        border=config.window // 2,
        dtype=config.torch_dtype,
        device=config.device,
    )
    return PyramidLevel(
        level=level,
        ref=ref_p.windows(level, config.window, config.min_std),
        src_padded=pad_nan(src_l, pad),
        warp=warp,
    )


def level_ncc(
    lv: PyramidLevel,
    grid_fn: GridFn,
    n_slices: int,
    config: PlaneSweepConfig,
    min_valid_fraction: float,
    mode: str,
) -> torch.Tensor:
    return slice_ncc(
        lv.ref,
        lv.src_padded,
        grid_fn,
        n_slices,
        mode=mode,
        min_std=config.min_std,
        min_valid_fraction=min_valid_fraction,
        tile_elements=config.tile_elements,
    )
