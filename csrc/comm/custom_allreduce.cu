#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdexcept>

#include "../common/check.h"
#include "custom_allreduce.h"

namespace mk::comm {
namespace {

// ------------------------------------------------------------------ flags (PTX, sm_70+)

__device__ __forceinline__ void st_release_sys(uint32_t* addr, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(addr), "r"(v) : "memory");
}

__device__ __forceinline__ uint32_t ld_acquire_sys(const uint32_t* addr) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(addr) : "memory");
  return v;
}

// Every peer's block b has reached this point of call `epoch` (and its writes before it are
// visible here); thread t < W signals peer t and waits for peer t.
template <int W>
__device__ __forceinline__ void barrier(const Peers& peers, Signal* self, int set, bool mid,
                                        uint32_t epoch, int rank) {
  __syncthreads();  // the block's writes happen before thread t's release
  const int t = threadIdx.x;
  if (t < W) {
    char* base = nullptr;
#pragma unroll
    for (int p = 0; p < W; ++p) {  // static indices: the peer table stays in the param bank
      if (p == t) base = peers.base[p];
    }
    Signal* peer = reinterpret_cast<Signal*>(base);
    FlagSet& theirs = peer->sets[set];
    st_release_sys(mid ? &theirs.mid[blockIdx.x][rank] : &theirs.start[blockIdx.x][rank], epoch);
    const FlagSet& mine = self->sets[set];
    const uint32_t* flag = mid ? &mine.mid[blockIdx.x][t] : &mine.start[blockIdx.x][t];
    // Each spin is one system-scope load (~0.5-1 us), so kMaxSpins is ~1-2 minutes.
    for (uint32_t spins = 0; ld_acquire_sys(flag) != epoch;) {
      if (++spins == kMaxSpins) __trap();  // a rank never arrived: fail instead of hanging
    }
  }
  __syncthreads();  // thread t's acquire happens before the block's reads
}

// ------------------------------------------------------------------------ packs of 16 B

template <typename T>
struct Traits;
template <>
struct Traits<__half> {
  static __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_f(float v) { return __float2half_rn(v); }
};
template <>
struct Traits<__nv_bfloat16> {
  static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct Traits<float> {
  static __device__ __forceinline__ float to_f(float v) { return v; }
  static __device__ __forceinline__ float from_f(float v) { return v; }
};

// Pack i of a user array of n elements: 16-byte access when it is whole and aligned, else
// element by element (sizes that are not multiples of 16 bytes, unaligned tensors).
template <typename T>
__device__ __forceinline__ uint4 load_user(const T* p, uint64_t i, uint64_t n, bool aligned) {
  constexpr int P = 16 / sizeof(T);
  const uint64_t first = i * P;
  if (aligned && first + P <= n) return *reinterpret_cast<const uint4*>(p + first);
  uint4 u = make_uint4(0, 0, 0, 0);
  T* e = reinterpret_cast<T*>(&u);
#pragma unroll
  for (int k = 0; k < P; ++k) {
    if (first + k < n) e[k] = p[first + k];
  }
  return u;
}

template <typename T>
__device__ __forceinline__ void store_user(T* p, uint64_t i, uint64_t n, bool aligned, uint4 u) {
  constexpr int P = 16 / sizeof(T);
  const uint64_t first = i * P;
  if (aligned && first + P <= n) {
    *reinterpret_cast<uint4*>(p + first) = u;
    return;
  }
  const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int k = 0; k < P; ++k) {
    if (first + k < n) p[first + k] = e[k];
  }
}

// Peer data is read once per call, through L2 (ld.global.cg): never a stale L1 line.
__device__ __forceinline__ uint4 load_peer(const char* slot, uint64_t i) {
  return __ldcg(reinterpret_cast<const uint4*>(slot) + i);
}

// Sum pack i of every rank's slot, in rank order 0, 1, ..., in float32; one rounding to T.
template <typename T, int W>
__device__ __forceinline__ uint4 reduce_pack(const Peers& peers, uint64_t offset, uint64_t i) {
  constexpr int P = 16 / sizeof(T);
  float acc[P];
#pragma unroll
  for (int k = 0; k < P; ++k) acc[k] = 0.0f;
  uint4 u[W];  // every load in flight before the first add
#pragma unroll
  for (int r = 0; r < W; ++r) u[r] = load_peer(peers.base[r] + offset, i);
#pragma unroll
  for (int r = 0; r < W; ++r) {
    const T* e = reinterpret_cast<const T*>(&u[r]);
#pragma unroll
    for (int k = 0; k < P; ++k) acc[k] += Traits<T>::to_f(e[k]);
  }
  uint4 out;
  T* o = reinterpret_cast<T*>(&out);
#pragma unroll
  for (int k = 0; k < P; ++k) o[k] = Traits<T>::from_f(acc[k]);
  return out;
}

struct Args {
  Peers peers;  // indexed only with compile-time indices (else it is copied to the stack)
  char* own;    // peers.base[rank]
  const void* in;
  void* out;
  uint64_t n;     // elements
  uint64_t slot;  // bytes per slot
  int rank;
  bool in_aligned;  // 16-byte aligned user pointers
  bool out_aligned;
};

__device__ __forceinline__ uint64_t staging(uint64_t slot, int set) {
  return kSignalBytes + static_cast<uint64_t>(set) * slot;
}
__device__ __forceinline__ uint64_t result(uint64_t slot, int set) {
  return kSignalBytes + static_cast<uint64_t>(2 + set) * slot;
}

// One-shot: copy in, barrier, every rank reduces every pack. Block b owns packs
// b*kThreads + t + k*grid (the same on every rank), and only reads packs its peers' block b
// wrote before signalling it.
template <typename T, int W>
__global__ void __launch_bounds__(kThreads, 1) one_shot_kernel(Args a) {
  constexpr int P = 16 / sizeof(T);
  Signal* self = reinterpret_cast<Signal*>(a.own);
  const uint32_t epoch = self->epoch[blockIdx.x] + 1;
  const int set = epoch & 1;
  const uint64_t packs = (a.n + P - 1) / P;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * kThreads;
  const uint64_t first = static_cast<uint64_t>(blockIdx.x) * kThreads + threadIdx.x;
  uint4* mine = reinterpret_cast<uint4*>(a.own + staging(a.slot, set));
  const T* in = static_cast<const T*>(a.in);
  for (uint64_t i = first; i < packs; i += stride) mine[i] = load_user(in, i, a.n, a.in_aligned);
  barrier<W>(a.peers, self, set, false, epoch, a.rank);
  T* out = static_cast<T*>(a.out);
  for (uint64_t i = first; i < packs; i += stride) {
    store_user(out, i, a.n, a.out_aligned, reduce_pack<T, W>(a.peers, staging(a.slot, set), i));
  }
  if (threadIdx.x == 0) self->epoch[blockIdx.x] = epoch;  // after the barrier's __syncthreads
}

// Two-shot: packs are split into world partitions of `part` packs; pack (p, j) = p*part + j
// is owned by the block that owns index j, on every rank and in every phase, so per-block
// barriers suffice. Rank r reduces partition r into its result slot (identical bits to a
// one-shot), then every rank copies every partition out.
template <typename T, int W>
__global__ void __launch_bounds__(kThreads, 1) two_shot_kernel(Args a) {
  constexpr int P = 16 / sizeof(T);
  Signal* self = reinterpret_cast<Signal*>(a.own);
  const uint32_t epoch = self->epoch[blockIdx.x] + 1;
  const int set = epoch & 1;
  const uint64_t packs = (a.n + P - 1) / P;
  const uint64_t part = (packs + W - 1) / W;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * kThreads;
  const uint64_t first = static_cast<uint64_t>(blockIdx.x) * kThreads + threadIdx.x;
  uint4* mine = reinterpret_cast<uint4*>(a.own + staging(a.slot, set));
  const T* in = static_cast<const T*>(a.in);
  for (int p = 0; p < W; ++p) {
    for (uint64_t j = first; j < part && p * part + j < packs; j += stride) {
      mine[p * part + j] = load_user(in, p * part + j, a.n, a.in_aligned);
    }
  }
  barrier<W>(a.peers, self, set, false, epoch, a.rank);
  uint4* reduced = reinterpret_cast<uint4*>(a.own + result(a.slot, set));
  const uint64_t base = static_cast<uint64_t>(a.rank) * part;
  for (uint64_t j = first; j < part && base + j < packs; j += stride) {
    reduced[j] = reduce_pack<T, W>(a.peers, staging(a.slot, set), base + j);
  }
  barrier<W>(a.peers, self, set, true, epoch, a.rank);
  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int p = 0; p < W; ++p) {
    const char* theirs = a.peers.base[p] + result(a.slot, set);
    for (uint64_t j = first; j < part && p * part + j < packs; j += stride) {
      store_user(out, p * part + j, a.n, a.out_aligned, load_peer(theirs, j));
    }
  }
  if (threadIdx.x == 0) self->epoch[blockIdx.x] = epoch;
}

template <typename T, int W>
void launch_ranks(const Args& a, int blocks, bool two_shot, cudaStream_t stream) {
  if (two_shot) {
    two_shot_kernel<T, W><<<blocks, kThreads, 0, stream>>>(a);
    MK_CHECK_LAUNCH("two_shot_kernel");
  } else {
    one_shot_kernel<T, W><<<blocks, kThreads, 0, stream>>>(a);
    MK_CHECK_LAUNCH("one_shot_kernel");
  }
}

template <typename T>
void launch_typed(const Args& a, int world, int blocks, bool two_shot, cudaStream_t stream) {
  switch (world) {
    case 2:
      return launch_ranks<T, 2>(a, blocks, two_shot, stream);
    case 3:
      return launch_ranks<T, 3>(a, blocks, two_shot, stream);
    case 4:
      return launch_ranks<T, 4>(a, blocks, two_shot, stream);
    case 5:
      return launch_ranks<T, 5>(a, blocks, two_shot, stream);
    case 6:
      return launch_ranks<T, 6>(a, blocks, two_shot, stream);
    case 7:
      return launch_ranks<T, 7>(a, blocks, two_shot, stream);
    case 8:
      return launch_ranks<T, 8>(a, blocks, two_shot, stream);
    default:
      throw std::invalid_argument("custom all-reduce: world must be 2..8");
  }
}

}  // namespace

void launch_all_reduce(DType dtype, const Peers& peers, const void* in, void* out, uint64_t n,
                       uint64_t slot, int rank, int world, int blocks, bool two_shot,
                       cudaStream_t stream) {
  Args a{peers,
         peers.base[rank],
         in,
         out,
         n,
         slot,
         rank,
         reinterpret_cast<uintptr_t>(in) % 16 == 0,
         reinterpret_cast<uintptr_t>(out) % 16 == 0};
  switch (dtype) {
    case DType::kF16:
      launch_typed<__half>(a, world, blocks, two_shot, stream);
      break;
    case DType::kBF16:
      launch_typed<__nv_bfloat16>(a, world, blocks, two_shot, stream);
      break;
    case DType::kF32:
      launch_typed<float>(a, world, blocks, two_shot, stream);
      break;
  }
}

}  // namespace mk::comm
