"""The probe kernels on a GPU: results against torch, torch and CuPy inputs, odd sizes,
poisoned outputs, a non-default stream, and a corrupted word found exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from millkernels.ops.probes import cuda, patterns
from millkernels.testing import poison, random_words

pytestmark = [pytest.mark.gpu, pytest.mark.native]

M32 = 0xFFFFFFFF
SIZES = [1, 5, 1_000_003]  # words: one word (tail only), a vector + tail, odd and large
SPIN = r"""extern "C" __global__ void spin(long long cycles) {
  long long t0 = clock64(); while (clock64() - t0 < cycles) {}
}"""


def wrap64(x: int) -> int:
    """An unsigned sum mod 2**64, as the int64 mem_read stores."""
    x %= 2**64
    return x - 2**64 if x >= 2**63 else x


def unsigned_sum(words: torch.Tensor) -> int:
    total = 0
    for chunk in words.view(torch.int32).reshape(-1).split(2**26):
        total += int((chunk.long() & M32).sum().item())
    return total


def to_i32(value: int) -> int:
    return value - 2**32 if value >= 2**31 else value


def need_free_bytes(n: int) -> None:
    free, _ = torch.cuda.mem_get_info()
    if free < n + 2**30:
        pytest.skip(f"needs {n / 2**30:.1f} GiB free on the GPU; {free / 2**30:.1f} GiB is")


def cupy_or_skip():
    cp = pytest.importorskip("cupy")
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except cp.cuda.runtime.CUDARuntimeError as exc:
        pytest.skip(f"CuPy sees no GPU: {exc}")
    if count == 0:
        pytest.skip("CuPy sees no GPU")
    return cp


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [torch.int32, torch.bfloat16, torch.uint8])
def test_copy_torch(n: int, dtype: torch.dtype) -> None:
    src = random_words(n, "cuda").view(dtype)
    dst = poison(torch.empty_like(src))
    cuda.copy(dst, src)
    torch.cuda.synchronize()
    assert torch.equal(dst.view(torch.int32), src.view(torch.int32))


@pytest.mark.parametrize("n", SIZES)
def test_read_torch(n: int) -> None:
    src = random_words(n, "cuda")
    out = poison(torch.empty(1, dtype=torch.int64, device="cuda"))
    cuda.read(src, out)
    assert out.item() == wrap64(unsigned_sum(src))


@pytest.mark.parametrize("n", SIZES)
def test_write_torch(n: int) -> None:
    value = int(torch.randint(0, 2**32, ()).item())
    dst = poison(torch.empty(n, dtype=torch.int32, device="cuda"))
    cuda.write(dst, value)
    assert bool((dst == to_i32(value)).all())


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", sorted(patterns.PATTERNS))
def test_pattern_write_matches_reference(n: int, name: str) -> None:
    seed = int(torch.randint(0, 2**32, ()).item())
    buf = poison(torch.empty(n, dtype=torch.int32, device="cuda"))
    cuda.pattern_write(buf, patterns.PATTERNS[name], seed)
    ref = patterns.as_int32(patterns.expected_words(name, 0, n, seed, device="cuda"))
    assert torch.equal(buf, ref)
    assert cuda.pattern_check(buf, patterns.PATTERNS[name], seed, 16) == (n, 0, None, [])


@pytest.mark.parametrize("n", [5, 1_000_003])
@pytest.mark.parametrize("name", sorted(patterns.PATTERNS))
def test_pattern_check_finds_corrupted_words(n: int, name: str) -> None:
    pid, seed = patterns.PATTERNS[name], 12345
    buf = torch.empty(n, dtype=torch.int32, device="cuda")
    cuda.pattern_write(buf, pid, seed)
    want = patterns.expected_words(name, 0, n, seed).tolist()
    bad = {n - 1: want[n - 1] ^ (1 << 17), n // 2: (want[n // 2] + 1) & M32}  # tail and middle
    for i, v in bad.items():
        buf[i] = to_i32(v)
    words, mismatches, first, triples = cuda.pattern_check(buf, pid, seed, 16)
    assert (words, mismatches, first) == (n, 2, min(bad))
    assert triples == [(i, want[i], bad[i]) for i in sorted(bad)]


def test_pattern_check_reports_at_most_max_report() -> None:
    n, pid, seed = 1_000_003, patterns.PATTERNS["random"], 7
    buf = torch.empty(n, dtype=torch.int32, device="cuda")
    cuda.pattern_write(buf, pid, seed)
    idx = torch.randperm(n, device="cuda")[:40]
    buf[idx] = ~buf[idx]
    bad = set(idx.tolist())
    words, mismatches, first, triples = cuda.pattern_check(buf, pid, seed, 16)
    assert (words, mismatches, first, len(triples)) == (n, 40, min(bad), 16)
    assert [t[0] for t in triples] == sorted(t[0] for t in triples)
    want = patterns.expected_words("random", 0, n, seed)
    for i, expected, actual in triples:
        assert i in bad and expected == want[i].item() and actual == (~expected) & M32
    assert cuda.pattern_check(buf, pid, seed, 0) == (n, 40, min(bad), [])


def test_misaligned_cuda_tensor_raises() -> None:
    buf = torch.zeros(17, dtype=torch.int32, device="cuda")[1:]
    with pytest.raises(ValueError, match="mem_write: dst: expected a 16-byte aligned"):
        cuda.write(buf, 1)


def test_torch_non_default_stream() -> None:
    """Work queued behind a long sleep on a side stream: launching anywhere else races."""
    n = 1_000_003
    src = torch.zeros(n, dtype=torch.int32, device="cuda")
    dst = poison(torch.empty_like(src))
    out = poison(torch.empty(1, dtype=torch.int64, device="cuda"))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # tens of ms of GPU time ahead of the work below
        src.fill_(7)
        cuda.copy(dst, src)
        cuda.read(dst, out)
        cuda.pattern_write(src, 1, 3)
        src[n - 2] = 0x7777
        torch.cuda._sleep(50_000_000)
        report = cuda.pattern_check(src, 1, 3, 4)  # waits for `side`
    side.synchronize()
    assert bool((dst == 7).all()) and out.item() == 7 * n
    assert report == (n, 1, n - 2, [(n - 2, (n - 2) ^ 3, 0x7777)])


@pytest.mark.parametrize("n", SIZES)
def test_cupy_arrays(n: int) -> None:
    cp = cupy_or_skip()
    src = cp.arange(n, dtype=cp.uint32) * cp.uint32(2654435761)
    dst = cp.full(n, 0x5A5A5A5A, dtype=cp.uint32)
    cuda.copy(dst, src)
    assert bool(cp.array_equal(dst, src))
    out = cp.full(1, -1, dtype=cp.int64)
    cuda.read(src, out)
    assert int(out[0]) == wrap64(int(src.astype(cp.uint64).sum()))
    cuda.write(dst, 0xDEADBEEF)
    assert bool((dst == cp.uint32(0xDEADBEEF)).all())
    cuda.pattern_write(dst, 2, 99)
    ref = patterns.expected_words("random", 0, n, 99).numpy()
    assert np.array_equal(cp.asnumpy(dst).astype(np.int64), ref)
    assert cuda.pattern_check(dst, 2, 99, 16) == (n, 0, None, [])


def test_cupy_non_default_stream() -> None:
    cp = cupy_or_skip()
    spin = cp.RawKernel(SPIN, "spin")
    n = 1_000_003
    src = cp.zeros(n, dtype=cp.uint32)
    dst = cp.full(n, 0x5A5A5A5A, dtype=cp.uint32)
    cp.cuda.Device().synchronize()
    side = cp.cuda.Stream(non_blocking=True)
    with side:
        spin((1,), (1,), (np.int64(50_000_000),))
        src.fill(9)
        cuda.copy(dst, src)
        cuda.pattern_write(src, 0, 5)
        src[3] = 0
        report = cuda.pattern_check(src, 0, 5, 4)
    side.synchronize()
    assert bool((dst == 9).all())
    assert report == (n, 1, 3, [(3, 1 << 8, 0)])


def test_large_buffers_over_4_gib() -> None:
    """> 2**32 bytes for copy/read/write; > 2**32 words (64-bit indices) for the patterns."""
    n = 2**30 + 3  # 4 GiB + 12 bytes
    need_free_bytes(2 * 4 * n)
    src = random_words(n, "cuda")
    dst = poison(torch.empty_like(src))
    cuda.copy(dst, src)
    assert torch.equal(dst, src)
    out = poison(torch.empty(1, dtype=torch.int64, device="cuda"))
    cuda.read(src, out)
    assert out.item() == wrap64(unsigned_sum(src))
    del src, dst
    torch.cuda.empty_cache()

    n = 2**32 + 5  # 16 GiB + 20 bytes: the sum of all-ones words wraps mod 2**64
    need_free_bytes(4 * n)
    buf = torch.empty(n, dtype=torch.int32, device="cuda")
    cuda.write(buf, M32)
    cuda.read(buf, out)
    assert out.item() == wrap64(n * M32)
    assert buf[0].item() == -1 and buf[-1].item() == -1
    pid, seed = patterns.PATTERNS["random"], 2024
    cuda.pattern_write(buf, pid, seed)
    want = patterns.expected_words("random", n - 8, 8, seed).tolist()
    i = n - 2  # hi = 1: exercises the upper half of the index
    buf[i] = to_i32(want[-2] ^ 1)
    assert cuda.pattern_check(buf, pid, seed, 4) == (n, 1, i, [(i, want[-2], want[-2] ^ 1)])


@pytest.mark.multi_gpu
def test_second_device_while_first_is_current() -> None:
    src = random_words(1_000_003, "cuda:1")
    dst = poison(torch.empty_like(src))
    out = poison(torch.empty(1, dtype=torch.int64, device="cuda:1"))
    with torch.cuda.device(0):
        cuda.copy(dst, src)
        cuda.read(src, out)
        torch.cuda.synchronize(1)
    assert torch.equal(dst, src) and out.item() == wrap64(unsigned_sum(src))
    assert torch.cuda.current_device() == 0
    with pytest.raises(ValueError, match="dst and src: expected the same device"):
        cuda.copy(torch.empty_like(src, device="cuda:0"), src)
