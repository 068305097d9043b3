// Argument checks and bindings of the paged decode kernel. Every check that does not need a GPU
// runs first (ranks, dtypes, shapes, head_dim, strides, alignment, device type, same device), so
// CPU tests reach them with views of CPU tensors; then a GPU must exist. The values inside
// block_table and cache_seqlens are checked by the Python layer (that needs a device sync).
#include "bind.h"

#include <pybind11/stl.h>

#include <cmath>
#include <string>
#include <vector>

#include "../common/array_view.h"
#include "../common/launch.h"
#include "../common/validate.h"
#include "decode.h"

namespace py = pybind11;

namespace mk::attention {
namespace {

constexpr const char* kOp = "attention_decode";

// 16-byte loads: an aligned pointer and every outer stride a multiple of 8 (2-byte) elements.
void require_vector_layout(const ArrayView& a, const char* name) {
  require_unit_last_stride(a, kOp, name);
  require_aligned(a, 16, kOp, name);
  for (size_t d = 0; d + 1 < a.strides.size(); ++d) {
    if (a.shape[d] > 1 && a.strides[d] % 8 != 0) {
      value_error(kOp, std::string(name) +
                           ": expected strides that are multiples of 8 elements "
                           "(16-byte rows), got stride " +
                           std::to_string(a.strides[d]) + " in dimension " + std::to_string(d));
    }
  }
}

void require_int32(int64_t value, const char* name) {
  require_range(value, 0, INT32_MAX, kOp, name);
}

void attention_decode(const ArrayView& q, const ArrayView& k_cache, const ArrayView& v_cache,
                      const ArrayView& block_table, const ArrayView& cache_seqlens,
                      const ArrayView& out, const ArrayView& lse, const ArrayView& o_partial,
                      const ArrayView& lse_partial, int64_t num_splits, int64_t split_tokens,
                      double softmax_scale, double softcap) {
  require_rank(q, 3, kOp, "q", "(batch, heads_q, head_dim)");
  require_rank(k_cache, 4, kOp, "k_cache", "(num_blocks, block_size, heads_kv, head_dim)");
  require_rank(v_cache, 4, kOp, "v_cache", "(num_blocks, block_size, heads_kv, head_dim)");
  require_rank(block_table, 2, kOp, "block_table", "(batch, max_blocks_per_seq)");
  require_rank(cache_seqlens, 1, kOp, "cache_seqlens", "(batch,)");
  if (q.dtype != "f16" && q.dtype != "bf16") {
    value_error(kOp, "q: expected dtype 'f16' or 'bf16', got '" + q.dtype + "'");
  }
  require_dtype(k_cache, q.dtype, kOp, "k_cache");
  require_dtype(v_cache, q.dtype, kOp, "v_cache");
  require_dtype(out, q.dtype, kOp, "out");
  require_dtype(block_table, "i32", kOp, "block_table");
  require_dtype(cache_seqlens, "i32", kOp, "cache_seqlens");
  require_dtype(lse, "f32", kOp, "lse");

  const int64_t batch = q.shape[0], heads_q = q.shape[1], head_dim = q.shape[2];
  const int64_t block_size = k_cache.shape[1], heads_kv = k_cache.shape[2];
  if (head_dim != 64 && head_dim != 128 && head_dim != 256) {
    value_error(kOp, "head_dim: the CUDA decode kernel supports 64, 128 and 256, got " +
                         std::to_string(head_dim));
  }
  require_shape(v_cache, k_cache.shape, kOp, "v_cache");
  if (k_cache.shape[3] != head_dim) {
    value_error(kOp, "k_cache: expected q's head_dim " + std::to_string(head_dim) + ", got " +
                         std::to_string(k_cache.shape[3]));
  }
  if (block_size < 1) value_error(kOp, "k_cache: expected block_size >= 1");
  if (heads_kv < 1 || heads_q % heads_kv != 0) {
    value_error(kOp, "q: expected heads_q a multiple of heads_kv " + std::to_string(heads_kv) +
                         ", got " + std::to_string(heads_q));
  }
  if (block_table.shape[0] != batch) {
    value_error(kOp, "block_table: expected q's batch " + std::to_string(batch) +
                         " rows, got shape " + shape_str(block_table.shape));
  }
  require_shape(cache_seqlens, {batch}, kOp, "cache_seqlens");
  require_shape(out, q.shape, kOp, "out");
  require_shape(lse, {batch, heads_q}, kOp, "lse");
  require_range(num_splits, 1, 256, kOp, "num_splits");
  require_range(split_tokens, 0, INT32_MAX, kOp, "split_tokens");
  if (num_splits > 1) {
    require_dtype(o_partial, "f32", kOp, "o_partial");
    require_dtype(lse_partial, "f32", kOp, "lse_partial");
    require_shape(o_partial, {batch, heads_q, num_splits, head_dim}, kOp, "o_partial");
    require_shape(lse_partial, {batch, heads_q, num_splits}, kOp, "lse_partial");
    require_contiguous(o_partial, kOp, "o_partial");
    require_contiguous(lse_partial, kOp, "lse_partial");
  }
  require_int32(batch * heads_q, "batch * heads_q");
  require_int32(block_size, "block_size");
  require_int32(block_table.shape[1] * block_size, "max_blocks_per_seq * block_size");

  require_vector_layout(q, "q");
  require_vector_layout(k_cache, "k_cache");
  require_vector_layout(v_cache, "v_cache");
  require_unit_last_stride(out, kOp, "out");
  require_unit_last_stride(block_table, kOp, "block_table");
  require_contiguous(cache_seqlens, kOp, "cache_seqlens");
  require_contiguous(lse, kOp, "lse");
  if (!std::isfinite(softmax_scale)) value_error(kOp, "softmax_scale: expected a finite value");
  if (!(std::isfinite(softcap) && softcap >= 0)) {
    value_error(kOp, "softcap: expected a finite value >= 0, got " + std::to_string(softcap));
  }

  const ArrayView* all[] = {&q, &k_cache, &v_cache, &block_table, &cache_seqlens, &out, &lse};
  const char* names[] = {"q", "k_cache", "v_cache", "block_table", "cache_seqlens", "out", "lse"};
  for (int i = 0; i < 7; ++i) require_cuda(*all[i], kOp, names[i]);
  for (int i = 1; i < 7; ++i) require_same_device(q, "q", *all[i], names[i], kOp);
  if (num_splits > 1) {
    require_cuda(o_partial, kOp, "o_partial");
    require_cuda(lse_partial, kOp, "lse_partial");
  }
  require_gpu(kOp);
  const int device = resolve_device(q, kOp, "q");

  DecodeParams p;
  p.q = reinterpret_cast<const void*>(q.ptr);
  p.k = reinterpret_cast<const void*>(k_cache.ptr);
  p.v = reinterpret_cast<const void*>(v_cache.ptr);
  p.block_table = reinterpret_cast<const int32_t*>(block_table.ptr);
  p.seqlens = reinterpret_cast<const int32_t*>(cache_seqlens.ptr);
  p.out = reinterpret_cast<void*>(out.ptr);
  p.lse = reinterpret_cast<float*>(lse.ptr);
  p.o_partial = reinterpret_cast<float*>(o_partial.ptr);
  p.lse_partial = reinterpret_cast<float*>(lse_partial.ptr);
  p.q_stride_b = q.strides[0];
  p.q_stride_h = q.strides[1];
  p.k_stride_block = k_cache.strides[0];
  p.k_stride_slot = k_cache.strides[1];
  p.k_stride_head = k_cache.strides[2];
  p.v_stride_block = v_cache.strides[0];
  p.v_stride_slot = v_cache.strides[1];
  p.v_stride_head = v_cache.strides[2];
  p.bt_stride = block_table.strides[0];
  p.out_stride_b = out.strides[0];
  p.out_stride_h = out.strides[1];
  p.batch = static_cast<int>(batch);
  p.heads_q = static_cast<int>(heads_q);
  p.heads_kv = static_cast<int>(heads_kv);
  p.head_dim = static_cast<int>(head_dim);
  p.block_size = static_cast<int>(block_size);
  p.num_splits = static_cast<int>(num_splits);
  p.split_tokens = static_cast<int>(split_tokens);
  p.softmax_scale = static_cast<float>(softmax_scale);
  p.softcap = static_cast<float>(softcap);
  const DecodeDtype dtype = q.dtype == "f16" ? DecodeDtype::kF16 : DecodeDtype::kBF16;
  DeviceGuard guard(device);
  py::gil_scoped_release nogil;
  launch_decode(p, dtype, as_stream(q.stream));
}

}  // namespace

void bind(py::module_& m) {
  m.def("attention_decode", &attention_decode, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
        py::arg("block_table"), py::arg("cache_seqlens"), py::arg("out"), py::arg("lse"),
        py::arg("o_partial"), py::arg("lse_partial"), py::arg("num_splits"),
        py::arg("split_tokens"), py::arg("softmax_scale"), py::arg("softcap"),
        "Paged-KV decode attention into out (batch, heads_q, head_dim) and lse (batch, heads_q) "
        "f32; with num_splits > 1, o_partial (batch, heads_q, num_splits, head_dim) and "
        "lse_partial (batch, heads_q, num_splits) f32 are workspace. A sequence of n tokens uses "
        "ceil(n / split_tokens) of the splits (at least 1; split_tokens 0: all). Async on "
        "q.stream.");
  m.def("attention_decode_heads_per_cta", &decode_heads_per_cta, py::arg("group"),
        "Query heads one decode CTA handles for a GQA group size (grid sizing).");
}

}  // namespace mk::attention
