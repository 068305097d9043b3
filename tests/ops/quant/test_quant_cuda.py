"""The CUDA w4a16 kernel (csrc/quant/): argument checks (native extension, no GPU needed: they
run before the GPU check, on CPU views), a CPU model of the kernel's fragment and layout index
formulas (needs neither), and, on a GPU, results against the float32 reference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from millkernels import quant
from millkernels.dispatch import BackendUnavailable
from millkernels.ops.quant import api
from millkernels.ops.quant.capabilities import QuantCall


def _c():
    from millkernels._native import require_native

    return require_native()


def _views(**tensors):
    from millkernels._native import view

    return {k: (None if v is None else view(v, k)) for k, v in tensors.items()}


def _small_m_args(m=2, k=128, n=16, group=32, split=1, x_dtype=torch.float16, **override):
    npad = -(-n // 32) * 32
    path = override.pop("path", 0)
    t = {
        "x": torch.zeros(m, k, dtype=x_dtype),
        "repacked": torch.zeros(npad // 32, 4 * k, dtype=torch.int32),
        "scales": torch.zeros(k // group, npad, dtype=x_dtype),
        "zeros": torch.zeros(k // group, npad, dtype=torch.uint8),
        "bias": None,
        "out": torch.zeros(m, n, dtype=x_dtype),
        "workspace": torch.zeros(npad // 32, split, 512) if split > 1 else None,
        "counters": torch.zeros(npad // 32, dtype=torch.int32) if split > 1 else None,
    }
    t.update(override)
    return {**_views(**t), "group": group, "split": split, "path": path}


@pytest.mark.native
@pytest.mark.parametrize(
    "override,match",
    [
        ({"m": 17}, "M"),
        ({"k": 100}, "multiple of 32"),
        ({"group": 48}, "group"),
        ({"x_dtype": torch.float32}, "x"),
        ({"repacked": torch.zeros(1, 8, dtype=torch.int32)}, "repacked"),
        ({"repacked": torch.zeros(16, 64, dtype=torch.int32)}, "repacked"),  # old (N, K/8)
        ({"scales": torch.zeros(4, 32, dtype=torch.bfloat16)}, "scales"),
        ({"scales": torch.zeros(4, 16, dtype=torch.float16)}, "scales"),  # N not padded
        ({"zeros": torch.zeros(3, 32, dtype=torch.uint8)}, "zeros"),
        ({"out": torch.zeros(3, 16, dtype=torch.float16)}, "out"),
        ({"split": 2, "workspace": None}, "workspace"),
        ({"split": 2, "counters": None}, "counters"),
        ({"split": 2, "workspace": torch.zeros(2, 2, 512)}, "workspace"),  # strips of N=16: 1
        ({"split": 2, "workspace": torch.zeros(1, 3, 512)}, "workspace"),  # not split-wide
        ({"split": 2, "workspace": torch.zeros(1, 2, 256)}, "workspace"),
        ({"split": 2, "counters": torch.zeros(1, dtype=torch.int64)}, "counters"),
        ({"split": 2, "counters": torch.zeros(2, dtype=torch.int32)}, "counters"),
        ({"split": 2}, "CUDA device memory"),  # a complete split call, on the CPU
        ({"split": 5}, "split"),
        ({"path": 5}, "path"),
        ({"path": -1}, "path"),
        ({"m": 3, "path": 1}, "fma path"),
        ({}, "CUDA device memory"),  # everything right but on the CPU: the device check
        ({"m": 16, "n": 40, "path": 2}, "CUDA device memory"),
        ({"m": 16, "n": 40, "path": 3}, "CUDA device memory"),  # pipe: valid up to the device
        ({"m": 9, "n": 72, "path": 4}, "CUDA device memory"),  # wide: an odd strip count
    ],
)
def test_small_m_argument_checks(override, match):
    sizes = {k: override.pop(k) for k in ("m", "k", "n", "group", "x_dtype") if k in override}
    split = override.pop("split", 1)
    args = _small_m_args(**sizes, split=split, **override)
    with pytest.raises(ValueError, match=match):
        _c().w4a16_small_m(**args)


@pytest.mark.native
def test_repack_argument_checks():
    canon = torch.zeros(8, 16, dtype=torch.int32)
    ok = torch.zeros(1, 256, dtype=torch.int32)  # (ceil(16/32), 4K) for K=64
    with pytest.raises(ValueError, match="k"):
        _c().w4_repack(**_views(canonical=canon, repacked=ok), k=60, n=16)
    with pytest.raises(ValueError, match="repacked"):
        _c().w4_repack(**_views(canonical=canon, repacked=torch.zeros(16, 8, dtype=torch.int32)),
                       k=64, n=16)  # fmt: skip
    with pytest.raises(ValueError, match="canonical"):
        _c().w4_repack(**_views(canonical=canon.float(), repacked=ok), k=64, n=16)
    with pytest.raises(ValueError, match="CUDA device memory"):
        _c().w4_repack(**_views(canonical=canon, repacked=ok), k=64, n=16)


def test_table_serves_only_what_the_kernel_does():
    facts = QuantCall(
        op="matmul", scheme="w4a16", device="cuda", dtype="float16",
        capability=(9, 0), group_size=128, in_features=4096, m=16,
    )  # fmt: skip
    spec = quant.TABLE.spec("cuda")
    assert spec.serves(facts) is None
    assert "M <= 16" in spec.serves(replace(facts, m=17))
    assert spec.serves(replace(facts, m=None)) is None  # under torch.compile: checked at launch
    assert "w4a16 only" in spec.serves(replace(facts, scheme="w8a16"))
    assert "multiples of 32" in spec.serves(replace(facts, group_size=48))
    assert "CUDA tensors" in spec.serves(replace(facts, device="cpu"))
    # auto never reaches cuda while triton serves (cuda is unverified on a GPU so far)
    assert quant.TABLE.names().index("triton") < quant.TABLE.names().index("cuda")


def test_auto_rule_cuda_clause(monkeypatch):
    """auto takes cuda first for 1 <= M <= CUDA_AUTO_MAX_M where cuda serves (0 today: never);
    MILLKERNELS_BACKEND overrides it."""
    from millkernels.ops.quant import capabilities

    facts = QuantCall(
        op="matmul", scheme="w4a16", device="cuda", dtype="float16",
        capability=(9, 0), group_size=128, in_features=4096, m=1,
    )  # fmt: skip
    assert capabilities.CUDA_AUTO_MAX_M == 0 and not capabilities.cuda_first(facts)
    monkeypatch.setattr(capabilities, "CUDA_AUTO_MAX_M", 16)

    class Served:  # a table where every backend serves; select: the first, triton
        family = "quant"

        def reason(self, name, call):
            return None

        def select(self, backend, call, op):
            return "triton" if backend == "auto" else backend

    monkeypatch.setattr(capabilities, "TABLE", Served())
    assert capabilities.cuda_first(facts) and capabilities.cuda_first(replace(facts, m=16))
    assert not capabilities.cuda_first(replace(facts, m=17))
    assert not capabilities.cuda_first(replace(facts, m=0))  # empty x: the reference's job
    assert not capabilities.cuda_first(replace(facts, m=None))
    assert capabilities.resolve(facts, "auto") == "cuda"
    monkeypatch.setenv("MILLKERNELS_BACKEND", "triton")
    assert capabilities.resolve(facts, "auto") == "triton"


@pytest.mark.native
def test_cuda_backend_refuses_cpu_tensors():
    qw = quant.quantize(torch.randn(16, 64), "w4a16", group_size=32)
    with pytest.raises(BackendUnavailable, match="cuda"):
        quant.matmul(torch.randn(1, 64).half(), qw, backend="cuda")


def _paths(m):
    return ["auto", "mma", "pipe", "wide", "fma"] if m <= 2 else ["auto", "mma", "pipe", "wide"]


@pytest.mark.native
@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9, 13, 16])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "group_size,symmetric", [(32, False), (64, False), (128, True), (-1, False)]
)
def test_cuda_w4a16_gpu(m, dtype, group_size, symmetric):
    """Both kernel paths, M across the 8/16-row mma variants, N = 136 (a partial strip),
    through the public API (auto) and the raw binding with poisoned outputs."""
    from millkernels.ops.quant import cuda
    from millkernels.testing import poison

    k, n = 1024, 136
    qw = quant.quantize(
        torch.randn(n, k, device="cuda"), "w4a16", group_size=group_size, symmetric=symmetric
    )
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    assert _reason(x, qw) is None
    _check(quant.matmul(x, qw, backend="cuda"), x, qw)
    repacked, scales_p, zeros_p = cuda.prepare(qw.qweight, qw.scales, qw.zeros, k, n)
    for path in _paths(m):
        out = poison(torch.empty(m, n, dtype=dtype, device="cuda"))
        _c().w4a16_small_m(
            **_views(x=x, repacked=repacked, scales=scales_p.to(dtype), zeros=zeros_p, bias=None,
                     out=out, workspace=None, counters=None),
            group=qw.group_size, split=1, path=cuda.PATHS[path],
        )  # fmt: skip
        _check(out, x, qw)


@pytest.mark.native
@pytest.mark.gpu
@pytest.mark.parametrize("split", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "m,path",
    [(5, "mma"), (16, "mma"), (1, "fma"), (2, "fma"), (1, "pipe"), (16, "pipe"), (3, "wide"),
     (16, "wide")],
)  # fmt: skip
def test_cuda_w4a16_split_and_bias_gpu(split, m, path):
    """One launch reduces the K split in the kernel and adds the bias; the cached counters are
    back to 0 afterwards; a second call on the same inputs is bitwise identical (fixed-order
    sum, whatever order the blocks arrive in)."""
    from millkernels.ops.quant import cuda

    k, n = 4096, 200
    qw = quant.quantize(torch.randn(n, k, device="cuda"), "w4a16", group_size=128)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)

    def run():
        return cuda.matmul(
            x, qw.qweight, qw.scales, qw.zeros, bias, group_size=128, n=n, split=split, path=path
        )

    out = run()
    _check(out, x, qw, bias)
    assert torch.equal(run(), out)
    if split > 1:
        _, counters = cuda.get_workspace(n, split, x.device)
        assert int(counters.abs().sum()) == 0


@pytest.mark.native
@pytest.mark.gpu
@pytest.mark.parametrize("m,path", [(3, 2), (16, 2), (2, 1), (3, 3), (16, 3), (5, 4), (16, 4)])
def test_cuda_w4a16_split_workspace_poisoned_gpu(m, path):
    """Raw binding, poisoned out and workspace: every block stores rows < M of its partial tile
    (rows >= M stay NaN), the partials sum to the product, `out` is complete (bias added) and
    the counters are 0 again."""
    from millkernels.ops.quant import cuda
    from millkernels.testing import poison

    k, n, split = 2048, 72, 3  # 16 units of 4 chunks over 3 splits: uneven ranges
    strips = cuda.padded_n(n) // 32
    qw = quant.quantize(torch.randn(n, k, device="cuda"), "w4a16", group_size=128)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    bias = torch.randn(n, device="cuda", dtype=torch.float16)
    repacked, scales_p, zeros_p = cuda.prepare(qw.qweight, qw.scales, qw.zeros, k, n)
    out = poison(torch.empty(m, n, dtype=x.dtype, device="cuda"))
    ws = poison(torch.empty(strips, split, 512, device="cuda"))
    counters = torch.zeros(strips, dtype=torch.int32, device="cuda")
    _c().w4a16_small_m(
        **_views(x=x, repacked=repacked, scales=scales_p, zeros=zeros_p, bias=bias, out=out,
                 workspace=ws, counters=counters),
        group=128, split=split, path=path,
    )  # fmt: skip
    _check(out, x, qw, bias)
    assert int(counters.abs().sum()) == 0
    assert torch.isfinite(ws[:, :, : 32 * m]).all() and torch.isnan(ws[:, :, 32 * m :]).all()
    # workspace[strip, s, r * 32 + c] = partial s of out[r, 32 * strip + c]
    parts = ws[:, :, : 32 * m].reshape(strips, split, m, 32).permute(1, 2, 0, 3)
    _check(parts.reshape(split, m, -1)[:, :, :n].sum(0).to(x.dtype), x, qw)


@pytest.mark.native
@pytest.mark.gpu
@pytest.mark.parametrize("path", ["mma", "fma", "pipe", "wide"])
def test_cuda_w4a16_split_loop_and_empty_splits_gpu(path):
    """Many launches on the same cached workspace (a counter not reset breaks the next one),
    fresh inputs each time; split = K/32 leaves some blocks without K units (they still arrive)."""
    from millkernels.ops.quant import cuda

    n = 100
    for k, split in [(1024, 3), (256, 8)]:  # (256, 8): 2 units of 4 chunks, 6 empty splits
        qw = quant.quantize(torch.randn(n, k, device="cuda"), "w4a16", group_size=128)
        bias = torch.randn(n, device="cuda", dtype=torch.float16)
        for i in range(12):
            x = torch.randn(1 + i % 2, k, device="cuda", dtype=torch.float16)
            out = cuda.matmul(x, qw.qweight, qw.scales, qw.zeros, bias, group_size=128, n=n,
                              split=split, path=path)  # fmt: skip
            _check(out, x, qw, bias)


@pytest.mark.native
@pytest.mark.gpu
@pytest.mark.parametrize("warm_capture_stream", [False, True])
def test_cuda_w4a16_split_cuda_graph_gpu(warm_capture_stream):
    """Captured into a CUDA graph (with a fresh in-pool workspace, or the capture stream's
    cached one) and replayed twice with new inputs: each replay is right (counters start at 0)."""
    from millkernels.ops.quant import cuda

    k, n, m, split = 2048, 96, 4, 4
    qw = quant.quantize(torch.randn(n, k, device="cuda"), "w4a16", group_size=64)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

    def run():
        return cuda.matmul(x, qw.qweight, qw.scales, qw.zeros, bias, group_size=64, n=n,
                           split=split)  # fmt: skip

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        run()  # warm-up: repack cache (and, on `s`, the workspace cache)
    torch.cuda.current_stream().wait_stream(s)
    cached = len(cuda._WORKSPACES)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s if warm_capture_stream else None):
        out = run()
    assert len(cuda._WORKSPACES) == cached  # nothing allocated in the graph's pool is cached
    for _ in range(2):
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        _check(out, x, qw, bias)


@pytest.mark.native
@pytest.mark.gpu
def test_cuda_w4a16_split_two_streams_gpu():
    """Two streams at once on the same shape use separate cached workspaces."""
    from millkernels.ops.quant import cuda

    k, n, split = 4096, 64, 8
    qw = quant.quantize(torch.randn(n, k, device="cuda"), "w4a16", group_size=128)
    xs = [torch.randn(2, k, device="cuda", dtype=torch.float16) for _ in range(2)]
    streams = [torch.cuda.Stream() for _ in range(2)]
    outs: list[list[torch.Tensor]] = [[], []]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    for _ in range(20):
        for i, s in enumerate(streams):
            with torch.cuda.stream(s):
                outs[i].append(cuda.matmul(xs[i], qw.qweight, qw.scales, qw.zeros, None,
                                           group_size=128, n=n, split=split))  # fmt: skip
    torch.cuda.synchronize()
    pairs = []
    for s in streams:
        with torch.cuda.stream(s):
            pairs.append(cuda.get_workspace(n, split, xs[0].device))
    assert pairs[0][0].data_ptr() != pairs[1][0].data_ptr()
    for i in range(2):
        for out in outs[i]:
            _check(out, xs[i], qw)
        assert torch.equal(outs[i][0], outs[i][-1])


@pytest.mark.parametrize(
    "n,k,want",
    [(4096, 4096, 2), (1024, 4096, 8), (14336, 4096, 1), (4096, 14336, 2), (8192, 256, 1),
     (32, 8192, 16)],
)  # fmt: skip
def test_choose_split(monkeypatch, n, k, want):
    """About 2 blocks (32-column strips) per SM on a 132-SM H100, at least 8 chunks of 32 per
    split (one per warp), at most 16 splits."""
    from millkernels import runtime
    from millkernels.ops.quant import cuda

    monkeypatch.setattr(runtime, "sm_count", lambda index: 132)
    split = cuda.choose_split(4, n, k, torch.device("cpu"))
    assert split == want
    assert split * 8 * cuda.CHUNK <= k or split == 1


def test_choose_split_wide_blocks(monkeypatch):
    """The wide path's blocks hold two strips: half as many blocks, so twice the split where
    the SMs are not yet full (4096 x 4096: 64 blocks -> split 4, not 2)."""
    from millkernels import runtime
    from millkernels.ops.quant import cuda

    monkeypatch.setattr(runtime, "sm_count", lambda index: 132)
    assert cuda.choose_split(4, 4096, 4096, torch.device("cpu"), cuda.WIDE_STRIPS) == 4
    assert cuda.choose_split(4, 4096 + 32, 4096, torch.device("cpu"), 2) == 4  # 65 blocks
    assert cuda.choose_split(4, 14336, 4096, torch.device("cpu"), 2) == 2  # 224 blocks (448: 1)


def test_cuda_matmul_rejects_unknown_path_and_cpu_x():
    from millkernels.ops.quant import cuda

    qw = quant.quantize(torch.randn(16, 64), "w4a16", group_size=32)
    with pytest.raises(ValueError, match="path"):
        cuda.matmul(torch.randn(1, 64).half(), qw.qweight, qw.scales, qw.zeros, None,
                    group_size=32, n=16, path="tensor")  # fmt: skip
    with pytest.raises(ValueError, match="x: expected a CUDA tensor"):
        cuda.matmul(torch.randn(1, 64).half(), qw.qweight, qw.scales, qw.zeros, None,
                    group_size=32, n=16, split=2)  # fmt: skip


@pytest.mark.native
@pytest.mark.gpu
def test_cuda_matmul_rejects_bad_split_gpu():
    from millkernels.ops.quant import cuda

    qw = quant.quantize(torch.randn(16, 64, device="cuda"), "w4a16", group_size=32)
    x = torch.randn(1, 64, device="cuda").half()
    for split in (0, 3):  # K/32 = 2
        with pytest.raises(ValueError, match="split"):
            cuda.matmul(x, qw.qweight, qw.scales, qw.zeros, None, group_size=32, n=16,
                        split=split)  # fmt: skip


def test_workspace_cache_policy(monkeypatch):
    """get_workspace: one pair per (device, stream, strips, split), kept; under graph capture
    without a cached pair, a fresh pair that is not cached (the GPU calls are stubbed)."""
    from millkernels.ops.quant import cuda

    stream = {"handle": 11}
    capturing = {"on": False}
    monkeypatch.setattr(cuda, "_WORKSPACES", {})
    monkeypatch.setattr(
        torch.cuda, "current_stream", lambda index: type("S", (), {"cuda_stream": stream["handle"]})
    )
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing["on"])
    monkeypatch.setattr(
        cuda, "new_workspace", lambda n, split, device: (torch.empty(0), torch.zeros(0))
    )
    dev = torch.device("cuda", 0)
    a = cuda.get_workspace(100, 4, dev)
    assert cuda.get_workspace(120, 4, dev) is a  # same strips (4), split, stream
    assert cuda.get_workspace(100, 2, dev) is not a
    assert cuda.get_workspace(200, 4, dev) is not a
    stream["handle"] = 12
    b = cuda.get_workspace(100, 4, dev)
    assert b is not a  # another stream: its own pair
    assert cuda.get_workspace(100, 4, torch.device("cuda", 1)) is not b
    capturing["on"] = True
    assert cuda.get_workspace(100, 4, dev) is b  # cached pair of the capture stream
    stream["handle"] = 13
    fresh = cuda.get_workspace(100, 4, dev)
    assert fresh is not cuda.get_workspace(100, 4, dev)  # not cached while capturing
    assert len(cuda._WORKSPACES) == 5


@pytest.mark.native
@pytest.mark.gpu
@pytest.mark.parametrize("k,n", [(64, 1), (96, 33), (1024, 136)])
def test_cuda_repack_matches_reference_gpu(k, n):
    from millkernels.ops.quant import cuda
    from millkernels.testing import poison

    canonical = torch.randint(-(2**31), 2**31, (k // 8, n), dtype=torch.int32, device="cuda")
    repacked = poison(torch.empty(cuda.padded_n(n) // 32, 4 * k, dtype=torch.int32, device="cuda"))
    _c().w4_repack(**_views(canonical=canonical, repacked=repacked), k=k, n=n)
    assert torch.equal(repacked.cpu(), cuda.repack_reference(canonical.cpu(), k, n))


@pytest.mark.native
@pytest.mark.gpu
def test_cuda_repack_cache_follows_in_place_changes():
    from millkernels.ops.quant import cuda

    qw = quant.quantize(torch.randn(64, 256, device="cuda"), "w4a16", group_size=64)
    x = torch.randn(2, 256, device="cuda", dtype=torch.float16)
    first = quant.matmul(x, qw, backend="cuda")
    qw.qweight.copy_(quant.quantize(torch.randn(64, 256, device="cuda"), "w4a16",
                                    group_size=64).qweight)  # fmt: skip
    again = quant.matmul(x, qw, backend="cuda")
    assert not torch.equal(first, again)
    ref = x.float() @ qw.dequantize().t()
    assert (again.float() - ref).abs().max() <= 1e-2 * ref.abs().max()
    assert cuda.prepare(qw.qweight, qw.scales, qw.zeros, 256, 64)[0].shape == (2, 1024)


def _reason(x, qw):
    return quant.TABLE.reason("cuda", api.call_facts(x, qw.scheme, qw.group_size, qw.in_features))


def _check(out, x, qw, bias=None):
    """Output rounding (half an ulp, a full one allowed) plus fp32 accumulation slack."""
    w = qw.dequantize()
    ref = x.float() @ w.t() + (0 if bias is None else bias.float())
    bound = 2.0**-7 * ref.abs() + 2.0**-12 * (x.float().abs() @ w.abs().t()) + 1e-6
    err = (out.float() - ref).abs()
    assert out.dtype == x.dtype and (err <= bound).all(), f"max err {err.max():.3g}"


# --- A CPU model of csrc/quant/w4a16.cu's index formulas (the CUDA code runs only above) ---
#
# The kernel's per-lane formulas are mirrored line by line below (decode, which word and
# which register feeds which fragment slot, where each accumulator lands); the mma itself is
# computed from the PTX ISA's fragment layout of mma.m16n8k16 .f16/.bf16 (section 9.7.14.5.8),
# written independently of the kernel. A wrong lane/row/column formula or K permutation in
# the kernel's scheme shows up as a mismatch with x @ dequantize(W)^T.

_MAGIC = {"f16": (0x64006400, 0xE400E400), "bf16": (0x43004300, 0xC300C300)}
_G = np.arange(32) >> 2  # groupID of each lane
_T4 = np.arange(32) & 3  # threadID_in_group


def _ptx_a(i):
    """(row, col) in the 16x16 A of element a_i of each lane."""
    row = _G + (0 if (i < 2 or 4 <= i < 6) else 8)
    return row, _T4 * 2 + (i & 1) + (8 if i >= 4 else 0)


def _ptx_b(i):
    """(row, col) in the 16x8 B of element b_i of each lane."""
    return _T4 * 2 + (i & 1) + (8 if i >= 2 else 0), _G


def _ptx_c(i):
    """(row, col) in the 16x8 C/D of element c_i of each lane."""
    return _G + (8 if i >= 2 else 0), _T4 * 2 + (i & 1)


def _ptx_mma(a_regs, b_regs):
    """D = A @ B from per-lane registers: a_regs (32, 4, 2), b_regs (32, 2, 2) -> (32, 4)."""
    a = np.full((16, 16), np.nan)
    b = np.full((16, 8), np.nan)
    for i in range(8):
        a[_ptx_a(i)] = a_regs[:, i // 2, i % 2]
    for i in range(4):
        b[_ptx_b(i)] = b_regs[:, i // 2, i % 2]
    assert not np.isnan(a).any() and not np.isnan(b).any()  # every slot written once
    d = a @ b
    return np.stack([d[_ptx_c(i)] for i in range(4)], axis=1)


def _halves(bits, dtype):
    """The two 16-bit halves of uint32 words as float64 (low, high)."""
    lo, hi = (bits & 0xFFFF).astype(np.uint16), (bits >> 16).astype(np.uint16)
    if dtype == "f16":
        return lo.view(np.float16).astype(np.float64), hi.view(np.float16).astype(np.float64)
    f = [(v.astype(np.uint32) << 16).view(np.float32).astype(np.float64) for v in (lo, hi)]
    return f[0], f[1]


def _decode_pair(word, p, neg_zero, dtype):
    """decode_pair<T>: lop3((word >> 4p), 0x000F000F, magic), then fma(., 1, neg_zero)."""
    magic, _ = _MAGIC[dtype]
    lo, hi = _halves(((word >> np.uint32(4 * p)) & np.uint32(0x000F000F)) | np.uint32(magic), dtype)
    zlo, zhi = _halves(neg_zero, dtype)
    return np.stack([lo + zlo, hi + zhi], axis=-1)  # exact small integers: fma rounds nothing


def _unit_chunks(cpg):
    """unit_chunks(): chunks per unit (the scale is applied once per unit)."""
    return 4 if cpg % 4 == 0 else (2 if cpg % 2 == 0 else 1)


_WARPS, _THREADS, _WS_TILE = 8, 256, 512  # kWarps, kWarps * 32, kW4WorkspaceTile


def _emulate(x, qw, dtype, path, split=1, bias=None):
    """The kernel for every (strip, split) block, warp by warp, then its epilogue: returns
    (out (M, N), workspace (strips, split, 512), NaN where no block stores)."""
    from millkernels.ops.quant import cuda

    m, k = x.shape
    n, group = qw.out_features, qw.group_size
    npad = cuda.padded_n(n)
    strips = npad // 32
    rep = cuda.repack_reference(qw.qweight, k, n).numpy().view(np.uint32)
    rep = rep.reshape(strips, k // 32, 32, 4)  # [strip][chunk][lane][tile]
    scales = cuda._pad_columns(qw.scales, npad, torch.float32).numpy().astype(np.float64)
    zeros = None if qw.zeros is None else cuda._pad_columns(qw.zeros, npad, torch.uint8).numpy()
    xb = np.zeros((16, k), dtype=np.float64)
    xb[:m] = x.double().numpy()
    bias64 = None if bias is None else bias.double().numpy()
    _, neg_base = _MAGIC[dtype]
    mt = (1 if m <= 1 else 2) if path == "fma" else (8 if m <= 8 else 16)  # launch_m
    # launch_typed / kernel prologue
    kchunks, cpg = k // 32, group // 32
    unit = _unit_chunks(cpg)
    units_per_group, units = cpg // unit, kchunks // unit
    per_split = -(-units // split)
    out = np.full((m, n), np.nan)
    ws = np.full((strips * split * _WS_TILE,), np.nan)  # flat, as the kernel indexes it
    mine_of = {}  # (strip, y) -> the block's `mine`, indexed by idx
    for strip in range(strips):
        col0 = strip * 32 + _G  # + 8 * tile: the lane's columns
        for y in range(split):
            red = np.full((_WARPS, mt, 32), np.nan)  # red[warp][row][col]
            for warp in range(_WARPS):
                acc = np.zeros((32, 4, 16))  # [lane][tile][accumulator j]
                u_end = min(y * per_split + per_split, units)
                for u in range(y * per_split + warp, u_end, _WARPS):
                    g = u // units_per_group
                    z = 8 if zeros is None else zeros[g, col0[:, None] + 8 * np.arange(4)]
                    nz = np.uint32(neg_base) | (np.asarray(z, dtype=np.uint32) * np.uint32(0x10001))
                    nz = np.broadcast_to(nz, (32, 4))
                    gacc = np.zeros((32, 4, 16))
                    for i in range(unit):
                        c = u * unit + i  # wp + i * 32, xp + i * kChunk
                        words = rep[strip, c]  # (32 lanes, 4 tiles)
                        kx = c * 32 + 8 * _T4[:, None] + np.arange(8)  # the lane's x offsets
                        if path == "mma":
                            for s_ in range(2):
                                for tt in range(2):
                                    w0, w1 = words[:, 2 * tt], words[:, 2 * tt + 1]
                                    n0, n1 = nz[:, 2 * tt], nz[:, 2 * tt + 1]
                                    a = np.stack([_decode_pair(w0, 2 * s_, n0, dtype),
                                                  _decode_pair(w1, 2 * s_, n1, dtype),
                                                  _decode_pair(w0, 2 * s_ + 1, n0, dtype),
                                                  _decode_pair(w1, 2 * s_ + 1, n1, dtype)],
                                                 axis=1)  # fmt: skip
                                    for r in range(mt // 8):
                                        xv = xb[(_G + 8 * r)[:, None], kx].reshape(32, 4, 2)
                                        d = _ptx_mma(a, xv[:, 2 * s_ : 2 * s_ + 2])
                                        gacc[:, 2 * tt, 2 * r] += d[:, 0]
                                        gacc[:, 2 * tt, 2 * r + 1] += d[:, 1]
                                        gacc[:, 2 * tt + 1, 2 * r] += d[:, 2]
                                        gacc[:, 2 * tt + 1, 2 * r + 1] += d[:, 3]
                        else:
                            for tile in range(4):
                                for p in range(4):
                                    f = _decode_pair(words[:, tile], p, nz[:, tile], dtype)
                                    for r in range(mt):
                                        gacc[:, tile, r] += xb[r, kx[:, 2 * p]] * f[:, 0]
                                        gacc[:, tile, r] += xb[r, kx[:, 2 * p + 1]] * f[:, 1]
                    acc += gacc * scales[g, col0[:, None] + 8 * np.arange(4)][:, :, None]
                for tile in range(4):
                    col = 8 * tile + _G  # (32 lanes,)
                    if path == "mma":  # red[warp][8 (j / 2) + 2 t4 + j % 2][col] = acc[tile][j]
                        for j in range(mt // 4):
                            red[warp, 8 * (j // 2) + 2 * _T4 + j % 2, col] = acc[:, tile, j]
                    else:  # the 4 lanes of a column summed by shuffles; t4 == 0 stores
                        for r in range(mt):
                            v = acc[:, tile, r].reshape(8, 4).sum(1)  # lanes 4 gid .. 4 gid + 3
                            red[warp, r, 8 * tile + np.arange(8)] = v
            # epilogue: thread t owns idx = t + i * kThreads
            kper = -(-mt * 32 // _THREADS)
            mine = np.zeros(kper * _THREADS)
            for i in range(kper):
                idx = np.arange(_THREADS) + i * _THREADS
                ok = idx < mt * 32
                for wi in range(_WARPS):
                    mine[idx[ok]] += red[wi, idx[ok] // 32, idx[ok] % 32]
            assert not np.isnan(mine).any()  # every red slot a thread reads was written
            mine_of[strip, y] = mine
            if split > 1:
                tile0 = strip * split * _WS_TILE
                idx = np.arange(kper * _THREADS)
                st = (idx < mt * 32) & (idx // 32 < m)
                ws[tile0 + y * _WS_TILE + idx[st]] = mine[idx[st]]
        # the last block of the strip to arrive: any y (its own partial from registers)
        for last in range(split):
            mine = mine_of[strip, last].copy()
            idx = np.arange(mine.size)
            st = (idx < mt * 32) & (idx // 32 < m)
            if split > 1:
                tile0 = strip * split * _WS_TILE
                total = np.zeros(mine.size)
                for s_ in range(split):
                    own = mine if s_ == last else ws[tile0 + s_ * _WS_TILE + idx]
                    total[st] += own[st]
                mine = total
            r, col = idx // 32, strip * 32 + idx % 32
            st &= col < n
            b = 0.0 if bias64 is None else bias64[col[st]]
            got = mine[st] + b
            if last > 0:
                np.testing.assert_array_equal(got, out[r[st], col[st]])  # arrival order
            out[r[st], col[st]] = got
    return out, ws.reshape(strips, split, _WS_TILE)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize(
    "m,path,group_size,symmetric,split",
    [(1, "mma", 32, False, 1), (5, "mma", 64, True, 1), (16, "mma", 32, False, 1),
     (9, "mma", -1, False, 1), (1, "fma", 32, False, 1), (2, "fma", 64, True, 1),
     (3, "mma", 32, False, 2), (16, "mma", 64, False, 3), (9, "mma", -1, True, 3),
     (1, "fma", 32, False, 4), (2, "fma", -1, False, 2)],
)  # fmt: skip
def test_kernel_index_model(dtype, m, path, group_size, symmetric, split):
    """K = 384: 12 chunks (units of 1, 2 or 4 chunks; warps striding by 8 units; splits of
    uneven length, some empty); N = 40: two strips, the second partial; bias with split > 1."""
    k, n = 384, 40
    tdt = torch.float16 if dtype == "f16" else torch.bfloat16
    qw = quant.quantize(torch.randn(n, k), "w4a16", group_size=group_size, symmetric=symmetric)
    x = torch.randn(m, k).to(tdt)
    bias = torch.randn(n).to(tdt) if split > 1 else None
    ref = x.double() @ qw.dequantize(torch.float64).t()
    if bias is not None:
        ref += bias.double()
    got, ws = _emulate(x, qw, dtype, path, split, bias)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-9, atol=1e-9)
    if split > 1:  # rows < M of every (strip, split) tile stored, nothing else
        assert not np.isnan(ws[:, :, : 32 * m]).any() and np.isnan(ws[:, :, 32 * m :]).all()


def _pipe_schedule(k, group, split, warp, y):
    """w4a16_pipe_kernel's loop for one warp of block (strip, y), as the C++ computes it (no
    division in the loop): the units its iterations multiply, the group index it uses, and the
    unit each read finds in its stage (copies: prologue units 0..2, refill after the read)."""
    stages, warps = 3, _WARPS
    cpg = group // 32
    unit = _unit_chunks(cpg)
    upg, units = cpg // unit, (k // 32) // unit
    per_split = -(-units // split)  # launch_typed
    u_begin = y * per_split + warp
    u_end = min(y * per_split + per_split, units)
    count = (u_end - u_begin + warps - 1) // warps if u_end > u_begin else 0
    g, ug = u_begin // upg, u_begin - (u_begin // upg) * upg
    g_step, ug_step = warps // upg, warps - (warps // upg) * upg
    slot = [None] * stages  # the unit whose copy a stage holds
    fetch = u_begin  # wp's unit
    for s_ in range(stages):
        if s_ < count:
            slot[s_], fetch = fetch, fetch + warps
    out, stage = [], 0
    for j in range(count):
        out.append((slot[stage], g))
        if j + stages < count:
            slot[stage], fetch = fetch, fetch + warps
        stage = 0 if stage == stages - 1 else stage + 1
        g, ug = g + g_step, ug + ug_step
        if ug >= upg:
            g, ug = g + 1, ug - upg
    return out


@pytest.mark.parametrize("group", [32, 64, 96, 128, 160, 384, 1024])
@pytest.mark.parametrize("split", [1, 2, 3, 5])
def test_pipe_kernel_schedule_model(group, split):
    """Every warp of the pipe kernel multiplies the units the mma kernel's warp does
    (u_begin, u_begin + 8, ...), each with its group u // units_per_group and the data that
    was copied for it."""
    k = 3840  # 120 chunks: a multiple of every group above (1024 aside: K = 4096 there)
    k = 4096 if 4096 % group == 0 and 3840 % group else k
    cpg = group // 32
    unit = _unit_chunks(cpg)
    upg, units = cpg // unit, (k // 32) // unit
    per_split = -(-units // split)
    for y in range(split):
        for warp in range(_WARPS):
            want = range(y * per_split + warp, min(y * per_split + per_split, units), _WARPS)
            got = _pipe_schedule(k, group, split, warp, y)
            assert [u for u, _ in got] == list(want)
            assert [g for _, g in got] == [u // upg for u in want]


def test_repack_reference_layout():
    """repack_reference against the layout's definition, word by word (csrc/quant/w4a16.h)."""
    from millkernels.ops.quant import cuda

    k, n = 64, 40
    canonical = torch.randint(-(2**31), 2**31, (k // 8, n), dtype=torch.int32)
    rep = cuda.repack_reference(canonical, k, n).numpy().view(np.uint32).reshape(2, 2, 32, 4)
    can = canonical.numpy().view(np.uint32)
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    for strip, chunk, lane, tile in np.ndindex(rep.shape):
        col = 32 * strip + 8 * tile + lane // 4
        src = int(can[4 * chunk + lane % 4, col]) if col < n else 0
        want = sum(((src >> (4 * e)) & 0xF) << (4 * p) for p, e in enumerate(order))
        assert int(rep[strip, chunk, lane, tile]) == want
