// w4a16 matmul for M = 1..16 (decode) and the repack kernel; see w4a16.h for the layouts.
//
// Work split. A block of kWarps warps owns one strip of 32 output columns and a K range
// (gridDim.y splits K). K is cut into 32-wide chunks; lane l = 4 * gid + t4 reads one 16-byte
// vector per chunk: the 4 words of columns 8 * tile + gid (tile 0..3), K offsets 8 * t4 ..
// 8 * t4 + 7. A warp reads 512 contiguous bytes per chunk; the block's warps, interleaved over
// "units" of 1, 2 or 4 chunks of one quantisation group, stream kWarps * 2 KiB contiguous
// bytes. Warps are reduced through shared memory at the end.
//
// K split, reduced in the same launch (no second kernel): each of a strip's gridDim.y blocks
// stores its float32 (M, 32) partial to the workspace tile (strip, blockIdx.y) and thread 0
// arrives on the strip's counter (atom.acq_rel.gpu add; sm_90a/sm_80 SASS: MEMBAR.ALL.GPU,
// ATOMG.E.ADD.STRONG.GPU, CCTL.IVALL). The block that sees split - 1 arrivals before its own
// sums the partials in the fixed order 0..split-1 (bitwise the same result whatever order the
// blocks finish in), adds the bias, stores `out` and sets the counter back to 0 (counters are
// 0 before and after every launch, so stream order and CUDA-graph replays need no memset). No
// block waits for another, so there is no co-residency requirement. Partials go through L2
// (st/ld.global.cg: STG/LDG.E.STRONG.GPU). Added per block: a 2 KiB-at-most store, one
// barrier and one atomic round trip; the last block also reads split - 1 partial tiles.
//
// Int4 -> fp16/bf16 without conversion instructions: nibble positions p and p + 4 of a word
// hold K offsets 2p and 2p + 1 (repacked order 0, 2, 4, 6, 1, 3, 5, 7), so
// lop3((word >> 4p), 0x000F000F, 0x64006400) is the fp16 pair (1024 + q0, 1024 + q1) (bf16:
// 0x43004300, 128 + q). One fma.rn.{f16x2,bf16x2} with 1.0 and -(1024 + zero) (built the same
// way from the zero point's bits; ptxas emits HADD2) leaves q - zero, an exact small integer.
// The group scale is applied in float32 to each unit's float32 sum, so the tensor cores see
// exact integer weights and the result matches the dequantise-in-fp32 reference up to float32
// rounding (no fp16/bf16 rounding of scaled weights).
//
// Two paths:
// - mma (auto, every M): mma.sync.m16n8k16, fp32 accumulators, A = the dequantised weights
//   (16 columns x 16 K: tiles 2T and 2T + 1 of the strip), B = x^T (16 K x 8 rows of x: rows
//   gid and, for M > 8, a second B of rows gid + 8; rows >= M are zero registers, not loads),
//   D = (16 columns x 8 rows). K is permuted inside each chunk, identically for A and B (a dot
//   product does not care): fragment K index 2 * t4 + j of k-step s is real offset 8 * t4 + 4s
//   + j and index 8 + 2 * t4 + j is 8 * t4 + 4s + 2 + j. So a B fragment pair is two
//   consecutive registers of one 16-byte load of an x row (no register shuffles), and A
//   fragment registers are decode_pair(word, 2s or 2s + 1) of the lane's own words.
//   Weights as A rather than B: with x as A the A quad {row g, row g + 8} interleaves two
//   loads, and the sm_90a SASS carried 4 MOVs per HMMA (32 per chunk); as B, x needs none, and
//   M <= 8 needs one m16n8k16 per 16 x 16 weights instead of two.
// - fma (path = kW4PathFma, M <= 2): the same loads and decode, then fp32 FMAs; lane (gid, t4)
//   accumulates columns 8 * tile + gid over its K offsets, the 4 lanes of a column are summed
//   by shuffles.
// - pipe (path = kW4PathPipe, w4a16_pipe_kernel): the mma path with the weight vectors copied
//   global -> shared by cp.async.cg (L2 evict-first: each weight is read once per call) three
//   units ahead per warp, instead of __ldg into registers one unit at a time; no integer
//   division in the loop. Hot loop (one 4-chunk unit, M <= 16; millkernels analyze): sm_90a
//   364 instructions (32 HMMA, 4 LDGSTS, no I2F/MUFU) against 350 for mma (which divides once
//   per unit: I2F + MUFU.RCP), sm_80 358 both; 125 registers (mma: 124 / 122), no spills; 48
//   KiB dynamic shared memory per block (the pipeline; reused for the warp reduction), 2
//   blocks per SM. Not run on a GPU.
// - wide (path = kW4PathWide, w4a16_pipe_kernel with kW4WideStrips = 2 strips per block): the
//   pipe kernel where a block owns two neighbouring strips and multiplies each unit's x
//   fragments (loaded once) with both strips' weights: half the x loads and x L2 traffic per
//   weight, 96 KiB of shared memory per block (two per SM on sm_90, one on sm_80).
//
// Crossover (auto uses mma for every M), from the sm_90a SASS of the loop over one unit of 4
// chunks (128 weights per lane; sm_80 within 1%): mma M <= 8: 313 instructions (2.4 per
// weight: 64 LOP3 + 48 SHF + 64 HADD2 of decode, 16 HMMA, 16 LDG), M <= 16: 363 (2.8, 32 HMMA);
// fma M = 1: 575 (4.5: + 128 half->float conversions, 132 FFMA). H100 SXM streams int4 at
// ~6.7e12 weights/s = ~29 weights per SM clock against 128 lane-instructions per SM clock: a
// budget of ~4.4 instructions per weight. So the fma path is at the issue limit already at
// M = 1 (and over it at M = 2), while mma stays at 55-65% of it for every M <= 16 (HMMA:
// 29/128 = 0.23 m16n8k16 per SM clock, a fraction of the tensor cores' mma.sync rate). Hence
// mma for every M; the fma path stays selectable for comparison. Nothing here is measured on
// a GPU yet.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>

#include "../common/check.h"
#include "w4a16.h"

namespace mk::quant {
namespace {

constexpr int kWarps = 8;       // warps per block, all on one strip, interleaved over K units
constexpr int kStrip = 32;      // output columns per block: 4 n8 tiles
constexpr int kChunk = 32;      // K values per chunk: one 16-byte load per lane
constexpr int kMaxUnit = 4;     // chunks per unit (the scale is applied once per unit)
constexpr int kFmaRowsMax = 2;  // fma path rows (4 rows spill: x of a 4-chunk unit)
constexpr int kWsTile = kW4WorkspaceTile;  // floats per (strip, split) workspace tile: 16 x 32

__host__ __device__ constexpr int unit_chunks(int chunks_per_group) {
  return chunks_per_group % 4 == 0 ? 4 : (chunks_per_group % 2 == 0 ? 2 : 1);
}

__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;  // (a & b) | c
}

template <typename T>
struct Num;

template <>
struct Num<__half> {
  static constexpr uint32_t kMagic = 0x64006400u;    // fp16 (1024, 1024)
  static constexpr uint32_t kNegBase = 0xE400E400u;  // fp16 (-1024, -1024); | z: -(1024 + z)
  static constexpr uint32_t kOne = 0x3C003C00u;      // fp16 (1, 1)
  __device__ static uint32_t fma2(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
  }
  __device__ static void mma(float& d0, float& d1, float& d2, float& d3, const uint32_t (&a)[4],
                             uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
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
  static constexpr uint32_t kMagic = 0x43004300u;    // bf16 (128, 128)
  static constexpr uint32_t kNegBase = 0xC300C300u;  // bf16 (-128, -128); | z: -(128 + z)
  static constexpr uint32_t kOne = 0x3F803F80u;      // bf16 (1, 1)
  __device__ static uint32_t fma2(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
  }
  __device__ static void mma(float& d0, float& d1, float& d2, float& d3, const uint32_t (&a)[4],
                             uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ static float2 pair(uint32_t bits) {
    __nv_bfloat162 h;
    memcpy(&h, &bits, 4);
    return __bfloat1622float2(h);
  }
  __device__ static float one(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};

// q - zero for the two K values at nibble positions p and p + 4 of `word`, as a packed pair.
template <typename T>
__device__ __forceinline__ uint32_t decode_pair(uint32_t word, int p, uint32_t neg_zero) {
  return Num<T>::fma2(lop3_and_or(word >> (4 * p), 0x000F000Fu, Num<T>::kMagic), Num<T>::kOne,
                      neg_zero);
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
  return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w));
}

// The K-split arrival counter: atomic add of 1 at gpu scope with acquire-release semantics;
// returns the value before the add.
__device__ __forceinline__ unsigned arrive_acq_rel(unsigned* counter) {
  unsigned before;
  asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;\n"
               : "=r"(before)
               : "l"(counter)
               : "memory");
  return before;
}

__device__ __forceinline__ void store_relaxed(unsigned* p, unsigned v) {
  asm volatile("st.relaxed.gpu.global.u32 [%0], %1;\n" : : "l"(p), "r"(v) : "memory");
}

// A thread's place in the block and the block's share of K (both mma kernels): lane (gid =
// lane / 4, t4 = lane % 4) of warp `warp`, whose K units are u_begin, u_begin + kWarps, ...
// below u_end (units of `unit` chunks; units_per_group per quantisation group).
struct Share {
  int lane, warp, gid, t4, kchunks, unit, units_per_group, u_begin, u_end;
  __device__ __forceinline__ Share(int k, int group, int units_per_split)
      : lane(threadIdx.x & 31),
        warp(threadIdx.x >> 5),
        gid(lane >> 2),
        t4(lane & 3),
        kchunks(k / kChunk),
        unit(unit_chunks(group / kChunk)),
        units_per_group(group / kChunk / unit),
        u_begin(blockIdx.y * units_per_split + warp),
        u_end(min(blockIdx.y * units_per_split + units_per_split, kchunks / unit)) {}
  // the lane's 16-byte weight vector of unit u_begin's first chunk of `strip`
  __device__ __forceinline__ int64_t w_offset(int strip) const {
    return (static_cast<int64_t>(strip) * kchunks + int64_t{u_begin} * unit) * 32 + lane;
  }
  // the lane's x element (row 0) of unit u_begin's first chunk
  __device__ __forceinline__ int64_t x_offset() const {
    return int64_t{u_begin} * unit * kChunk + 8 * t4;
  }
};

template <int MT, bool kMma>
constexpr int kRowsOf = kMma ? MT / 8 : MT;  // x vectors per chunk a lane loads
// mma: acc[tile][i]: column 8 tile + gid, row 2 t4 + i (i < 2) or 8 + 2 t4 + i - 2.
// fma: acc[tile][r]: column 8 tile + gid, row r (this lane's K values only).
template <int MT, bool kMma>
constexpr int kAccOf = kMma ? MT / 4 : MT;

// The unit's x vectors (`xp`: row 0, this lane's K offsets of the unit's first chunk).
template <typename T, int MT, bool kMma>
__device__ __forceinline__ void load_x(uint4 (&xv)[kMaxUnit][kRowsOf<MT, kMma>], const T* xp,
                                       int unit, int m, int k, int gid) {
  constexpr int kRows = kRowsOf<MT, kMma>;  // mma: B fragments of rows gid, gid + 8; fma: all
#pragma unroll
  for (int i = 0; i < kMaxUnit; ++i) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int row = kMma ? gid + 8 * r : r;
      xv[i][r] = make_uint4(0, 0, 0, 0);
      if (i < unit && row < m) {
        xv[i][r] =
            __ldg(reinterpret_cast<const uint4*>(xp + static_cast<int64_t>(row) * k + i * kChunk));
      }
    }
  }
}

// Zero points (as -(base + zero) pairs) and scales of the lane's columns in the row of group
// data at `gq` (group * npad + this lane's first column).
template <typename T>
__device__ __forceinline__ void load_group(const T* scales, const uint8_t* zeros, int64_t gq,
                                           uint32_t (&nz)[4], T (&sc)[4]) {
#pragma unroll
  for (int tile = 0; tile < 4; ++tile) {
    const uint32_t z = zeros ? __ldg(zeros + gq + 8 * tile) : 8u;
    nz[tile] = Num<T>::kNegBase | (z * 0x00010001u);
    sc[tile] = scales[gq + 8 * tile];
  }
}

// acc += the unit's group scale * (its dequantised weights . x), the product in float32.
template <typename T, int MT, bool kMma>
__device__ __forceinline__ void unit_product(const uint4 (&q)[kMaxUnit],
                                             const uint4 (&xv)[kMaxUnit][kRowsOf<MT, kMma>],
                                             int unit, const uint32_t (&nz)[4], const T (&sc)[4],
                                             float (&acc)[4][kAccOf<MT, kMma>]) {
  constexpr int kRows = kRowsOf<MT, kMma>;
  constexpr int kAcc = kAccOf<MT, kMma>;
  float gacc[4][kAcc];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < kAcc; ++j) gacc[i][j] = 0.f;
  }
#pragma unroll
  for (int i = 0; i < kMaxUnit; ++i) {
    if (i < unit) {
      if constexpr (kMma) {
        // A = weights (16 columns x 16 K) of tiles 2T (rows 0..7) and 2T + 1 (rows 8..15),
        // B = x^T (16 K x 8 rows of x); D[column][row of x].
#pragma unroll
        for (int s = 0; s < 2; ++s) {
#pragma unroll
          for (int tt = 0; tt < 2; ++tt) {
            const uint32_t w0 = word_of(q[i], 2 * tt), w1 = word_of(q[i], 2 * tt + 1);
            const uint32_t a[4] = {decode_pair<T>(w0, 2 * s, nz[2 * tt]),
                                   decode_pair<T>(w1, 2 * s, nz[2 * tt + 1]),
                                   decode_pair<T>(w0, 2 * s + 1, nz[2 * tt]),
                                   decode_pair<T>(w1, 2 * s + 1, nz[2 * tt + 1])};
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
              Num<T>::mma(gacc[2 * tt][2 * r], gacc[2 * tt][2 * r + 1], gacc[2 * tt + 1][2 * r],
                          gacc[2 * tt + 1][2 * r + 1], a, word_of(xv[i][r], 2 * s),
                          word_of(xv[i][r], 2 * s + 1));
            }
          }
        }
      } else {
        float xf[MT][8];
#pragma unroll
        for (int r = 0; r < MT; ++r) {
#pragma unroll
          for (int h = 0; h < 4; ++h) {
            const float2 f = Num<T>::pair(word_of(xv[i][r], h));
            xf[r][2 * h] = f.x;
            xf[r][2 * h + 1] = f.y;
          }
        }
#pragma unroll
        for (int tile = 0; tile < 4; ++tile) {
          const uint32_t wd = word_of(q[i], tile);
#pragma unroll
          for (int p = 0; p < 4; ++p) {
            const float2 f = Num<T>::pair(decode_pair<T>(wd, p, nz[tile]));
#pragma unroll
            for (int r = 0; r < MT; ++r) {
              gacc[tile][r] = fmaf(xf[r][2 * p], f.x, gacc[tile][r]);
              gacc[tile][r] = fmaf(xf[r][2 * p + 1], f.y, gacc[tile][r]);
            }
          }
        }
      }
    }
  }
  // the unit's group scale, in float32
#pragma unroll
  for (int tile = 0; tile < 4; ++tile) {
    const float s = Num<T>::one(sc[tile]);
#pragma unroll
    for (int j = 0; j < kAcc; ++j) acc[tile][j] = fmaf(gacc[tile][j], s, acc[tile][j]);
  }
}

// The block's end for one strip: warp sums through shared memory `red` (kWarps, MT, 32), the
// K split reduction when gridDim.y > 1, the bias and the store of `out`'s columns of `strip`.
// Every thread of the block calls it (barriers inside); `red` is free again after a barrier.
template <typename T, int MT, bool kMma>
__device__ __forceinline__ void finish(float (&acc)[4][kAccOf<MT, kMma>], float (*red)[MT][kStrip],
                                       const T* bias, T* out, float* workspace, unsigned* counters,
                                       int m, int n, int strip) {
  constexpr int kAcc = kAccOf<MT, kMma>;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int gid = lane >> 2;
  const int t4 = lane & 3;
  // this warp's (MT, 32) sums -> shared memory
#pragma unroll
  for (int tile = 0; tile < 4; ++tile) {
    const int col = 8 * tile + gid;
    if constexpr (kMma) {
#pragma unroll
      for (int j = 0; j < kAcc; ++j) red[warp][8 * (j / 2) + 2 * t4 + j % 2][col] = acc[tile][j];
    } else {
#pragma unroll
      for (int r = 0; r < MT; ++r) {
        float v = acc[tile][r];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        if (t4 == 0) red[warp][r][col] = v;
      }
    }
  }
  __syncthreads();
  // Element idx = r * kStrip + c of the block's (MT, 32) tile: thread threadIdx.x owns
  // idx = threadIdx.x + i * kThreads. `mine` is this block's sum over its warps (fixed order).
  constexpr int kThreads = kWarps * 32;
  constexpr int kPer = (MT * kStrip + kThreads - 1) / kThreads;
  float mine[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int idx = threadIdx.x + i * kThreads;
    mine[i] = 0.f;
    if (idx < MT * kStrip) {
#pragma unroll
      for (int wi = 0; wi < kWarps; ++wi) mine[i] += red[wi][idx / kStrip][idx % kStrip];
    }
  }
  const int split = gridDim.y;
  if (split > 1) {
    // K split: every block stores its partial tile to the workspace, then arrives on the
    // strip's counter; the last of the strip's `split` blocks to arrive sums the partials in
    // the fixed order 0..split-1 (deterministic whatever the arrival order; its own partial
    // is taken from registers, bitwise the value it stored), adds the bias and stores `out`.
    // It also puts the counter back to 0 for the next launch (and CUDA-graph replay).
    float* const tile0 = workspace + static_cast<int64_t>(strip) * split * kWsTile;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int idx = threadIdx.x + i * kThreads;
      if (idx < MT * kStrip && idx / kStrip < m) {
        __stcg(tile0 + static_cast<int64_t>(blockIdx.y) * kWsTile + idx, mine[i]);
      }
    }
    __shared__ int last;
    // The barrier orders every thread's partial stores before thread 0's arrival; the
    // arrival's release (gpu scope) publishes them, and its acquire (for the last block)
    // orders the other blocks' stores before the reads below, through the second barrier
    // (the pattern of CUTLASS's generic barrier; PTX memory model: causality order is
    // transitive through bar.sync).
    __syncthreads();
    if (threadIdx.x == 0) {
      const unsigned before = arrive_acq_rel(counters + strip);
      last = before == static_cast<unsigned>(split - 1);
      if (last) store_relaxed(counters + strip, 0u);  // every block of this launch has arrived
    }
    __syncthreads();
    if (!last) return;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int idx = threadIdx.x + i * kThreads;
      if (idx < MT * kStrip && idx / kStrip < m) {
        float sum = 0.f;
#pragma unroll 4
        for (int s = 0; s < split; ++s) {
          sum += s == static_cast<int>(blockIdx.y)
                     ? mine[i]
                     : __ldcg(tile0 + static_cast<int64_t>(s) * kWsTile + idx);  // L2, not L1
        }
        mine[i] = sum;
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int idx = threadIdx.x + i * kThreads;
    const int r = idx / kStrip;
    const int col = strip * kStrip + idx % kStrip;
    if (idx < MT * kStrip && r < m && col < n) {
      const float b = bias ? Num<T>::one(bias[col]) : 0.f;
      out[static_cast<int64_t>(r) * n + col] = Num<T>::from(mine[i] + b);
    }
  }
}

// One kernel for both paths. MT: rows compiled for (mma: 8 or 16, fma: 1 or 2).
// Lane (gid = lane / 4, t4 = lane % 4) owns columns 8 * tile + gid (tile 0..3) of the strip and,
// per chunk, K offsets 8 * t4 .. 8 * t4 + 7.
template <typename T, int MT, bool kMma>
__global__ void __launch_bounds__(kWarps * 32, 2)
    w4a16_small_m_kernel(const T* __restrict__ x, const uint4* __restrict__ w,
                         const T* __restrict__ scales, const uint8_t* __restrict__ zeros,
                         const T* __restrict__ bias, T* __restrict__ out,
                         float* __restrict__ workspace, unsigned* __restrict__ counters, int m,
                         int n, int k, int group, int units_per_split) {
  __shared__ float red[kWarps][MT][kStrip];
  const Share sh(k, group, units_per_split);
  const int unit = sh.unit;
  const int npad = gridDim.x * kStrip;
  const int col0 = blockIdx.x * kStrip + sh.gid;  // + 8 * tile: this lane's columns
  float acc[4][kAccOf<MT, kMma>] = {};
  // Per-unit pointers, advanced by kWarps units each step.
  const int64_t step_chunks = static_cast<int64_t>(kWarps) * unit;
  const uint4* wp = w + sh.w_offset(blockIdx.x);
  const T* xp = x + sh.x_offset();  // row 0
  for (int u = sh.u_begin; u < sh.u_end; u += kWarps) {
    const int g = u / sh.units_per_group;
    uint4 q[kMaxUnit];
#pragma unroll
    for (int i = 0; i < kMaxUnit; ++i) {
      if (i < unit) q[i] = __ldg(wp + i * 32);
    }
    uint4 xv[kMaxUnit][kRowsOf<MT, kMma>];
    load_x<T, MT, kMma>(xv, xp, unit, m, k, sh.gid);
    // zero points and scales loaded with the unit's data (a scale load left next to its use,
    // after the mma code, would stall each unit for a full L2 trip)
    uint32_t nz[4];
    T sc[4];
    load_group<T>(scales, zeros, static_cast<int64_t>(g) * npad + col0, nz, sc);
    unit_product<T, MT, kMma>(q, xv, unit, nz, sc, acc);
    wp += step_chunks * 32;
    xp += step_chunks * kChunk;
  }
  finish<T, MT, kMma>(acc, red, bias, out, workspace, counters, m, n, blockIdx.x);
}

constexpr int kStages = 3;                          // pipe kernel: units in flight per warp
constexpr int kStageVecs = kWarps * kMaxUnit * 32;  // 16-byte vectors per stage and strip
// pipe kernel shared memory for kStrips strips per block: 48 KiB per strip (+ finish's flag)
template <int kStrips>
constexpr int kPipeSmem = kStages * kStrips * kStageVecs * 16;
static_assert(kWarps * 16 * kStrip * 4 <= kPipeSmem<1>,
              "the reduction buffer reuses the pipeline's");

// An L2 policy that evicts the weight stream first (each weight is read once per call).
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

// 16 bytes global -> shared, asynchronous, bypassing L1 (cp.async.cg), with an L2 policy.
__device__ __forceinline__ void cp_async16(uint4* dst, const uint4* src, uint64_t policy) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n"
               :
               : "r"(s), "l"(src), "l"(policy)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Wait until at most `kPending` of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" : : "n"(kPending) : "memory");
}

// The mma path with the weight stream in a kStages-deep cp.async pipeline: same work split,
// layout, decode and epilogue as w4a16_small_m_kernel, for kStrips consecutive strips per
// block (kStrips = 1: path "pipe"; 2: path "wide"). Each lane copies its own 16-byte vectors
// of a unit into its own slots of stage (strip, warp, chunk, lane) and later reads exactly
// those back (cp.async.wait_group makes a thread's completed copies visible to itself), so
// the loop needs no barrier. A stage is refilled with unit j + kStages right after unit j has
// been read from it and multiplied, so kStages units are in flight while one is consumed.
// Wide blocks load each unit's x fragments once and multiply them with every strip's
// weights: x is read from L2 once per kStrips strips (at M = 16 and K = 4096 the x reads of
// one-strip blocks add 2x the weight bytes of L2 traffic). A block past the last strip's
// partner (odd strip count) skips the missing strip, block-uniformly.
// The loop has no integer division: the group index advances by precomputed steps.
// Blocks per SM the registers are sized for: 2 (at most 128 registers), except wide blocks at
// M = 16 (two strips' accumulators beside the x fragments spill 64-76 B at 128 registers).
template <int MT, int kStrips>
constexpr int kPipeMinBlocks = kStrips > 1 && MT > 8 ? 1 : 2;

template <typename T, int MT, int kStrips>
__global__ void __launch_bounds__(kWarps * 32, kPipeMinBlocks<MT, kStrips>)
    w4a16_pipe_kernel(const T* __restrict__ x, const uint4* __restrict__ w,
                      const T* __restrict__ scales, const uint8_t* __restrict__ zeros,
                      const T* __restrict__ bias, T* __restrict__ out,
                      float* __restrict__ workspace, unsigned* __restrict__ counters, int m, int n,
                      int k, int group, int units_per_split) {
  extern __shared__ uint4 pipe[];  // [stage][strip][warp][chunk][lane]; then the reduction
  const Share sh(k, group, units_per_split);
  const int unit = sh.unit, units_per_group = sh.units_per_group;
  const int u_begin = sh.u_begin, u_end = sh.u_end;
  const int strips = (n + kStrip - 1) / kStrip;
  const int npad = strips * kStrip;
  const int strip0 = blockIdx.x * kStrips;
  const int live = min(kStrips, strips - strip0);  // strips this block owns (block-uniform)
  const int count = u_end > u_begin ? (u_end - u_begin + kWarps - 1) / kWarps : 0;
  // group of the current unit: g, and the unit's place in it, ug; per step of kWarps units
  // they advance by g_step and ug_step (one carry at most: ug_step < units_per_group)
  int g = u_begin / units_per_group;
  int ug = u_begin - g * units_per_group;
  const int g_step = kWarps / units_per_group;
  const int ug_step = kWarps - g_step * units_per_group;
  // + s * kStrip + g * npad: this lane's first column of strip s in group g's row
  const int64_t gq0 = static_cast<int64_t>(strip0) * kStrip + sh.gid;
  float acc[kStrips][4][kAccOf<MT, true>] = {};
  const int64_t step_vecs = static_cast<int64_t>(kWarps) * unit * 32;
  const int64_t strip_vecs = static_cast<int64_t>(sh.kchunks) * 32;  // one strip's weights
  const uint4* wp = w + sh.w_offset(strip0);
  const T* xp = x + sh.x_offset();
  // + stage * kStrips * kStageVecs + s * kStageVecs + i * 32
  uint4* const slots = pipe + sh.warp * kMaxUnit * 32 + sh.lane;
  const uint64_t policy = evict_first_policy();
  // copy the next unit of every live strip into `dst` (a stage) and advance wp
  const auto fetch = [&](uint4* dst) {
#pragma unroll
    for (int s = 0; s < kStrips; ++s) {
      if (s < live) {
#pragma unroll
        for (int i = 0; i < kMaxUnit; ++i) {
          if (i < unit) {
            cp_async16(dst + s * kStageVecs + i * 32, wp + s * strip_vecs + i * 32, policy);
          }
        }
      }
    }
    wp += step_vecs;
  };
#pragma unroll
  for (int s = 0; s < kStages; ++s) {  // prologue: units 0 .. kStages - 1
    if (s < count) fetch(slots + s * kStrips * kStageVecs);
    cp_async_commit();  // empty groups too: the wait below counts groups
  }
  int stage = 0;
  for (int j = 0; j < count; ++j) {
    // x, zero points and scales of the unit first: their loads overlap the wait
    uint4 xv[kMaxUnit][kRowsOf<MT, true>];
    load_x<T, MT, true>(xv, xp, unit, m, k, sh.gid);
    uint32_t nz[kStrips][4];
    T sc[kStrips][4];
#pragma unroll
    for (int s = 0; s < kStrips; ++s) {
      if (s < live) {
        load_group<T>(scales, zeros, gq0 + s * kStrip + static_cast<int64_t>(g) * npad, nz[s],
                      sc[s]);
      }
    }
    cp_async_wait<kStages - 1>();  // unit j's group has landed
    uint4* const here = slots + stage * kStrips * kStageVecs;
#pragma unroll
    for (int s = 0; s < kStrips; ++s) {
      if (s < live) {
        uint4 q[kMaxUnit];
#pragma unroll
        for (int i = 0; i < kMaxUnit; ++i) {
          if (i < unit) q[i] = here[s * kStageVecs + i * 32];
        }
        unit_product<T, MT, true>(q, xv, unit, nz[s], sc[s], acc[s]);
      }
    }
    if (j + kStages < count) fetch(here);  // refill this stage with unit j + kStages
    cp_async_commit();
    stage = stage == kStages - 1 ? 0 : stage + 1;
    xp += step_vecs;  // kWarps * unit chunks of 32 K values = step_vecs elements of x
    g += g_step;
    ug += ug_step;
    if (ug >= units_per_group) {
      ug -= units_per_group;
      ++g;
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the pipeline: its memory becomes `red`
  const auto red = reinterpret_cast<float (*)[MT][kStrip]>(pipe);
#pragma unroll
  for (int s = 0; s < kStrips; ++s) {
    if (s < live) {
      finish<T, MT, true>(acc[s], red, bias, out, workspace, counters, m, n, strip0 + s);
      if (s + 1 < live) __syncthreads();  // every thread has read `red` before it is reused
    }
  }
}

// One thread per output word: word (strip, chunk, lane, tile) of the tiled layout is the
// canonical word (K/8 index 4 * chunk + lane % 4, column 32 * strip + 8 * tile + lane / 4)
// with its nibbles reordered 0, 2, 4, 6, 1, 3, 5, 7; zero past column n.
__global__ void w4_repack_kernel(const int32_t* __restrict__ canonical,
                                 int32_t* __restrict__ repacked, int64_t kchunks, int64_t n,
                                 int64_t total) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int tile = static_cast<int>(idx & 3);
  const int lane = static_cast<int>((idx >> 2) & 31);
  const int64_t rest = idx >> 7;
  const int64_t chunk = rest % kchunks;
  const int64_t strip = rest / kchunks;
  const int64_t col = strip * kStrip + 8 * tile + (lane >> 2);
  const int64_t word = 4 * chunk + (lane & 3);
  const uint32_t src = col < n ? static_cast<uint32_t>(canonical[word * n + col]) : 0u;
  constexpr int kOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};  // element held by nibble position p
  uint32_t dst = 0;
#pragma unroll
  for (int p = 0; p < 8; ++p) dst |= ((src >> (4 * kOrder[p])) & 0xFu) << (4 * p);
  repacked[idx] = static_cast<int32_t>(dst);
}

// kPipeStrips: 0 for w4a16_small_m_kernel, else w4a16_pipe_kernel with that many strips per
// block.
template <typename T, int MT, bool kMma, int kPipeStrips>
void launch_typed(const void* x, const int32_t* repacked, const void* scales, const uint8_t* zeros,
                  const void* bias, void* out, float* workspace, unsigned* counters, int m, int n,
                  int k, int group, int split, cudaStream_t stream) {
  const int units = k / kChunk / unit_chunks(group / kChunk);
  const int per_split = (units + split - 1) / split;
  const int strips = (n + kStrip - 1) / kStrip;
  const int per_block = kPipeStrips > 0 ? kPipeStrips : 1;
  const dim3 grid((strips + per_block - 1) / per_block, split);
  const auto args = [&](auto kernel, int smem, const char* name) {
    kernel<<<grid, kWarps * 32, smem, stream>>>(
        static_cast<const T*>(x), reinterpret_cast<const uint4*>(repacked),
        static_cast<const T*>(scales), zeros, static_cast<const T*>(bias), static_cast<T*>(out),
        split > 1 ? workspace : nullptr, split > 1 ? counters : nullptr, m, n, k, group, per_split);
    MK_CHECK_LAUNCH(name);
  };
  if constexpr (kPipeStrips > 0) {
    // 48 KiB of dynamic shared memory per strip plus finish's static flag: over the default
    // limit (48 KiB in all), so the kernel opts in, once per device (bit d of `opted`: done on
    // device d; devices past 63 opt in at every launch; setting it twice is harmless)
    constexpr int kSmem = kPipeSmem<kPipeStrips>;
    static std::atomic<uint64_t> opted{0};
    int device = 0;
    MK_CUDA_CHECK(cudaGetDevice(&device), "w4a16_pipe_kernel: current device");
    const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
    if ((opted.load(std::memory_order_relaxed) & bit) == 0) {
      MK_CUDA_CHECK(cudaFuncSetAttribute(w4a16_pipe_kernel<T, MT, kPipeStrips>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem),
                    "w4a16_pipe_kernel: shared memory opt-in");
      opted.fetch_or(bit, std::memory_order_relaxed);
    }
    args(w4a16_pipe_kernel<T, MT, kPipeStrips>, kSmem, "w4a16_pipe_kernel");
  } else {
    args(w4a16_small_m_kernel<T, MT, kMma>, 0, "w4a16_small_m_kernel");
  }
}

template <typename T>
void launch_m(const void* x, const int32_t* repacked, const void* scales, const uint8_t* zeros,
              const void* bias, void* out, float* workspace, unsigned* counters, int m, int n,
              int k, int group, int split, int path, cudaStream_t stream) {
#define MK_W4_LAUNCH(MT, MMA, PIPE)                                                                \
  launch_typed<T, MT, MMA, PIPE>(x, repacked, scales, zeros, bias, out, workspace, counters, m, n, \
                                 k, group, split, stream)
  if (path == kW4PathFma) {
    if (m <= 1) {
      MK_W4_LAUNCH(1, false, 0);
    } else {
      MK_W4_LAUNCH(kFmaRowsMax, false, 0);
    }
  } else if (path == kW4PathPipe) {
    if (m <= 8) {
      MK_W4_LAUNCH(8, true, 1);
    } else {
      MK_W4_LAUNCH(16, true, 1);
    }
  } else if (path == kW4PathWide) {
    if (m <= 8) {
      MK_W4_LAUNCH(8, true, kW4WideStrips);
    } else {
      MK_W4_LAUNCH(16, true, kW4WideStrips);
    }
  } else if (m <= 8) {  // auto: mma for every M (see the crossover note)
    MK_W4_LAUNCH(8, true, 0);
  } else {
    MK_W4_LAUNCH(16, true, 0);
  }
#undef MK_W4_LAUNCH
}

}  // namespace

void launch_w4_repack(const int32_t* canonical, int32_t* repacked, int64_t k, int64_t n,
                      cudaStream_t stream) {
  const int64_t kchunks = k / kChunk;
  const int64_t strips = (n + kStrip - 1) / kStrip;
  const int64_t total = strips * kchunks * 128;
  if (total == 0) return;
  const int block = 256;
  w4_repack_kernel<<<static_cast<unsigned>((total + block - 1) / block), block, 0, stream>>>(
      canonical, repacked, kchunks, n, total);
  MK_CHECK_LAUNCH("w4_repack_kernel");
}

int w4a16_fma_max_rows() { return kFmaRowsMax; }

void launch_w4a16_small_m(const void* x, const int32_t* repacked, const void* scales,
                          const uint8_t* zeros, const void* bias, void* out, float* workspace,
                          unsigned* counters, int m, int n, int k, int group, int split, int path,
                          bool is_bf16, cudaStream_t stream) {
  if (m == 0 || n == 0) return;
  if (is_bf16) {
    launch_m<__nv_bfloat16>(x, repacked, scales, zeros, bias, out, workspace, counters, m, n, k,
                            group, split, path, stream);
  } else {
    launch_m<__half>(x, repacked, scales, zeros, bias, out, workspace, counters, m, n, k, group,
                     split, path, stream);
  }
}

}  // namespace mk::quant
