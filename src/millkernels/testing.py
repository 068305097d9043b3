"""Helpers for checking kernels: tolerance rules, SQNR, odd-shaped random inputs, poisoning.

They live in the package (not only in tests/) because benchmarks use the same rules to check
a result before they time it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

#: Lengths that are not multiples of any block size, plus the degenerate length 1.
ODD_LENGTHS: tuple[int, ...] = (1, 17, 113, 255)


def flash_allowed_error(
    out_lowp_ref: torch.Tensor, ref32: torch.Tensor, dtype: torch.dtype, *, slack: float = 1e-5
) -> float:
    """Flash-attention's bound on a kernel's error: twice PyTorch's own error, plus the
    rounding of ``dtype`` (the kernel output's) at the values' magnitude, plus ``slack``.

    ``ref32`` is the reference computed in float32 (or float64), ``out_lowp_ref`` the same
    reference computed in the input dtype. ``rounding`` is two units in the last place of
    ``dtype`` at ``max|ref32|`` (flash-attn's tests add a similar term): the kernel and PyTorch
    may each round once the other way, so a result one unit off where PyTorch happened to
    round exactly does not fail at tiny sizes. It depends on the magnitude alone, not on how
    the random values happen to round.
    """
    base = (out_lowp_ref.double() - ref32.double()).abs().max().item()
    return 2 * base + _rounding(ref32, dtype) + slack


def flash_tolerance_ok(
    out: torch.Tensor, out_lowp_ref: torch.Tensor, ref32: torch.Tensor, *, slack: float = 1e-5
) -> tuple[bool, float, float]:
    """Whether ``out`` is within :func:`flash_allowed_error`.

    Returns ``(ok, kernel_err, torch_err)``: the kernel's and PyTorch's own max error.
    """
    ref = ref32.double()
    err = (out.double() - ref).abs().max().item()
    base = (out_lowp_ref.double() - ref).abs().max().item()
    return err <= flash_allowed_error(out_lowp_ref, ref32, out.dtype, slack=slack), err, base


def _rounding(ref32: torch.Tensor, dtype: torch.dtype) -> float:
    """Two units in the last place of ``dtype`` at the largest finite magnitude of ``ref32``."""
    finite = ref32.double().abs()
    finite = finite[torch.isfinite(finite)]
    if not finite.numel() or not dtype.is_floating_point:
        return 0.0
    top = finite.max().item()
    if top == 0:
        return 0.0
    info = torch.finfo(dtype)
    return 2 * info.eps * 2.0 ** max(math.floor(math.log2(top)), math.log2(info.tiny))


def assert_flash_close(
    out: torch.Tensor, out_lowp_ref: torch.Tensor, ref32: torch.Tensor, name: str = "out"
) -> None:
    """Assert :func:`flash_tolerance_ok`, with both errors in the message."""
    ok, err, base = flash_tolerance_ok(out, out_lowp_ref, ref32)
    if not math.isfinite(err):
        raise AssertionError(f"{name}: non-finite values in the result")
    rounding = _rounding(ref32, out.dtype)
    assert ok, (
        f"{name}: max error {err:.3g} > 2 x PyTorch's own error {base:.3g} + the dtype's "
        f"rounding {rounding:.3g} + 1e-5"
    )


def sqnr_db(signal: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantisation-noise ratio in dB: 10 log10(sum(x^2) / sum((x - y)^2))."""
    x = signal.double()
    noise = (x - approx.double()).pow(2).sum().item()
    power = x.pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10 * math.log10(power / noise)


def dtype_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) suited to one rounding of ``dtype`` (for elementwise comparisons)."""
    table = {
        torch.float64: (1e-12, 1e-12),
        torch.float32: (1e-5, 1.3e-6),
        torch.float16: (1e-3, 1e-3),
        torch.bfloat16: (1e-2, 8e-3),
    }
    if dtype not in table:
        raise TypeError(f"dtype: expected a floating dtype from {list(table)}, got {dtype}")
    return table[dtype]


def randn(
    shape: Sequence[int], dtype: torch.dtype = torch.float32, device: str = "cpu", scale=1.0
) -> torch.Tensor:
    """Standard-normal random data (never zeros), scaled, in ``dtype`` on ``device``."""
    return (torch.randn(tuple(shape), dtype=torch.float32) * scale).to(dtype=dtype, device=device)


def random_words(n: int, device: str = "cpu") -> torch.Tensor:
    """``n`` random 32-bit words (int32), covering the full bit range including the sign bit."""
    return torch.randint(-(2**31), 2**31, (n,), dtype=torch.int32, device=device)


def odd_shapes(*dims: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Cartesian product of candidate sizes per dimension: ``odd_shapes((1, 17), (8, 33))``."""
    if not dims:
        yield ()
        return
    for head in dims[0]:
        for rest in odd_shapes(*dims[1:]):
            yield (head, *rest)


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with values no correct kernel writes, so untouched elements show.

    Floats get NaN; integers get a sentinel (0x5A repeated). Returns ``t`` (filled in place).
    """
    if t.is_floating_point() or t.is_complex():
        return t.fill_(float("nan"))
    sentinel = {1: 0x5A, 2: 0x5A5A, 4: 0x5A5A5A5A, 8: 0x5A5A5A5A5A5A5A5A}[t.element_size()]
    if t.dtype == torch.bool:
        return t.fill_(True)
    if t.dtype == torch.uint8:
        return t.fill_(sentinel)
    info = torch.iinfo(t.dtype)
    return t.fill_(sentinel if sentinel <= info.max else info.max)


def empty_poisoned(
    shape: Sequence[int], dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> torch.Tensor:
    """A new poisoned tensor: ``poison(torch.empty(shape, dtype=dtype, device=device))``."""
    return poison(torch.empty(tuple(shape), dtype=dtype, device=device))
