"""``attention_decode``: one new query token per sequence against a paged KV cache.

Layers (see DESIGN.md): :func:`attention_decode` validates its arguments and calls the custom
op ``millkernels::attention_decode`` (fake kernel registered, so ``torch.compile(fullgraph=True)``
traces through it); the op checks the values of ``block_table`` and ``cache_seqlens`` (one device
sync; skipped while a CUDA graph is being captured), picks a backend through the attention
family's capability table (:func:`decode_reason` answers for this op) and launches it.

Fast path: inside a captured CUDA graph (``torch.cuda.graph``, ``torch.compile(mode=
"reduce-overhead")``) a replay runs only the kernels: no validation, no dispatch, no sync.
"""

from __future__ import annotations

from typing import Any

import torch

from millkernels import runtime
from millkernels.ops.analysis_spec import CudaHot
from millkernels.ops.attention.api import scale_and_softcap

OP = "attention_decode"
DTYPES = (torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256
#: head_dim values the CUDA kernel is compiled for (a template per value).
CUDA_HEAD_DIMS = (64, 128, 256)
#: The CUDA kernel loads 16 bytes at a time: pointers and strides must allow it.
CUDA_ALIGN_BYTES = 16

# csrc/attention/decode.cu: `millkernels analyze --check` fails if these spill.
ANALYSIS = (CudaHot(("decode_split_kernel", "decode_combine_kernel")),)


# ---------------------------------------------------------------------------- capability


def _dtype_name(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    return {"float16": "fp16", "half": "fp16", "bfloat16": "bf16"}.get(name, name)


def _arch_number(arch: Any) -> int | None:
    """90 from (9, 0), 90, "sm_90", "sm_90a" or "9.0"; None when unknown."""
    if arch is None:
        return None
    if isinstance(arch, (tuple, list)):
        return int(arch[0]) * 10 + int(arch[1])
    if isinstance(arch, int):
        return arch
    text = str(arch).lower().removeprefix("sm_").rstrip("a")
    if "." in text:
        major, minor = text.split(".", 1)
        return int(major) * 10 + int(minor)
    return int(text) if text.isdigit() else None


def _native_decode_missing() -> str | None:
    try:
        import importlib

        native = importlib.import_module("millkernels._C")
    except ImportError as exc:
        return f"the native extension millkernels._C is not built ({exc})"
    if not hasattr(native, "attention_decode"):
        return "millkernels._C was built without the attention_decode kernel (rebuild it)"
    return None


def decode_reason(backend: str, call: dict[str, Any]) -> str | None:
    """Why ``backend`` cannot serve this ``attention_decode`` call (None: it can).

    ``call`` holds the facts ``op``, ``device`` ("cuda"/"cpu"), ``dtype`` (torch dtype or name),
    ``head_dim`` and ``arch`` (compute capability as (9, 0), 90 or "sm_90"; None on a CPU);
    optionally ``aligned16`` (False when a pointer or stride does not allow 16-byte loads).
    Availability of the backend on this machine (Triton installed, native extension built,
    a GPU present) is the family table's ``available``; this answers for the call.
    """
    device = call.get("device")
    dtype = _dtype_name(call.get("dtype"))
    head_dim = call.get("head_dim")
    if backend == "reference":
        return None
    if backend == "triton":
        if device == "cpu" and not runtime.triton_interpret():
            return "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1)"
        if device == "cuda" and runtime.triton_interpret():
            return "TRITON_INTERPRET=1 is set, so Triton cannot launch on the GPU"
        if device not in ("cpu", "cuda"):
            return f"needs CUDA (or CPU under the interpreter) tensors, got device {device!r}"
        arch = _arch_number(call.get("arch"))
        if device == "cuda" and arch is not None and arch < 80 and dtype == "bf16":
            return f"bf16 needs sm_80 or newer, this GPU is sm_{arch}"
        return None
    if backend == "cuda":
        if device != "cuda":
            return f"needs CUDA tensors, got device {device!r}"
        if dtype not in ("fp16", "bf16"):
            return f"the CUDA decode kernel supports fp16 and bf16, got {dtype}"
        if head_dim not in CUDA_HEAD_DIMS:
            return (
                f"the CUDA decode kernel is compiled for head_dim {CUDA_HEAD_DIMS}, got "
                f"{head_dim} (use the triton backend)"
            )
        arch = _arch_number(call.get("arch"))
        if arch is not None and arch < 80:
            return f"the CUDA decode kernel needs sm_80 or newer, this GPU is sm_{arch}"
        if call.get("aligned16") is False:
            return (
                "the CUDA decode kernel needs 16-byte aligned data pointers and strides that "
                "are multiples of 8 elements (q, k_cache, v_cache)"
            )
        return _native_decode_missing()
    return f"unknown backend {backend!r}"


def select_backend(backend: str, call: dict[str, Any]) -> str:
    """Resolve ``backend`` ("auto" or a name) for a decode call through the attention family's
    capability table (capabilities.py routes this op's questions to :func:`decode_reason`).

    Raises BackendUnavailable (a named backend that cannot serve, with the reason).
    """
    from millkernels.ops.attention.capabilities import TABLE

    return TABLE.select(backend, call, OP)


def call_facts(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> dict[str, Any]:
    """The facts the capability table decides on, for validated arguments."""
    cap = runtime.capability(q.device) if q.device.type == "cuda" else None
    elem = q.element_size()
    aligned = all(
        t.data_ptr() % CUDA_ALIGN_BYTES == 0
        and all((s * elem) % CUDA_ALIGN_BYTES == 0 for s in t.stride()[:-1])
        for t in (q, k_cache, v_cache)
    )
    return {
        "op": OP,
        "device": q.device.type,
        "dtype": q.dtype,
        "head_dim": q.shape[-1],
        "arch": tuple(cap) if cap else None,
        "aligned16": aligned,
    }


# ---------------------------------------------------------------------------- validation


def _check_tensor(name: str, t: Any, ndim: int, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {what}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions {what}, got shape {tuple(t.shape)}")
    if t.numel() and t.stride(-1) != 1:
        raise ValueError(
            f"{name}: expected a unit stride in the last dimension, got strides {t.stride()}"
        )


def check_arguments(
    q: Any,
    k_cache: Any,
    v_cache: Any,
    block_table: Any,
    cache_seqlens: Any,
    softmax_scale: Any,
    softcap: Any,
) -> float:
    """Validate everything but the values of block_table / cache_seqlens; return the scale.

    Raises TypeError (a non-tensor, an unsupported or mixed dtype) or ValueError (ranks,
    shapes, devices, head_dim, strides, scale, softcap), naming the argument. The scale and
    softcap rules are the training ops' (:func:`~millkernels.ops.attention.api.
    scale_and_softcap`).
    """
    _check_tensor("q", q, 3, "(batch, heads_q, head_dim)")
    layout = "(num_blocks, block_size, heads_kv, head_dim)"
    _check_tensor("k_cache", k_cache, 4, layout)
    _check_tensor("v_cache", v_cache, 4, layout)
    _check_tensor("block_table", block_table, 2, "(batch, max_blocks_per_seq)")
    _check_tensor("cache_seqlens", cache_seqlens, 1, "(batch,)")
    if q.dtype not in DTYPES:
        raise TypeError(f"q: expected dtype float16 or bfloat16, got {q.dtype}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: expected q's dtype {q.dtype}, got {t.dtype}")
    for name, t in (("block_table", block_table), ("cache_seqlens", cache_seqlens)):
        if t.dtype != torch.int32:
            raise TypeError(f"{name}: expected dtype int32, got {t.dtype}")
    for name, t in (
        ("k_cache", k_cache),
        ("v_cache", v_cache),
        ("block_table", block_table),
        ("cache_seqlens", cache_seqlens),
    ):
        if t.device != q.device:
            raise ValueError(f"{name}: expected q's device {q.device}, got {t.device}")
    batch, heads_q, head_dim = q.shape
    _, block_size, heads_kv, kv_dim = k_cache.shape
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError(
            f"v_cache: expected k_cache's shape {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}"
        )
    if head_dim % 8 or not 8 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(
            f"q: expected head_dim a multiple of 8 in [8, {MAX_HEAD_DIM}], got {head_dim}"
        )
    if kv_dim != head_dim:
        raise ValueError(f"k_cache: expected q's head_dim {head_dim}, got {kv_dim}")
    if block_size < 1:
        raise ValueError(f"k_cache: expected block_size >= 1, got {block_size}")
    if heads_kv < 1 or heads_q % heads_kv:
        raise ValueError(
            f"q: expected heads_q a multiple of k_cache's heads_kv {heads_kv}, got {heads_q}"
        )
    if block_table.shape[0] != batch:
        raise ValueError(
            f"block_table: expected q's batch {batch} rows, got shape {tuple(block_table.shape)}"
        )
    if cache_seqlens.shape[0] != batch:
        raise ValueError(
            f"cache_seqlens: expected q's batch {batch} entries, got {cache_seqlens.shape[0]}"
        )
    return scale_and_softcap(softmax_scale, softcap, head_dim)[0]


def check_values(
    k_cache: torch.Tensor, block_table: torch.Tensor, cache_seqlens: torch.Tensor
) -> None:
    """ValueError unless 0 <= cache_seqlens[b] <= capacity and every block_table entry a
    sequence reads (its first ceil(cache_seqlens[b] / block_size) entries) is a page index in
    [0, num_blocks). One device sync; entries past a sequence's last page are not read."""
    num_blocks, block_size = k_cache.shape[:2]
    batch, max_blocks = block_table.shape
    if batch == 0:
        return
    capacity = max_blocks * block_size
    lens = cache_seqlens.long()
    bad_len = (lens < 0) | (lens > capacity)
    cols = torch.arange(max_blocks, device=lens.device)
    needed = cols[None, :] * block_size < lens[:, None]
    bad_page = needed & ((block_table < 0) | (block_table >= num_blocks))
    flags = torch.stack([bad_len.any(), bad_page.any()]).tolist()  # the one sync
    if flags[0]:
        b = int(bad_len.nonzero()[0, 0])
        raise ValueError(
            f"cache_seqlens: expected 0 <= cache_seqlens[b] <= max_blocks_per_seq * block_size "
            f"= {capacity}, got cache_seqlens[{b}] = {int(lens[b])}"
        )
    if flags[1]:
        b, j = (int(x) for x in bad_page.nonzero()[0])
        raise ValueError(
            f"block_table: expected page indices in [0, num_blocks={num_blocks}) for the pages "
            f"a sequence uses, got block_table[{b}, {j}] = {int(block_table[b, j])}"
        )


def _capturing(t: torch.Tensor) -> bool:
    return t.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


# ---------------------------------------------------------------------------- custom op


@torch.library.custom_op("millkernels::attention_decode", mutates_args=())
def attention_decode_op(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    softmax_scale: float,
    softcap: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The custom op behind :func:`attention_decode`: arguments already validated (shapes,
    dtypes); checks values (unless capturing a CUDA graph), dispatches, returns (out, lse)."""
    if not _capturing(q):
        check_values(k_cache, block_table, cache_seqlens)
    name = select_backend(backend, call_facts(q, k_cache, v_cache))
    return run_backend(
        name, q, k_cache, v_cache, block_table, cache_seqlens, softmax_scale, softcap
    )


@attention_decode_op.register_fake
def _attention_decode_fake(
    q, k_cache, v_cache, block_table, cache_seqlens, softmax_scale, softcap, backend
):
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((q.shape[0], q.shape[1]), dtype=torch.float32, device=q.device)
    return out, lse


def run_backend(
    name: str,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    softmax_scale: float,
    softcap: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch backend ``name`` on validated arguments; returns fresh ``(out, lse)``."""
    if name == "triton":
        from millkernels.ops.attention import triton_decode

        return triton_decode.attention_decode(
            q, k_cache, v_cache, block_table, cache_seqlens, softmax_scale, softcap
        )
    if name == "cuda":
        from millkernels.ops.attention import cuda_decode

        return cuda_decode.attention_decode(
            q, k_cache, v_cache, block_table, cache_seqlens, softmax_scale, softcap
        )
    from millkernels.ops.attention.decode_reference import attention_decode_reference

    out, lse = attention_decode_reference(
        q, k_cache, v_cache, block_table, cache_seqlens, softmax_scale, softcap
    )
    return out.contiguous(), lse.contiguous()


# ---------------------------------------------------------------------------- public


def attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    softmax_scale: float | None = None,
    softcap: float = 0.0,
    return_lse: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of one new query token per sequence over a paged KV cache.

    Parameters
    ----------
    q
        (batch, heads_q, head_dim), float16 or bfloat16; head_dim a multiple of 8, <= 256.
    k_cache, v_cache
        (num_blocks, block_size, heads_kv, head_dim), q's dtype and device; heads_q a multiple
        of heads_kv (GQA; MQA with heads_kv = 1). The new token's key and value are already in.
    block_table
        int32 (batch, max_blocks_per_seq): token t of sequence b is row ``t % block_size`` of
        page ``block_table[b, t // block_size]``. Entries past a sequence's last page are not
        read and may hold anything (e.g. -1 padding).
    cache_seqlens
        int32 (batch,): valid cached tokens per sequence, 0 <= n <= max_blocks_per_seq *
        block_size. A sequence with 0 tokens gives zeros and lse = -inf.
    softmax_scale
        Scores are ``(q . k) * softmax_scale``, a finite float > 0; default
        ``1 / sqrt(head_dim)``.
    softcap
        When > 0, each score x becomes ``softcap * tanh(x / softcap)``.
    return_lse
        Also return ``lse`` (batch, heads_q) float32: the natural log of the sum of
        exp(scores).
    backend
        "auto", "cuda", "triton" or "reference" (``MILLKERNELS_BACKEND`` overrides "auto").

    Returns
    -------
    out, or (out, lse)
        out: (batch, heads_q, head_dim), q's dtype, contiguous.

    Raises
    ------
    TypeError, ValueError
        A bad argument (rank, shape, dtype, device, head_dim, stride, a block_table entry out
        of range, cache_seqlens beyond the table's capacity), naming it. The value checks of
        block_table and cache_seqlens cost one device sync and are skipped while a CUDA graph
        is being captured.
    BackendUnavailable
        The named backend cannot serve the call (the message says why).
    """
    scale = check_arguments(q, k_cache, v_cache, block_table, cache_seqlens, softmax_scale, softcap)
    out, lse = attention_decode_op(
        q, k_cache, v_cache, block_table, cache_seqlens, scale, float(softcap), backend
    )
    return (out, lse) if return_lse else out
