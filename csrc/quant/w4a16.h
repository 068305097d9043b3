// w4a16 matmul for small M (1..16) and the repack from the canonical layout.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mk::quant {

// Canonical layout (millkernels.ops.quant.formats): qweight int32 (K/8, N), word [i, n] holds
// the 4-bit codes of input features 8i..8i+7 of output n, the first in the lowest bits.
// This kernel's layout ("column-major, interleaved"): int32 (N, K/8): the 8 codes of a word
// stored in nibble order 0, 2, 4, 6, 1, 3, 5, 7, so one mask-and-or gives two neighbours.
void launch_w4_repack(const int32_t* canonical, int32_t* repacked, int64_t k, int64_t n,
                      cudaStream_t stream);

// out (M, N) = x (M, K) @ W^T; W from `repacked`, per-group `scales_t` (N, G) of dtype T and
// `zeros_t` (N, G) uint8 (nullptr: symmetric, zero point 8). K % 32 == 0, group % 32 == 0.
// split > 1 writes float32 partials (split, M, N) to `partial` (then summed by the caller);
// split == 1 writes `out` (+ bias) directly. is_bf16 picks the dtype of x, scales, bias, out.
void launch_w4a16_small_m(const void* x, const int32_t* repacked, const void* scales_t,
                          const uint8_t* zeros_t, const void* bias, void* out, float* partial,
                          int m, int n, int k, int group, int split, bool is_bf16,
                          cudaStream_t stream);

}  // namespace mk::quant
