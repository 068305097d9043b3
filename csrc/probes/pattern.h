// Memory pattern test: write a pattern over a buffer's 32-bit words, read it back, count the
// words that differ and report the first bad ones. The generator is shared by host and device,
// so CPU tests can compare it with the Python reference (millkernels.ops.probes.patterns).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#define MK_HOST_DEVICE __host__ __device__
#else
#define MK_HOST_DEVICE
#endif

namespace mk::probes {

// Pattern ids, as Python passes them.
enum Pattern : int { kWalkingOnes = 0, kAddress = 1, kRandom = 2 };
constexpr int kPatternCount = 3;
// Upper bound on the bad words one check reports (16 bytes each, copied back to the host).
constexpr int64_t kMaxReport = 1 << 16;

// A 32-bit integer finaliser (full avalanche): neighbouring indices give unrelated words.
MK_HOST_DEVICE inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// The "random" pattern's per-hi key: constant over 2**32 consecutive words, so kernels hoist it.
MK_HOST_DEVICE inline uint32_t random_key(uint32_t hi, uint32_t seed) {
  return mix32((hi ^ seed) + 0x9E3779B9u);
}

// The word pattern P puts at word index i (all arithmetic mod 2**32).
template <int P>
MK_HOST_DEVICE inline uint32_t pattern_value(uint64_t i, uint32_t seed) {
  const uint32_t lo = static_cast<uint32_t>(i), hi = static_cast<uint32_t>(i >> 32);
  if constexpr (P == kWalkingOnes) {
    return 1u << ((lo + seed) & 31u);  // (i + seed) mod 32: 2**32 is a multiple of 32
  } else if constexpr (P == kAddress) {
    return lo ^ hi ^ seed;
  } else {
    static_assert(P == kRandom, "unknown pattern");
    return mix32(lo ^ random_key(hi, seed));
  }
}

// Runtime dispatch of pattern_value (host side: pattern_values for the tests).
MK_HOST_DEVICE inline uint32_t pattern_value(int pattern, uint64_t i, uint32_t seed) {
  switch (pattern) {
    case kWalkingOnes:
      return pattern_value<kWalkingOnes>(i, seed);
    case kAddress:
      return pattern_value<kAddress>(i, seed);
    default:
      return pattern_value<kRandom>(i, seed);
  }
}

struct BadWord {
  uint64_t index;
  uint32_t expected;
  uint32_t actual;
};

struct CheckResult {
  uint64_t mismatches = 0;
  uint64_t first_bad = UINT64_MAX;  // UINT64_MAX: none
  std::vector<BadWord> bad;         // at most max_report, sorted by index
};

// Asynchronous on `stream`; `device` is current.
void launch_pattern_write(uint32_t* buf, uint64_t words, int pattern, uint32_t seed, int device,
                          cudaStream_t stream);
// Blocks until the check on `stream` is done. With more than max_report bad words, which ones
// are reported is unspecified (the kernel keeps the first max_report it finds); first_bad and
// mismatches are always exact.
CheckResult run_pattern_check(const uint32_t* buf, uint64_t words, int pattern, uint32_t seed,
                              int max_report, int device, cudaStream_t stream);

}  // namespace mk::probes
