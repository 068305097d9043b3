// Python bindings of the shared pieces: ArrayView and the GPU presence checks.
#pragma once

#include <pybind11/pybind11.h>

namespace mk::common {
void bind(pybind11::module_& m);
}
