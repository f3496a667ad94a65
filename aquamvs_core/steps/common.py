"""What every store-level step shares: the registry of stages (one per asset, named after it), the
cameras of the store's images, the pairs the dense stages use, provenance attrs, and
**fingerprints**.

A product's fingerprint is a hash of everything it was made from: its stage and that stage's code
version, the fingerprints of the products (or the frame) it read, and the configuration sections
that change its result. It is stored with the product. A step whose expected fingerprint equals the
stored one reuses the product instead of recomputing it (a re-run redoes only what is missing or
stale), and a product made from other inputs or another configuration is never read as current:
its fingerprint differs, so it is recomputed. The Dagster assets publish the fingerprints of a
frame's products as the asset partition's data version, so the UI shows what is stale.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.config import ReconstructionConfig
from aquamvs_core.stages.pairs import CameraPair
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Product, product_path


@dataclass(frozen=True)
class Stage:
    """A reconstruction stage: the asset (and store product) it makes per frame, and whether the
    product has one part per camera pair or per camera of the frame (``parts``) or is one whole."""

    product: Product
    parts: Literal["pair", "camera", "frame"]

    @property
    def name(self) -> str:
        return self.product.value


#: The reconstruction stages in data-flow order (the frame-partitioned assets after ``frames``).
STAGES: tuple[Stage, ...] = (
    Stage(Product.SPARSE_MATCHES, "pair"),
    Stage(Product.SPARSE_CLOUD, "frame"),
    Stage(Product.PAIRWISE_DEPTHS, "pair"),
    Stage(Product.CAMERA_DEPTHS, "camera"),
    Stage(Product.FUSED_CLOUD, "frame"),
    Stage(Product.MESH, "frame"),
    Stage(Product.HEIGHTFIELD, "frame"),
)
#: The dense stages (those that the pathway's dense depth feeds).
DENSE_STAGES: tuple[Stage, ...] = STAGES[2:]
#: Not in :data:`STAGES`: a frame's bed change compares its heightfield with other frames' (see
#: :mod:`aquamvs_core.steps.change`), so it runs after the reconstruction of every frame it needs.
BED_CHANGE_STAGE = Stage(Product.BED_CHANGE, "frame")

#: Code version of each step's result: bump it when a change to the science changes the product
#: (it enters the fingerprints and is each asset's Dagster code version).
CODE_VERSIONS: dict[str, str] = {
    "frames": "2",  # 2: stored on the original pixel grid by default (issue 12)
    Product.SPARSE_MATCHES: "1",
    Product.SPARSE_CLOUD: "1",
    Product.PAIRWISE_DEPTHS: "2",  # 2: the sweep takes as many planes as the range needs (plane_step_px)
    Product.CAMERA_DEPTHS: "1",
    Product.FUSED_CLOUD: "1",
    Product.MESH: "1",
    Product.HEIGHTFIELD: "1",
    Product.BED_CHANGE: "1",
}


def fingerprint(product: Product | str, *inputs: Any) -> str:
    """Hash (20 hex digits) of a product's stage, its code version and ``inputs`` (upstream
    fingerprints, configuration sections as dicts or pydantic models, scalars)."""
    name = product.value if isinstance(product, Product) else product
    parts = [name, CODE_VERSIONS[product], *(_plain(x) for x in inputs)]
    payload = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _plain(x: Any) -> Any:
    if hasattr(x, "model_dump"):
        return x.model_dump(mode="json")
    return x


def reusable(store: SurveyStore, path: str, expected: str) -> dict[str, Any] | None:
    """The stored attrs of the product at ``path`` when it is committed and was made from the same
    inputs (its fingerprint is ``expected``), else None (the product must be (re)computed)."""
    if not store.has_product(path):
        return None
    attrs = store.product_attrs(path)
    return attrs if attrs.get("fingerprint") == expected else None


def product_fingerprint(store: SurveyStore, path: str) -> str:
    """The fingerprint of a committed product (an error naming the product if it is missing)."""
    if not store.has_product(path):
        raise FileNotFoundError(f"{store.root}: product {path} is missing: materialize it first")
    return str(store.product_attrs(path).get("fingerprint", ""))


def frame_fingerprint(store: SurveyStore, frame: str) -> str:
    """The fingerprint of an ingested frame (its decoded input and the calibration it was
    undistorted with).

    Raises:
        ValueError: the frame was undistorted with another calibration than the store's (the
            calibration changed and the frame has not been ingested again): its pixels do not
            match the cameras the steps would use.
    """
    attrs = store.frame_attrs(frame)
    current = store.read_calibration()["calibration_hash"]
    if attrs.get("calibration_hash") != current:
        raise ValueError(
            f"{store.root}: frame {frame} was undistorted with calibration "
            f"{str(attrs.get('calibration_hash'))[:12]}, but the store's calibration is {current[:12]}: "
            "ingest the frame again"
        )
    return str(attrs.get("fingerprint", ""))


@dataclass(frozen=True)
class StoreCameras:
    """The refractive cameras of a store's images (with the lens model for the cameras stored on
    their original grid), and their validity masks."""

    cameras: dict[str, RefractiveCamera]
    masks: dict[str, np.ndarray]
    calibration_hash: str

    @classmethod
    def load(cls, store: SurveyStore) -> StoreCameras:
        rig = store.read_rig()
        Ks = store.read_undistorted_K()
        masks = store.read_valid_masks()
        lens = set(store.read_lens_cameras())
        cams = {}
        for n in rig.camera_names:
            if n in lens:
                cams[n] = RefractiveCamera.from_calibration(rig[n], rig.interface, with_lens=True)
            else:
                h, w = masks[n].shape
                cams[n] = RefractiveCamera.from_calibration(rig[n], rig.interface, Ks[n], (w, h))
        return cls(cams, masks, rig.content_hash)


def dense_pairs(
    store: SurveyStore, pairs: Sequence[CameraPair], config: ReconstructionConfig
) -> list[CameraPair]:
    """The pairs the plane sweep uses: all of them, or without auxiliary sources when
    ``config.use_auxiliary_sources`` is off."""
    if config.use_auxiliary_sources:
        return list(pairs)
    aux = set(store.read_rig().auxiliary_names)
    return [p for p in pairs if p.src not in aux]


def worker_config(config: ReconstructionConfig, workers: int) -> ReconstructionConfig:
    """``config`` for steps run by :func:`~aquamvs_core.runtime.map_in_threads` with ``workers``
    workers: one torch thread each when there are several (map_in_threads sets it; the steps must
    not change it), else ``config`` itself."""
    return config.model_copy(update={"torch_threads": 1}) if workers > 1 else config


def provenance(
    store_cams: StoreCameras,
    frame: str,
    config: ReconstructionConfig,
    fingerprint: str,
    summary: dict[str, Any],
    **extra: Any,
) -> dict:
    """A product's attrs: what it was made from (frame, calibration, preset, pathway, fingerprint),
    the summary its step returned (also returned again when the product is reused), and ``extra``."""
    return {
        "frame": frame,
        "calibration_hash": store_cams.calibration_hash,
        "preset": config.preset,
        "pathway": config.pathway,
        "fingerprint": fingerprint,
        "summary": summary,
        **summary,
        **extra,
    }


def data_version(store: SurveyStore, product: Product, frame: str) -> str:
    """One frame's data version of a stage: the fingerprint of its product, or a hash of the
    fingerprints of its parts (per pair or per camera). Raises when there is none."""
    path = product_path(product, frame)
    if store.has_product(path):
        return product_fingerprint(store, path)
    parts = store.list_products(path)
    if not parts:
        raise FileNotFoundError(f"{store.root}: frame {frame} has no {product.value} product")
    pairs = [[part, product_fingerprint(store, f"{path}/{part}")] for part in parts]
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:20]
