#include <algorithm>
#include <climits>

#include "../common/check.h"
#include "../common/grid.cuh"
#include "../common/launch.h"
#include "membw.h"  // kBlock
#include "pattern.h"

namespace mk::probes {
namespace {

// Counters a check accumulates on the device (unsigned long long: the type atomics take).
struct CheckState {
  unsigned long long mismatches;
  unsigned long long first_bad;
  unsigned long long reported;  // may exceed max_report: only the first max_report are stored
};

// The pattern's words i .. i+3 (i % 4 == 0, so all four share i >> 32).
template <int P>
__device__ __forceinline__ uint4 pattern_vec(uint64_t i, uint32_t seed) {
  if constexpr (P == kRandom) {
    const uint32_t key = random_key(static_cast<uint32_t>(i >> 32), seed);
    const uint32_t lo = static_cast<uint32_t>(i);
    return make_uint4(mix32(lo ^ key), mix32((lo + 1) ^ key), mix32((lo + 2) ^ key),
                      mix32((lo + 3) ^ key));
  } else {
    return make_uint4(pattern_value<P>(i, seed), pattern_value<P>(i + 1, seed),
                      pattern_value<P>(i + 2, seed), pattern_value<P>(i + 3, seed));
  }
}

template <int P>
__global__ void __launch_bounds__(kBlock)
    pattern_write_kernel(uint32_t* __restrict__ buf, uint64_t words, uint32_t seed) {
  uint4* b = reinterpret_cast<uint4*>(buf);
  const uint64_t n = words / 4, stride = grid_threads();
  for (uint64_t i = global_thread(); i < n; i += stride) b[i] = pattern_vec<P>(4 * i, seed);
  const uint64_t t = n * 4 + global_thread();
  if (global_thread() < words % 4) buf[t] = pattern_value<P>(t, seed);
}

// Mismatches are rare, so the hot path is a load and four compares; counts and the first bad
// index are kept per thread and merged with one atomic each at the end.
template <int P>
__global__ void __launch_bounds__(kBlock)
    pattern_check_kernel(const uint32_t* __restrict__ buf, uint64_t words, uint32_t seed,
                         CheckState* state, BadWord* bad, unsigned long long max_report) {
  unsigned long long count = 0, first = ULLONG_MAX;
  auto check = [&](uint64_t index, uint32_t expected, uint32_t actual) {
    if (expected == actual) return;
    ++count;
    first = min(first, static_cast<unsigned long long>(index));
    // Once max_report words are stored, skip the atomic (a racy read is fine: it re-checks).
    if (*static_cast<volatile unsigned long long*>(&state->reported) >= max_report) return;
    const unsigned long long slot = atomicAdd(&state->reported, 1ull);
    if (slot < max_report) bad[slot] = BadWord{index, expected, actual};
  };
  const uint4* b = reinterpret_cast<const uint4*>(buf);
  const uint64_t n = words / 4, stride = grid_threads();
  for (uint64_t i = global_thread(); i < n; i += stride) {
    const uint4 got = b[i], want = pattern_vec<P>(4 * i, seed);
    check(4 * i, want.x, got.x);
    check(4 * i + 1, want.y, got.y);
    check(4 * i + 2, want.z, got.z);
    check(4 * i + 3, want.w, got.w);
  }
  const uint64_t t = n * 4 + global_thread();
  if (global_thread() < words % 4) check(t, pattern_value<P>(t, seed), buf[t]);
  if (count != 0) {
    atomicAdd(&state->mismatches, count);
    atomicMin(&state->first_bad, first);
  }
}

template <int P>
void write_as(uint32_t* buf, uint64_t words, uint32_t seed, int device, cudaStream_t stream) {
  const char* name = "pattern_write_kernel";
  const unsigned grid = grid_for(pattern_write_kernel<P>, kBlock, device, words / 4, name);
  pattern_write_kernel<P><<<grid, kBlock, 0, stream>>>(buf, words, seed);
  MK_CHECK_LAUNCH(name);
}

template <int P>
void check_as(const uint32_t* buf, uint64_t words, uint32_t seed, CheckState* state, BadWord* bad,
              int max_report, int device, cudaStream_t stream) {
  const char* name = "pattern_check_kernel";
  const unsigned grid = grid_for(pattern_check_kernel<P>, kBlock, device, words / 4, name);
  pattern_check_kernel<P><<<grid, kBlock, 0, stream>>>(buf, words, seed, state, bad, max_report);
  MK_CHECK_LAUNCH(name);
}

// Device scratch memory freed on every path (cudaFree after the stream has been synchronised).
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) {
    MK_CUDA_CHECK(cudaMalloc(&ptr_, bytes), "pattern_check_kernel (scratch)");
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  char* get() const { return static_cast<char*>(ptr_); }

 private:
  void* ptr_ = nullptr;
};

}  // namespace

void launch_pattern_write(uint32_t* buf, uint64_t words, int pattern, uint32_t seed, int device,
                          cudaStream_t stream) {
  if (words == 0) return;
  switch (pattern) {
    case kWalkingOnes:
      return write_as<kWalkingOnes>(buf, words, seed, device, stream);
    case kAddress:
      return write_as<kAddress>(buf, words, seed, device, stream);
    default:
      return write_as<kRandom>(buf, words, seed, device, stream);
  }
}

CheckResult run_pattern_check(const uint32_t* buf, uint64_t words, int pattern, uint32_t seed,
                              int max_report, int device, cudaStream_t stream) {
  CheckResult result;
  if (words == 0) return result;
  const char* name = "pattern_check_kernel";
  DeviceBuffer scratch(sizeof(CheckState) + sizeof(BadWord) * static_cast<size_t>(max_report));
  auto* state = reinterpret_cast<CheckState*>(scratch.get());
  auto* bad = reinterpret_cast<BadWord*>(scratch.get() + sizeof(CheckState));

  CheckState host{0, ULLONG_MAX, 0};
  MK_CUDA_CHECK(cudaMemcpyAsync(state, &host, sizeof(host), cudaMemcpyHostToDevice, stream), name);
  switch (pattern) {
    case kWalkingOnes:
      check_as<kWalkingOnes>(buf, words, seed, state, bad, max_report, device, stream);
      break;
    case kAddress:
      check_as<kAddress>(buf, words, seed, state, bad, max_report, device, stream);
      break;
    default:
      check_as<kRandom>(buf, words, seed, state, bad, max_report, device, stream);
  }
  result.bad.resize(static_cast<size_t>(max_report));
  MK_CUDA_CHECK(cudaMemcpyAsync(&host, state, sizeof(host), cudaMemcpyDeviceToHost, stream), name);
  if (max_report > 0) {
    MK_CUDA_CHECK(cudaMemcpyAsync(result.bad.data(), bad, sizeof(BadWord) * result.bad.size(),
                                  cudaMemcpyDeviceToHost, stream),
                  name);
  }
  MK_CUDA_CHECK(cudaStreamSynchronize(stream), name);  // also surfaces faults in the kernel

  result.mismatches = host.mismatches;
  result.first_bad = host.first_bad;
  result.bad.resize(static_cast<size_t>(std::min<unsigned long long>(host.reported, max_report)));
  std::sort(result.bad.begin(), result.bad.end(),
            [](const BadWord& a, const BadWord& b) { return a.index < b.index; });
  return result;
}

}  // namespace mk::probes
