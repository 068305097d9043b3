"""Helpers shared by every Triton kernel of the package.

The one place that knows about the interpreter's bf16 ``tl.dot`` defect: under
``TRITON_INTERPRET=1`` Triton (3.6 to 3.9 at least) multiplies bf16 operands' raw bit patterns,
so results are wildly wrong (seen: max error 2.7e10 on a 16x16 product). :func:`dot` widens
bf16 operands to float32 under the interpreter (exact: every bf16 value is a float32 value),
and is plain ``tl.dot`` when compiled for a GPU. Kernels call ``dot`` instead of ``tl.dot``.
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
