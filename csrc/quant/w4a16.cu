// w4a16 GEMV-style kernel for M = 1..16 (decode) and the repack kernel; see w4a16.h.
//
// Each warp owns one output column at a time; its 32 lanes stream 32 consecutive 16-byte
// chunks of the column (32 codes each, within one group), so a warp reads 512 contiguous bytes
// per step. Codes become floats with a magic-number trick: lop3 computes
// (word & 0x000F000F) | 0x64006400, the fp16 pair (1024 + a, 1024 + b) (bf16: | 0x43004300
// gives 128 + a), widened to fp32, and (magic + zero) is subtracted exactly: no per-element
// integer-to-float conversion instruction. Products accumulate in fp32, scaled once per chunk;
// lanes reduce with shuffles. K may be split over gridDim.y into float32 partials.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../common/check.h"
#include "w4a16.h"

namespace mk::quant {
namespace {

constexpr int kWarps = 4;        // warps per block
constexpr int kColsPerWarp = 2;  // output columns each warp handles, one after the other
constexpr int kChunk = 32;       // codes per 16-byte load

__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;  // (a & b) | c
}

template <typename T>
struct Num;

template <>
struct Num<__half> {
  static constexpr uint32_t kMagic = 0x64006400u;  // fp16 1024.0 in both halves
  static constexpr float kBase = 1024.0f;
  __device__ static float2 pair(uint32_t bits) {
    __half2 h;
    memcpy(&h, &bits, 4);
    return __half22float2(h);
  }
  __device__ static float one(__half v) { return __half2float(v); }
  __device__ static __half from(float v) { return __float2half_rn(v); }
};

template <>
struct Num<__nv_bfloat16> {
  static constexpr uint32_t kMagic = 0x43004300u;  // bf16 128.0 in both halves
  static constexpr float kBase = 128.0f;
  __device__ static float2 pair(uint32_t bits) {
    __nv_bfloat162 h;
    memcpy(&h, &bits, 4);
    return __bfloat1622float2(h);
  }
  __device__ static float one(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};

// Dot product of 32 weights with one 32-element slice of an x row (4 x 16-byte loads).
template <typename T>
__device__ __forceinline__ float dot32(const float (&w)[kChunk], const uint4* xs) {
  float sum = 0.f;
#pragma unroll
  for (int v = 0; v < 4; ++v) {
    const uint4 q = __ldg(xs + v);
    const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = Num<T>::pair(words[i]);
      sum = fmaf(f.x, w[8 * v + 2 * i], sum);
      sum = fmaf(f.y, w[8 * v + 2 * i + 1], sum);
    }
  }
  return sum;
}

template <typename T, int MT>
__global__ void __launch_bounds__(kWarps * 32, 4)
    w4a16_small_m_kernel(const T* __restrict__ x, const uint4* __restrict__ w,
                         const T* __restrict__ scales_t, const uint8_t* __restrict__ zeros_t,
                         const T* __restrict__ bias, T* __restrict__ out,
                         float* __restrict__ partial, int m, int n, int k, int group,
                         int chunks_per_split) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int kchunks = k / kChunk;
  const int groups = k / group;
  const int chunks_per_group = group / kChunk;
  const int c_begin = blockIdx.y * chunks_per_split;
  const int c_end = min(c_begin + chunks_per_split, kchunks);
  for (int j = 0; j < kColsPerWarp; ++j) {
    const int col = (blockIdx.x * kWarps + warp) * kColsPerWarp + j;
    if (col >= n) break;  // uniform across the warp
    float acc[MT];
#pragma unroll
    for (int r = 0; r < MT; ++r) acc[r] = 0.f;
    const uint4* wcol = w + static_cast<int64_t>(col) * kchunks;
    const T* scol = scales_t + static_cast<int64_t>(col) * groups;
    const uint8_t* zcol = zeros_t ? zeros_t + static_cast<int64_t>(col) * groups : nullptr;
#pragma unroll 2
    for (int c = c_begin + lane; c < c_end; c += 32) {
      const uint4 q = __ldg(wcol + c);
      const int g = c / chunks_per_group;
      const float s = Num<T>::one(scol[g]);
      const float zb = Num<T>::kBase + (zcol ? static_cast<float>(__ldg(zcol + g)) : 8.f);
      const uint32_t words[4] = {q.x, q.y, q.z, q.w};
      float wv[kChunk];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int sh = 0; sh < 4; ++sh) {
          // nibble positions sh and sh + 4 hold elements 2*sh and 2*sh + 1 (repacked order)
          const float2 f =
              Num<T>::pair(lop3_and_or(words[i] >> (4 * sh), 0x000F000Fu, Num<T>::kMagic));
          wv[8 * i + 2 * sh] = f.x - zb;
          wv[8 * i + 2 * sh + 1] = f.y - zb;
        }
      }
#pragma unroll
      for (int r = 0; r < MT; ++r) {
        if (r < m) {
          const uint4* xs = reinterpret_cast<const uint4*>(x + static_cast<int64_t>(r) * k +
                                                           static_cast<int64_t>(c) * kChunk);
          acc[r] = fmaf(dot32<T>(wv, xs), s, acc[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < MT; ++r) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
    }
#pragma unroll
    for (int r = 0; r < MT; ++r) {
      if (lane == r && r < m) {  // lane r writes row r (compile-time register index)
        if (partial != nullptr) {
          partial[(static_cast<int64_t>(blockIdx.y) * m + r) * n + col] = acc[r];
        } else {
          const float b = bias ? Num<T>::one(bias[col]) : 0.f;
          out[static_cast<int64_t>(r) * n + col] = Num<T>::from(acc[r] + b);
        }
      }
    }
  }
}

__global__ void w4_repack_kernel(const int32_t* __restrict__ canonical,
                                 int32_t* __restrict__ repacked, int64_t kw, int64_t n) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= kw * n) return;
  const int64_t col = idx / kw;
  const int64_t word = idx % kw;
  const uint32_t src = static_cast<uint32_t>(canonical[word * n + col]);
  constexpr int kOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};  // element held by nibble position p
  uint32_t dst = 0;
#pragma unroll
  for (int p = 0; p < 8; ++p) dst |= ((src >> (4 * kOrder[p])) & 0xFu) << (4 * p);
  repacked[col * kw + word] = static_cast<int32_t>(dst);
}

template <typename T, int MT>
void launch_typed(const void* x, const int32_t* repacked, const void* scales_t,
                  const uint8_t* zeros_t, const void* bias, void* out, float* partial, int m, int n,
                  int k, int group, int split, cudaStream_t stream) {
  const int kchunks = k / kChunk;
  const int per_split = (kchunks + split - 1) / split;
  const dim3 grid((n + kWarps * kColsPerWarp - 1) / (kWarps * kColsPerWarp), split);
  w4a16_small_m_kernel<T, MT><<<grid, kWarps * 32, 0, stream>>>(
      static_cast<const T*>(x), reinterpret_cast<const uint4*>(repacked),
      static_cast<const T*>(scales_t), zeros_t, static_cast<const T*>(bias), static_cast<T*>(out),
      split > 1 ? partial : nullptr, m, n, k, group, per_split);
  MK_CHECK_LAUNCH("w4a16_small_m_kernel");
}

template <typename T>
void launch_m(const void* x, const int32_t* repacked, const void* scales_t, const uint8_t* zeros_t,
              const void* bias, void* out, float* partial, int m, int n, int k, int group,
              int split, cudaStream_t stream) {
  if (m <= 1) {
    launch_typed<T, 1>(x, repacked, scales_t, zeros_t, bias, out, partial, m, n, k, group, split,
                       stream);
  } else if (m <= 2) {
    launch_typed<T, 2>(x, repacked, scales_t, zeros_t, bias, out, partial, m, n, k, group, split,
                       stream);
  } else if (m <= 4) {
    launch_typed<T, 4>(x, repacked, scales_t, zeros_t, bias, out, partial, m, n, k, group, split,
                       stream);
  } else if (m <= 8) {
    launch_typed<T, 8>(x, repacked, scales_t, zeros_t, bias, out, partial, m, n, k, group, split,
                       stream);
  } else {
    launch_typed<T, 16>(x, repacked, scales_t, zeros_t, bias, out, partial, m, n, k, group, split,
                        stream);
  }
}

}  // namespace

void launch_w4_repack(const int32_t* canonical, int32_t* repacked, int64_t k, int64_t n,
                      cudaStream_t stream) {
  const int64_t kw = k / 8;
  const int64_t total = kw * n;
  if (total == 0) return;
  const int block = 256;
  w4_repack_kernel<<<static_cast<unsigned>((total + block - 1) / block), block, 0, stream>>>(
      canonical, repacked, kw, n);
  MK_CHECK_LAUNCH("w4_repack_kernel");
}

void launch_w4a16_small_m(const void* x, const int32_t* repacked, const void* scales_t,
                          const uint8_t* zeros_t, const void* bias, void* out, float* partial,
                          int m, int n, int k, int group, int split, bool is_bf16,
                          cudaStream_t stream) {
  if (m == 0 || n == 0) return;
  if (is_bf16) {
    launch_m<__nv_bfloat16>(x, repacked, scales_t, zeros_t, bias, out, partial, m, n, k, group,
                            split, stream);
  } else {
    launch_m<__half>(x, repacked, scales_t, zeros_t, bias, out, partial, m, n, k, group, split,
                     stream);
  }
}

}  // namespace mk::quant
