// Grid-stride loop indices: global thread t handles items t, t + stride, t + 2 * stride, ...
// 64-bit, so buffers above 2**32 items work.
#pragma once

#include <cstdint>

namespace mk {

__device__ __forceinline__ uint64_t global_thread() {
  return static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ uint64_t grid_threads() {
  return static_cast<uint64_t>(gridDim.x) * blockDim.x;
}

}  // namespace mk
