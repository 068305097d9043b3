// Argument checks for the bindings. A bad argument raises ValueError (pybind11::value_error)
// whose message names the operation and the argument and says what was expected; a machine
// without a GPU raises RuntimeError. Checks run in the order callers list them, so CPU tests
// can reach the size and alignment checks with views of CPU tensors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "array_view.h"

namespace mk {

// ValueError: "<op>: <what>".
[[noreturn]] void value_error(const std::string& op, const std::string& what);

// "(2, 3)", "(4,)": a shape as Python prints it.
std::string shape_str(const std::vector<int64_t>& shape);

// ValueError unless a has `rank` dimensions; `layout` names them, e.g. "(batch, heads)".
void require_rank(const ArrayView& a, size_t rank, const char* op, const char* name,
                  const char* layout);
void require_dtype(const ArrayView& a, const std::string& dtype, const char* op, const char* name);
void require_shape(const ArrayView& a, const std::vector<int64_t>& shape, const char* op,
                   const char* name);
// A unit stride in the last dimension (empty arrays pass).
void require_unit_last_stride(const ArrayView& a, const char* op, const char* name);
void require_contiguous(const ArrayView& a, const char* op, const char* name);
void require_word_sized(const ArrayView& a, const char* op, const char* name);  // nbytes % 4
void require_aligned(const ArrayView& a, uint64_t bytes, const char* op, const char* name);
void require_same_nbytes(const ArrayView& a, const char* a_name, const ArrayView& b,
                         const char* b_name, const char* op);
void require_cuda(const ArrayView& a, const char* op, const char* name);
// ValueError when both device indices are known and differ.
void require_same_device(const ArrayView& a, const char* a_name, const ArrayView& b,
                         const char* b_name, const char* op);
// ValueError unless lo <= value <= hi.
void require_range(int64_t value, int64_t lo, int64_t hi, const char* op, const char* name);

// RuntimeError "no CUDA GPU is visible: ..." when cudaGetDeviceCount finds none.
void require_gpu(const char* op);
// 0 when the CUDA runtime sees no GPU (or no driver); never throws.
int cuda_device_count();

// The device that holds a's memory: a.device_index when known, else asked of the driver
// (ValueError when the pointer is not device memory). Call after require_gpu.
int resolve_device(const ArrayView& a, const char* op, const char* name);

}  // namespace mk
