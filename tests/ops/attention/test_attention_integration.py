"""attention custom ops (opcheck), torch.compile without graph breaks, transformers hook."""

from __future__ import annotations

import pytest
import torch
from _attention_cases import dense_inputs

from millkernels.ops.attention import attention, attention_varlen, custom_ops

F16, BF16 = torch.float16, torch.bfloat16
BACKENDS = ["reference", "triton"]


def _grad(*ts):
    return tuple(t.detach().clone().requires_grad_(True) for t in ts)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_dense(backend, device):
    q, k, v = dense_inputs(1, 17, 9, 4, 2, 32, F16, device)
    torch.library.opcheck(
        custom_ops.attention_fwd.op, (*_grad(q, k, v), 0.125, -1, 0, 0.0, backend)
    )
    out, lse = custom_ops.attention_fwd(q, k, v, 0.125, -1, 0, 0.0, backend)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    torch.library.opcheck(
        custom_ops.attention_bwd.op, (dout, dlse, q, k, v, out, lse, 0.125, -1, 0, 0.0, backend)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_varlen(backend, device):
    cu = torch.tensor([0, 1, 18], dtype=torch.int32, device=device)
    q = torch.randn(18, 2, 32).to(dtype=BF16, device=device)
    k = torch.randn(18, 1, 32).to(dtype=BF16, device=device)
    v = torch.randn(18, 1, 32).to(dtype=BF16, device=device)
    args = (cu, cu, 17, 17, 0.125, 5, -1, 0.0, backend)
    torch.library.opcheck(custom_ops.attention_varlen_fwd.op, (*_grad(q, k, v), *args))
    out, lse = custom_ops.attention_varlen_fwd(q, k, v, *args)
    torch.library.opcheck(
        custom_ops.attention_varlen_bwd.op, (torch.randn_like(out), None, q, k, v, out, lse, *args)
    )


class TinyAttentionModel(torch.nn.Module):
    def __init__(self, dim: int = 128, heads: int = 2, kv_heads: int = 1, backend: str = "auto"):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.q = torch.nn.Linear(dim, dim)
        self.kv = torch.nn.Linear(dim, 2 * kv_heads * self.hd)
        self.o = torch.nn.Linear(dim, dim)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.heads, self.hd)
        k, v = self.kv(x).view(b, s, 2, self.kv_heads, self.hd).unbind(2)
        y = attention(q, k, v, causal=True, backend=self.backend)
        return self.o(y.reshape(b, s, -1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_no_graph_break(backend, device):
    torch._dynamo.reset()
    model = TinyAttentionModel(backend=backend).to(device=device, dtype=BF16)
    x = torch.randn(2, 17, 128).to(device=device, dtype=BF16)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    assert torch.equal(out, eager)
    out.float().sum().backward()
    assert model.q.weight.grad is not None and torch.isfinite(model.q.weight.grad).all()
    explain = torch._dynamo.explain(model)(x)
    assert explain.graph_break_count == 0, explain.break_reasons


def test_compile_varlen_fullgraph(device):
    torch._dynamo.reset()
    cu = torch.tensor([0, 5, 17], dtype=torch.int32, device=device)
    q, k, v = (torch.randn(17, 2, 64).to(dtype=F16, device=device) for _ in range(3))

    def f(q, k, v):
        return attention_varlen(q, k, v, cu, cu, 12, 12, causal=True, backend="reference")

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v)
    assert torch.equal(out, f(q, k, v))


def test_transformers_attn_implementation(device):
    transformers = pytest.importorskip("transformers")
    from millkernels.ops.attention import hf

    hf.register()
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    ref = transformers.LlamaForCausalLM(cfg).eval().to(device)
    cfg2 = transformers.LlamaConfig(**cfg.to_dict())
    mk = transformers.LlamaForCausalLM._from_config(cfg2, attn_implementation="millkernels")
    mk = mk.eval().to(device)
    mk.load_state_dict(ref.state_dict())
    ref.set_attn_implementation("eager")
    assert mk.config._attn_implementation == "millkernels"
    calls = []
    real = hf.attention_forward

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    transformers.AttentionInterface.register("millkernels", spy)
    try:
        ids = torch.randint(0, 64, (2, 13), device=device)
        mask = torch.ones(2, 13, dtype=torch.long, device=device)
        mask[0, :4] = 0  # left padding: unpadded through attention_varlen
        with torch.no_grad():
            for am in (None, mask):
                a = ref(ids, attention_mask=am).logits
                b = mk(ids, attention_mask=am).logits
                valid = slice(None) if am is None else (am.bool())
                torch.testing.assert_close(b[valid], a[valid], atol=2e-5, rtol=1e-4)
    finally:
        hf.register()
    assert len(calls) == 4  # 2 layers x 2 forward passes
