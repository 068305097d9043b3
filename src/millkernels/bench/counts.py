"""Counting work: FLOPs and bytes of common ops, and rates from a time.

Conventions: 1 GB = 1e9 B and 1 TFLOP = 1e12 FLOP; times are in microseconds. Byte counts are
the fewest bytes an op must move through device memory (each input read once, each output
written once).
"""

from __future__ import annotations

from typing import Any

_DTYPE_BYTES = {
    "fp64": 8, "float64": 8, "int64": 8, "i64": 8,
    "fp32": 4, "float32": 4, "tf32": 4, "int32": 4, "i32": 4, "u32": 4, "uint32": 4,
    "fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2, "int16": 2,
    "fp8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1, "e4m3": 1, "e5m2": 1, "int8": 1, "uint8": 1,
}  # fmt: skip

ATTENTION_DIRECTIONS = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}


def dtype_bytes(dtype: Any) -> int:
    """Bytes per element of ``dtype`` (a name such as "bf16", or a torch dtype)."""
    size = getattr(dtype, "itemsize", None)
    if isinstance(size, int):
        return size
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise ValueError(f"dtype: unknown element size for {dtype!r}")
    return _DTYPE_BYTES[name]


def matmul_flops(m: int, n: int, k: int, batch: int = 1) -> int:
    """FLOPs of ``(m x k) @ (k x n)``: one multiply and one add per term, 2*M*N*K."""
    return 2 * m * n * k * batch


def attention_flops(
    batch: int,
    heads: int,
    seq_q: int,
    seq_k: int,
    head_dim: int,
    *,
    causal: bool = False,
    direction: str = "fwd",
) -> float:
    """FLOPs of attention as FlashAttention counts them: 4*B*H*Sq*Sk*D forward (QK^T and PV),
    half when causal; backward is 2.5x forward (``direction`` "fwd", "bwd" or "fwd_bwd")."""
    if direction not in ATTENTION_DIRECTIONS:
        raise ValueError(f"direction: expected one of {sorted(ATTENTION_DIRECTIONS)}")
    fwd = 4 * batch * heads * seq_q * seq_k * head_dim
    if causal:
        fwd //= 2
    return fwd * ATTENTION_DIRECTIONS[direction]


def tensor_bytes(*tensors: Any) -> int:
    """Total bytes of the given arrays (anything with ``numel()``/``element_size()`` or
    ``nbytes``)."""
    total = 0
    for t in tensors:
        if hasattr(t, "element_size"):
            total += t.numel() * t.element_size()
        else:
            total += int(t.nbytes)
    return total


def copy_bytes(nbytes: int) -> int:
    """Bytes a copy of ``nbytes`` moves: read once plus written once."""
    return 2 * nbytes


def matmul_bytes(m: int, n: int, k: int, a: Any, b: Any = None, c: Any = None) -> int:
    """Fewest bytes of ``C = A @ B``: A and B read once, C written once (dtypes a, b, c;
    b and c default to a)."""
    b = a if b is None else b
    c = a if c is None else c
    return m * k * dtype_bytes(a) + k * n * dtype_bytes(b) + m * n * dtype_bytes(c)


def attention_bytes(
    batch: int, heads: int, seq_q: int, seq_k: int, head_dim: int, dtype: Any,
    *, kv_heads: int | None = None,
) -> int:  # fmt: skip
    """Fewest bytes of an attention forward: Q, K, V read once and O written once."""
    kv = heads if kv_heads is None else kv_heads
    elems = 2 * batch * heads * seq_q * head_dim + 2 * batch * kv * seq_k * head_dim
    return elems * dtype_bytes(dtype)


def tflops(flops: float, time_us: float) -> float:
    """TFLOP/s of ``flops`` done in ``time_us`` microseconds."""
    return flops / (time_us * 1e-6) / 1e12


def gbps(nbytes: float, time_us: float) -> float:
    """GB/s (1 GB = 1e9 B) of ``nbytes`` moved in ``time_us`` microseconds."""
    return nbytes / (time_us * 1e-6) / 1e9


def pct_of(achieved: float | None, ceiling: float | None) -> float | None:
    """``achieved`` as a percentage of ``ceiling`` (None when either is missing)."""
    if achieved is None or not ceiling:
        return None
    return 100.0 * achieved / ceiling


def ratio_to_baseline(baseline_us: float | None, time_us: float | None) -> float | None:
    """Baseline time over this time: above 1 means faster than the baseline."""
    if baseline_us is None or not time_us:
        return None
    return baseline_us / time_us
