"""Helpers shared by every Triton kernel of the package.

The one place that knows about the interpreter's bf16 defects. First, ``tl.dot``: under
``TRITON_INTERPRET=1`` Triton (3.6 to 3.9 at least) multiplies bf16 operands' raw bit patterns,
so results are wildly wrong (seen: max error 2.7e10 on a 16x16 product). :func:`dot` widens
bf16 operands to float32 under the interpreter (exact: every bf16 value is a float32 value),
and is plain ``tl.dot`` when compiled for a GPU. Kernels call ``dot`` instead of ``tl.dot``.
Second, the interpreter (Triton 3.9) truncates float32 to bfloat16 instead of rounding to
nearest even (seen: 1.1244 -> 1.1172 instead of 1.125, a whole ulp), which can push a bf16
kernel past the flash-attention 2x rule on the CPU only. :func:`cast` rounds the bits first
there; compiled, it is a plain ``x.to(dtype)`` (round to nearest even, the same instruction).
Kernels call ``cast`` wherever a float32 value becomes bf16/fp16 (operands rounded before a
``dot``, output stores), so CPU results round as GPU results do. Third, inline assembly does
not run under the interpreter: :func:`tanh` (attention's softcap, forward and backward) is one
hardware approximation when compiled and the exact formula there.
"""

from __future__ import annotations

import triton
import triton.language as tl

from millkernels import runtime

#: Fixed when this module is imported, as Triton fixes interpretation when it decorates.
INTERPRET = tl.constexpr(runtime.triton_interpret())


@triton.jit
def dot(a, b, acc):
    """``acc + a @ b`` with float32 accumulation; right for bf16 under the interpreter too."""
    if INTERPRET:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        return tl.dot(a, b, acc)


@triton.jit
def cast(x, dtype: tl.constexpr):
    """``x.to(dtype)`` rounding float32 to nearest even, under the interpreter too."""
    if INTERPRET and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(dtype)
    else:
        return x.to(dtype)


@triton.jit
def sub(a, b):
    """``a - b``; right for bf16 under the interpreter too, which subtracts bf16 operands' bit
    patterns (seen on Triton 3.9: 131 - 131 gave 0 but 129 - 131 gave NaN). There it goes
    through float32 and :func:`cast` (the float32 difference, exact unless the exponents differ
    by more than 16, rounded to bf16 once, as a compiled bf16 subtraction rounds); compiled, it
    is a plain subtraction in the operands' dtype."""
    if INTERPRET and a.dtype == tl.bfloat16:
        return cast(a.to(tl.float32) - b.to(tl.float32), tl.bfloat16)
    else:
        return a - b


@triton.jit
def tanh(x):
    """tanh of float32 ``x``. Compiled: one ``tanh.approx.f32`` (one MUFU; absolute error
    about 2**-11, below the bf16/fp16 rounding of the probabilities it feeds) instead of an
    exp and a division (two MUFU). Under the interpreter, where inline assembly does not run,
    the exact ``1 - 2 / (exp(2x) + 1)`` (``tl.math.tanh`` is not in every Triton)."""
    if INTERPRET:
        return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)
    else:
        return tl.inline_asm_elementwise(
            "tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )
