// Python bindings of the attention kernels (paged-KV decode).
#pragma once

#include <pybind11/pybind11.h>

namespace mk::attention {
void bind(pybind11::module_& m);
}
