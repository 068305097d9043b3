"""The one way an op family wraps its implementation as a PyTorch custom op.

``@family_op("millkernels::quant_matmul")`` on the implementation registers it with
``torch.library.custom_op`` and returns a :class:`FamilyOp`. Calling that:

- under ``torch.compile`` / ``torch.export``, or when autograd must record the call (grad mode
  on and a tensor argument requires grad), calls the registered op, so the graph sees one
  opaque op with its fake kernel and its registered backward;
- otherwise calls the implementation directly (the eager bypass): the custom-op dispatcher
  costs tens of microseconds per call on a CPU host, comparable to a decode-sized kernel, and
  buys nothing when nothing is traced or differentiated.

``torch.library.custom_op`` is used rather than ``triton_op``: under the Triton interpreter
``triton_op`` hands fake tensors to the interpreter (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


def _records_grad(args: Iterable[Any]) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


class FamilyOp:
    """A custom op and the implementation behind it; calling it picks one (module docstring)."""

    def __init__(self, op: Any, impl: Callable[..., Any], eager_bypass: bool) -> None:
        self.op = op
        self.impl = impl
        self.eager_bypass = eager_bypass
        self.__doc__ = impl.__doc__
        self.__name__ = getattr(impl, "__name__", "op")

    def __call__(self, *args: Any) -> Any:
        if self.eager_bypass and not torch.compiler.is_compiling() and not _records_grad(args):
            return self.impl(*args)
        return self.op(*args)

    def register_fake(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """The meta kernel ``torch.compile`` traces with (output shapes, dtypes, strides)."""
        self.op.register_fake(fn)
        return fn

    def register_autograd(
        self, backward: Callable[..., Any], *, setup_context: Callable[..., Any]
    ) -> None:
        """The op's backward (see ``torch.library.register_autograd``)."""
        self.op.register_autograd(backward, setup_context=setup_context)


def family_op(
    name: str, *, mutates_args: tuple[str, ...] = (), eager_bypass: bool = True
) -> Callable[[Callable[..., Any]], FamilyOp]:
    """Register the decorated implementation as custom op ``name`` ("millkernels::<op>").

    ``eager_bypass=False`` always goes through the op (for an op whose implementation must
    not run outside the dispatcher).
    """

    def wrap(impl: Callable[..., Any]) -> FamilyOp:
        op = torch.library.custom_op(name, mutates_args=mutates_args)(impl)
        return FamilyOp(op, impl, eager_bypass)

    return wrap
