"""Quantised weight formats: the canonical layout, packing, quantisation, GPTQ/AWQ import.

Canonical layout of a :class:`QuantizedWeight` for a weight ``W`` of shape (N, K) =
(out_features, in_features), as in ``nn.Linear``:

Integer schemes (``w4a16``, ``w8a16``; ``bits`` = 4 or 8, ``PER = 32 // bits``):

- ``qweight`` int32 (ceil(K / PER), N): word ``[i, n]`` holds the unsigned codes of input
  features ``i*PER .. i*PER+PER-1`` of output ``n``, the first in the lowest bits (AutoGPTQ's
  order). K is padded with zero codes up to a multiple of PER.
- ``scales`` float16 or bfloat16 (G, N), G = K // group_size groups of consecutive input
  features (G = 1 for ``group_size=-1``, stored as ``group_size = K``).
- ``zeros`` uint8 (int16 accepted) (G, N), or ``None`` for symmetric weights, whose zero
  point is ``2**(bits-1)``.
- ``perm`` int64 (K,) or ``None``: act-order checkpoints; canonical input feature ``j`` is
  original feature ``perm[j]``, so ``x @ W.T == x[..., perm] @ Wc.T``.

  Value: ``W[n, perm[k]] = (q[k, n] - zero[k // group_size, n]) * scale[k // group_size, n]``.

Fp8 schemes (e4m3, ``torch.float8_e4m3fn``, largest finite 448):

- ``qweight`` float8_e4m3fn (N, K) (row-major, like ``nn.Linear``: the tensor-core layout).
- ``scales`` float32: (1,) for ``fp8_tensor``, (N,) for ``fp8_rowwise``, (ceil(N/128),
  ceil(K/128)) for ``fp8_block``. ``W ~= qweight * scale``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

INT_SCHEMES = {"w4a16": 4, "w8a16": 8}
FP8_SCHEMES = ("fp8_tensor", "fp8_rowwise", "fp8_block")
SCHEMES = (*INT_SCHEMES, *FP8_SCHEMES)
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
FP8_BLOCK = 128  # fp8_block: weight blocks of 128x128, activation groups of 128
FP16_TINY = 6.2e-5  # below this an fp16 scale loses precision (smallest normal 6.1e-5)
_META_VERSION = 1


def _check_scheme(scheme: Any) -> str:
    if not isinstance(scheme, str):
        raise TypeError(f"scheme: expected a str, got {type(scheme).__name__}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: expected one of {SCHEMES}, got {scheme!r}")
    return scheme


@dataclasses.dataclass
class QuantizedWeight:
    """A quantised (out_features, in_features) weight in the canonical layout (see module doc).

    Build one with :func:`quantize`, :func:`from_gptq`, :func:`from_awq` or
    :meth:`from_state_dict`; multiply with :func:`millkernels.quant.matmul`.

    Every construction (also a direct one, and :meth:`to`) checks the tensors against the
    metadata (:func:`validate`) and their values (:func:`check_values`: finite scales, zero
    points in range, a true permutation): one device sync on a GPU, once per weight. Every
    ``matmul`` repeats only :func:`validate` (no sync), which catches fields reassigned since.
    ``check=False`` skips both, for tensors already checked (a layer's buffers): no sync, and
    traceable by ``torch.compile``.
    """

    scheme: str
    shape: tuple[int, int]
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None = None
    perm: torch.Tensor | None = None
    group_size: int = 0
    symmetric: bool = False
    check: dataclasses.InitVar[bool] = True

    def __post_init__(self, check: bool) -> None:
        if check:
            validate(self)
            check_values(self)

    @property
    def bits(self) -> int:
        return INT_SCHEMES.get(self.scheme, 8)

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def is_fp8(self) -> bool:
        return self.scheme in FP8_SCHEMES

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name (``zeros``/``perm`` only when present)."""
        out = {"qweight": self.qweight, "scales": self.scales}
        if self.zeros is not None:
            out["zeros"] = self.zeros
        if self.perm is not None:
            out["perm"] = self.perm
        return out

    def nbytes(self) -> int:
        """Bytes of every stored tensor (what a matmul streams from memory)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (out_features, in_features) weight this represents, in ``dtype``."""
        n, k = self.shape
        if self.is_fp8:
            w = self.qweight.float()
            if self.scheme == "fp8_block":
                s = self.scales.repeat_interleave(FP8_BLOCK, 0).repeat_interleave(FP8_BLOCK, 1)
                w = w * s[:n, :k]
            elif self.scheme == "fp8_rowwise":
                w = w * self.scales[:, None]
            else:
                w = w * self.scales
            return w.to(dtype)
        q = unpack(self.qweight, self.bits, k)  # (K, N) int32
        zeros = self.zero_points()
        g = self.group_size
        s = self.scales.float().repeat_interleave(g, 0)
        z = zeros.repeat_interleave(g, 0)
        wc = ((q - z).float() * s).t()  # (N, K) in canonical input order
        if self.perm is not None:
            w = torch.empty_like(wc)
            w[:, self.perm] = wc
            wc = w
        return wc.to(dtype)

    def zero_points(self) -> torch.Tensor:
        """Integer zero points (G, N) int32 (the implicit midpoint for symmetric weights)."""
        if self.zeros is None:
            return torch.full(
                tuple(self.scales.shape),
                1 << (self.bits - 1),
                dtype=torch.int32,
                device=self.device,
            )
        return self.zeros.to(torch.int32)

    def to(self, device: Any) -> QuantizedWeight:
        """A copy on ``device`` (tensors moved; metadata shared)."""
        zeros, perm = self.zeros, self.perm
        return dataclasses.replace(
            self,
            qweight=self.qweight.to(device),
            scales=self.scales.to(device),
            zeros=None if zeros is None else zeros.to(device),
            perm=None if perm is None else perm.to(device),
        )

    # -------------------------------------------------------------- serialisation

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-ready): the stored tensors plus ``meta``, an int64 tensor
        [version, scheme index, out_features, in_features, group_size, symmetric]."""
        meta = torch.tensor(
            [
                _META_VERSION,
                SCHEMES.index(self.scheme),
                self.shape[0],
                self.shape[1],
                self.group_size,
                int(self.symmetric),
            ],
            dtype=torch.int64,
        )
        return {**{k: v.contiguous() for k, v in self.tensors().items()}, "meta": meta}

    @classmethod
    def from_state_dict(cls, d: dict[str, torch.Tensor]) -> QuantizedWeight:
        """Rebuild from :meth:`state_dict` (e.g. after a safetensors round trip)."""
        if not isinstance(d, dict):
            raise TypeError(f"d: expected a dict of tensors, got {type(d).__name__}")
        missing = {"qweight", "scales", "meta"} - set(d)
        if missing:
            raise ValueError(f"d: missing entries {sorted(missing)}")
        meta = [int(v) for v in d["meta"].tolist()]
        if len(meta) != 6 or meta[0] != _META_VERSION or not 0 <= meta[1] < len(SCHEMES):
            raise ValueError(f"d['meta']: not a QuantizedWeight header: {meta}")
        return cls(
            scheme=SCHEMES[meta[1]],
            shape=(meta[2], meta[3]),
            qweight=d["qweight"],
            scales=d["scales"],
            zeros=d.get("zeros"),
            perm=d.get("perm"),
            group_size=meta[4],
            symmetric=bool(meta[5]),
        )

    def __repr__(self) -> str:
        extra = f", group_size={self.group_size}" if not self.is_fp8 else ""
        return (
            f"QuantizedWeight(scheme={self.scheme!r}, shape={self.shape}{extra}, "
            f"symmetric={self.symmetric}, act_order={self.perm is not None}, device={self.device})"
        )


def validate(qw: QuantizedWeight) -> None:
    """Check that ``qw``'s tensors agree with its metadata: scheme, shape, dtypes, shapes, one
    device, contiguous (the kernels index them densely). Reads no tensor values (no device
    sync), so every ``matmul`` runs it. TypeError/ValueError naming the field."""
    _check_scheme(qw.scheme)
    shape = qw.shape
    if not (
        isinstance(shape, tuple)
        and len(shape) == 2
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise ValueError(f"shape: expected (out_features, in_features) > 0, got {shape!r}")
    n, k = shape
    for name in ("qweight", "scales", "zeros", "perm"):
        t = getattr(qw, name)
        if t is None and name in ("zeros", "perm"):
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.device != qw.qweight.device:
            raise ValueError(f"{name}: on {t.device}, but qweight is on {qw.qweight.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous tensor (call .contiguous())")
    if qw.is_fp8:
        if qw.zeros is not None or qw.perm is not None:
            raise ValueError(f"zeros, perm: {qw.scheme} has neither, expected None")
        if qw.qweight.dtype != FP8_DTYPE or tuple(qw.qweight.shape) != (n, k):
            raise ValueError(
                f"qweight: expected float8_e4m3fn {(n, k)}, got {qw.qweight.dtype} "
                f"{tuple(qw.qweight.shape)}"
            )
        want = {
            "fp8_tensor": (1,),
            "fp8_rowwise": (n,),
            "fp8_block": (math.ceil(n / FP8_BLOCK), math.ceil(k / FP8_BLOCK)),
        }[qw.scheme]
        if qw.scales.dtype != torch.float32 or tuple(qw.scales.shape) != want:
            raise ValueError(
                f"scales: expected float32 {want}, got {qw.scales.dtype} {tuple(qw.scales.shape)}"
            )
        return
    per = 32 // qw.bits
    g = qw.group_size
    if g < 1 or k % g:
        raise ValueError(f"group_size: {g} does not divide in_features {k}")
    groups = k // g
    if qw.qweight.dtype != torch.int32 or tuple(qw.qweight.shape) != (math.ceil(k / per), n):
        raise ValueError(
            f"qweight: expected int32 {(math.ceil(k / per), n)}, got {qw.qweight.dtype} "
            f"{tuple(qw.qweight.shape)}"
        )
    if qw.scales.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"scales: expected a float dtype, got {qw.scales.dtype}")
    if tuple(qw.scales.shape) != (groups, n):
        raise ValueError(f"scales: expected shape {(groups, n)}, got {tuple(qw.scales.shape)}")
    if qw.zeros is not None and (
        qw.zeros.dtype not in (torch.uint8, torch.int16) or tuple(qw.zeros.shape) != (groups, n)
    ):
        raise ValueError(
            f"zeros: expected uint8/int16 {(groups, n)}, got {qw.zeros.dtype} "
            f"{tuple(qw.zeros.shape)}"
        )
    if qw.perm is not None and (qw.perm.dtype != torch.int64 or tuple(qw.perm.shape) != (k,)):
        raise ValueError(f"perm: expected int64 ({k},), got {qw.perm.dtype} {tuple(qw.perm.shape)}")


def check_values(qw: QuantizedWeight) -> None:
    """Check the values the kernels take on trust (after :func:`validate`): finite scales,
    zero points in ``[0, 2**bits)``, ``perm`` a permutation of the input features. One device
    sync on a GPU: runs when a weight is built or loaded, not per matmul. ValueError naming
    the field."""
    bad = {"scales": ~torch.isfinite(qw.scales).all()}
    if qw.zeros is not None:
        z = qw.zeros.to(torch.int32)
        bad["zeros"] = ((z < 0) | (z >= 1 << qw.bits)).any()
    if qw.perm is not None:
        every = torch.arange(qw.in_features, device=qw.perm.device)
        bad["perm"] = (torch.sort(qw.perm).values != every).any()
    flags = dict(zip(bad, torch.stack(list(bad.values())).tolist(), strict=True))  # one sync
    if flags["scales"]:
        raise ValueError("scales: NaN or Inf (a scale must be finite)")
    if flags.get("zeros"):
        raise ValueError(f"zeros: zero points must lie in [0, {1 << qw.bits}) at {qw.bits} bits")
    if flags.get("perm"):
        raise ValueError(f"perm: expected a permutation of 0..{qw.in_features - 1}")


# ------------------------------------------------------------------ packing


def _signed32(words: torch.Tensor) -> torch.Tensor:
    """int64 words in [0, 2**32) as the int32 with the same bits."""
    return (words - ((words >> 31) << 32)).to(torch.int32)


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes ``q`` (K, N) (values < 2**bits) into int32 (ceil(K/PER), N) along K,
    the first of each PER = 32/bits consecutive rows in the lowest bits. K is zero-padded."""
    if bits not in (2, 4, 8):
        raise ValueError(f"bits: expected 2, 4 or 8, got {bits}")
    per = 32 // bits
    k, n = q.shape
    kp = math.ceil(k / per) * per
    q64 = torch.zeros((kp, n), dtype=torch.int64, device=q.device)
    q64[:k] = q.to(torch.int64) & ((1 << bits) - 1)
    q64 = q64.view(kp // per, per, n)
    shifts = (torch.arange(per, device=q.device, dtype=torch.int64) * bits).view(1, per, 1)
    words = (q64 << shifts).sum(1)  # < 2**32, exact in int64
    return _signed32(words)


def unpack(words: torch.Tensor, bits: int, k: int | None = None) -> torch.Tensor:
    """Inverse of :func:`pack`: int32 (W, N) -> int32 codes (k, N) (k defaults to W*PER)."""
    per = 32 // bits
    w, n = words.shape
    shifts = (torch.arange(per, device=words.device, dtype=torch.int32) * bits).view(1, per, 1)
    q = (words.view(w, 1, n) >> shifts) & ((1 << bits) - 1)
    q = q.reshape(w * per, n)
    return q if k is None else q[:k]


def pack_cols(q: torch.Tensor, bits: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Pack codes (R, C) along columns into int32 (R, C*bits/32); ``order[i]`` is the column
    (within each group of PER) stored in bits ``i*bits..``; default 0, 1, 2, ..."""
    per = 32 // bits
    r, c = q.shape
    if c % per:
        raise ValueError(f"columns: {c} is not a multiple of {per}")
    order = tuple(range(per)) if order is None else order
    q64 = (q.to(torch.int64) & ((1 << bits) - 1)).view(r, c // per, per)[..., list(order)]
    shifts = torch.arange(per, device=q.device, dtype=torch.int64) * bits
    words = (q64 << shifts).sum(-1)
    return _signed32(words)


def unpack_cols(words: torch.Tensor, bits: int, order: tuple[int, ...] | None = None):
    """Inverse of :func:`pack_cols`: int32 (R, C/PER) -> int32 codes (R, C)."""
    per = 32 // bits
    r, cw = words.shape
    shifts = torch.arange(per, device=words.device, dtype=torch.int32) * bits
    fields = (words.view(r, cw, 1) >> shifts) & ((1 << bits) - 1)  # fields[..., i]
    out = torch.empty_like(fields)
    order = tuple(range(per)) if order is None else order
    out[..., list(order)] = fields
    return out.view(r, cw * per)


# ------------------------------------------------------------------ quantisation


def _check_weight(weight: Any) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected (out_features, in_features), got {tuple(weight.shape)}")
    if not weight.is_floating_point() or weight.dtype in (FP8_DTYPE, torch.float8_e5m2):
        raise TypeError(f"weight: expected float16/bfloat16/float32/float64, got {weight.dtype}")
    if weight.numel() == 0:
        raise ValueError(f"weight: expected a non-empty matrix, got {tuple(weight.shape)}")
    bad = ~torch.isfinite(weight).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        more = f" (and {len(rows) - 5} more)" if len(rows) > 5 else ""
        raise ValueError(f"weight: NaN or Inf in row(s) {rows[:5]}{more} (output channel index)")
    return weight


def _scale_dtype(weight: torch.Tensor, smallest: float) -> torch.dtype:
    """float16 scales (as GPTQ/AWQ), bfloat16 for bf16 weights or scales fp16 cannot hold."""
    if weight.dtype == torch.bfloat16 or (0 < smallest < FP16_TINY):
        return torch.bfloat16
    return torch.float16


def _check_scales_fit(scale: torch.Tensor, dtype: torch.dtype, weight: torch.Tensor) -> None:
    """ValueError when a scale (float32, positive) exceeds ``dtype``'s largest finite value:
    it would be stored as inf (and dequantise to inf / NaN)."""
    largest = torch.finfo(dtype).max
    big = float(scale.max())
    if big <= largest:  # False for inf and NaN too
        return
    amax = float(weight.detach().abs().max())
    name = str(dtype).removeprefix("torch.")
    raise ValueError(
        f"weight: max |weight| = {amax:.4g} needs scales up to {big:.4g}, over {name}'s "
        f"largest {largest:.6g}; scale the weight down (or quantise it as bfloat16 for "
        "bfloat16 scales)"
    )


def _round_up(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Positive float32 scales rounded up to ``dtype`` (so min..max still fits the codes),
    returned as float32."""
    low = scale.to(dtype)
    bump = low.float() < scale
    up = (low.view(torch.int16) + 1).view(dtype)  # next representable (positive values)
    return torch.where(bump, up, low).float()


def quantize(
    weight: torch.Tensor, scheme: str, *, group_size: int = 128, symmetric: bool = False
) -> QuantizedWeight:
    """Quantise ``weight`` (out_features, in_features) with round-to-nearest min-max scaling.

    Parameters
    ----------
    weight
        (N, K) float16/bfloat16/float32/float64, finite.
    scheme
        ``"w4a16"``, ``"w8a16"`` (integers per group of ``group_size`` consecutive input
        features; ``-1``: one group per output channel), ``"fp8_tensor"``, ``"fp8_rowwise"``,
        ``"fp8_block"`` (e4m3 with one scale / one per output channel / one per 128x128 block;
        ``group_size`` and ``symmetric`` do not apply).
    symmetric
        Integer schemes: no zero point (codes centred on ``2**(bits-1)``).

    Raises
    ------
    TypeError, ValueError
        Naming the argument: a bad scheme, a non-float weight, NaN/Inf (with the row), a
        ``group_size`` that does not divide in_features, a weight so large that its scales
        overflow their dtype (float16 above 65504; with the largest |weight|).
    """
    scheme = _check_scheme(scheme)
    weight = _check_weight(weight)
    n, k = weight.shape
    if scheme in FP8_SCHEMES:
        return _quantize_fp8(weight, scheme)
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size: expected an int, got {type(group_size).__name__}")
    if group_size == -1:
        group_size = k
    if group_size < 1 or k % group_size:
        raise ValueError(
            f"group_size: expected -1 or a positive divisor of in_features {k}, got {group_size}"
        )
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric: expected a bool, got {type(symmetric).__name__}")
    bits = INT_SCHEMES[scheme]
    qmax = (1 << bits) - 1
    g = k // group_size
    w = weight.detach().to(torch.float32).reshape(n, g, group_size)
    if symmetric:
        half = 1 << (bits - 1)
        amax = w.abs().amax(-1)
        scale = amax / (half - 1)
        sdt = _scale_dtype(weight, float(scale[scale > 0].min()) if bool((scale > 0).any()) else 0)
        _check_scales_fit(scale, sdt, weight)
        scale = _round_up(torch.where(scale > 0, scale, torch.ones_like(scale)), sdt)
        q = torch.clamp(torch.round(w / scale[..., None]) + half, 0, qmax)
        zeros = None
    else:
        lo = w.amin(-1).clamp(max=0)
        hi = w.amax(-1).clamp(min=0)
        scale = (hi - lo) / qmax
        sdt = _scale_dtype(weight, float(scale[scale > 0].min()) if bool((scale > 0).any()) else 0)
        _check_scales_fit(scale, sdt, weight)
        scale = _round_up(torch.where(scale > 0, scale, torch.ones_like(scale)), sdt)
        z = torch.clamp(torch.round(-lo / scale), 0, qmax)
        q = torch.clamp(torch.round(w / scale[..., None]) + z[..., None], 0, qmax)
        zeros = z.t().contiguous().to(torch.uint8)
    qweight = pack(q.reshape(n, k).t().to(torch.int32), bits)
    return QuantizedWeight(
        scheme=scheme,
        shape=(n, k),
        qweight=qweight,
        scales=scale.t().contiguous().to(sdt),
        zeros=zeros,
        group_size=group_size,
        symmetric=symmetric,
    )


def fp8_cast(x: torch.Tensor) -> torch.Tensor:
    """Round float32 values to e4m3 (nearest even), saturating at +-448."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def fp8_scale(amax: torch.Tensor) -> torch.Tensor:
    """The fp32 scale that maps ``amax`` to 448 (1 for all-zero data).

    An IEEE division on every device, as the kernels' ``div_rn``: tensor by tensor (torch
    divides a CUDA tensor by a Python number as a multiply by its reciprocal)."""
    amax = amax.float()
    return torch.where(amax > 0, amax / torch.full_like(amax, FP8_MAX), torch.ones_like(amax))


def _quantize_fp8(weight: torch.Tensor, scheme: str) -> QuantizedWeight:
    n, k = weight.shape
    w = weight.detach().float()
    if scheme == "fp8_tensor":
        scale = fp8_scale(w.abs().amax()).reshape(1)
        q = fp8_cast(w / scale)
    elif scheme == "fp8_rowwise":
        scale = fp8_scale(w.abs().amax(1))
        q = fp8_cast(w / scale[:, None])
    else:
        b = FP8_BLOCK
        nb, kb = math.ceil(n / b), math.ceil(k / b)
        padded = torch.zeros((nb * b, kb * b), dtype=torch.float32, device=w.device)
        padded[:n, :k] = w
        blocks = padded.view(nb, b, kb, b)
        scale = fp8_scale(blocks.abs().amax(dim=(1, 3)))
        q = fp8_cast(blocks / scale[:, None, :, None]).view(nb * b, kb * b)[:n, :k]
    _check_scales_fit(scale, torch.float32, weight)  # a float64 weight beyond float32's range
    return QuantizedWeight(scheme, (n, k), q.contiguous(), scale.contiguous().float())


# ------------------------------------------------------------------ GPTQ / AWQ import

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # bits 4i..4i+3 hold column AWQ_ORDER[i] of 8


def _int32(name: str, t: Any, dims: int = 2) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise TypeError(f"{name}: expected int32, got {t.dtype}")
    if t.dim() != dims:
        raise ValueError(f"{name}: expected {dims} dims, got shape {tuple(t.shape)}")
    return t


def _float_scales(scales: Any, groups: int, n: int) -> torch.Tensor:
    if not isinstance(scales, torch.Tensor):
        raise TypeError(f"scales: expected a torch.Tensor, got {type(scales).__name__}")
    if scales.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"scales: expected float16/bfloat16/float32, got {scales.dtype}")
    if tuple(scales.shape) != (groups, n):
        raise ValueError(f"scales: expected shape {(groups, n)}, got {tuple(scales.shape)}")
    return scales.contiguous()  # values: checked with the weight's (check_values)


def _gptq_v1_to_v2(qzeros: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQ v1 qzeros to v2 (the zero points themselves). v1 writers (GPTQModel, AutoGPTQ)
    store ``v2 - 0x11111111`` (``0x01010101`` at 8 bits) per 32-bit word, so a zero point 0
    borrows from the next field; adding the constant back word by word, modulo 2**32, undoes
    that exactly (adding 1 per field would carry the borrow into the neighbour)."""
    one_per_field = sum(1 << (bits * i) for i in range(32 // bits))
    words = (qzeros.to(torch.int64) + one_per_field) % 2**32
    return _signed32(words)


def from_gptq(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor | None = None,
    *,
    bits: int = 4,
    group_size: int = 128,
    checkpoint_format: str = "gptq",
) -> QuantizedWeight:
    """Import an AutoGPTQ-layout linear layer.

    Parameters
    ----------
    qweight
        int32 (K * bits / 32, N): 32/bits consecutive input features per word, first lowest.
    qzeros
        int32 (G, N * bits / 32), packed the same way along output features.
    scales
        float16/bfloat16/float32 (G, N).
    g_idx
        int (K,): the group of each input feature (act-order: not sorted; every group must
        hold ``group_size`` features). None: feature k is in group k // group_size.
    bits
        4 or 8.
    group_size
        Features per group; -1: one group (G = 1).
    checkpoint_format
        ``"gptq"`` (v1: each qzeros word is the v2 word minus 1 in every field, with borrows
        between fields) or ``"gptq_v2"`` (the zero points themselves).

    Raises ValueError/TypeError naming the argument on inconsistent shapes, dtypes or bits.
    """
    if bits not in (4, 8):
        raise ValueError(f"bits: expected 4 or 8, got {bits!r}")
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise ValueError(
            f"checkpoint_format: expected 'gptq' or 'gptq_v2', got {checkpoint_format!r}"
        )
    per = 32 // bits
    qweight = _int32("qweight", qweight)
    qzeros = _int32("qzeros", qzeros)
    k, n = qweight.shape[0] * per, qweight.shape[1]
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size: expected an int, got {type(group_size).__name__}")
    gsz = k if group_size == -1 else group_size
    if gsz < 1 or k % gsz:
        raise ValueError(f"group_size: {group_size} does not divide in_features {k}")
    groups = k // gsz
    if tuple(qzeros.shape) != (groups, n * bits // 32) or (n * bits) % 32:
        raise ValueError(
            f"qzeros: expected shape {(groups, n * bits // 32)} for {groups} groups of "
            f"{n} outputs at {bits} bits, got {tuple(qzeros.shape)}"
        )
    scales = _float_scales(scales, groups, n)
    q = unpack(qweight, bits)  # (K, N)
    if checkpoint_format == "gptq":
        qzeros = _gptq_v1_to_v2(qzeros, bits)
    z = unpack_cols(qzeros, bits)  # (G, N)
    perm = None
    if g_idx is not None:
        if not isinstance(g_idx, torch.Tensor) or g_idx.dtype not in (torch.int32, torch.int64):
            raise TypeError("g_idx: expected an int32/int64 tensor")
        if tuple(g_idx.shape) != (k,):
            raise ValueError(f"g_idx: expected shape ({k},), got {tuple(g_idx.shape)}")
        gi = g_idx.to(torch.int64)
        if int(gi.min()) < 0 or int(gi.max()) >= groups:
            raise ValueError(f"g_idx: group indices must lie in [0, {groups})")
        counts = torch.bincount(gi, minlength=groups)
        if not bool((counts == gsz).all()):
            raise ValueError(f"g_idx: every group must hold group_size={gsz} input features")
        if not bool((gi == torch.arange(k, device=gi.device) // gsz).all()):
            perm = torch.argsort(gi, stable=True)
            q = q[perm]
    return QuantizedWeight(
        scheme="w4a16" if bits == 4 else "w8a16",
        shape=(n, k),
        qweight=pack(q, bits),
        scales=scales,
        zeros=z.to(torch.uint8),
        perm=perm,
        group_size=gsz,
        symmetric=False,
    )


def from_awq(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, *, group_size: int = 128
) -> QuantizedWeight:
    """Import an AutoAWQ GEMM-layout linear layer (4-bit).

    ``qweight`` int32 (K, N/8) and ``qzeros`` int32 (G, N/8) are packed along output features
    in nibble order 0, 2, 4, 6, 1, 3, 5, 7; ``scales`` (G, N); zeros are stored as they are.
    Raises ValueError/TypeError naming the argument on inconsistent shapes or dtypes.
    """
    qweight = _int32("qweight", qweight)
    qzeros = _int32("qzeros", qzeros)
    k, n = qweight.shape[0], qweight.shape[1] * 8
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size: expected an int, got {type(group_size).__name__}")
    gsz = k if group_size == -1 else group_size
    if gsz < 1 or k % gsz:
        raise ValueError(f"group_size: {group_size} does not divide in_features {k}")
    groups = k // gsz
    if tuple(qzeros.shape) != (groups, n // 8):
        raise ValueError(f"qzeros: expected shape {(groups, n // 8)}, got {tuple(qzeros.shape)}")
    scales = _float_scales(scales, groups, n)
    q = unpack_cols(qweight, 4, AWQ_ORDER)  # (K, N)
    z = unpack_cols(qzeros, 4, AWQ_ORDER)
    return QuantizedWeight(
        scheme="w4a16",
        shape=(n, k),
        qweight=pack(q, 4),
        scales=scales,
        zeros=z.to(torch.uint8),
        group_size=gsz,
    )
