"""The prepared views a frame's pairs share: one preparation per camera, within a memory budget."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from aquamvs_core.stages.stereo.config import PlaneSweepConfig
from aquamvs_core.stages.stereo.pyramid import PreparedViews, prepare_image

H, W = 48, 64


def _images(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {f"cam{i}": rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for i in range(n)}


def test_each_camera_is_prepared_once_also_from_threads():
    images, config = _images(2), PlaneSweepConfig()
    mask = np.ones((H, W), bool)
    mask[:, :5] = False
    loads = []

    def load(name):
        loads.append(name)
        time.sleep(0.05)  # the other threads arrive while this one prepares
        return images[name], mask

    views = PreparedViews(load, config)
    start = threading.Barrier(4)
    got = []

    def ask():
        start.wait()
        got.append(views.get("cam0"))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["cam0"] and all(v is got[0] for v in got)
    assert views.get("cam0") is got[0] and views.prepared == 1
    # The same preparation as on its own.
    expected = prepare_image(images["cam0"], mask, config).grey
    assert torch.equal(torch.isnan(got[0].grey), torch.isnan(expected))
    assert torch.equal(torch.nan_to_num(got[0].grey), torch.nan_to_num(expected))


def test_views_beyond_the_budget_are_dropped_least_recently_used_first():
    images, config = _images(4), PlaneSweepConfig()
    one_view = prepare_image(images["cam0"], None, config).nbytes
    assert one_view == H * W * 4  # float32 grey, nothing derived yet
    views = PreparedViews(lambda n: (images[n], None), config, budget_mb=2.5 * one_view / 2**20)
    a = views.get("cam0")
    views.get("cam1")
    assert views.get("cam0") is a  # cam0 is now the most recently used
    views.get("cam2")  # three views exceed the budget: cam1 goes
    assert views.prepared == 3
    assert views.get("cam0") is a and views.prepared == 3
    views.get("cam1")  # prepared again
    assert views.prepared == 4
    # Derived maps count: a reference's window statistics make its view larger.
    a.windows(0, config.window, config.min_std)
    assert a.nbytes > 5 * one_view
    # clear() drops every view (the end of a frame's pairs): the next request prepares again.
    views.clear()
    assert views.get("cam0") is not a and views.prepared == 5
