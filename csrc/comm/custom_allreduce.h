// One-shot and two-shot all-reduce over CUDA IPC peer pointers (ranks of one node).
//
// Each rank owns one IPC allocation, laid out as [Signal | staging 0 | staging 1 | result 0 |
// result 1]; `bases` holds every rank's base address in rank order (this rank's own one
// included), mapped into this process. A call copies the input into this rank's staging slot
// (inside the kernel), meets the peers at a per-block barrier, and sums the peers' slots in
// rank order 0, 1, ... in float32, so every rank computes identical bits. Two-shot: rank r
// reduces partition r into its result slot, a second barrier, then every rank gathers the
// partitions. Calls alternate between two sets (flags + slots) by the parity of a per-block
// call counter kept in device memory: nothing on the host changes between calls, so the
// launches can be captured in CUDA graphs, and a rank racing into call k+1 writes the other
// set, never the one a slower rank still reads in call k.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mk::comm {

constexpr int kMaxRanks = 8;
constexpr int kMaxBlocks = 64;
constexpr int kThreads = 512;
// A barrier that polls its flag this many times traps (a CUDA error) instead of hanging
// forever: a rank that never joins is a bug. 2**27 polls of a system-scope load are one to two
// minutes, long enough for several processes time-sliced on one GPU. (A globaltimer-based
// deadline made ptxas spill in the two-shot kernels.)
constexpr uint32_t kMaxSpins = 1u << 27;

// Barrier flags of one set: start[block][peer] and mid[block][peer], full 32-bit words written
// by the peers (st.release.sys) and read by this rank (ld.acquire.sys). The value is the
// call's epoch, so a flag left from an earlier call never matches.
struct FlagSet {
  alignas(128) uint32_t start[kMaxBlocks][kMaxRanks];
  alignas(128) uint32_t mid[kMaxBlocks][kMaxRanks];
};

struct Signal {
  FlagSet sets[2];
  alignas(128) uint32_t epoch[kMaxBlocks];  // calls completed by each block (this rank only)
};

// Bytes before the first slot, and per slot (one message of max_bytes, rounded up, plus a
// pack of slack for the partial last 16-byte pack and two-shot partition rounding).
constexpr uint64_t kSignalBytes = (sizeof(Signal) + 4095) / 4096 * 4096;
inline uint64_t slot_bytes(uint64_t max_bytes) { return (max_bytes + 255) / 256 * 256 + 256; }
inline uint64_t total_bytes(uint64_t max_bytes) { return kSignalBytes + 4 * slot_bytes(max_bytes); }

struct Peers {
  char* base[kMaxRanks];
};

enum class DType { kF16, kBF16, kF32 };

// Asynchronous on `stream`. n elements of `dtype`; n * itemsize <= slot - 256.
void launch_all_reduce(DType dtype, const Peers& peers, const void* in, void* out, uint64_t n,
                       uint64_t slot, int rank, int world, int blocks, bool two_shot,
                       cudaStream_t stream);

}  // namespace mk::comm
