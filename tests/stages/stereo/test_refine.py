"""The refinement's hole filling between pyramid levels."""

from __future__ import annotations

import math

import pytest
import torch

from aquamvs_core.stages.stereo.refine import fill_nan, smooth_surface


def whole_map_fill(z: torch.Tensor, iterations: int) -> torch.Tensor:
    """The definition, on the whole map at every iteration (an independent computation)."""
    for _ in range(iterations):
        finite = torch.isfinite(z)
        if bool(finite.all()) or not bool(finite.any()):
            break
        z = torch.where(finite, z, smooth_surface(z, 3))
    return z


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit, NaN where NaN."""
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(
        torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0)
    )


@pytest.mark.parametrize("seed", range(6))
def test_fill_nan_on_the_front_is_the_whole_map_fill_bit_for_bit(seed):
    """Holes of every size, maps of one row or one column, infinities, 0–7 iterations: the front-only
    fill gives exactly the whole-map iterations' values."""
    g = torch.Generator().manual_seed(seed)
    for trial in range(60):
        h, w = (int(torch.randint(1, 40, (1,), generator=g)) for _ in range(2))
        z = torch.rand(h, w, generator=g) * 3 + 1
        z[torch.rand(h, w, generator=g) < float(torch.rand(1, generator=g))] = math.nan
        if trial % 5 == 0:
            z[torch.rand(h, w, generator=g) < 0.05] = math.inf
        iterations = int(torch.randint(0, 8, (1,), generator=g))
        assert same(fill_nan(z, iterations), whole_map_fill(z, iterations)), (seed, trial, h, w, iterations)


def test_fill_nan_grows_the_finite_region_by_one_pixel_an_iteration():
    """A plane with a missing half: after k iterations exactly the k columns next to the known half
    are filled, each with the mean of its known neighbours (here: those of the column before it);
    an all-missing or all-known map comes back unchanged."""
    z = torch.arange(12.0).repeat(8, 1)  # z = column index
    z[:, 6:] = math.nan
    out = fill_nan(z, 3)
    assert bool(torch.isfinite(out[:, :9]).all()) and bool(torch.isnan(out[:, 9:]).all())
    torch.testing.assert_close(out[:, 6:9], torch.full((8, 3), 5.0))  # column 5's value, passed on
    torch.testing.assert_close(out[:, :6], z[:, :6], rtol=0, atol=0)
    nothing = torch.full((5, 5), math.nan)
    assert fill_nan(nothing, 4) is nothing
    known = torch.ones(5, 5)
    assert fill_nan(known, 4) is known
