"""Process-level runtime settings shared by the stages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import torch
from pydantic import AfterValidator


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: unchanged), then restore the setting.

    On small, shared CPUs one thread is often several times faster than two for the many small
    element-wise ops of these stages. The setting is process-wide: do not enter this from several
    threads at once.
    """
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_device(name: str) -> str:
    """``name`` if torch accepts it as a device ("cpu", "cuda", "cuda:1", ...), else ValueError."""
    try:
        torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"invalid torch device {name!r}: {exc}") from None
    return name


#: A pydantic field type for torch device names, validated.
TorchDevice = Annotated[str, AfterValidator(check_device)]
