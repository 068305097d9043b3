// The array view Python passes to C++: what __cuda_array_interface__ / DLPack / torch describe,
// without any dependency on a framework (no libtorch).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mk {

struct ArrayView {
  uintptr_t ptr = 0;             // address of element 0
  std::vector<int64_t> shape;    // elements per dimension
  std::vector<int64_t> strides;  // in elements, not bytes
  std::string dtype;             // short name: "f32", "i32", "u8", "bf16", ...
  int64_t itemsize = 0;          // bytes per element
  std::string device_type;       // "cuda", "cpu", ...
  int device_index = -1;         // -1: unknown, C++ asks the driver (cudaPointerGetAttributes)
  uintptr_t stream = 0;          // the caller's current stream (cudaStream_t), 0 = legacy default

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  uint64_t nbytes() const {
    return static_cast<uint64_t>(numel()) * static_cast<uint64_t>(itemsize);
  }

  // C order; strides of length-1 dimensions do not matter, and an empty array is contiguous.
  bool is_contiguous() const {
    if (numel() == 0) return true;
    int64_t expected = 1;
    for (size_t d = shape.size(); d-- > 0;) {
      if (shape[d] != 1 && strides[d] != expected) return false;
      expected *= shape[d];
    }
    return true;
  }
};

}  // namespace mk
