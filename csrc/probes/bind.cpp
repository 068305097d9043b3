// Argument checks and bindings of the probe kernels. Checks run in the order: contiguity and
// sizes, 16-byte alignment, device type, same device, then a GPU must exist; so the first four
// are testable with views of CPU tensors on a machine without a GPU.
#include "bind.h"

#include <pybind11/stl.h>

#include "../common/array_view.h"
#include "../common/launch.h"
#include "../common/validate.h"
#include "membw.h"
#include "pattern.h"

namespace py = pybind11;

namespace mk::probes {
namespace {

// A buffer of 32-bit words the kernels access 16 bytes at a time.
void check_words(const ArrayView& a, const char* op, const char* name) {
  require_contiguous(a, op, name);
  require_word_sized(a, op, name);
  require_aligned(a, 16, op, name);
}

// The device the call runs on: every array on it, and a GPU present.
int device_for(const ArrayView& a, const char* a_name, const ArrayView* b, const char* b_name,
               const char* op) {
  require_cuda(a, op, a_name);
  if (b != nullptr) {
    require_cuda(*b, op, b_name);
    require_same_device(a, a_name, *b, b_name, op);
  }
  require_gpu(op);
  const int device = resolve_device(a, op, a_name);
  if (b != nullptr && resolve_device(*b, op, b_name) != device) {
    value_error(op, std::string(a_name) + " and " + b_name + ": expected the same device");
  }
  return device;
}

uint32_t* words_of(const ArrayView& a) { return reinterpret_cast<uint32_t*>(a.ptr); }
uint64_t word_count(const ArrayView& a) { return a.nbytes() / 4; }

void mem_copy(const ArrayView& dst, const ArrayView& src) {
  const char* op = "mem_copy";
  require_same_nbytes(dst, "dst", src, "src", op);
  check_words(dst, op, "dst");
  check_words(src, op, "src");
  const int device = device_for(dst, "dst", &src, "src", op);
  DeviceGuard guard(device);
  py::gil_scoped_release nogil;
  launch_copy(words_of(dst), words_of(src), word_count(dst), device, as_stream(dst.stream));
}

void mem_read(const ArrayView& src, const ArrayView& out) {
  const char* op = "mem_read";
  check_words(src, op, "src");
  if (out.numel() != 1 || out.itemsize != 8 || (out.dtype != "i64" && out.dtype != "u64")) {
    value_error(op, "out: expected a 1-element int64 array, got " + std::to_string(out.numel()) +
                        " element(s) of dtype '" + out.dtype + "'");
  }
  require_aligned(out, 8, op, "out");
  const int device = device_for(src, "src", &out, "out", op);
  DeviceGuard guard(device);
  py::gil_scoped_release nogil;
  launch_read(words_of(src), word_count(src), reinterpret_cast<unsigned long long*>(out.ptr),
              device, as_stream(src.stream));
}

void mem_write(const ArrayView& dst, int64_t value) {
  const char* op = "mem_write";
  check_words(dst, op, "dst");
  require_range(value, 0, UINT32_MAX, op, "value");
  const int device = device_for(dst, "dst", nullptr, nullptr, op);
  DeviceGuard guard(device);
  py::gil_scoped_release nogil;
  launch_write(words_of(dst), word_count(dst), static_cast<uint32_t>(value), device,
               as_stream(dst.stream));
}

void check_pattern_args(int64_t pattern_id, int64_t seed, const char* op) {
  require_range(pattern_id, 0, kPatternCount - 1, op, "pattern_id");
  require_range(seed, 0, UINT32_MAX, op, "seed");
}

void pattern_write(const ArrayView& buf, int64_t pattern_id, int64_t seed) {
  const char* op = "pattern_write";
  check_words(buf, op, "buf");
  check_pattern_args(pattern_id, seed, op);
  const int device = device_for(buf, "buf", nullptr, nullptr, op);
  DeviceGuard guard(device);
  py::gil_scoped_release nogil;
  launch_pattern_write(words_of(buf), word_count(buf), static_cast<int>(pattern_id),
                       static_cast<uint32_t>(seed), device, as_stream(buf.stream));
}

py::tuple pattern_check(const ArrayView& buf, int64_t pattern_id, int64_t seed,
                        int64_t max_report) {
  const char* op = "pattern_check";
  check_words(buf, op, "buf");
  check_pattern_args(pattern_id, seed, op);
  require_range(max_report, 0, kMaxReport, op, "max_report");
  const int device = device_for(buf, "buf", nullptr, nullptr, op);
  CheckResult r;
  {
    DeviceGuard guard(device);
    py::gil_scoped_release nogil;
    r = run_pattern_check(words_of(buf), word_count(buf), static_cast<int>(pattern_id),
                          static_cast<uint32_t>(seed), static_cast<int>(max_report), device,
                          as_stream(buf.stream));
  }
  py::list bad;
  for (const BadWord& w : r.bad) bad.append(py::make_tuple(w.index, w.expected, w.actual));
  py::object first = r.mismatches ? py::object(py::int_(r.first_bad)) : py::object(py::none());
  return py::make_tuple(word_count(buf), r.mismatches, first, bad);
}

std::vector<uint32_t> pattern_values(int64_t pattern_id, int64_t start, int64_t count,
                                     int64_t seed) {
  const char* op = "pattern_values";
  check_pattern_args(pattern_id, seed, op);
  require_range(start, 0, INT64_MAX, op, "start");
  require_range(count, 0, int64_t{1} << 24, op, "count");
  std::vector<uint32_t> out(static_cast<size_t>(count));
  for (int64_t k = 0; k < count; ++k) {
    out[k] = pattern_value(static_cast<int>(pattern_id), static_cast<uint64_t>(start + k),
                           static_cast<uint32_t>(seed));
  }
  return out;
}

}  // namespace

void bind(py::module_& m) {
  m.def("mem_copy", &mem_copy, py::arg("dst"), py::arg("src"),
        "dst's bytes := src's (equal sizes, 16-byte aligned, nbytes % 4 == 0); async on "
        "dst.stream.");
  m.def("mem_read", &mem_read, py::arg("src"), py::arg("out"),
        "out[0] := sum of src's 32-bit words as unsigned, mod 2**64 (out: 1-element int64); "
        "async on src.stream.");
  m.def("mem_write", &mem_write, py::arg("dst"), py::arg("value"),
        "Every 32-bit word of dst := value (0 <= value < 2**32); async on dst.stream.");
  m.def("pattern_write", &pattern_write, py::arg("buf"), py::arg("pattern_id"), py::arg("seed"),
        "Write pattern pattern_id (0 walking ones, 1 address, 2 random) over buf's words; async "
        "on buf.stream.");
  m.def("pattern_check", &pattern_check, py::arg("buf"), py::arg("pattern_id"), py::arg("seed"),
        py::arg("max_report"),
        "Compare buf's words with the pattern; waits for buf.stream. Returns (words, "
        "mismatches, first_bad_index or None, [(index, expected, actual), ...] sorted by index, "
        "at most max_report).");
  m.def("pattern_values", &pattern_values, py::arg("pattern_id"), py::arg("start"),
        py::arg("count"), py::arg("seed"),
        "The pattern's words at indices start .. start+count-1, computed on the host by the same "
        "generator the kernels use (for tests).");
}

}  // namespace mk::probes
