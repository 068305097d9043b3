"""attention / attention_varlen argument checking and backend dispatch."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from millkernels.dispatch import BackendUnavailable
from millkernels.ops import tables
from millkernels.ops.attention import TABLE, attention, attention_varlen
from millkernels.ops.attention.capabilities import AttentionCall, call_facts

F16 = torch.float16


def _qkv(sq=5, sk=7, hq=4, hkv=2, d=64, dtype=F16):
    return (
        torch.randn(2, sq, hq, d).to(dtype),
        torch.randn(2, sk, hkv, d).to(dtype),
        torch.randn(2, sk, hkv, d).to(dtype),
    )


def _bad(**change):
    q, k, v = _qkv()
    args = {"q": q, "k": k, "v": v}
    kw = {}
    for key, value in change.items():
        (args if key in args else kw)[key] = value
    return args, kw


BAD = [
    ({"q": torch.randn(5, 4, 64).half()}, ValueError, "q: expected a 4-d"),
    ({"k": torch.randn(3, 7, 2, 64).half()}, ValueError, "k: expected batch 2"),
    ({"k": torch.randn(2, 7, 2, 32).half()}, ValueError, "k: expected head_dim 64"),
    ({"v": torch.randn(2, 6, 2, 64).half()}, ValueError, "v: expected the shape of k"),
    (
        {"k": torch.randn(2, 7, 3, 64).half(), "v": torch.randn(2, 7, 3, 64).half()},
        ValueError,
        "heads_kv",
    ),
    ({"q": torch.randn(2, 5, 4, 64).double()}, TypeError, "q: expected float16"),
    ({"k": torch.randn(2, 7, 2, 64).bfloat16()}, TypeError, "k: expected q's dtype"),
    ({"q": torch.zeros(2, 5, 4, 64, dtype=torch.int32)}, TypeError, "q: expected float16"),
    ({"q": torch.randn(2, 5, 4, 264).half()}, ValueError, "head_dim"),
    ({"q": torch.randn(2, 5, 4, 60).half()}, ValueError, "multiple of 8"),
    ({"q": torch.randn(2, 5, 4, 128).half()[..., ::2]}, ValueError, "unit stride"),
    ({"q": [1, 2]}, TypeError, "q: expected a torch.Tensor"),
    ({"window": (3,)}, TypeError, "window"),
    ({"window": (-2, 0)}, ValueError, "window"),
    ({"softcap": -1.0}, ValueError, "softcap"),
    ({"softmax_scale": 0.0}, ValueError, "softmax_scale"),
    ({"softmax_scale": "x"}, TypeError, "softmax_scale"),
    ({"causal": 1}, TypeError, "causal"),
    ({"return_lse": None}, TypeError, "return_lse"),
    ({"backend": "nope"}, ValueError, "backend"),
]


@pytest.mark.parametrize("change, exc, match", BAD)
def test_attention_bad_input(change, exc, match):
    args, kw = _bad(**change)
    with pytest.raises(exc, match=match):
        attention(args["q"], args["k"], args["v"], backend=kw.pop("backend", "reference"), **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for a mismatch")
def test_attention_device_mismatch():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="k: expected q's device"):
        attention(q.cuda(), k, v.cuda())


def test_attention_device_mismatch_meta():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="v: expected q's device"):
        attention(q, k, v.to("meta"))


def _varlen(lens=(3, 4)):
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    t = int(cu[-1])
    q = torch.randn(t, 4, 64).half()
    k = torch.randn(t, 2, 64).half()
    return q, k, k.clone(), cu, max(lens)


VARLEN_BAD = [
    ("cu_q", torch.tensor([0, 3, 7], dtype=torch.int64), TypeError, "cu_seqlens_q: expected int32"),
    ("cu_q", torch.tensor([0, 5, 3], dtype=torch.int32), ValueError, "non-decreasing"),
    ("cu_q", torch.tensor([1, 3, 7], dtype=torch.int32), ValueError, "start at 0"),
    ("cu_q", torch.tensor([0, 3, 9], dtype=torch.int32), ValueError, "exceeds"),
    ("cu_k", torch.tensor([0, 7], dtype=torch.int32), ValueError, "cu_seqlens_k: expected 3"),
    ("cu_k", torch.tensor([[0, 3, 7]], dtype=torch.int32), ValueError, "cu_seqlens_k: expected"),
    ("max_q", 2, ValueError, "max_seqlen_q"),
    ("max_k", -1, ValueError, "max_seqlen_k"),
    ("max_k", 4.0, TypeError, "max_seqlen_k"),
    ("q", torch.randn(2, 7, 4, 64).half(), ValueError, "q: expected a 3-d"),
]


@pytest.mark.parametrize("which, value, exc, match", VARLEN_BAD)
def test_attention_varlen_bad_input(which, value, exc, match):
    q, k, v, cu, m = _varlen()
    args = {"q": q, "cu_q": cu, "cu_k": cu, "max_q": m, "max_k": m}
    args[which] = value
    with pytest.raises(exc, match=match):
        attention_varlen(
            args["q"], k, v, args["cu_q"], args["cu_k"], args["max_q"], args["max_k"],
            backend="reference",
        )  # fmt: skip


def test_table_is_registered_and_answers_every_op():
    assert tables()["attention"] is TABLE
    assert TABLE.names() == ("triton", "cuda", "reference")
    q = torch.randn(1, 3, 2, 64).half()
    facts = call_facts("attention", q)
    assert facts == AttentionCall(
        op="attention", device="cpu", dtype="float16", capability=None, head_dim=64
    )
    assert "no CUDA C++ training kernel" in TABLE.spec("cuda").serves(facts)
    assert TABLE.reason("reference", facts) is None
    # float32 is served by the reference only, with the reason given for triton
    f32 = call_facts("attention", q.float())
    assert "float16 or bfloat16" in TABLE.spec("triton").serves(f32)
    with pytest.raises(BackendUnavailable, match="cuda"):
        attention(q, q, q, backend="cuda")
    # decode's rules live in the same table
    decode = replace(facts, op="attention_decode")
    assert "needs CUDA tensors" in TABLE.spec("cuda").serves(decode)
    assert TABLE.spec("reference").serves(decode) is None


def test_capabilities_imports_nothing_of_its_family():
    """The table answers every op (decode's included) on its own: capabilities.py imports no
    other attention module, so nothing there can import it back in a loop."""
    from millkernels.ops.attention import capabilities

    tree = ast.parse(Path(capabilities.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith("millkernels.ops")}, imported


def test_float32_runs_on_reference_under_auto(monkeypatch):
    monkeypatch.delenv("MILLKERNELS_BACKEND", raising=False)
    q, k, v = _qkv(dtype=torch.float32)
    out = attention(q, k, v)
    assert out.dtype == torch.float32 and out.shape == q.shape
    with pytest.raises(BackendUnavailable, match="float16 or bfloat16"):
        attention(q, k, v, backend="triton")


def test_env_override_selects_reference(monkeypatch):
    monkeypatch.setenv("MILLKERNELS_BACKEND", "attention=reference")
    q, k, v = _qkv()
    from millkernels.ops.attention import custom_ops

    seen = []
    real = custom_ops.attention_fwd

    def spy(*a):
        seen.append(a[7])  # backend (deterministic follows it)
        return real(*a)

    monkeypatch.setattr(custom_ops, "attention_fwd", spy)
    attention(q, k, v)
    assert seen == ["reference"]


@pytest.mark.parametrize("which", ["q", "k"])
def test_varlen_max_seqlen_bounds_the_longest_sequence(which, triton_device):
    """A max_seqlen below the longest sequence (here the last one) would make the kernels skip
    its rows: refused. A larger one is fine (the same output)."""
    cu = torch.tensor([0, 3, 43], dtype=torch.int32, device=triton_device)
    q, k, v = (torch.randn(43, 2, 64).half().to(triton_device) for _ in range(3))
    small = {"q": (16, 40), "k": (40, 39)}[which]
    with pytest.raises(ValueError, match=rf"max_seqlen_{which}: .* below the longest .* \(40\)"):
        attention_varlen(q, k, v, cu, cu, *small, backend="triton")
    exact = attention_varlen(q, k, v, cu, cu, 40, 40, backend="triton")
    assert torch.equal(attention_varlen(q, k, v, cu, cu, 64, 41, backend="triton"), exact)


def test_varlen_max_seqlen_is_checked_under_torch_compile():
    """torch.compile skips the public function's value checks (they read the offsets on the
    host); for CPU offsets the custom op checks at run time, so rows are never lost silently."""
    cu = torch.tensor([0, 3, 43], dtype=torch.int32)
    q, k, v = (torch.randn(43, 2, 64).half() for _ in range(3))
    f = torch.compile(lambda *a: attention_varlen(*a, backend="triton"), fullgraph=True)
    with pytest.raises(ValueError, match=r"max_seqlen_q: 16 is below the longest"):
        f(q, k, v, cu, cu, 16, 40)
