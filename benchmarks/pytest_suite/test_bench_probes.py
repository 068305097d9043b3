"""Memory probes: copy / read / write bandwidth and the pattern test, per backend, with torch's
``copy_`` / ``sum`` / ``fill_`` as the baseline (backend ``torch``)."""

from __future__ import annotations

import pytest
import torch

from millkernels.bench.suites import probes as probes_suite
from millkernels.dispatch import BACKENDS

GPU = torch.cuda.is_available()

#: The ``probes`` suite's buffer size (``millkernels bench``, quick), its written word and seed.
NBYTES = (probes_suite.buffer_bytes(GPU, quick=True),)
WRITE_VALUE = probes_suite.WRITE_VALUE
SEED = probes_suite.PATTERN_SEED


def _signed(word: int) -> int:
    return word - 2**32 if word >= 2**31 else word


def _words(nbytes: int, device: str) -> torch.Tensor:
    return torch.randint(-(2**31), 2**31 - 1, (nbytes // 4,), dtype=torch.int32, device=device)


def _unsigned_sum(words: torch.Tensor) -> int:
    return int((words.to(torch.int64) & 0xFFFFFFFF).sum()) % 2**64


@pytest.mark.parametrize("backend", ("torch", *BACKENDS))
@pytest.mark.parametrize("nbytes", NBYTES, ids=lambda n: f"{n >> 10}KiB")
def test_mem_copy(mk_bench, mk_family, mk_call, device, nbytes, backend) -> None:
    ops = mk_family("millkernels.ops.probes", "mem_copy")
    src = _words(nbytes, device)
    dst = torch.full((nbytes // 4,), -1, dtype=torch.int32, device=device)
    if backend == "torch":
        fn = lambda: dst.copy_(src)
    else:
        fn = lambda: ops.mem_copy(dst, src, backend=backend)
    mk_call(fn)
    assert torch.equal(dst, src)
    mk_bench(fn, family="probes", op="mem_copy", shape={"bytes": nbytes}, dtype="u32",
             backend=backend, bytes=2 * nbytes)  # fmt: skip


@pytest.mark.parametrize("backend", ("torch", *BACKENDS))
@pytest.mark.parametrize("nbytes", NBYTES, ids=lambda n: f"{n >> 10}KiB")
def test_mem_read(mk_bench, mk_family, mk_call, device, nbytes, backend) -> None:
    ops = mk_family("millkernels.ops.probes", "mem_read")
    src = _words(nbytes, device)
    if backend == "torch":
        fn = lambda: src.sum()
    else:
        fn = lambda: ops.mem_read(src, backend=backend)
        got = int(mk_call(fn)) % 2**64
        assert got == _unsigned_sum(src)
    mk_bench(fn, family="probes", op="mem_read", shape={"bytes": nbytes}, dtype="u32",
             backend=backend, bytes=nbytes)  # fmt: skip


@pytest.mark.parametrize("backend", ("torch", *BACKENDS))
@pytest.mark.parametrize("nbytes", NBYTES, ids=lambda n: f"{n >> 10}KiB")
def test_mem_write(mk_bench, mk_family, mk_call, device, nbytes, backend) -> None:
    ops = mk_family("millkernels.ops.probes", "mem_write")
    dst = _words(nbytes, device)
    if backend == "torch":
        fn = lambda: dst.fill_(_signed(WRITE_VALUE))
    else:
        fn = lambda: ops.mem_write(dst, WRITE_VALUE, backend=backend)
    mk_call(fn)
    assert bool((dst == _signed(WRITE_VALUE)).all())
    mk_bench(fn, family="probes", op="mem_write", shape={"bytes": nbytes}, dtype="u32",
             backend=backend, bytes=nbytes)  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_pattern_test(mk_bench, mk_family, mk_call, device, backend) -> None:
    ops = mk_family("millkernels.ops.probes", "pattern_test", "pattern_check")
    nbytes = NBYTES[-1]
    buf = _words(nbytes, device)
    fn = lambda: ops.pattern_test(buf, "random", seed=SEED, backend=backend)
    report = mk_call(fn)
    assert report.mismatches == 0
    buf[buf.numel() // 3] ^= 1 << 5  # a flipped bit must be found
    found = ops.pattern_check(buf, "random", seed=SEED, backend=backend)
    assert found.mismatches == 1 and found.first_bad_index == buf.numel() // 3
    mk_bench(fn, family="probes", op="pattern_test", shape={"bytes": nbytes, "pattern": "random"},
             dtype="u32", backend=backend, bytes=2 * nbytes)  # fmt: skip
