"""Shared by the plane-sweep tests: their small scenes run on one torch thread (the configuration's
default, and faster for tensors this small on a busy CPU)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
