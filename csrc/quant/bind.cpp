// Argument checks and bindings of the w4a16 kernels. Checks (each a ValueError naming the
// argument): dtype, shape, contiguity, 16-byte alignment, CUDA memory, one device; then a GPU
// must exist. The Python side (ops/quant/cuda.py) prepares the repacked layout and padded
// scales/zeros, and owns the K-split workspace and counters.
#include "bind.h"

#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "../common/array_view.h"
#include "../common/launch.h"
#include "../common/validate.h"
#include "w4a16.h"

namespace py = pybind11;

namespace mk::quant {
namespace {

void require(const ArrayView& a, const char* op, const char* name, const std::string& dtype,
             const std::vector<int64_t>& shape) {
  require_dtype(a, dtype, op, name);
  require_shape(a, shape, op, name);
  require_contiguous(a, op, name);
  require_aligned(a, 16, op, name);
}

// After every dtype/shape check: `b` is CUDA memory on `a`'s device.
void same_device(const ArrayView& a, const char* a_name, const ArrayView& b, const char* b_name,
                 const char* op) {
  require_cuda(a, op, a_name);
  require_cuda(b, op, b_name);
  require_same_device(a, a_name, b, b_name, op);
}

int64_t strips_of(int64_t n) { return (n + 31) / 32; }

void w4_repack(const ArrayView& canonical, const ArrayView& repacked, int64_t k, int64_t n) {
  const char* op = "w4_repack";
  require_range(k, 32, int64_t{1} << 30, op, "k");
  require_range(n, 1, int64_t{1} << 30, op, "n");
  if (k % 32) value_error(op, "k: expected a multiple of 32, got " + std::to_string(k));
  require(canonical, op, "canonical", "i32", {k / 8, n});
  require(repacked, op, "repacked", "i32", {strips_of(n), 4 * k});
  same_device(canonical, "canonical", repacked, "repacked", op);
  require_gpu(op);
  const int device = resolve_device(canonical, op, "canonical");
  DeviceGuard guard(device);
  py::gil_scoped_release nogil;
  launch_w4_repack(reinterpret_cast<const int32_t*>(canonical.ptr),
                   reinterpret_cast<int32_t*>(repacked.ptr), k, n, as_stream(canonical.stream));
}

void w4a16_small_m(const ArrayView& x, const ArrayView& repacked, const ArrayView& scales,
                   const std::optional<ArrayView>& zeros, const std::optional<ArrayView>& bias,
                   const ArrayView& out, const std::optional<ArrayView>& workspace,
                   const std::optional<ArrayView>& counters, int64_t group, int64_t split,
                   int64_t path) {
  const char* op = "w4a16_small_m";
  if (x.shape.size() != 2) value_error(op, "x: expected (M, K), got " + shape_str(x.shape));
  if (out.shape.size() != 2) value_error(op, "out: expected (M, N), got " + shape_str(out.shape));
  const int64_t m = x.shape[0], k = x.shape[1], n = out.shape[1];
  require_range(m, 0, 16, op, "x rows (M)");
  require_range(k, 32, int64_t{1} << 30, op, "k");
  require_range(n, 1, int64_t{1} << 30, op, "out columns (N)");
  if (k % 32) value_error(op, "x: in_features must be a multiple of 32, got " + std::to_string(k));
  if (group < 32 || group % 32 || k % group) {
    value_error(op, "group: expected a multiple of 32 dividing K=" + std::to_string(k) + ", got " +
                        std::to_string(group));
  }
  require_range(split, 1, k / 32, op, "split");
  require_range(path, kW4PathAuto, kW4PathWide, op, "path");
  if (path == kW4PathFma && m > w4a16_fma_max_rows()) {
    value_error(op, "path: the fma path serves M <= " + std::to_string(w4a16_fma_max_rows()) +
                        ", got M=" + std::to_string(m));
  }
  const bool bf16 = x.dtype == "bf16";
  if (!bf16 && x.dtype != "f16") value_error(op, "x: expected f16 or bf16, got " + x.dtype);
  const int64_t npad = 32 * strips_of(n);
  require(x, op, "x", x.dtype, {m, k});
  require(repacked, op, "repacked", "i32", {strips_of(n), 4 * k});
  require(scales, op, "scales", x.dtype, {k / group, npad});
  require(out, op, "out", x.dtype, {m, n});
  if (zeros) require(*zeros, op, "zeros", "u8", {k / group, npad});
  if (bias) require(*bias, op, "bias", x.dtype, {n});
  if (split > 1) {
    if (!workspace) value_error(op, "workspace: required when split > 1");
    if (!counters) value_error(op, "counters: required when split > 1");
    require(*workspace, op, "workspace", "f32", {strips_of(n), split, kW4WorkspaceTile});
    require(*counters, op, "counters", "i32", {strips_of(n)});
  }
  same_device(x, "x", repacked, "repacked", op);
  same_device(x, "x", scales, "scales", op);
  same_device(x, "x", out, "out", op);
  if (zeros) same_device(x, "x", *zeros, "zeros", op);
  if (bias) same_device(x, "x", *bias, "bias", op);
  if (split > 1) {
    same_device(x, "x", *workspace, "workspace", op);
    same_device(x, "x", *counters, "counters", op);
  }
  require_gpu(op);
  const int device = resolve_device(x, op, "x");
  DeviceGuard guard(device);
  py::gil_scoped_release nogil;
  launch_w4a16_small_m(
      reinterpret_cast<const void*>(x.ptr), reinterpret_cast<const int32_t*>(repacked.ptr),
      reinterpret_cast<const void*>(scales.ptr),
      zeros ? reinterpret_cast<const uint8_t*>(zeros->ptr) : nullptr,
      bias ? reinterpret_cast<const void*>(bias->ptr) : nullptr, reinterpret_cast<void*>(out.ptr),
      split > 1 ? reinterpret_cast<float*>(workspace->ptr) : nullptr,
      split > 1 ? reinterpret_cast<unsigned*>(counters->ptr) : nullptr, static_cast<int>(m),
      static_cast<int>(n), static_cast<int>(k), static_cast<int>(group), static_cast<int>(split),
      static_cast<int>(path), bf16, as_stream(x.stream));
}

}  // namespace

void bind(py::module_& m) {
  m.def("w4_repack", &w4_repack, py::arg("canonical"), py::arg("repacked"), py::arg("k"),
        py::arg("n"),
        "Repack canonical int32 (K/8, N) 4-bit codes into the w4a16 kernel's tiled "
        "(ceil(N/32), 4K) layout (csrc/quant/w4a16.h).");
  m.def("w4a16_small_m", &w4a16_small_m, py::arg("x"), py::arg("repacked"), py::arg("scales"),
        py::arg("zeros"), py::arg("bias"), py::arg("out"), py::arg("workspace"),
        py::arg("counters"), py::arg("group"), py::arg("split"), py::arg("path") = 0,
        "out (M, N) = x (M, K) @ W^T (+ bias) for M <= 16, one launch; scales/zeros "
        "(G, 32*ceil(N/32)); split > 1 splits K and reduces in the kernel through `workspace` "
        "float32 (ceil(N/32), split, 512) and `counters` int32 (ceil(N/32),), which must be 0 "
        "and are left 0 (launches sharing them must be stream-ordered); path 0 auto (mma), "
        "1 fp32-FMA (M <= 2), 2 mma.sync tensor cores, 3 mma with a 3-stage cp.async weight "
        "pipeline, 4 that pipeline with two strips per block sharing x (wide).");
}

}  // namespace mk::quant
