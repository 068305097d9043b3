"""The warp-specialised (WS) forward: same results as the other kernels on the calls it fits,
the reasons it refuses the others (and the fallback that follows), the table's opt-in, and
the softcap's tanh.

On a CPU the WS code path runs under the interpreter (which ignores warp specialisation but
runs the same single unmasked loop); on a GPU the `gpu`-marked tests run it on sm_90+.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from _attention_cases import check_forward, dense_inputs

from millkernels.ops.attention import attention, capabilities
from millkernels.ops.attention import triton_fwd as F
from millkernels.ops.triton_common import tanh

F16, BF16 = torch.float16, torch.bfloat16
TOL = {F16: 4 * 2.0**-10, BF16: 4 * 2.0**-7}  # four units of each dtype's precision


@triton.jit
def _tanh_kernel(X, Y, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(Y + offs, tanh(tl.load(X + offs)))


def _sm90(device: str) -> None:
    if device == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the WS kernel needs sm_90")


def _lengths(device: str, blocks: int) -> int:
    """A sequence length of ``blocks`` full WS blocks."""
    return blocks * (F.WS_BLOCK if device == "cuda" else F.ws_block())


def _call(q, k, v, causal=False, softcap=0.0) -> tuple:
    """The forward's positional arguments for a dense call."""
    win = (-1, 0) if causal else (-1, -1)
    return (q, k, v, None, None, q.shape[1], k.shape[1], q.shape[-1] ** -0.5, win, softcap)


def _forward(q, k, v, *, ws, tma=False, causal=False, softcap=0.0):
    return F.forward(*_call(q, k, v, causal, softcap), tma=tma, ws=ws)


@pytest.mark.parametrize(
    "b, nq, nk, hq, hkv, d, dtype, softcap",
    [
        pytest.param(1, 2, 3, 2, 1, 64, BF16, 0.0, id="mqa-d64-bf16"),
        pytest.param(2, 1, 2, 4, 2, 128, F16, 0.0, id="gqa-d128-f16"),
        pytest.param(1, 3, 1, 2, 2, 64, F16, 7.5, id="softcap-q>k"),
    ],
)
def test_ws_forward_matches_reference_and_other_kernel(
    triton_device, b, nq, nk, hq, hkv, d, dtype, softcap
):
    _sm90(triton_device)
    sq, sk = _lengths(triton_device, nq), _lengths(triton_device, nk)
    q, k, v = dense_inputs(b, sq, sk, hq, hkv, d, dtype, triton_device)
    out, lse = _forward(q, k, v, ws=True, softcap=softcap)
    assert F.ws_fallback(*_call(q, k, v, softcap=softcap)) is None  # it runs the WS kernel
    kw = dict(causal=False, window=(-1, -1), softcap=softcap)
    check_forward(out.cpu(), lse.cpu(), q.cpu(), k.cpu(), v.cpu(), kw)
    ref_out, ref_lse = _forward(q, k, v, ws=False, softcap=softcap)
    torch.testing.assert_close(out, ref_out, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(lse, ref_lse, rtol=1e-4, atol=1e-4)


def test_ws_unfit_reasons():
    block = F.ws_block()
    q = torch.zeros(1, block, 2, 64, dtype=F16)
    fit = dict(varlen=False, max_q=block, max_k=2 * block, head_dim=64, window=(-1, -1))
    assert F.ws_unfit(*fit.values(), q) is None
    cases = {
        "varlen": dict(varlen=True),
        "causal or window": dict(window=(-1, 0)),
        f"seqlen_q {block + 1} is not a positive multiple": dict(max_q=block + 1),
        "seqlen_k 0 is not a positive multiple": dict(max_k=0),
        "no WS configs for head_dim 80": dict(head_dim=80),
    }
    for words, change in cases.items():
        why = F.ws_unfit(*{**fit, **change}.values(), q)
        assert why and words in why, (change, why)
    odd = torch.zeros(1, block, 2, 64 + 4, dtype=F16)[..., :64]  # 136-byte rows
    assert "16-byte" in F.ws_unfit(*fit.values(), odd)


def test_ws_falls_back_with_the_reason(triton_device):
    """A causal call asked to run WS takes the masked kernel (same result, bitwise) and says
    why; so does a call whose WS kernel did not compile as warp-specialised."""
    _sm90(triton_device)
    s = _lengths(triton_device, 1)
    q, k, v = dense_inputs(1, s, s, 2, 2, 64, F16, triton_device)
    out, _ = _forward(q, k, v, ws=True, tma=True, causal=True)
    assert "causal" in F.ws_fallback(*_call(q, k, v, causal=True))
    ref, _ = _forward(q, k, v, ws=False, tma=True, causal=True)
    assert torch.equal(out, ref)


def test_ws_compile_guard_falls_back(monkeypatch):
    """Where Triton does not warp-specialise the loop (or cannot compile it) the launcher
    records why and runs the other kernel (the guard itself, without a GPU)."""

    class Meta:
        num_warps = 8

    class Compiled:
        metadata = Meta()

    monkeypatch.setattr(F.runtime, "triton_interpret", lambda: False)
    monkeypatch.setattr(F, "_WS_COMPILED", {})
    monkeypatch.setattr(F._attn_fwd_kernel, "warmup", lambda *a, **kw: Compiled())
    q = torch.zeros(1, 128, 2, 64, dtype=F16)
    consts = {"HEAD_DIM": 64, "BLOCK_D": 64, "SOFTCAP": False}
    why = F.ws_compile_reason((q,), consts, 1)
    assert why and "8 warps, not 12" in why

    def broken(*a, **kw):
        raise RuntimeError("PassManager::run failed")

    monkeypatch.setattr(F, "_WS_COMPILED", {})
    monkeypatch.setattr(F._attn_fwd_kernel, "warmup", broken)
    why = F.ws_compile_reason((q,), consts, 1)
    assert why and "failed to compile" in why and "PassManager" in why
    Meta.num_warps = F.WS_WARPS
    monkeypatch.setattr(F, "_WS_COMPILED", {})
    monkeypatch.setattr(F._attn_fwd_kernel, "warmup", lambda *a, **kw: Compiled())
    assert F.ws_compile_reason((q,), consts, 1) is None


def test_ws_env_switch_reaches_the_forward(triton_device, monkeypatch):
    _sm90(triton_device)
    s = _lengths(triton_device, 1)
    q, k, v = dense_inputs(1, s, s, 2, 2, 64, BF16, triton_device)
    seen: list[bool] = []
    real = F.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["ws"])
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "forward", spy)
    monkeypatch.setenv(capabilities.WS_ENV, "1")
    with_ws = attention(q, k, v, backend="triton")
    assert F.chosen_config(False, ws=True)["WS"] is True
    monkeypatch.delenv(capabilities.WS_ENV)
    without = attention(q, k, v, backend="triton")
    assert seen == [True, False]  # off unless opted in
    torch.testing.assert_close(with_ws, without, atol=TOL[BF16], rtol=TOL[BF16])


def test_ws_decision_is_the_tables(monkeypatch):
    """Opt-in, training ops, sm_90+ (or the interpreter), 16-byte aligned tensors; read from
    the environment when the facts are taken."""
    from dataclasses import replace

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    gpu = capabilities.AttentionCall(
        op="attention", device="cuda", dtype="bfloat16", capability=(9, 0), head_dim=128,
        ws_opt_in=True,
    )  # fmt: skip
    assert capabilities.use_ws(gpu) and capabilities.use_ws(replace(gpu, op="attention_varlen"))
    refusals = {
        "ws_opt_in": (False, capabilities.WS_ENV),
        "capability": ((8, 0), "sm_90"),
        "aligned16": (False, "16-byte"),
        "op": ("attention_decode", "attention_decode"),
    }
    for name, (value, words) in refusals.items():
        why = capabilities.ws_reason(replace(gpu, **{name: value}))
        assert why and words in why, (name, why)
    q = torch.randn(1, 3, 2, 64).half()
    monkeypatch.setenv(capabilities.WS_ENV, "1")
    assert capabilities.call_facts("attention", q).ws_opt_in
    monkeypatch.delenv(capabilities.WS_ENV)
    assert not capabilities.call_facts("attention", q).ws_opt_in


def test_softcap_tanh_is_exact_on_the_interpreter():
    """Under the interpreter the softcap's tanh is the exact formula (the GPU's one MUFU
    approximation is checked by the gpu test below)."""
    from millkernels import runtime

    if not runtime.triton_interpret():
        pytest.skip("the exact formula is the interpreter's")

    x = torch.cat([torch.linspace(-12, 12, 250), torch.tensor([0.0, -0.0, 1e-7, -50, 50, 88])])
    x = torch.nn.functional.pad(x, (0, 256 - x.numel()))
    y = torch.empty_like(x)
    _tanh_kernel[(1,)](x, y, 256)
    torch.testing.assert_close(y.double(), torch.tanh(x.double()), atol=2e-7, rtol=0)


@pytest.mark.gpu
def test_softcap_tanh_approximation_on_the_gpu():
    """tanh.approx.f32: absolute error below 2**-10 (its documented bound is about 2**-11),
    and attention with softcap still passes the flash rule."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")

    x = torch.linspace(-12, 12, 4096, device="cuda")
    y = torch.empty_like(x)
    _tanh_kernel[(1,)](x, y, 4096)
    assert (y.double() - torch.tanh(x.double())).abs().max().item() < 2.0**-10
    q, k, v = dense_inputs(1, 129, 77, 2, 1, 64, BF16, "cuda")
    kw = dict(causal=False, window=(-1, -1), softcap=5.0)
    out, lse = attention(q, k, v, return_lse=True, backend="triton", **kw)
    check_forward(out.cpu(), lse.cpu(), q.cpu(), k.cpu(), v.cpu(), kw)


def _fwd_variants(pick) -> list:
    from millkernels.analyze.registry import triton_kernels

    return [v for v in triton_kernels().triton["attention.fwd"].variants if pick(v.constexprs, v)]


_COMPILE_WS = """
import json, re, sys
from millkernels.analyze.registry import triton_kernels
from millkernels.analyze.triton_compile import compile_variant
from millkernels.ops.attention import triton_fwd as F
(v,) = [
    v for v in triton_kernels().triton["attention.fwd"].variants
    if v.constexprs["WS"] and v.constexprs["HEAD_DIM"] == 128 and not v.constexprs["SOFTCAP"]
]
k = compile_variant(F._attn_fwd_kernel, v, 90)
regs = re.findall(r"setmaxnreg\\.(inc|dec)\\.sync\\.aligned\\.u32\\s+(\\d+)", k.asm["ptx"])
json.dump({"warps": k.metadata.num_warps, "setmaxnreg": sorted(set(regs))}, sys.stdout)
"""


def test_ws_kernel_is_warp_specialised_on_sm90():
    """Offline (no GPU), on the installed Triton, in a process without the interpreter: the
    d128 WS variant compiles to 12 warps, a producer warpgroup lowered to 40 registers and
    consumers raised to 232."""
    import json
    import subprocess
    import sys

    from millkernels.analyze.triton_compile import _worker_env

    r = subprocess.run(
        [sys.executable, "-c", _COMPILE_WS], capture_output=True, text=True, env=_worker_env()
    )
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["warps"] == F.WS_WARPS, got
    assert {("dec", "40"), ("inc", "232")} <= {tuple(x) for x in got["setmaxnreg"]}, got


def test_two_cta_and_wide_d256_configs_compile_without_spills_on_sm90():
    """The d64 config capped at 128 registers (two CTAs per SM) stays within them, and the
    d256 128x32 (pointer) and 128x64 (TMA) tiles do not spill (installed Triton)."""
    from millkernels.analyze.core import analyze_kernels
    from millkernels.analyze.registry import Registry, triton_kernels

    picked = _fwd_variants(
        lambda c, v: (
            (v.maxnreg == 128 and not c["TMA"])
            or (c["HEAD_DIM"] == 256 and c["BLOCK_M"] == 128 and c["BLOCK_N"] in (32, 64))
        )
    )
    kinds = {
        (v.constexprs["HEAD_DIM"], v.constexprs["BLOCK_N"], v.constexprs["TMA"]) for v in picked
    }
    assert kinds == {(64, 64, False), (256, 32, False), (256, 64, True)}, kinds
    reg = Registry()
    reg.register_triton("attention.fwd", triton_kernels().triton["attention.fwd"].fn, picked)
    for r in analyze_kernels("sm_90", registry=reg, include_cuda=False).reports:
        assert r.status == "ok" and r.spill_bytes == 0, (r.variant, r.reason, r.spill_bytes)
        if "r128" in r.variant:
            assert r.registers <= 128, (r.variant, r.registers)
