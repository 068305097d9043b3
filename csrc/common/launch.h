// Launch helpers shared by the kernel families: grid sizing from the SM count, and a guard that
// makes the array's device current for the duration of a call.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "check.h"

namespace mk {

// Makes `device` current and restores the previous device on scope exit (multi-GPU callers).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    MK_CUDA_CHECK(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device != previous_) MK_CUDA_CHECK(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }  // best effort: destructors must not throw
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

inline uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// Grid for a grid-stride kernel: as many blocks as stay resident on every SM at once (so one
// wave covers the GPU and each thread loops), but never more than `work_items` needs.
template <typename Kernel>
unsigned grid_for(Kernel kernel, int block, int device, uint64_t work_items, const char* name) {
  int sms = 0, per_sm = 0;
  MK_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), name);
  MK_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, block, 0), name);
  const uint64_t resident = static_cast<uint64_t>(sms) * static_cast<uint64_t>(std::max(per_sm, 1));
  const uint64_t needed = std::max<uint64_t>(ceil_div(work_items, block), 1);
  return static_cast<unsigned>(std::min(resident, needed));
}

inline cudaStream_t as_stream(uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

}  // namespace mk
