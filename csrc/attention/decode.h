// Paged-KV decode attention (flash-decoding): one query token per sequence against a KV cache
// stored in pages of block_size tokens, read through a block table. Split-KV partial results
// are merged by a log-sum-exp combine kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mk::attention {

enum class DecodeDtype { kF16, kBF16 };

// Strides are in elements. Every pointer except block_table/seqlens/lse/partials is 16-byte
// aligned and every stride but the last dimension's (which is 1) is a multiple of 8 elements:
// the kernel moves K/V rows 16 bytes per lane (the bindings check it).
struct DecodeParams {
  const void* q = nullptr;  // (batch, heads_q, head_dim)
  const void* k = nullptr;  // (num_blocks, block_size, heads_kv, head_dim)
  const void* v = nullptr;
  const int32_t* block_table = nullptr;  // (batch, max_blocks), row stride bt_stride
  const int32_t* seqlens = nullptr;      // (batch,), contiguous
  void* out = nullptr;                   // (batch, heads_q, head_dim)
  float* lse = nullptr;                  // (batch, heads_q), contiguous
  float* o_partial = nullptr;    // (batch, heads_q, num_splits, head_dim) contiguous, splits > 1
  float* lse_partial = nullptr;  // (batch, heads_q, num_splits) contiguous, splits > 1
  int64_t q_stride_b = 0, q_stride_h = 0;
  int64_t k_stride_block = 0, k_stride_slot = 0, k_stride_head = 0;
  int64_t v_stride_block = 0, v_stride_slot = 0, v_stride_head = 0;
  int64_t bt_stride = 0;
  int64_t out_stride_b = 0, out_stride_h = 0;
  int batch = 0, heads_q = 0, heads_kv = 0, head_dim = 0;
  int block_size = 1;
  int num_splits = 1;    // grid splits per sequence (the partials' second-to-last extent)
  int split_tokens = 0;  // tokens per live split; 0: every split is live (see decode.cu)
  float softmax_scale = 1.f;
  float softcap = 0.f;  // > 0: scores x -> softcap * tanh(x / softcap)
};

// Query heads one CTA handles (a power of two, <= 8) for a GQA group of `group` query heads.
int decode_heads_per_cta(int group);

// Launches the split kernel (and the combine kernel when num_splits > 1) on `stream`.
// head_dim must be 64, 128 or 256.
void launch_decode(const DecodeParams& p, DecodeDtype dtype, cudaStream_t stream);

}  // namespace mk::attention
