// Paged-KV decode attention: split kernel and combine kernel (see decode.h).
//
// A CTA of kWarps warps handles one (sequence, key/value head, chunk of <= 8 query heads of its
// GQA group, split). Each K/V row (one token of one head, head_dim elements) is read by a "row
// group" of head_dim / 8 lanes, 16 bytes per lane, so a warp covers 256 / head_dim tokens per
// load and every KV page is read once for all the query heads of the chunk. Each row group runs
// its own online softmax over the tokens it visits (kUnroll tokens per step, all their K and V
// loads issued before the first use); at the end the row groups are merged through shared
// memory. With one split the CTA writes the output; otherwise it writes a float32 partial and
// its log-sum-exp, and the combine kernel merges the splits.
//
// Live splits: the grid has num_splits splits per sequence (sized on the host from the table's
// capacity), but a sequence of n tokens uses only live_splits(n) of them, about split_tokens
// tokens each (decode_plan.live_splits in Python is the same rule). CTAs past the live range
// exit at once; when one split is live it writes the output itself and the combine skips the
// row. split_tokens 0 keeps every split live (the previous rule, for comparisons).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "../common/check.h"
#include "decode.h"

namespace mk::attention {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <typename T>
struct Vec;

template <>
struct Vec<__half> {
  __device__ __forceinline__ static void to_float(const uint4& raw, float (&f)[8]) {
    const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 x = __half22float2(h[i]);
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    }
  }
  __device__ __forceinline__ static __half from_float(float x) { return __float2half_rn(x); }
};

template <>
struct Vec<__nv_bfloat16> {
  __device__ __forceinline__ static void to_float(const uint4& raw, float (&f)[8]) {
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // bf16 -> fp32 is a shift: exact and cheap
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
  __device__ __forceinline__ static __nv_bfloat16 from_float(float x) {
    return __float2bfloat16_rn(x);
  }
};

// Read-only 16-byte load that bypasses L1 allocation for streamed K/V.
__device__ __forceinline__ uint4 load_stream(const void* ptr) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(ptr));
  return r;
}

// Splits that hold tokens of a sequence of seqlen tokens: ceil(seqlen / split_tokens) in
// [1, num_splits]; every split when split_tokens is 0.
__device__ __forceinline__ int live_splits(int seqlen, int split_tokens, int num_splits) {
  if (split_tokens <= 0) return num_splits;
  const int want = (seqlen + split_tokens - 1) / split_tokens;
  return max(1, min(want, num_splits));
}

template <int D, int G>
struct alignas(16) SplitShared {
  static constexpr int kLanesPerRow = D / 8;
  static constexpr int kRowsPerWarp = 32 / kLanesPerRow;
  static constexpr int kRows = kWarps * kRowsPerWarp;
  float m[kRows][G];
  float l[kRows][G];
  float acc[kRows][G][D];
};

// Grid: (batch * heads_kv, chunks of the GQA group, num_splits).
template <typename T, int D, int G>
__global__ void __launch_bounds__(kThreads) decode_split_kernel(const DecodeParams p) {
  using S = SplitShared<D, G>;
  constexpr int kLanes = S::kLanesPerRow;
  constexpr int kRows = S::kRows;
  constexpr int kUnroll = G >= 8 ? 2 : 4;
  __shared__ S sm;

  const int b = blockIdx.x / p.heads_kv;
  const int h = blockIdx.x % p.heads_kv;
  const int group = p.heads_q / p.heads_kv;
  const int g0 = blockIdx.y * G;  // first query head of the chunk, within the group
  const int split = blockIdx.z;
  const int seqlen = p.seqlens[b];
  const int live = live_splits(seqlen, p.split_tokens, p.num_splits);
  if (split >= live) return;  // the whole CTA: before any barrier
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = warp * S::kRowsPerWarp + lane / kLanes;  // this lane's row group
  const int sub = lane % kLanes;                           // its 8 elements: sub*8 .. sub*8+7
  const bool use_cap = p.softcap > 0.f;
  const float qscale = use_cap ? p.softmax_scale : p.softmax_scale * kLog2e;

  float q[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const int gi = g0 + g;
    if (gi < group) {
      const T* qp = static_cast<const T*>(p.q) + b * p.q_stride_b +
                    static_cast<int64_t>(h * group + gi) * p.q_stride_h + sub * 8;
      Vec<T>::to_float(*reinterpret_cast<const uint4*>(qp), q[g]);
#pragma unroll
      for (int e = 0; e < 8; ++e) q[g][e] *= qscale;
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) q[g][e] = 0.f;
    }
  }

  const int chunk = (seqlen + live - 1) / live;
  const int lo = split * chunk;
  const int hi = min(lo + chunk, seqlen);
  const int32_t* table = p.block_table + b * p.bt_stride;
  const bool pow2 = (p.block_size & (p.block_size - 1)) == 0;
  const int shift = __ffs(p.block_size) - 1;
  const char* kbase = static_cast<const char*>(p.k) +
                      (h * p.k_stride_head + sub * 8) * static_cast<int64_t>(sizeof(T));
  const char* vbase = static_cast<const char*>(p.v) +
                      (h * p.v_stride_head + sub * 8) * static_cast<int64_t>(sizeof(T));

  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.f;
  }

  for (int base = lo; base < hi; base += kRows * kUnroll) {
    uint4 kraw[kUnroll], vraw[kUnroll];
    bool ok[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int t = base + u * kRows + row;
      ok[u] = t < hi;
      kraw[u] = make_uint4(0, 0, 0, 0);
      vraw[u] = make_uint4(0, 0, 0, 0);
      if (ok[u]) {
        const int blk = pow2 ? t >> shift : t / p.block_size;
        const int slot = pow2 ? t & (p.block_size - 1) : t - blk * p.block_size;
        const int64_t page = table[blk];
        kraw[u] = load_stream(kbase + (page * p.k_stride_block + slot * p.k_stride_slot) *
                                          static_cast<int64_t>(sizeof(T)));
        vraw[u] = load_stream(vbase + (page * p.v_stride_block + slot * p.v_stride_slot) *
                                          static_cast<int64_t>(sizeof(T)));
      }
    }
    float s[kUnroll][G];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float kf[8];
      Vec<T>::to_float(kraw[u], kf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float x = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) x = fmaf(q[g][e], kf[e], x);
#pragma unroll
        for (int off = kLanes / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
        if (use_cap) x = p.softcap * tanhf(x / p.softcap) * kLog2e;
        s[u][g] = ok[u] ? x : -INFINITY;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) mx = fmaxf(mx, s[u][g]);
      const float ref = mx == -INFINITY ? 0.f : mx;  // no visible token yet: avoid inf - inf
      const float alpha = exp2f(m[g] - ref);
      m[g] = mx;
      l[g] *= alpha;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] *= alpha;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) s[u][g] = exp2f(s[u][g] - ref);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float vf[8];
      Vec<T>::to_float(vraw[u], vf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        l[g] += s[u][g];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(s[u][g], vf[e], acc[g][e]);
      }
    }
  }

  // Merge the row groups of the CTA.
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (sub == 0) {
      sm.m[row][g] = m[g];
      sm.l[row][g] = l[g];
    }
    float4* dst = reinterpret_cast<float4*>(&sm.acc[row][g][sub * 8]);
    dst[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
    dst[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
  }
  __syncthreads();

  const int64_t rows_q = static_cast<int64_t>(b) * p.heads_q + h * group + g0;
  for (int idx = threadIdx.x; idx < G * D; idx += kThreads) {
    const int g = idx / D, d = idx % D;
    if (g0 + g >= group) break;  // idx grows with g: the rest are padding heads too
    float mx = -INFINITY;
#pragma unroll
    for (int r = 0; r < kRows; ++r) mx = fmaxf(mx, sm.m[r][g]);
    const float ref = mx == -INFINITY ? 0.f : mx;
    float total = 0.f, o = 0.f;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float w = exp2f(sm.m[r][g] - ref);
      total = fmaf(w, sm.l[r][g], total);
      o = fmaf(w, sm.acc[r][g][d], o);
    }
    const bool any = total > 0.f;
    o = any ? o / total : 0.f;
    const float lse = any ? (mx + log2f(total)) * kLn2 : -INFINITY;
    const int64_t rq = rows_q + g;  // b * heads_q + query head
    if (live == 1) {
      T* out = static_cast<T*>(p.out) + b * p.out_stride_b +
               (rq - int64_t{b} * p.heads_q) * p.out_stride_h;
      out[d] = Vec<T>::from_float(o);
      if (d == 0) p.lse[rq] = lse;
    } else {
      const int64_t pr = rq * p.num_splits + split;
      p.o_partial[pr * D + d] = o;
      if (d == 0) p.lse_partial[pr] = lse;
    }
  }
}

// Grid: batch * heads_q CTAs of head_dim threads; thread d merges element d of every split.
template <typename T>
__global__ void __launch_bounds__(256) decode_combine_kernel(const DecodeParams p) {
  const int64_t rq = blockIdx.x;  // b * heads_q + query head
  const int b = static_cast<int>(rq / p.heads_q), hq = static_cast<int>(rq % p.heads_q);
  const int d = threadIdx.x;
  const int live = live_splits(p.seqlens[b], p.split_tokens, p.num_splits);
  if (live == 1) return;  // the split kernel wrote this row
  const float* lse = p.lse_partial + rq * p.num_splits;
  const float* po = p.o_partial + rq * p.num_splits * p.head_dim + d;
  float mx = -INFINITY;
  for (int s = 0; s < live; ++s) mx = fmaxf(mx, lse[s]);
  const float ref = mx == -INFINITY ? 0.f : mx;
  float total = 0.f, o = 0.f;
  for (int s = 0; s < live; ++s) {
    const float w = __expf(lse[s] - ref);
    total += w;
    o = fmaf(w, po[static_cast<int64_t>(s) * p.head_dim], o);
  }
  const bool any = total > 0.f;
  T* out = static_cast<T*>(p.out) + b * p.out_stride_b + hq * p.out_stride_h;
  out[d] = Vec<T>::from_float(any ? o / total : 0.f);
  if (d == 0) p.lse[rq] = any ? ref + logf(total) : -INFINITY;
}

template <typename T, int D, int G>
void launch_split(const DecodeParams& p, cudaStream_t stream) {
  const int group = p.heads_q / p.heads_kv;
  const dim3 grid(p.batch * p.heads_kv, (group + G - 1) / G, p.num_splits);
  decode_split_kernel<T, D, G><<<grid, kThreads, 0, stream>>>(p);
  MK_CHECK_LAUNCH("decode_split_kernel");
}

template <typename T, int D>
void launch_for_dim(const DecodeParams& p, cudaStream_t stream) {
  switch (decode_heads_per_cta(p.heads_q / p.heads_kv)) {
    case 1:
      return launch_split<T, D, 1>(p, stream);
    case 2:
      return launch_split<T, D, 2>(p, stream);
    case 4:
      return launch_split<T, D, 4>(p, stream);
    default:
      return launch_split<T, D, 8>(p, stream);
  }
}

template <typename T>
void launch_typed(const DecodeParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64:
      launch_for_dim<T, 64>(p, stream);
      break;
    case 128:
      launch_for_dim<T, 128>(p, stream);
      break;
    case 256:
      launch_for_dim<T, 256>(p, stream);
      break;
    default:
      throw CudaError("decode_split_kernel: unsupported head_dim");
  }
  if (p.num_splits > 1) {
    decode_combine_kernel<T><<<p.batch * p.heads_q, p.head_dim, 0, stream>>>(p);
    MK_CHECK_LAUNCH("decode_combine_kernel");
  }
}

}  // namespace

int decode_heads_per_cta(int group) {
  int g = 1;
  while (g < group && g < 8) g *= 2;
  return g;
}

void launch_decode(const DecodeParams& p, DecodeDtype dtype, cudaStream_t stream) {
  if (p.batch == 0 || p.heads_q == 0) return;
  if (dtype == DecodeDtype::kF16) {
    launch_typed<__half>(p, stream);
  } else {
    launch_typed<__nv_bfloat16>(p, stream);
  }
}

}  // namespace mk::attention
