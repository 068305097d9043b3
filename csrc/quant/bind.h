// Python bindings of the quantised-matmul CUDA kernels (w4a16 for small M, its repack).
#pragma once

#include <pybind11/pybind11.h>

namespace mk::quant {
void bind(pybind11::module_& m);
}
