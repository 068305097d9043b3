// Python bindings of the custom IPC all-reduce (CUDA IPC buffers and the kernels' launcher).
#pragma once

#include <pybind11/pybind11.h>

namespace mk::comm {
void bind(pybind11::module_& m);
}
