"""Memory probes through the public API, on every backend that can run here."""

from __future__ import annotations

import pytest
import torch

from millkernels.dispatch import BackendUnavailable, CallFacts
from millkernels.ops import probes
from millkernels.ops.probes import capabilities, custom_ops
from millkernels.ops.probes.capabilities import ProbesCall
from millkernels.ops.probes.patterns import as_int32
from millkernels.testing import random_words

WORD_COUNTS = (1, 5, 1023, 4097, 100_003)  # 1 word, tails, just past a block, many blocks


def _backends(op: str, device: str) -> list:
    """One param per backend of the table; skipped, with the table's reason, where it can't."""
    params = []
    for name in probes.TABLE.names():
        why = probes.TABLE.reason(name, ProbesCall(op=op, device=device, dtype="int32", words=1))
        marks = [pytest.mark.skip(reason=why)] if why else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _unsigned_sum(words: torch.Tensor) -> int:
    return sum(w & 0xFFFFFFFF for w in words.cpu().tolist()) % 2**64


@pytest.mark.parametrize("backend", _backends("mem_copy", DEVICE))
@pytest.mark.parametrize("n", WORD_COUNTS)
def test_copy(backend, n):
    src = random_words(n, DEVICE)
    dst = torch.full_like(src, 0x5A5A5A5A)
    probes.mem_copy(dst, src, backend=backend)
    assert torch.equal(dst, src)


@pytest.mark.parametrize("backend", _backends("mem_copy", DEVICE))
def test_copy_any_dtype_by_bytes(backend):
    src = torch.randn(2 * 1001, device=DEVICE).to(torch.float16)  # 1001 words of fp16 pairs
    dst = torch.full_like(src, float("nan"))
    probes.mem_copy(dst, src, backend=backend)
    assert torch.equal(dst.view(torch.int16), src.view(torch.int16))
    assert torch.equal(src, src.clone())  # the source is untouched


@pytest.mark.parametrize("backend", _backends("mem_read", DEVICE))
@pytest.mark.parametrize("n", WORD_COUNTS)
def test_read_is_unsigned_word_sum(backend, n):
    src = random_words(n, DEVICE)
    before = src.clone()
    total = probes.mem_read(src, backend=backend)
    assert total.dtype == torch.int64 and total.dim() == 0
    assert int(total) % 2**64 == _unsigned_sum(src)
    assert torch.equal(src, before)


@pytest.mark.parametrize("backend", _backends("mem_write", DEVICE))
@pytest.mark.parametrize("n", WORD_COUNTS)
@pytest.mark.parametrize("value", [0, 1, 0xDEADBEEF, 0xFFFFFFFF])
def test_write(backend, n, value):
    dst = random_words(n, DEVICE)
    probes.mem_write(dst, value, backend=backend)
    want = value - 2**32 if value >= 2**31 else value
    assert torch.equal(dst, torch.full_like(dst, want))


@pytest.mark.parametrize("backend", _backends("pattern_check", DEVICE))
@pytest.mark.parametrize("pattern", sorted(probes.PATTERNS))
@pytest.mark.parametrize("n", (1, 37, 4099))
def test_pattern_clean_buffer_passes(backend, pattern, n):
    buf = random_words(n, DEVICE)
    report = probes.pattern_test(buf, pattern, seed=12345, backend=backend)
    assert report.ok and report.mismatches == 0 and report.first_bad_index is None
    assert report.words == n and report.bad == []


@pytest.mark.parametrize("backend", _backends("pattern_check", DEVICE))
@pytest.mark.parametrize("pattern", sorted(probes.PATTERNS))
def test_pattern_finds_corrupted_words(backend, pattern):
    n = 10_007
    buf = random_words(n, DEVICE)
    probes.pattern_write(buf, pattern, seed=7, backend=backend)
    expected = {i: _pattern_value(pattern, i, 7) for i in (3, 5000, 10_006)}
    for i, want in expected.items():  # flip one bit of each, as a failing cell would
        buf[i] = as_int32(torch.tensor(want ^ 0x00010000))
    report = probes.pattern_check(buf, pattern, seed=7, max_report=2, backend=backend)
    assert report.mismatches == 3 and report.first_bad_index == 3
    assert [b.index for b in report.bad] == [3, 5000]
    for b in report.bad:
        assert b.expected == expected[b.index] and b.actual == expected[b.index] ^ 0x00010000


def _pattern_value(pattern: str, i: int, seed: int) -> int:
    """The patterns' definitions with Python integers, independent of the torch code."""

    def mix32(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    lo, hi = i & 0xFFFFFFFF, i >> 32
    if pattern == "walking_ones":
        return 1 << ((i + seed) % 32)
    if pattern == "address":
        return lo ^ hi ^ seed
    return mix32(lo ^ mix32(((hi ^ seed) + 0x9E3779B9) & 0xFFFFFFFF))


@pytest.mark.parametrize("pattern", sorted(probes.PATTERNS))
@pytest.mark.parametrize("start", [0, 2**32 - 3, 5 * 2**32 + 11])
@pytest.mark.parametrize("seed", [0, 1, 0xFFFFFFFF])
def test_pattern_definitions(pattern, start, seed):
    from millkernels.ops.probes.patterns import expected_words

    got = expected_words(pattern, start, 6, seed).tolist()
    assert got == [_pattern_value(pattern, start + j, seed) for j in range(6)]


def test_random_pattern_is_not_degenerate():
    from millkernels.ops.probes.patterns import expected_words

    words = expected_words("random", 0, 4096, 0)
    assert words.unique().numel() == 4096
    bits = sum(((words >> b) & 1).sum().item() for b in range(32)) / (32 * 4096)
    assert 0.45 < bits < 0.55


# --- bad input -----------------------------------------------------------------------------


def test_rejects_non_arrays():
    with pytest.raises(TypeError, match="src: expected a torch.Tensor"):
        probes.mem_read([1, 2, 3])


def test_rejects_non_contiguous():
    x = torch.zeros(64, 2, dtype=torch.int32)[:, 0]
    with pytest.raises(ValueError, match="src: expected a contiguous"):
        probes.mem_read(x)


def test_rejects_misaligned():
    x = torch.zeros(64, dtype=torch.int32)[1:]
    with pytest.raises(ValueError, match="src: expected a 16-byte aligned"):
        probes.mem_read(x)


@pytest.mark.parametrize("nbytes", [0, 6])
def test_rejects_partial_words(nbytes):
    with pytest.raises(ValueError, match="dst: expected a non-empty whole number of 32-bit"):
        probes.mem_write(torch.zeros(nbytes, dtype=torch.uint8))


def test_rejects_size_mismatch():
    with pytest.raises(ValueError, match="dst: expected 20 bytes like src, got 16"):
        probes.mem_copy(torch.zeros(4, dtype=torch.int32), torch.zeros(5, dtype=torch.int32))


@pytest.mark.parametrize(
    ("value", "exc"), [(-1, ValueError), (2**32, ValueError), (1.5, TypeError)]
)
def test_rejects_bad_value(value, exc):
    with pytest.raises(exc, match="value: expected"):
        probes.mem_write(torch.zeros(4, dtype=torch.int32), value)


def test_rejects_bad_pattern_and_seed():
    buf = torch.zeros(4, dtype=torch.int32)
    with pytest.raises(ValueError, match="pattern: expected one of"):
        probes.pattern_write(buf, "checkerboard")
    with pytest.raises(ValueError, match="seed: expected 0 <= seed < 2\\*\\*32"):
        probes.pattern_write(buf, "random", seed=-1)
    with pytest.raises(ValueError, match="max_report"):
        probes.pattern_check(buf, "random", max_report=-1)


def test_named_backend_that_cannot_serve_says_why():
    buf = torch.zeros(4, dtype=torch.int32)
    with pytest.raises(BackendUnavailable, match="'triton' cannot serve probes.pattern_write: the"):
        probes.pattern_write(buf, "random", backend="triton")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="'cuda' cannot serve probes.mem_read"):
            probes.mem_read(buf, backend="cuda")


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend: expected 'auto' or one of"):
        probes.mem_read(torch.zeros(4, dtype=torch.int32), backend="cudnn")


def test_env_override_forces_auto(monkeypatch):
    buf = torch.zeros(4, dtype=torch.int32)
    monkeypatch.setenv("MILLKERNELS_BACKEND", "probes=triton")
    with pytest.raises(BackendUnavailable, match="forced by MILLKERNELS_BACKEND"):
        probes.pattern_write(buf, "random")
    monkeypatch.setenv("MILLKERNELS_BACKEND", "reference")
    assert int(probes.mem_read(torch.ones(4, dtype=torch.int32))) == 4


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
def test_gpu_copy_matches_torch_on_a_side_stream(backend):
    src = random_words(3 * 2**20 + 1, "cuda")
    dst = torch.full_like(src, 0x5A5A5A5A)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        probes.mem_copy(dst, src, backend=backend)
    stream.synchronize()
    assert torch.equal(dst, src)


@pytest.mark.gpu
def test_gpu_backends_agree_on_read():
    src = random_words(5 * 2**20 + 3, "cuda")
    results = {b: int(probes.mem_read(src, backend=b)) for b in ("cuda", "triton", "reference")}
    assert len(set(results.values())) == 1, results


def test_call_facts_are_typed():
    words = random_words(37, "cpu")
    facts = capabilities.call_facts("mem_read", words)
    assert isinstance(facts, ProbesCall) and isinstance(facts, CallFacts)
    assert (facts.op, facts.device, facts.dtype, facts.words) == ("mem_read", "cpu", "int32", 37)


def test_eager_call_skips_the_dispatcher(monkeypatch):
    calls = []
    real = custom_ops.mem_write.op
    monkeypatch.setattr(custom_ops.mem_write, "op", lambda *a: calls.append(a) or real(*a))
    dst = random_words(9, "cpu")
    probes.mem_write(dst, 0xC0FFEE, backend="reference")
    assert calls == [] and torch.equal(dst, torch.full_like(dst, 0xC0FFEE))


@pytest.mark.parametrize("backend", _backends("mem_copy", "cpu"))
def test_ops_compile_fullgraph(backend):
    """The custom ops (what the public functions call after validation) under torch.compile:
    the writes land in the caller's buffer and the read returns the same total as eager."""
    torch._dynamo.reset()

    def step(dst, src):
        custom_ops.mem_copy(dst, src, backend)
        return custom_ops.mem_read(dst, backend)

    src, dst = random_words(1029, "cpu"), torch.full((1029,), 0x5A5A5A5A, dtype=torch.int32)
    total = torch.compile(step, fullgraph=True)(dst, src)
    assert torch.equal(dst, src)
    assert int(total) % 2**64 == _unsigned_sum(src)
