# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # millkernels quickstart
#
# The op families (memory probes, attention, quantised matmul, collectives), each checked
# against its PyTorch reference, then a small benchmark run plotted.
#
# On a GPU the ops run their Triton / CUDA kernels. Without a GPU they run on the CPU: Triton
# kernels under the interpreter (`TRITON_INTERPRET=1`, set below before anything imports
# Triton), at tiny sizes. CPU timings are a smoke test, not a measurement.

# %%
# ruff: noqa: E402  (the interpreter switch must come before the first kernel import)
import os

import torch

GPU = torch.cuda.is_available()
if not GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first kernel import
DEVICE = "cuda" if GPU else "cpu"
torch.manual_seed(0)

from millkernels import runtime

info = runtime.summary()
print(f"millkernels {info['version']}, torch {info['torch']}, triton {info['triton']}")
print(f"GPUs: {[g['name'] for g in info['gpus']] or 'none (CPU, Triton interpreter)'}")
print(f"native extension built: {info['native']['built']}")

# %% [markdown]
# ## Backends per family
# Each family has a capability table; `backend="auto"` takes the first backend that can serve
# a call, and a named backend that cannot raises with the reason.

# %%
from millkernels.ops import tables

for family, table in tables().items():
    print(f"{family}:")
    for spec in table.backends:
        reason = spec.available()
        print(f"  {spec.name:<10} {'ok' if reason is None else 'unavailable: ' + reason}")

# %% [markdown]
# ## Memory probes
# `mem_copy`, `mem_read` (a checksum of the words, so loads can't be skipped) and the pattern
# test, which finds a flipped bit.

# %%
from millkernels import probes

words = (64 << 20 if GPU else 64 << 10) // 4
src = torch.randint(-(2**31), 2**31 - 1, (words,), dtype=torch.int32, device=DEVICE)
dst = torch.empty_like(src)
probes.mem_copy(dst, src)
checksum = int(probes.mem_read(src)) % 2**64
expected = int((src.to(torch.int64) & 0xFFFFFFFF).sum()) % 2**64
print(f"copy equal: {torch.equal(dst, src)}; checksum matches: {checksum == expected}")

pattern_backend = "auto" if GPU else "reference"
report = probes.pattern_test(dst, "random", seed=7, backend=pattern_backend)
print(f"clean pass: {report.mismatches} mismatches")
dst[words // 2] ^= 1 << 3
found = probes.pattern_check(dst, "random", seed=7, backend=pattern_backend)
print(f"after one flipped bit: {found.mismatches} mismatch at word {found.first_bad_index}")

# %% [markdown]
# ## Attention
# `attention(q, k, v)` with q, k, v shaped (batch, seqlen, heads, head_dim), against PyTorch's
# `scaled_dot_product_attention`.

# %%
import torch.nn.functional as F


def try_import(name):
    """The module, or None with the reason printed (families land one by one)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        print(f"{name} is not available here: {exc}")
        return None


attn = try_import("millkernels.ops.attention")
if attn is not None:
    dtype = torch.bfloat16 if GPU else torch.float16
    b, s, h, d = (2, 1024, 16, 128) if GPU else (1, 32, 2, 32)
    q, k, v = (torch.randn(b, s, h, d, device=DEVICE, dtype=dtype) for _ in range(3))
    out = attn.attention(q, k, v, causal=True)
    ref = F.scaled_dot_product_attention(
        *(t.transpose(1, 2).float() for t in (q, k, v)), is_causal=True
    ).transpose(1, 2)
    print(
        f"attention {tuple(out.shape)} {out.dtype}: max |out - fp32 SDPA| = "
        f"{(out.float() - ref).abs().max().item():.2e}"
    )

# %% [markdown]
# `attention_decode`: one new query token per sequence over a paged KV cache, where row i of
# `block_table` lists the cache blocks holding sequence i (in any order).

# %%
if attn is not None and hasattr(attn, "attention_decode"):
    batch, hq, hk, d, seqlen, block = (8, 32, 8, 128, 1000, 256) if GPU else (2, 4, 2, 32, 40, 16)
    per_seq = -(-seqlen // block)
    k_cache = torch.randn(batch * per_seq, block, hk, d, device=DEVICE, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(batch * per_seq, device=DEVICE).view(batch, per_seq).to(torch.int32)
    lens = torch.full((batch,), seqlen, dtype=torch.int32, device=DEVICE)
    qd = torch.randn(batch, hq, d, device=DEVICE, dtype=dtype)
    out = attn.attention_decode(qd, k_cache, v_cache, table, lens)
    kk, vv = (c[table.long()].reshape(batch, -1, hk, d)[:, :seqlen] for c in (k_cache, v_cache))
    ref = F.scaled_dot_product_attention(
        qd[:, :, None].float(),
        kk.transpose(1, 2).float(),
        vv.transpose(1, 2).float(),
        enable_gqa=True,
    )[:, :, 0]
    print(
        f"attention_decode {tuple(out.shape)}: max |out - fp32 SDPA over the gathered cache| = "
        f"{(out.float() - ref).abs().max().item():.2e}"
    )

# %% [markdown]
# ## Quantised matmul
# `quantize(w, "w4a16")` packs a weight to 4 bits per group of 128 inputs; `matmul(x, qw)` is
# `x @ W^T`. The SQNR of the dequantised weight measures the quantisation error itself.

# %%
quant = try_import("millkernels.quant")
if quant is not None:
    from millkernels.testing import sqnr_db

    dtype = torch.bfloat16 if GPU else torch.float16
    n, kdim, m = (4096, 4096, 16) if GPU else (64, 256, 3)
    w = torch.randn(n, kdim, device=DEVICE, dtype=dtype)
    x = torch.randn(m, kdim, device=DEVICE, dtype=dtype)
    for scheme in ("w4a16", "w8a16"):
        qw = quant.quantize(w, scheme, group_size=128)
        y = quant.matmul(x, qw)
        w_back = qw.dequantize(torch.float32).to(DEVICE)
        ref = x.float() @ w_back.T
        print(
            f"{scheme}: weight SQNR {sqnr_db(w.float(), w_back):.1f} dB, "
            f"matmul vs dequantised reference {sqnr_db(ref, y.float()):.1f} dB"
        )

# %% [markdown]
# ## Collectives
# `all_reduce` over a torch.distributed group. Here a one-rank group (gloo on the CPU, NCCL on
# a GPU); under `torchrun` the same call spans every rank.

# %%
comm = try_import("millkernels.ops.comm")
if comm is not None:
    import tempfile

    import torch.distributed as dist

    store = os.path.join(tempfile.mkdtemp(), "store")
    dist.init_process_group(
        "nccl" if GPU else "gloo", init_method=f"file://{store}", rank=0, world_size=1
    )
    try:
        t = torch.randn(1000, device=DEVICE)
        print(f"all_reduce over 1 rank returns its input: {torch.equal(comm.all_reduce(t), t)}")
    finally:
        dist.destroy_process_group()

# %% [markdown]
# ## A benchmark run
# The same harness as `millkernels bench`: every case is checked, then timed (on a GPU with
# `triton.testing.do_bench`, L2 flushed), and becomes a row with GB/s and % of the measured
# copy ceiling.

# %%
from millkernels.bench import BenchContext
from millkernels.bench.runner import run_suites
from millkernels.bench.summary import print_summary

ctx = BenchContext(device=DEVICE, quick=True, log=lambda message: None)
if not GPU:  # tiny sizes and short timing on a CPU
    ctx.options["probes.nbytes"] = 256 << 10
    ctx.rep_ms, ctx.warmup_ms = 10.0, 2.0
result = run_suites(["probes"], ctx)
rows = [r for r in result.rows if r.op in ("mem_copy", "mem_read", "mem_write")]
print_summary(rows)

# %%
import matplotlib.pyplot as plt

ops = ["mem_copy", "mem_read", "mem_write"]
backends = sorted({r.backend for r in rows})
fig, ax = plt.subplots(figsize=(8, 3.5))
width = 0.8 / max(len(backends), 1)
for i, backend in enumerate(backends):
    values = [next((r.gbps for r in rows if r.op == op and r.backend == backend), 0) for op in ops]
    ax.bar([j + i * width for j in range(len(ops))], values, width, label=backend)
ax.set_xticks([j + width * (len(backends) - 1) / 2 for j in range(len(ops))], ops)
ax.set_ylabel("GB/s")
ax.set_title(
    f"memory probes on {rows[0].device if rows else DEVICE}"
    + ("" if GPU else " (CPU smoke test, not a measurement)")
)
ax.legend()
plt.show()
