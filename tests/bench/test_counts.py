"""FLOP and byte counting, and the rate/ratio/percentage arithmetic, on hand-computed numbers."""

from __future__ import annotations

import pytest
import torch

from millkernels.bench import counts


def test_matmul_flops() -> None:
    assert counts.matmul_flops(2, 3, 4) == 48
    assert counts.matmul_flops(8192, 8192, 8192) == 1_099_511_627_776
    assert counts.matmul_flops(2, 3, 4, batch=5) == 240


def test_attention_flops_fa_convention() -> None:
    # 4 * B * H * Sq * Sk * D = 4 * 2 * 16 * 16384 * 16384 * 128
    fwd = 4 * 2 * 16 * 16384 * 16384 * 128
    assert fwd == 2**42 == 4_398_046_511_104
    assert counts.attention_flops(2, 16, 16384, 16384, 128) == fwd
    assert counts.attention_flops(2, 16, 16384, 16384, 128, causal=True) == fwd / 2
    assert counts.attention_flops(1, 1, 4, 4, 2, direction="bwd") == 4 * 16 * 2 * 2.5
    assert counts.attention_flops(1, 1, 4, 4, 2, causal=True, direction="fwd_bwd") == 64 * 3.5
    with pytest.raises(ValueError):
        counts.attention_flops(1, 1, 1, 1, 1, direction="sideways")


def test_byte_helpers() -> None:
    assert counts.copy_bytes(1 << 30) == 2 << 30
    # 4x8 @ 8x2 in bf16 with an fp32 output: 64 + 32 bytes read, 32 written
    assert counts.matmul_bytes(4, 2, 8, "bf16", c="fp32") == 4 * 8 * 2 + 8 * 2 * 2 + 4 * 2 * 4
    # q, o: 1*2*3*4 elements each; k, v with 1 kv head over 5 keys: 1*1*5*4 each; bf16
    assert counts.attention_bytes(1, 2, 3, 5, 4, "bf16", kv_heads=1) == (2 * 24 + 2 * 20) * 2
    assert counts.tensor_bytes(torch.empty(3, 5, dtype=torch.float16), torch.empty(7)) == 58
    assert counts.dtype_bytes(torch.bfloat16) == 2
    assert counts.dtype_bytes("fp8") == 1
    with pytest.raises(ValueError):
        counts.dtype_bytes("fp7")


def test_rates() -> None:
    # 2 GB in 1000 us = 2000 GB/s; 1e12 FLOP in 1e6 us = 1 TFLOP/s
    assert counts.gbps(2e9, 1000.0) == pytest.approx(2000.0)
    assert counts.tflops(1e12, 1e6) == pytest.approx(1.0)
    # 8192^3 matmul in 1385 us is about 793.9 TFLOP/s
    assert counts.tflops(counts.matmul_flops(8192, 8192, 8192), 1385.0) == pytest.approx(
        793.87, rel=1e-4
    )


def test_pct_and_ratio() -> None:
    assert counts.pct_of(2700.0, 3000.0) == pytest.approx(90.0)
    assert counts.pct_of(None, 3000.0) is None
    assert counts.pct_of(1.0, None) is None
    # baseline 100 us, this 80 us: 1.25x (faster than the baseline)
    assert counts.ratio_to_baseline(100.0, 80.0) == pytest.approx(1.25)
    assert counts.ratio_to_baseline(None, 80.0) is None
