"""The shared custom-op wrapper: eager calls bypass the dispatcher, compile and autograd don't."""

from __future__ import annotations

import torch

from millkernels.ops.custom_op import family_op

CALLS: list[str] = []


@family_op("millkernels_test::scale2")
def scale2(x: torch.Tensor) -> torch.Tensor:
    CALLS.append("impl")
    return x * 2


@scale2.register_fake
def _(x):
    return torch.empty_like(x)


def _setup(ctx, inputs, output):
    pass


def _backward(ctx, grad):
    return grad * 2


scale2.register_autograd(_backward, setup_context=_setup)
_REGISTERED = scale2.op


def _spy_op(*args):
    CALLS.append("op")
    return _REGISTERED(*args)


scale2.op = _spy_op


def test_eager_call_runs_the_implementation_directly():
    x = torch.randn(5)
    CALLS.clear()
    torch.testing.assert_close(scale2(x), x * 2)
    assert CALLS == ["impl"]


def test_grad_call_goes_through_the_op_and_its_backward():
    x = torch.randn(7, requires_grad=True)
    CALLS.clear()
    scale2(x).sum().backward()
    assert CALLS == ["op", "impl"]
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))


def test_compile_sees_the_op():
    x = torch.randn(3)
    CALLS.clear()
    out = torch.compile(lambda t: scale2(t) + 1, backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(out, x * 2 + 1)
    assert CALLS[0] == "op"
