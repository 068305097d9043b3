// millkernels._C: registers each op family's bindings, nothing else.
#include <pybind11/pybind11.h>

#include "attention/bind.h"
#include "comm/bind.h"
#include "common/bind.h"
#include "probes/bind.h"
#include "quant/bind.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "millkernels native CUDA kernels";
  m.def("build_info", [] {
    py::dict d;
    d["cuda_archs"] = MK_CUDA_ARCHS;
    d["cuda_version"] = MK_CUDA_VERSION;
    return d;
  });
  mk::common::bind(m);
  mk::comm::bind(m);
  mk::probes::bind(m);
  mk::attention::bind(m);
  mk::quant::bind(m);
}
