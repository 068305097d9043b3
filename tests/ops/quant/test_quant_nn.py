"""Custom op (opcheck, torch.compile fullgraph), QuantLinear and quantize_model."""

from __future__ import annotations

import pytest
import torch
from quant_checkpoints import make_gptq
from torch import nn

from millkernels import quant
from millkernels.dispatch import CallFacts
from millkernels.ops.quant import api, capabilities, custom_ops, reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _op_args(x, qw, bias=None, backend="auto"):
    return (
        x,
        qw.qweight,
        qw.scales,
        qw.zeros,
        qw.perm,
        bias,
        qw.scheme,
        qw.group_size,
        qw.out_features,
        qw.in_features,
        backend,
    )


@pytest.mark.parametrize(
    "scheme,kw", [("w4a16", {"group_size": 32}), ("w8a16", {"group_size": -1}), ("fp8_block", {})]
)
def test_opcheck(scheme, kw):
    qw = quant.quantize(torch.randn(40, 160), scheme, **kw).to(DEVICE)
    x = torch.randn(3, 160, device=DEVICE).to(torch.bfloat16)
    bias = torch.randn(40, device=DEVICE).to(torch.bfloat16)
    tests = (
        "test_schema",
        "test_autograd_registration",
        "test_faketensor",
        "test_aot_dispatch_dynamic",
    )
    if qw.is_fp8 and DEVICE == "cpu":
        # opcheck's schema test compares inputs with allclose, which PyTorch lacks for fp8 on
        # the CPU; that inputs are not mutated is checked byte for byte below instead.
        tests = tests[1:]
    before = {k: v.clone() for k, v in qw.tensors().items()}
    result = torch.library.opcheck(
        torch.ops.millkernels.quant_matmul.default, _op_args(x, qw, bias), test_utils=tests
    )
    assert all(v == "SUCCESS" for v in result.values()), result
    assert len(result) == len(tests)
    for k, v in before.items():
        assert torch.equal(v.view(torch.uint8), qw.tensors()[k].view(torch.uint8)), k


def test_opcheck_act_order():
    ckpt = make_gptq(4, 128, 16, 32, act_order=True, v2=False)
    qw = quant.from_gptq(*ckpt["args"], bits=4, group_size=32).to(DEVICE)
    x = torch.randn(2, 128, device=DEVICE).to(torch.float16)
    result = torch.library.opcheck(torch.ops.millkernels.quant_matmul.default, _op_args(x, qw))
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("scheme", ["w4a16", "fp8_rowwise"])
def test_compile_fullgraph(scheme):
    torch._dynamo.reset()
    layer = quant.QuantLinear.from_linear(nn.Linear(96, 48), scheme, group_size=32).to(DEVICE)

    def f(x):
        return torch.relu(layer(x)) * 2

    compiled = torch.compile(f, fullgraph=True)
    x = torch.randn(2, 5, 96, device=DEVICE).to(torch.float16)
    assert torch.equal(compiled(x), f(x))


def _spy_on_op(monkeypatch) -> list[str]:
    """Record every call that goes through the registered op (the dispatcher)."""
    calls: list[str] = []
    real = custom_ops.quant_matmul.op

    def spy(*args):
        calls.append(args[-1])  # the resolved backend name
        return real(*args)

    monkeypatch.setattr(custom_ops.quant_matmul, "op", spy)
    return calls


def test_eager_call_skips_the_dispatcher(monkeypatch):
    calls = _spy_on_op(monkeypatch)
    qw = quant.quantize(torch.randn(24, 64), "w8a16", group_size=32).to(DEVICE)
    x = torch.randn(3, 64, device=DEVICE).to(torch.bfloat16)
    out = quant.matmul(x, qw, backend="reference")
    assert calls == []
    assert torch.equal(out, reference.matmul(x, qw))


def test_compile_fullgraph_goes_through_the_op(monkeypatch):
    torch._dynamo.reset()
    calls = _spy_on_op(monkeypatch)
    qw = quant.quantize(torch.randn(24, 64), "w8a16", group_size=32).to(DEVICE)
    x = torch.randn(5, 64, device=DEVICE).to(torch.float16)
    compiled = torch.compile(lambda t: quant.matmul(t, qw, backend="reference"), fullgraph=True)
    assert torch.equal(compiled(x), reference.matmul(x, qw))
    assert calls == ["reference"]  # resolved before the op, once, at trace time


def test_call_facts_are_typed():
    qw = quant.quantize(torch.randn(24, 64), "w4a16", group_size=32)
    x = torch.randn(2, 3, 64).to(torch.float16)
    facts = api.call_facts(x, qw.scheme, qw.group_size, qw.in_features)
    assert isinstance(facts, capabilities.QuantCall) and isinstance(facts, CallFacts)
    assert (facts.op, facts.device, facts.dtype, facts.capability) == (
        "matmul",
        "cpu",
        "float16",
        None,
    )
    assert (facts.scheme, facts.group_size, facts.in_features, facts.m) == ("w4a16", 32, 64, 6)


def test_eager_fast_path_equals_custom_op():
    qw = quant.quantize(torch.randn(24, 64), "w4a16", group_size=32).to(DEVICE)
    x = torch.randn(4, 64, device=DEVICE).to(torch.float16)
    assert torch.equal(quant.matmul(x, qw), torch.ops.millkernels.quant_matmul(*_op_args(x, qw)))


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(64, 96)
        self.act = nn.GELU()
        self.down = nn.Linear(96, 64, bias=False)
        self.odd = nn.Linear(64, 50)  # in_features 64 fine; used below
        self.head = nn.Linear(50, 10)  # in_features 50: group_size 32 cannot divide it

    def forward(self, x):
        h = self.down(self.act(self.up(x)))
        return self.head(self.odd(h))


@pytest.mark.parametrize("scheme", ["w4a16", "w8a16", "fp8_rowwise", "fp8_block"])
def test_quantize_model(scheme, tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = _Tiny().to(DEVICE)
    x = torch.randn(3, 64, device=DEVICE)
    want = model(x)
    replaced, skipped = quant.quantize_model(
        model, scheme, group_size=32, filter=lambda name, lin: name != "odd"
    )
    int_scheme = scheme.startswith("w")
    assert replaced == (["up", "down"] if int_scheme else ["up", "down", "head"])
    assert skipped["odd"] == "excluded by filter"
    if int_scheme:
        assert "group_size" in skipped["head"] and "50" in skipped["head"]
        assert isinstance(model.head, nn.Linear)
    assert isinstance(model.up, quant.QuantLinear) and model.down.bias is None
    model = model.half()  # QuantLinear keeps its integer/fp8 buffers; the bias follows
    got = model(x.half()).float()
    rel = ((got - want).norm() / want.norm()).item()
    assert rel < (0.15 if scheme == "w4a16" else 0.05), rel
    # state_dict through safetensors into a freshly quantised model
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    fresh = _Tiny().to(DEVICE)
    quant.quantize_model(fresh, scheme, group_size=32, filter=lambda n, m: n != "odd")
    fresh = fresh.half()
    fresh.load_state_dict(load_file(str(tmp_path / "m.safetensors"), device=DEVICE))
    assert torch.equal(fresh(x.half()), model(x.half()))


def test_quant_linear_repr_and_errors():
    lin = nn.Linear(64, 16)
    q = quant.QuantLinear.from_linear(lin, "w4a16", group_size=32)
    assert "scheme='w4a16'" in repr(q) and "group_size=32" in repr(q)
    assert q.weight.shape == (16, 64)
    with pytest.raises(TypeError, match="linear"):
        quant.QuantLinear.from_linear(nn.Conv1d(1, 1, 1), "w4a16")
    with pytest.raises(TypeError, match="qweight"):
        quant.QuantLinear(torch.randn(16, 64))
    with pytest.raises(ValueError, match="scheme"):
        quant.quantize_model(nn.Sequential(lin), "int3")
    with pytest.raises(TypeError, match="model"):
        quant.quantize_model(lin.weight, "w4a16")
    replaced, skipped = quant.quantize_model(lin, "w4a16")
    assert replaced == [] and "model itself" in skipped[""]


def test_public_module():
    import millkernels.quant as mq

    for name in mq.__all__:
        assert getattr(mq, name) is getattr(quant, name)
    assert mq.matmul is api.matmul
    assert quant.TABLE.family == "quant"
