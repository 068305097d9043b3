// Memory-bandwidth probes: copy, read (a reduction, so the loads cannot be optimised away) and
// write. Buffers are 32-bit words, 16-byte aligned; the kernels move 16 bytes per access.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mk::probes {

// Threads per block of every probe kernel.
constexpr int kBlock = 256;

// Launchers: asynchronous on `stream`; `device` is the current device (used to size the grid).
void launch_copy(uint32_t* dst, const uint32_t* src, uint64_t words, int device,
                 cudaStream_t stream);
// *sum := sum of the words taken as unsigned, mod 2**64.
void launch_read(const uint32_t* src, uint64_t words, unsigned long long* sum, int device,
                 cudaStream_t stream);
void launch_write(uint32_t* dst, uint64_t words, uint32_t value, int device, cudaStream_t stream);

}  // namespace mk::probes
