"""Helpers of the quant tests: synthetic GPTQ/AWQ checkpoints, packed bit by bit by the tests
themselves (independently of millkernels' packers) from a known integer matrix.

Not a conftest.py: a second module named ``conftest`` would shadow another folder's
``from conftest import ...``."""

from __future__ import annotations

import torch


def pack_rows(q: torch.Tensor, bits: int) -> torch.Tensor:
    """AutoGPTQ qweight packing, written independently: word r, field j <- row r*per + j."""
    per = 32 // bits
    k, n = q.shape
    out = torch.zeros((k // per, n), dtype=torch.int64)
    for j in range(per):
        out |= q[j::per].to(torch.int64) << (bits * j)
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)


def pack_cols(q: torch.Tensor, bits: int, order: list[int]) -> torch.Tensor:
    """Pack along columns: field i of word c holds column c*per + order[i]."""
    per = 32 // bits
    r, n = q.shape
    out = torch.zeros((r, n // per), dtype=torch.int64)
    for i, col in enumerate(order):
        out |= q[:, col::per].to(torch.int64) << (bits * i)
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)


def v2_to_v1(qzeros: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQModel's v2 -> v1 qzeros conversion: subtract 1 from every field of each 32-bit word
    at once (0x11111111 at 4 bits, 0x01010101 at 8), so a zero point 0 borrows from the next."""
    one_per_field = sum(1 << (bits * i) for i in range(32 // bits))
    words = (qzeros.to(torch.int64) - one_per_field) % 2**32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def make_gptq(bits, k, n, gsz, act_order, v2):
    groups = k // gsz
    q = torch.randint(0, 1 << bits, (k, n), dtype=torch.int32)
    z = torch.randint(0, 1 << bits, (groups, n), dtype=torch.int32)  # true zero points
    z[0, : 32 // bits] = 0  # a zero point 0 in every field of one word (v1 borrows there)
    scales = (torch.rand(groups, n) * 0.02 + 0.001).to(torch.float16)
    if act_order:
        perm = torch.randperm(k)
        g_idx = torch.empty(k, dtype=torch.int32)
        g_idx[perm] = (torch.arange(k) // gsz).to(torch.int32)
    else:
        g_idx = (torch.arange(k) // gsz).to(torch.int32)
    qzeros = pack_cols(z, bits, list(range(32 // bits)))
    w = ((q - z[g_idx.long()]).float() * scales.float()[g_idx.long()]).t().contiguous()
    args = (pack_rows(q, bits), qzeros if v2 else v2_to_v1(qzeros, bits), scales, g_idx)
    return {"args": args, "w": w, "q": q, "g_idx": g_idx}
