"""Model checkpoints on local disk: the one loader every learned component uses (LightGlue, ALIKED,
DISK, RoMa, DINOv2). Nothing is ever downloaded; a file that is missing, unreadable or does not fit
its model is an error that names the file."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

__all__ = ["CheckpointError", "load_checkpoint", "load_state_strict"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit its model; the message names the file."""


def load_checkpoint(path: str | Path, unwrap: str | None = None) -> dict:
    """The object saved in ``path``, loaded on the CPU with ``weights_only`` (tensors only, no code).

    Args:
        path: the checkpoint file (``torch.save`` format).
        unwrap: if the file holds a dict with this key whose value is a dict (e.g. ``"model"``),
            return that value.

    Raises:
        CheckpointError: not a loadable checkpoint, or not a dict.
    """
    path = Path(path)
    try:
        # map_location: some published checkpoints hold CUDA tensors.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors alike
        raise CheckpointError(
            f"{path}: not a loadable torch checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if unwrap and isinstance(state, dict) and isinstance(state.get(unwrap), dict):
        state = state[unwrap]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(state).__name__}")
    return state


def load_state_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    path: str | Path,
    derived: tuple[str, ...] = (),
    rename: Callable[[str], str] | None = None,
    drop: re.Pattern[str] | None = None,
    error: type[Exception] = CheckpointError,
) -> None:
    """Load ``state`` into ``module`` with ``strict=True`` after an explicit key mapping.

    Args:
        module: the model.
        state: the checkpoint's state dict.
        path: the checkpoint file (for messages).
        derived: buffers the module computes from its configuration and the checkpoint lacks; they
            keep their constructed values.
        rename: maps checkpoint keys to module keys.
        drop: matches checkpoint keys to discard.
        error: the exception raised on a mismatch (a subclass the caller's users expect).

    Raises:
        ``error``: any other missing or unexpected key (the message names the first of each).
    """
    mapped = {(rename(k) if rename else k): v for k, v in state.items() if not (drop and drop.match(k))}
    own = module.state_dict()
    mapped.update({k: own[k] for k in derived if k not in mapped})
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    if missing or unexpected:
        raise error(
            f"{path} does not fit {type(module).__name__}: missing keys {missing[:8]}, "
            f"unexpected keys {unexpected[:8]} ({len(missing)} / {len(unexpected)} in all)"
        )
    module.load_state_dict(mapped, strict=True)
