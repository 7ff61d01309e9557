"""Round-to-nearest weight quantization against a slow, obvious oracle of GPTQ's grid (python floats, one
weight at a time); zeros kept exactly; bad input refused in one line."""

import math
import random

import numpy as np
import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.quantize import QuantSpec, quantize_rtn


def oracle(weight: torch.Tensor, wbits: int, group: int | None, symmetric: bool) -> list[list[float]]:
    """Each group of each row: its range (always holding 0), scale, integer zero point, then every weight rounded
    to the nearest level (half to even) and clamped, one weight at a time in float32 arithmetic (as GPTQ runs it:
    a symmetric group's largest weight lands exactly on a .5 tie, which float64 would round otherwise)."""
    f = np.float32
    maxq = 2**wbits - 1
    rows, cols = weight.shape
    width = group or cols
    out = [[0.0] * cols for _ in range(rows)]
    for r in range(rows):
        for start in range(0, cols, width):
            values = [f(v) for v in weight[r, start:start + width].tolist()]
            lo, hi = min(min(values), f(0)), max(max(values), f(0))
            if symmetric:
                hi = max(abs(lo), hi)
                lo = -hi if lo < 0 else lo
            if lo == 0 and hi == 0:
                lo, hi = f(-1), f(1)
            scale = f(f(hi - lo) / f(maxq))
            zero = f((maxq + 1) / 2) if symmetric else f(np.round(f(-lo) / scale))
            for j, v in enumerate(values):
                q = min(max(f(np.round(f(v / scale))) + zero, f(0)), f(maxq))
                out[r][start + j] = float(f(scale * f(q - zero)))
    return out


def messy(rows: int, cols: int, seed: int, pruned: float = 0.0) -> torch.Tensor:
    """Weights with many distinct values of both signs, a few outliers, and a fraction set exactly to zero."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.linspace(0.1, 3.0, cols)
    w[0, 3] = 25.0  # an outlier in one group only
    w[rows - 1] = w[rows - 1].abs()  # a row with no negative weight (the symmetric grid's clipping case)
    if pruned:
        w[torch.rand(rows, cols, generator=g) < pruned] = 0.0
    w[1, : min(cols, 4)] = 0.0  # an all-zero group when the group size is 4
    return w


@pytest.mark.parametrize("wbits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [None, 4, 6])
@pytest.mark.parametrize("symmetric", [False, True])
def test_rtn_matches_the_slow_oracle_at_every_width_group_and_grid(wbits, group, symmetric):
    w = messy(5, 12, seed=wbits * 10 + (group or 0))
    got = quantize_rtn(w, QuantSpec(wbits, group, symmetric))
    expected = torch.tensor(oracle(w, wbits, group, symmetric))
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6), (got - expected).abs().max()
    width = group or 12
    for r in range(5):
        for start in range(0, 12, width):
            assert len(set(got[r, start:start + width].tolist())) <= 2**wbits  # on the grid: at most 2^b levels


def test_asymmetric_zero_points_and_group_boundaries_on_known_values():
    """One row, groups of 2: [-1, 3] has scale 4/15 and zero point round(15/4) = 4; [0.5, 2] holds 0 so its range
    is [0, 2]: scale 2/15, zero point 0; at 4 bits."""
    w = torch.tensor([[-1.0, 3.0, 0.5, 2.0]])
    got = quantize_rtn(w, QuantSpec(4, 2, False))[0].tolist()
    s1, s2 = 4 / 15, 2 / 15
    expected = [s1 * (round(-1 / s1) + 4 - 4), s1 * (min(round(3 / s1) + 4, 15) - 4), s2 * round(0.5 / s2), 2.0]
    assert got == pytest.approx(expected, abs=1e-6)
    assert got[1] == pytest.approx(11 * s1)  # 3 clips at the top level: (15 - 4) x 4/15


@pytest.mark.parametrize("wbits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_pruned_weights_stay_exactly_zero(wbits, symmetric):
    w = messy(16, 64, seed=wbits, pruned=0.7)
    for group in (None, 8, 32):
        got = quantize_rtn(w, QuantSpec(wbits, group, symmetric))
        assert torch.equal(got[w == 0], torch.zeros(int((w == 0).sum())))


def test_sixteen_bits_is_no_quantization_and_the_dtype_is_kept():
    w = messy(3, 8, seed=1).to(torch.bfloat16)
    assert quantize_rtn(w, QuantSpec(16)) is w
    assert quantize_rtn(w, QuantSpec(4, 4)).dtype == torch.bfloat16


def test_eight_bits_is_close_and_two_bits_is_coarse():
    w = messy(8, 128, seed=3)
    err = {b: float((quantize_rtn(w, QuantSpec(b, 32)) - w).abs().max()) for b in (2, 4, 8)}
    assert err[8] < err[4] < err[2]
    scale8 = max(float(w[:, i:i + 32].max() - min(w[:, i:i + 32].min(), 0)) for i in range(0, 128, 32)) / 255
    assert err[8] <= scale8 / 2 + 1e-6  # half a step at most where nothing clips (asymmetric: no clipping)


@pytest.mark.parametrize("spec, in_features, message", [
    (QuantSpec(5), 12, r"^wbits=5 is not allowed; allowed: \[2, 3, 4, 8, 16\]"),
    (QuantSpec(True), 12, r"^wbits=True is not allowed"),
    (QuantSpec(4, 5), 12, r"^group_size=5 does not divide the input width 12; allowed: a divisor"),
    (QuantSpec(4, 0), 12, r"^group_size=0 must be None \(per output channel\) or an integer >= 1"),
    (QuantSpec(4, None, "yes"), 12, r"^symmetric='yes' must be true or false"),
])
def test_bad_settings_are_one_line_naming_the_parameter(spec, in_features, message):
    with pytest.raises(WorkbenchError, match=message):
        quantize_rtn(torch.ones(2, in_features), spec)


def test_random_widths_and_groups_agree_with_the_oracle():
    rng = random.Random(0)
    for _ in range(20):
        cols = rng.choice([6, 8, 12, 24])
        group = rng.choice([None, *[d for d in (2, 3, 4, 6, 8) if cols % d == 0]])
        wbits, symmetric = rng.choice([2, 3, 4, 8]), rng.random() < 0.5
        w = torch.randn(3, cols) * rng.uniform(0.01, 10) + rng.uniform(-1, 1)
        got = quantize_rtn(w, QuantSpec(wbits, group, symmetric))
        expected = torch.tensor(oracle(w, wbits, group, symmetric))
        assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6 * max(1.0, float(w.abs().max()))), \
            (cols, group, wbits, symmetric)
        assert math.isfinite(float(got.abs().max()))
