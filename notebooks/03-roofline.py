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
# # Roofline: benchmark rows against the card's measured ceilings
#
# A roofline bounds what an op can reach by its arithmetic intensity I (FLOPs per byte of
# memory traffic): `min(peak TFLOP/s, I x bandwidth)`. Here both roofs are **measured** on this
# device by `millkernels.bench.ceilings` (a large `copy_` for bandwidth, the best
# `torch.matmul` for the compute peak), not taken from a datasheet, and every benchmark row
# that counts both FLOPs and bytes becomes a point under them.
#
# On a CPU the ceilings are the CPU's (fp32 matmul, DRAM copy) and the rows are a few torch
# ops at small sizes, measured now. Result files from GPU runs in `benchmarks/results/`
# (`benchmarks/gpu_campaign.sh`, `millkernels bench all --out ...`) carry their card's
# ceiling rows; each such card gets its own roofline below.

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import display

from millkernels.bench import BenchContext, counts, history
from millkernels.bench.results import load_rows
from millkernels.bench.rows import shape_str

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
torch.manual_seed(0)

# On a GPU the quick ceilings (256 MiB copy, one 8192^3 matmul) are enough; on a CPU the full
# ones (64 MiB copy, best of two matmul shapes) are still quick.
ctx = BenchContext(device=DEVICE, quick=GPU, log=lambda message: None, suite="roofline")
if not GPU:
    ctx.rep_ms, ctx.warmup_ms = 30.0, 5.0
ceilings = ctx.ceilings()
for c in ceilings.values():
    print(
        f"{c.name:<12} {c.value:10,.3f} {c.unit:<8} ({c.op}, {c.shape}, "
        f"median {c.timing.median_us:,.0f} us)"
    )

# %% [markdown]
# ## Rows measured now
# Matrix products from small (memory-bound) to large (compute-bound), element-wise ops and a
# softmax (memory-bound), and PyTorch's attention: each with its FLOP and minimum byte count.

# %%
dtype = torch.bfloat16 if GPU else torch.float32
dname = "bf16" if GPU else "fp32"
size = counts.dtype_bytes(dtype)
rows = []

for n in (256, 1024, 2048, 4096, 8192) if GPU else (16, 64, 128, 256, 512):
    a = torch.randn(n, n, device=DEVICE, dtype=dtype)
    b = torch.randn(n, n, device=DEVICE, dtype=dtype)
    t = ctx.measure(lambda a=a, b=b: a @ b)
    rows.append(
        ctx.row(
            op="matmul",
            shape={"M": n, "N": n, "K": n},
            dtype=dname,
            backend="torch",
            timing=t,
            flops=counts.matmul_flops(n, n, n),
            bytes=counts.matmul_bytes(n, n, n, dtype),
        )
    )

numel = (64 << 20) if GPU else (1 << 20)
x, y, z = (torch.randn(numel, device=DEVICE, dtype=dtype) for _ in range(3))
for op, fn, flops, tensors in (
    ("add", lambda: x + y, numel, 3),
    ("fma", lambda: torch.addcmul(z, x, y), 2 * numel, 4),
    ("softmax", lambda: torch.softmax(x.view(-1, 1024), dim=-1), 5 * numel, 2),
):
    t = ctx.measure(fn)
    rows.append(
        ctx.row(
            op=op,
            shape={"n": numel},
            dtype=dname,
            backend="torch",
            timing=t,
            flops=flops,
            bytes=tensors * numel * size,
            ceiling="copy",
        )
    )

bsz, heads, seq, hd = (4, 16, 2048, 128) if GPU else (1, 4, 256, 64)
q, k, v = (torch.randn(bsz, heads, seq, hd, device=DEVICE, dtype=dtype) for _ in range(3))
t = ctx.measure(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
rows.append(
    ctx.row(
        op="sdpa",
        shape={"B": bsz, "H": heads, "S": seq, "D": hd},
        dtype=dname,
        backend="torch",
        timing=t,
        flops=counts.attention_flops(bsz, heads, seq, seq, hd, causal=True),
        bytes=counts.attention_bytes(bsz, heads, seq, seq, hd, dtype),
    )
)

for r in rows:  # above 100%: the row beat the measured roof (noise on a busy CPU)
    print(
        f"{r.op:<8} {r.shape!s:<40} I={r.flops / r.bytes:8.2f} FLOP/B  "
        f"{r.tflops * 1e3:10,.2f} GFLOP/s  {r.pct_of_ceiling or 0:5.1f}% of {r.ceiling}"
    )

# %% [markdown]
# ## The roofline


# %%
def roofline(ax, rows, bandwidth_gbps, peaks, title):
    """Draw the roofs (one per compute peak) and the rows (those with FLOPs and bytes)."""
    points = [r for r in rows if r.flops and r.bytes and r.tflops]
    xs = [r.flops / r.bytes for r in points]
    lo = min([*xs, 0.05]) / 2
    hi = max([*xs, *(p * 1e3 / bandwidth_gbps * 4 for p in peaks.values())]) * 2
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    bw = bandwidth_gbps / 1e3  # TB/s: TFLOP/s = I (FLOP/B) x TB/s
    for name, peak in peaks.items():
        ax.plot(grid, [min(peak, i * bw) for i in grid], label=f"roof: {name} {peak:,.3g} TFLOP/s")
    ax.plot(
        grid,
        [i * bw for i in grid],
        color="grey",
        linestyle=":",
        linewidth=1,
        label=f"copy bandwidth {bandwidth_gbps:,.1f} GB/s",
    )
    ops = sorted({r.op for r in points})
    markers = dict(zip(ops, "osD^v<>ph*", strict=False))
    for op in ops:
        mine = [r for r in points if r.op == op]
        ax.scatter(
            [r.flops / r.bytes for r in mine],
            [r.tflops for r in mine],
            marker=markers[op],
            s=40,
            zorder=3,
            label=op,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("TFLOP/s")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")


compute = {c.name: c.value for c in ceilings.values() if c.unit == "TFLOP/s"}
fig, ax = plt.subplots(figsize=(8, 5))
device_name = rows[0].device if rows else DEVICE
roofline(
    ax,
    rows,
    ceilings["copy"].value,
    compute,
    f"{device_name}: measured roofline" + ("" if GPU else " (CPU, small sizes)"),
)
plt.show()

# %% [markdown]
# ## Stored GPU results
# Every results file in `benchmarks/results/` is grouped by device; a device whose rows include
# the `ceilings` suite's rows (`ceiling.copy`, `ceiling.matmul_*`) is drawn against its own
# measured roofs.


# %%
def repo_root() -> Path:
    here = Path.cwd().resolve()
    for p in (here, *here.parents):
        if (p / "pyproject.toml").is_file() and (p / "notebooks").is_dir():
            return p
    return here


stored = []
for path in sorted((repo_root() / "benchmarks" / "results").glob("*.jsonl")):
    try:
        stored += load_rows(path)
    except (OSError, ValueError) as exc:
        print(f"skipping {path.name}: {exc}")
by_device = {}
for r in stored:
    by_device.setdefault(r.device, []).append(r)
drawn = 0
for device, device_rows in by_device.items():
    ceiling_rows = {
        r.op.removeprefix("ceiling."): r for r in device_rows if r.op.startswith("ceiling.")
    }
    if "copy" not in ceiling_rows:
        print(f"{device}: no ceiling rows stored; run `millkernels bench all` to include them")
        continue
    peaks = {name: r.tflops for name, r in ceiling_rows.items() if r.tflops}
    fig, ax = plt.subplots(figsize=(8, 5))
    roofline(
        ax,
        [r for r in device_rows if not r.op.startswith("ceiling.")],
        ceiling_rows["copy"].gbps,
        peaks,
        f"{device}: stored results",
    )
    plt.show()
    drawn += 1
    # Rows that move bytes but count no FLOPs (memory probes) sit at intensity 0: show them as
    # a share of the copy ceiling instead.
    memory = [r for r in device_rows if r.gbps and not r.flops and not r.op.startswith("ceiling.")]
    if memory:
        latest = {r.key(): r for r in memory}  # the last stored row of each case
        fig, ax = plt.subplots(figsize=(8, 0.6 + 0.3 * len(latest)))
        labels = [f"{r.op} {r.backend} [{shape_str(r.shape)}]" for r in latest.values()]
        ax.barh(
            range(len(latest)), [100 * r.gbps / ceiling_rows["copy"].gbps for r in latest.values()]
        )
        ax.set_yticks(range(len(latest)), labels, fontsize=7)
        ax.axvline(100, color="black", linestyle="--", linewidth=1)
        ax.set_xlabel("% of the measured copy bandwidth")
        ax.set_title(f"{device}: memory-bound rows")
        plt.show()
print(f"{len(stored)} stored rows, {len(by_device)} devices, {drawn} rooflines drawn")

# %% [markdown]
# ## History of one benchmark across the stored result files
# The same plot as `python -m millkernels.bench.history benchmarks/results/*.jsonl --op
# mem_copy`: one point per stored run, median with its p20..p80 bar, labelled by commit.

# %%
files = sorted((repo_root() / "benchmarks" / "results").glob("*.jsonl"))
series = history.load_history(files, op="mem_copy") if files else {}
if series:
    fig = history.plot_history(series, title="mem_copy across stored runs", log=True)
    display(fig)
else:
    print(
        "No stored mem_copy rows in benchmarks/results/ yet (benchmarks/gpu_campaign.sh adds them)."
    )
