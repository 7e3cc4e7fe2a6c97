"""Histogram calibrators: streaming merge, and each method's range on known distributions."""
from __future__ import annotations

import pytest
import torch

from mcq.calibrators import Histogram, histogram_range
from mcq.observers import Observer, weight_qparams
from runtime.numerics import fake_quantize


def gaussian_with_outliers(n=200_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    x[:20] = 40.0  # a few far outliers
    return x


def test_streamed_histogram_matches_one_pass_within_one_bin():
    x = gaussian_with_outliers()
    one = Histogram()
    one.update(x)
    streamed = Histogram()
    for chunk in torch.split(x.flip(0), 10_000):  # the outliers arrive last: the range grows
        streamed.update(chunk)
    assert (streamed.lo, streamed.hi) == (one.lo, one.hi)
    assert streamed.counts.sum() == one.counts.sum() == x.numel()
    width = (one.hi - one.lo) / one.bins
    for p in (99.0, 99.9):
        a = histogram_range(one, "PERCENTILE_SYM", 8, p)[1]
        b = histogram_range(streamed, "PERCENTILE_SYM", 8, p)[1]
        assert abs(a - b) <= width + 1e-9


def test_percentile_ignores_rare_outliers():
    h = Histogram()
    h.update(gaussian_with_outliers())
    lo, hi = histogram_range(h, "PERCENTILE_SYM", 8, 99.9)
    assert 3.0 < hi < 3.6 and lo == -hi  # the 99.9th percentile of |N(0,1)| is 3.29
    lo, hi = histogram_range(h, "PERCENTILE_ASYM", 8, 99.9)
    assert -3.4 < lo < -2.8 and 2.8 < hi < 3.4


def test_mse_clips_a_gaussian_tail_but_keeps_heavy_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g)
    h = Histogram()
    h.update(x)
    hi = histogram_range(h, "MSE_SYM", 8, 99.99)[1]
    assert 2.5 < hi < float(x.abs().max()) - 0.2
    h.update(torch.full((20,), 40.0))  # clipping 20 values at 40 would cost more than coarse steps
    assert histogram_range(h, "MSE_SYM", 8, 99.99)[1] > 30


@pytest.mark.parametrize("method", ["ENTROPY_SYM", "ENTROPY_ASYM"])
def test_clipping_methods_clip_far_outliers(method):
    h = Histogram()
    h.update(gaussian_with_outliers())
    lo, hi = histogram_range(h, method, 8, 99.99)
    assert 2.0 < hi < 20.0, (lo, hi)  # well below the 40.0 outliers, above the bulk
    assert lo < -2.0


def test_observer_uses_the_histogram_for_histogram_methods():
    x = gaussian_with_outliers()
    minmax = Observer(None, "MINMAX_ASYM")
    pct = Observer(None, "PERCENTILE_ASYM", 99.9)
    for o in (minmax, pct):
        o.update(x)
    spec = {"dtype": "int8", "nbits": 8, "symmetric": False}
    assert pct.qparams({**spec, "method": "PERCENTILE_ASYM"})[0] < minmax.qparams({**spec, "method": "MINMAX_ASYM"})[0] / 5


def test_weight_methods():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 1000, generator=g)
    w[0, 0] = 50.0
    spec = {"dtype": "int8", "nbits": 8, "granularity": "channel", "axis": 0, "symmetric": True}
    amax, _ = weight_qparams(w, {**spec, "method": "AMAX_SYM"})
    pct, _ = weight_qparams(w, {**spec, "method": "PERCENTILE_SYM", "percentile": 99.0})
    mse, _ = weight_qparams(w, {**spec, "method": "MSE_SYM"})
    assert amax.shape == pct.shape == mse.shape == (8,)
    assert torch.isclose(amax[0], torch.tensor(50.0 / 127))
    assert pct[0] < amax[0] / 10 and torch.all(pct <= amax)
    assert torch.all(mse <= amax) and torch.all(mse >= amax * 0.5 - 1e-9)
    tensor_scale, zp = weight_qparams(w, {**spec, "method": "AMAX_SYM", "granularity": "tensor", "axis": None})
    assert tensor_scale.shape == () and int(zp) == 0


def _output_error(x, w, obs, spec, clip):
    from mcq.observers import spec_to_qp

    saved, obs.clip = obs.clip, clip
    scale, zp = obs.qparams(spec)
    obs.clip = saved
    xq = fake_quantize(x, spec_to_qp(spec, scale, zp))
    return float(((xq - x).to(torch.float64) @ w.to(torch.float64).t()).pow(2).sum())


ASYM8 = {"dtype": "int8", "nbits": 8, "granularity": "tensor", "axis": None, "symmetric": False,
         "method": "MINMAX_ASYM"}


def _observed(xs):
    obs = Observer(None, "MINMAX_ASYM")
    for x in xs:
        obs.update(x)
    return obs


def test_output_mse_search_clips_a_tail_that_carries_little_output():
    from mcq.channels import ACT_CLIP_GRID, search_clip

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(256, 64, generator=g) for _ in range(2)]
    xs[0][0, 5] = 60.0  # one far value in a channel the weights barely read
    w = torch.randn(32, 64, generator=g)
    w[:, 5] *= 0.01
    obs = _observed(xs)
    f = search_clip(None, obs, ASYM8, [w], xs)
    assert f <= 0.8 and obs.clip == 1.0  # the observer is left as it was
    x = torch.cat(xs)
    err = lambda c: _output_error(x, w, obs, ASYM8, c)  # noqa: E731
    assert err(f) < 0.5 * err(1.0)
    assert all(err(f) <= err(c) for c in ACT_CLIP_GRID)
    assert search_clip(None, obs, ASYM8, [w], xs) == f  # deterministic


def test_output_mse_search_keeps_a_large_channel_the_output_reads():
    from mcq.channels import search_clip

    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(256, 64, generator=g) for _ in range(2)]
    for x in xs:  # SmolLM2-like: one channel far larger than the rest, on every token, read by the weights
        x[:, 7] = 40.0 + torch.randn(256, generator=g)
    w = torch.randn(32, 64, generator=g)
    obs = _observed(xs)
    f = search_clip(None, obs, ASYM8, [w], xs)
    x = torch.cat(xs)
    assert f > 0.95
    assert _output_error(x, w, obs, ASYM8, f) <= _output_error(x, w, obs, ASYM8, 1.0)
    assert _output_error(x, w, obs, ASYM8, f) < 0.1 * _output_error(x, w, obs, ASYM8, 0.8)


def test_output_mse_search_through_the_gram_matrix_equals_the_direct_error():
    from mcq.channels import _output_error as outerr
    from mcq.observers import spec_to_qp

    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(64, 16, generator=g)]
    obs = _observed(xs)
    qp = spec_to_qp(ASYM8, *obs.qparams(ASYM8))
    wide, narrow = torch.randn(40, 16, generator=g), torch.randn(8, 16, generator=g)  # Gram, direct
    ident = lambda x: x  # noqa: E731
    for w in (wide, narrow):
        assert outerr(xs, [w], ident)(qp) == pytest.approx(_output_error(xs[0], w, obs, ASYM8, 1.0), rel=1e-9)
    two = outerr(xs, [wide, narrow], ident)(qp)
    assert two == pytest.approx(outerr(xs, [wide], ident)(qp) + outerr(xs, [narrow], ident)(qp), rel=1e-9)
