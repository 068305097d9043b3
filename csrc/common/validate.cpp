#include "validate.h"

#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <sstream>
#include <stdexcept>

#include "check.h"

namespace mk {

void value_error(const std::string& op, const std::string& what) {
  throw pybind11::value_error(op + ": " + what);
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

void require_rank(const ArrayView& a, size_t rank, const char* op, const char* name,
                  const char* layout) {
  if (a.shape.size() == rank) return;
  value_error(op, std::string(name) + ": expected " + std::to_string(rank) + " dimensions " +
                      layout + ", got shape " + shape_str(a.shape));
}

void require_dtype(const ArrayView& a, const std::string& dtype, const char* op, const char* name) {
  if (a.dtype == dtype) return;
  value_error(op, std::string(name) + ": expected dtype '" + dtype + "', got '" + a.dtype + "'");
}

void require_shape(const ArrayView& a, const std::vector<int64_t>& shape, const char* op,
                   const char* name) {
  if (a.shape == shape) return;
  value_error(op, std::string(name) + ": expected shape " + shape_str(shape) + ", got " +
                      shape_str(a.shape));
}

void require_unit_last_stride(const ArrayView& a, const char* op, const char* name) {
  if (a.numel() == 0 || a.strides.back() == 1) return;
  value_error(op, std::string(name) + ": expected a unit stride in the last dimension, got " +
                      std::to_string(a.strides.back()));
}

void require_contiguous(const ArrayView& a, const char* op, const char* name) {
  if (a.is_contiguous()) return;
  value_error(op, std::string(name) + ": expected a contiguous (C-order) array");
}

void require_word_sized(const ArrayView& a, const char* op, const char* name) {
  if (a.nbytes() % 4 == 0) return;
  value_error(op, std::string(name) + ": expected a size in bytes divisible by 4, got " +
                      std::to_string(a.nbytes()));
}

void require_aligned(const ArrayView& a, uint64_t bytes, const char* op, const char* name) {
  if (a.ptr % bytes == 0) return;
  std::ostringstream msg;
  msg << name << ": expected a " << bytes << "-byte aligned data pointer, got 0x" << std::hex
      << a.ptr;
  value_error(op, msg.str());
}

void require_same_nbytes(const ArrayView& a, const char* a_name, const ArrayView& b,
                         const char* b_name, const char* op) {
  if (a.nbytes() == b.nbytes()) return;
  value_error(op, std::string(a_name) + " and " + b_name + ": expected equal sizes in bytes, got " +
                      std::to_string(a.nbytes()) + " and " + std::to_string(b.nbytes()));
}

void require_cuda(const ArrayView& a, const char* op, const char* name) {
  if (a.device_type == "cuda") return;
  value_error(op, std::string(name) + ": expected an array in CUDA device memory, got device '" +
                      a.device_type + "'");
}

void require_same_device(const ArrayView& a, const char* a_name, const ArrayView& b,
                         const char* b_name, const char* op) {
  if (a.device_index < 0 || b.device_index < 0 || a.device_index == b.device_index) return;
  value_error(op, std::string(a_name) + " and " + b_name +
                      ": expected the same device, got cuda:" + std::to_string(a.device_index) +
                      " and cuda:" + std::to_string(b.device_index));
}

void require_range(int64_t value, int64_t lo, int64_t hi, const char* op, const char* name) {
  if (value >= lo && value <= hi) return;
  value_error(op, std::string(name) + ": expected " + std::to_string(lo) + " <= " + name +
                      " <= " + std::to_string(hi) + ", got " + std::to_string(value));
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear it: no GPU is an answer here, not an error
    return 0;
  }
  return n;
}

void require_gpu(const char* op) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err == cudaSuccess && n > 0) return;
  cudaGetLastError();
  const std::string why = err == cudaSuccess ? std::string("the CUDA runtime reports 0 devices")
                                             : std::string(cudaGetErrorString(err));
  throw std::runtime_error(std::string(op) + ": no CUDA GPU is visible: " + why);
}

int resolve_device(const ArrayView& a, const char* op, const char* name) {
  if (a.device_index >= 0) return a.device_index;
  if (a.ptr == 0) {  // an empty array owns no memory: use the current device
    int device = 0;
    MK_CUDA_CHECK(cudaGetDevice(&device), op);
    return device;
  }
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(a.ptr));
  if (err != cudaSuccess || attr.type != cudaMemoryTypeDevice) {
    cudaGetLastError();
    value_error(op, std::string(name) + ": expected a pointer to CUDA device memory");
  }
  return attr.device;
}

}  // namespace mk
