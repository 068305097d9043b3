// Python bindings of the memory probes (mem_copy, mem_read, mem_write, pattern_*).
#pragma once

#include <pybind11/pybind11.h>

namespace mk::probes {
void bind(pybind11::module_& m);
}
