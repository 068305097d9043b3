// w4a16 matmul for small M (1..16) and the repack from the canonical layout.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mk::quant {

// Canonical layout (millkernels.ops.quant.formats): qweight int32 (K/8, N), word [i, n] holds
// the 4-bit codes of input features 8i..8i+7 of output n, the first in the lowest bits.
//
// This kernel's layout ("tiled"): int32 (ceil(N/32), 4K), i.e. [strip][chunk][lane][tile]
// with strip = 32 output columns, chunk = 32 input features, lane 0..31, tile 0..3: the word
// at (strip, chunk, lane, tile) is canonical word (4 * chunk + lane % 4, 32 * strip + 8 * tile
// + lane / 4) (zero past column N) with its 8 codes in nibble order 0, 2, 4, 6, 1, 3, 5, 7 (one
// mask-and-or gives two neighbours). Lane l's 16-byte vector of a chunk is the 4 words of
// tiles 0..3: 8 consecutive input features of 4 columns, as the mma.m16n8k16 A fragments and
// the fma path want them. Scales (G, 32 * ceil(N/32)) of x's dtype and zeros (same shape,
// uint8, < 128: the bf16 magic number holds 7 mantissa bits; 4-bit zero points are 0..16) are
// the canonical (G, N) ones padded with zero columns.
void launch_w4_repack(const int32_t* canonical, int32_t* repacked, int64_t k, int64_t n,
                      cudaStream_t stream);

// Paths of launch_w4a16_small_m: auto (mma for every M), the fp32-FMA path
// (M <= w4a16_fma_max_rows()), the mma.sync tensor-core path, the mma path with the weight
// stream in a 3-stage cp.async pipeline through shared memory (w4a16_pipe_kernel), and that
// pipeline with kW4WideStrips strips per block sharing each unit's x fragments ("wide": 96
// KiB of shared memory per block).
constexpr int kW4PathAuto = 0;
constexpr int kW4PathFma = 1;
constexpr int kW4PathMma = 2;
constexpr int kW4PathPipe = 3;
constexpr int kW4PathWide = 4;
constexpr int kW4WideStrips = 2;
int w4a16_fma_max_rows();

// Floats per (strip, split) tile of the K-split workspace: 16 rows (M <= 16) x 32 columns.
constexpr int kW4WorkspaceTile = 16 * 32;

// out (M, N) = x (M, K) @ W^T (+ bias), in one launch; W from `repacked`, per-group `scales`
// (G, Npad) of dtype T and `zeros` (G, Npad) uint8 (nullptr: symmetric, zero point 8).
// K % 32 == 0, group % 32 == 0. is_bf16 picks the dtype of x, scales, bias, out.
// split > 1 splits K across gridDim.y and reduces inside the kernel: each block stores its
// float32 partial (rows < M of its 16 x 32 tile) to `workspace`, float32 (ceil(N/32), split,
// kW4WorkspaceTile), and atomically arrives on `counters[strip]`, uint32 (ceil(N/32),); the
// last block of a strip sums the split partials in the fixed order 0..split-1, adds the bias,
// stores `out` and sets the counter back to 0. The counters must be 0 on entry (they are on
// exit); the workspace needs no initialisation. Launches that share a workspace/counters must
// be ordered (one stream, or events): two at once on the same buffers corrupt each other.
// split == 1 touches neither (both may be nullptr).
void launch_w4a16_small_m(const void* x, const int32_t* repacked, const void* scales,
                          const uint8_t* zeros, const void* bias, void* out, float* workspace,
                          unsigned* counters, int m, int n, int k, int group, int split, int path,
                          bool is_bf16, cudaStream_t stream);

}  // namespace mk::quant
