// CUDA error checks: every failing runtime call or launch becomes a C++ exception that names
// the kernel (or operation) it belongs to; pybind11 turns it into a Python RuntimeError.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace mk {

// A CUDA runtime error, raised in Python as RuntimeError.
class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline void check_cuda(cudaError_t err, const char* what, const char* expr, const char* file,
                       int line) {
  if (err == cudaSuccess) return;
  throw CudaError(std::string(what) + ": " + cudaGetErrorName(err) + " (" +
                  cudaGetErrorString(err) + ") from " + expr + " at " + file + ":" +
                  std::to_string(line));
}

}  // namespace mk

// MK_CUDA_CHECK(cudaMemsetAsync(...), "read_kernel"): throws mk::CudaError naming `what`.
#define MK_CUDA_CHECK(expr, what) ::mk::check_cuda((expr), (what), #expr, __FILE__, __LINE__)

// After a <<<...>>> launch: a bad configuration surfaces here, naming the kernel.
#define MK_CHECK_LAUNCH(what) MK_CUDA_CHECK(cudaGetLastError(), (what))
