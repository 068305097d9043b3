#include "bind.h"

#include <pybind11/stl.h>

#include <sstream>

#include "array_view.h"
#include "validate.h"

namespace py = pybind11;

namespace mk::common {
namespace {

ArrayView make_view(uintptr_t ptr, std::vector<int64_t> shape, std::vector<int64_t> strides,
                    std::string dtype, int64_t itemsize, std::string device_type, int device_index,
                    uintptr_t stream) {
  const char* op = "ArrayView";
  if (strides.size() != shape.size()) {
    value_error(op, "strides: expected " + std::to_string(shape.size()) +
                        " entries (one per dimension of shape), got " +
                        std::to_string(strides.size()));
  }
  for (int64_t s : shape) {
    if (s < 0) value_error(op, "shape: expected non-negative sizes, got " + std::to_string(s));
  }
  if (itemsize <= 0) value_error(op, "itemsize: expected > 0, got " + std::to_string(itemsize));
  if (device_index < -1) {
    value_error(op, "device_index: expected >= -1, got " + std::to_string(device_index));
  }
  return ArrayView{ptr,      std::move(shape),       std::move(strides), std::move(dtype),
                   itemsize, std::move(device_type), device_index,       stream};
}

std::string repr(const ArrayView& a) {
  std::ostringstream s;
  s << "ArrayView(ptr=0x" << std::hex << a.ptr << std::dec << ", shape=(";
  for (size_t i = 0; i < a.shape.size(); ++i) s << (i ? ", " : "") << a.shape[i];
  s << (a.shape.size() == 1 ? ",)" : ")") << ", strides=(";
  for (size_t i = 0; i < a.strides.size(); ++i) s << (i ? ", " : "") << a.strides[i];
  s << (a.strides.size() == 1 ? ",)" : ")") << ", dtype='" << a.dtype
    << "', itemsize=" << a.itemsize << ", device='" << a.device_type << ":" << a.device_index
    << "', stream=0x" << std::hex << a.stream << ")";
  return s.str();
}

}  // namespace

void bind(py::module_& m) {
  py::class_<ArrayView>(m, "ArrayView",
                        "A framework-free description of an array: pointer, shape, strides (in "
                        "elements), dtype, itemsize, device and the stream to launch on.")
      .def(py::init(&make_view), py::arg("ptr"), py::arg("shape"), py::arg("strides"),
           py::arg("dtype"), py::arg("itemsize"), py::arg("device_type"),
           py::arg("device_index") = -1, py::arg("stream") = 0)
      .def_readonly("ptr", &ArrayView::ptr)
      .def_readonly("shape", &ArrayView::shape)
      .def_readonly("strides", &ArrayView::strides)
      .def_readonly("dtype", &ArrayView::dtype)
      .def_readonly("itemsize", &ArrayView::itemsize)
      .def_readonly("device_type", &ArrayView::device_type)
      .def_readonly("device_index", &ArrayView::device_index)
      .def_readonly("stream", &ArrayView::stream)
      .def_property_readonly("numel", &ArrayView::numel)
      .def_property_readonly("nbytes", &ArrayView::nbytes)
      .def_property_readonly("is_contiguous", &ArrayView::is_contiguous)
      .def("__repr__", &repr);

  m.def("cuda_device_count", &cuda_device_count,
        "Number of CUDA GPUs the CUDA runtime sees; 0 without a GPU or driver (never raises).");
  m.def(
      "require_gpu", [] { require_gpu("millkernels._C"); },
      "Raise RuntimeError('... no CUDA GPU is visible: <reason>') when there is none.");
}

}  // namespace mk::common
