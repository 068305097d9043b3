"""Offline analysis of CUDA sources with nvcc: per-kernel registers, shared memory, mma."""

from __future__ import annotations

import shutil

import pytest

from millkernels.analyze import tools
from millkernels.analyze.cuda_compile import analyze_cuda, find_csrc
from millkernels.analyze.registry import Registry
from millkernels.analyze.report import ARCHS
from millkernels.ops.analysis_spec import CudaHot, Expect

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")

TINY_CU = r"""
#include <mma.h>
#include <cuda_bf16.h>

__global__ void tiny_smem(float* out) {
  __shared__ float buf[1024];  // 4096 bytes of static shared memory
  buf[threadIdx.x] = threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = buf[1023 - threadIdx.x];
}

namespace demo {
template <int N>
__global__ void scaled(float* x) { x[threadIdx.x] *= N; }
template __global__ void scaled<2>(float*);
template __global__ void scaled<3>(float*);
}  // namespace demo

__global__ void tiny_mma(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fc, 0.0f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}
"""


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_tiny_cu_file(tmp_path, arch):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "tiny.cu").write_text(TINY_CU)
    reports, missing = analyze_cuda(
        ARCHS[arch], {"tiny_smem", "demo::scaled", "no_such_kernel"}, csrc=tmp_path
    )
    assert missing is None
    by = {(r.kernel, r.variant): r for r in reports}
    smem = by[("tiny_smem", "")]
    assert smem.backend == "cuda" and smem.arch == arch and smem.status == "ok"
    assert smem.shared_bytes == 4096
    assert smem.registers and smem.registers > 0
    assert smem.spill_bytes == 0
    assert smem.hot and smem.source == "tiny/tiny.cu"
    assert smem.symbol.startswith("tiny_smem(")
    assert by[("scaled", "<2>")].hot and by[("scaled", "<3>")].hot  # by qualified name
    assert "demo::scaled<3>" in by[("scaled", "<3>")].symbol
    mma = by[("tiny_mma", "")]
    assert mma.tensor_core_ops == ["HMMA"] and not mma.hot
    assert mma.tensor_core_counts["HMMA"] >= 1
    # a hot name that matches no kernel is an error, so a typo cannot pass --check
    missing_hot = by[("no_such_kernel", "")]
    assert missing_hot.status == "error" and missing_hot.failed


@needs_nvcc
def test_cuda_expects_and_kernel_selection(tmp_path):
    """CudaHot's Expects are judged on the kernel's SASS (``__syncthreads`` is a CTA-wide
    barrier); ``only`` compiles and reports the matching kernels; an Expect for a kernel that
    does not exist is an error."""
    (tmp_path / "tiny.cu").write_text(TINY_CU)
    (tmp_path / "other.cu").write_text("__global__ void unrelated(int* x) { x[0] = 1; }\n")
    reg = Registry()
    reg.collect(
        [
            CudaHot(
                ("tiny_smem", "ghost_kernel"),
                expect={
                    "tiny_smem": [
                        Expect("kernel.op.BAR", "==", 1, "one __syncthreads"),
                        Expect("loops", "==", 1, "wrongly expects a loop"),
                    ],
                    "ghost_kernel": [Expect("loops", "==", 0, "no such kernel")],
                },
            )
        ]
    )
    reports, _ = analyze_cuda(
        ARCHS["sm_90"], reg.cuda_hot, csrc=tmp_path, expects=reg.cuda_expect, only=["smem", "gh"]
    )
    by = {r.kernel: r for r in reports}
    assert set(by) == {"tiny_smem", "ghost_kernel"}
    smem = by["tiny_smem"]
    assert [e["holds"] for e in smem.expect] == [True, False]
    assert smem.metrics["loops"] == 0 and smem.failed
    assert by["ghost_kernel"].status == "error"


@needs_nvcc
def test_cu_file_that_does_not_compile_is_an_error_row(tmp_path):
    (tmp_path / "ok.cu").write_text("__global__ void fine(int* x) { x[0] = 1; }\n")
    (tmp_path / "broken.cu").write_text("__global__ void oops(int* x) { x[0] = ; }\n")
    reports, _ = analyze_cuda(ARCHS["sm_80"], {"oops"}, csrc=tmp_path)
    by = {r.kernel: r for r in reports}
    assert by["fine"].status == "ok"
    broken = by["broken.cu"]
    assert broken.status == "error" and "error" in broken.reason.lower()
    assert broken.hot  # it defines a kernel marked hot
    assert broken.failed


def test_without_nvcc_kernels_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(tools, "find_nvcc", lambda: None)
    (tmp_path / "k.cu").write_text("__global__ void k() {}\n")
    reports, missing = analyze_cuda(ARCHS["sm_90"], set(), csrc=tmp_path)
    assert missing and "nvcc" in missing
    assert [(r.kernel, r.status) for r in reports] == [("k.cu", "skipped")]
    assert "nvcc" in reports[0].reason and not reports[0].failed


def test_no_sources(tmp_path):
    reports, missing = analyze_cuda(ARCHS["sm_90"], set(), csrc=tmp_path)
    assert reports == [] and "no .cu files" in missing


def test_package_sources_are_found():
    csrc = find_csrc()
    assert csrc is not None and (csrc / "module.cpp").is_file()


@pytest.mark.native
def test_without_nvcc_the_built_extension_is_read(monkeypatch):
    monkeypatch.setattr(tools, "find_nvcc", lambda: None)
    if tools.find_tool("cuobjdump") is None:
        pytest.skip("no cuobjdump")
    reports, missing = analyze_cuda(ARCHS["sm_90"], set())  # the package's own kernels
    assert missing is None and reports
    assert all(r.backend == "cuda" and r.source == "millkernels._C" for r in reports)
    assert all(r.registers and r.spill_bytes is None and r.status != "error" for r in reports)
    assert all("spills unknown" in r.reason for r in reports)
