"""The tolerance rules, SQNR and poisoning that every kernel test relies on."""

import math

import pytest
import torch

from millkernels import testing


def test_flash_rule_accepts_pytorch_level_error_and_rejects_worse():
    ref32 = torch.randn(64, 64, dtype=torch.float64)
    lowp = ref32.to(torch.bfloat16)  # PyTorch's own error: one bf16 rounding
    ok, err, base = testing.flash_tolerance_ok(lowp, lowp, ref32)
    assert ok and err == base > 0
    worse = lowp.double() + 3 * base
    ok, err, _ = testing.flash_tolerance_ok(worse, lowp, ref32)
    assert not ok and err > 2 * base
    with pytest.raises(AssertionError, match="2 x PyTorch's own error"):
        testing.assert_flash_close(worse, lowp, ref32)


def test_flash_rule_allows_one_rounding_where_pytorch_rounded_exactly():
    """The dtype's rounding at the values' magnitude is allowed on top of 2x PyTorch's own
    error: values PyTorch happened to get exact (its error 0) may come back one unit off."""
    exact = torch.randn(64, 64).half()
    ref32 = exact.double()  # PyTorch's result is exact: its own error is 0
    one_off = exact.clone()
    big = int(exact.abs().argmax())  # one unit there is well above the 1e-5 slack
    one_off.view(torch.int16).view(-1)[big] += 1  # the next float16 away from zero
    ok, err, base = testing.flash_tolerance_ok(one_off, exact, ref32)
    assert base == 0 and err > 1e-5 and ok
    testing.assert_flash_close(one_off, exact, ref32)
    three_off = exact.clone()
    three_off.view(torch.int16).view(-1)[big] += 3  # past the two units the rule allows
    assert not testing.flash_tolerance_ok(three_off, exact, ref32)[0]
    far = exact.clone()
    far.view(-1)[big] += 0.25
    assert not testing.flash_tolerance_ok(far, exact, ref32)[0]


def test_flash_rule_rejects_nan():
    ref32 = torch.randn(8, dtype=torch.float64)
    bad = ref32.clone()
    bad[3] = float("nan")
    with pytest.raises(AssertionError, match="non-finite"):
        testing.assert_flash_close(bad, ref32.to(torch.float16), ref32)


def test_sqnr_known_values():
    x = torch.ones(1000, dtype=torch.float64)
    assert testing.sqnr_db(x, x) == math.inf
    assert testing.sqnr_db(x, x * 1.1) == pytest.approx(20.0)  # noise power 1% of signal
    assert testing.sqnr_db(x, x * 1.01) == pytest.approx(40.0)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.int32, torch.int8, torch.uint8, torch.int64]
)
def test_poison_marks_every_element(dtype):
    t = testing.empty_poisoned((3, 5), dtype)
    if dtype.is_floating_point:
        assert t.isnan().all()
    else:
        assert (t == t.flatten()[0]).all() and int(t.flatten()[0]) != 0


def test_odd_shapes_and_random_inputs():
    shapes = list(testing.odd_shapes((1, 17), (8, 33)))
    assert shapes == [(1, 8), (1, 33), (17, 8), (17, 33)]
    x = testing.randn((17, 33), torch.float16)
    assert x.dtype == torch.float16 and (x != 0).float().mean() > 0.99
    words = testing.random_words(10_000)
    assert words.min() < -(2**30) and words.max() > 2**30  # sign bit exercised


def test_dtype_tolerance_rejects_integers():
    assert testing.dtype_tolerance(torch.bfloat16)[0] > testing.dtype_tolerance(torch.float16)[0]
    with pytest.raises(TypeError, match="dtype: expected a floating dtype"):
        testing.dtype_tolerance(torch.int32)


def test_certify_counts_wrong_elements_by_the_same_flash_rule():
    from millkernels.certify.probes.ops import flash_wrong
    from millkernels.testing import flash_allowed_error, flash_tolerance_ok

    g = torch.Generator().manual_seed(7)
    ref32 = torch.randn(33, 17, generator=g)
    lowp = ref32.to(torch.bfloat16)
    allowed = flash_allowed_error(lowp, ref32, torch.bfloat16)
    out = lowp.clone()
    assert flash_wrong(out, lowp, ref32)[0] == 0 and flash_tolerance_ok(out, lowp, ref32)[0]
    out[3, 5] = ref32[3, 5] + 2 * allowed
    wrong, _, got_allowed = flash_wrong(out, lowp, ref32)
    assert (wrong, got_allowed) == (1, allowed)
    assert not flash_tolerance_ok(out, lowp, ref32)[0]
