#include "../common/check.h"
#include "../common/grid.cuh"
#include "../common/launch.h"
#include "membw.h"

namespace mk::probes {
namespace {

__device__ __forceinline__ unsigned long long word_sum(uint4 v) {
  return 0ull + v.x + v.y + v.z + v.w;  // 64-bit from the first addition: no 32-bit overflow
}

// Sum over the block; the result is valid in thread 0. Assumes blockDim.x == kBlock.
__device__ unsigned long long block_sum(unsigned long long x) {
  __shared__ unsigned long long warp_sums[kBlock / 32];
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_down_sync(0xffffffffu, x, offset);
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = x;
  __syncthreads();
  if (warp != 0) return 0;
  x = lane < kBlock / 32 ? warp_sums[lane] : 0;
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_down_sync(0xffffffffu, x, offset);
  return x;
}

// The main loops keep four independent 16-byte loads in flight per thread before using any of
// them, so fewer resident warps are needed to cover DRAM latency.
__global__ void __launch_bounds__(kBlock)
    copy_kernel(uint32_t* __restrict__ dst, const uint32_t* __restrict__ src, uint64_t words) {
  const uint4* s = reinterpret_cast<const uint4*>(src);
  uint4* d = reinterpret_cast<uint4*>(dst);
  const uint64_t n = words / 4, stride = grid_threads();
  uint64_t i = global_thread();
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = s[i], b = s[i + stride], c = s[i + 2 * stride], e = s[i + 3 * stride];
    d[i] = a;
    d[i + stride] = b;
    d[i + 2 * stride] = c;
    d[i + 3 * stride] = e;
  }
  for (; i < n; i += stride) d[i] = s[i];
  if (global_thread() < words % 4) dst[n * 4 + global_thread()] = src[n * 4 + global_thread()];
}

__global__ void __launch_bounds__(kBlock)
    read_kernel(const uint32_t* __restrict__ src, uint64_t words, unsigned long long* sum) {
  const uint4* s = reinterpret_cast<const uint4*>(src);
  const uint64_t n = words / 4, stride = grid_threads();
  uint64_t i = global_thread();
  unsigned long long acc = 0;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = s[i], b = s[i + stride], c = s[i + 2 * stride], e = s[i + 3 * stride];
    acc += word_sum(a) + word_sum(b) + word_sum(c) + word_sum(e);
  }
  for (; i < n; i += stride) acc += word_sum(s[i]);
  if (global_thread() < words % 4) acc += src[n * 4 + global_thread()];
  acc = block_sum(acc);
  if (threadIdx.x == 0 && acc != 0) atomicAdd(sum, acc);  // wraps mod 2**64, as specified
}

__global__ void __launch_bounds__(kBlock)
    write_kernel(uint32_t* __restrict__ dst, uint64_t words, uint32_t value) {
  uint4* d = reinterpret_cast<uint4*>(dst);
  const uint4 v = make_uint4(value, value, value, value);
  const uint64_t n = words / 4, stride = grid_threads();
  for (uint64_t i = global_thread(); i < n; i += stride) d[i] = v;
  if (global_thread() < words % 4) dst[n * 4 + global_thread()] = value;
}

}  // namespace

void launch_copy(uint32_t* dst, const uint32_t* src, uint64_t words, int device,
                 cudaStream_t stream) {
  if (words == 0) return;
  const unsigned grid = grid_for(copy_kernel, kBlock, device, words / 4, "copy_kernel");
  copy_kernel<<<grid, kBlock, 0, stream>>>(dst, src, words);
  MK_CHECK_LAUNCH("copy_kernel");
}

void launch_read(const uint32_t* src, uint64_t words, unsigned long long* sum, int device,
                 cudaStream_t stream) {
  MK_CUDA_CHECK(cudaMemsetAsync(sum, 0, sizeof(*sum), stream), "read_kernel");
  if (words == 0) return;
  const unsigned grid = grid_for(read_kernel, kBlock, device, words / 4, "read_kernel");
  read_kernel<<<grid, kBlock, 0, stream>>>(src, words, sum);
  MK_CHECK_LAUNCH("read_kernel");
}

void launch_write(uint32_t* dst, uint64_t words, uint32_t value, int device, cudaStream_t stream) {
  if (words == 0) return;
  const unsigned grid = grid_for(write_kernel, kBlock, device, words / 4, "write_kernel");
  write_kernel<<<grid, kBlock, 0, stream>>>(dst, words, value);
  MK_CHECK_LAUNCH("write_kernel");
}

}  // namespace mk::probes
