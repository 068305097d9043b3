// Bindings of the custom all-reduce: IPC buffer management (allocate + export, open, close,
// free) and the launcher. Argument checks run before anything needs a GPU, in the order:
// ranks and blocks, dtypes, sizes, contiguity, device type; so a CPU machine can test them
// with views of CPU tensors.
#include "bind.h"

#include <cuda_runtime.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>
#include <vector>

#include "../common/array_view.h"
#include "../common/check.h"
#include "../common/launch.h"
#include "../common/validate.h"
#include "custom_allreduce.h"

namespace py = pybind11;

namespace mk::comm {
namespace {

py::dict layout(uint64_t max_bytes) {
  py::dict d;
  d["signal_bytes"] = kSignalBytes;
  d["slot_bytes"] = slot_bytes(max_bytes);
  d["total_bytes"] = total_bytes(max_bytes);
  d["max_ranks"] = kMaxRanks;
  d["max_blocks"] = kMaxBlocks;
  d["threads"] = kThreads;
  return d;
}

// cudaMalloc `bytes` on `device`, zero it (the flags must start at 0 before any peer maps it),
// wait for the zeroing, export the IPC handle. Returns (pointer, handle bytes).
py::tuple ipc_alloc(uint64_t bytes, int device) {
  const char* op = "comm_ipc_alloc";
  require_range(static_cast<int64_t>(bytes), 1, int64_t{1} << 40, op, "bytes");
  require_gpu(op);
  void* ptr = nullptr;
  cudaIpcMemHandle_t handle{};
  {
    DeviceGuard guard(device);
    py::gil_scoped_release nogil;
    MK_CUDA_CHECK(cudaMalloc(&ptr, bytes), op);
    const cudaError_t err = [&] {
      cudaError_t e = cudaMemset(ptr, 0, bytes);
      if (e == cudaSuccess) e = cudaDeviceSynchronize();
      if (e == cudaSuccess) e = cudaIpcGetMemHandle(&handle, ptr);
      return e;
    }();
    if (err != cudaSuccess) {
      cudaFree(ptr);
      check_cuda(err, op, "cudaMemset/cudaIpcGetMemHandle", __FILE__, __LINE__);
    }
  }
  return py::make_tuple(reinterpret_cast<uintptr_t>(ptr),
                        py::bytes(reinterpret_cast<const char*>(&handle), sizeof(handle)));
}

uintptr_t ipc_open(const py::bytes& handle_bytes, int device) {
  const char* op = "comm_ipc_open";
  const std::string raw = handle_bytes;
  if (raw.size() != sizeof(cudaIpcMemHandle_t)) {
    value_error(op, "handle: expected " + std::to_string(sizeof(cudaIpcMemHandle_t)) +
                        " bytes (a cudaIpcMemHandle_t), got " + std::to_string(raw.size()));
  }
  require_gpu(op);
  cudaIpcMemHandle_t handle{};
  std::memcpy(&handle, raw.data(), sizeof(handle));
  void* ptr = nullptr;
  DeviceGuard guard(device);
  MK_CUDA_CHECK(cudaIpcOpenMemHandle(&ptr, handle, cudaIpcMemLazyEnablePeerAccess), op);
  return reinterpret_cast<uintptr_t>(ptr);
}

void ipc_close(uintptr_t ptr, int device) {
  DeviceGuard guard(device);
  MK_CUDA_CHECK(cudaIpcCloseMemHandle(reinterpret_cast<void*>(ptr)), "comm_ipc_close");
}

void ipc_free(uintptr_t ptr, int device) {
  DeviceGuard guard(device);
  MK_CUDA_CHECK(cudaFree(reinterpret_cast<void*>(ptr)), "comm_ipc_free");
}

DType dtype_of(const ArrayView& a, const char* op, const char* name) {
  if (a.dtype == "f16" && a.itemsize == 2) return DType::kF16;
  if (a.dtype == "bf16" && a.itemsize == 2) return DType::kBF16;
  if (a.dtype == "f32" && a.itemsize == 4) return DType::kF32;
  value_error(op, std::string(name) + ": expected dtype f16, bf16 or f32, got '" + a.dtype + "'");
}

void custom_all_reduce(const ArrayView& out, const ArrayView& in,
                       const std::vector<uintptr_t>& bases, int rank, uint64_t max_bytes,
                       uint64_t slot, int blocks, bool two_shot) {
  const char* op = "comm_custom_allreduce";
  const int world = static_cast<int>(bases.size());
  require_range(world, 2, kMaxRanks, op, "len(bases) (ranks)");
  require_range(rank, 0, world - 1, op, "rank");
  require_range(blocks, 1, kMaxBlocks, op, "blocks");
  const DType dt = dtype_of(in, op, "in");
  if (dtype_of(out, op, "out") != dt) {
    value_error(op, "out: expected the dtype of in ('" + in.dtype + "'), got '" + out.dtype + "'");
  }
  if (out.numel() != in.numel()) {
    value_error(op, "out: expected " + std::to_string(in.numel()) + " elements like in, got " +
                        std::to_string(out.numel()));
  }
  if (in.nbytes() > max_bytes) {
    value_error(op, "in: " + std::to_string(in.nbytes()) + " B is over max_bytes=" +
                        std::to_string(max_bytes) + " (use NCCL for larger messages)");
  }
  if (slot < slot_bytes(max_bytes)) {
    value_error(op, "slot: expected >= " + std::to_string(slot_bytes(max_bytes)) +
                        " for max_bytes=" + std::to_string(max_bytes) + ", got " +
                        std::to_string(slot));
  }
  require_contiguous(in, op, "in");
  require_contiguous(out, op, "out");
  require_cuda(in, op, "in");
  require_cuda(out, op, "out");
  require_same_device(in, "in", out, "out", op);
  require_gpu(op);
  if (in.numel() == 0) return;
  for (uintptr_t b : bases) {
    if (b == 0 || b % 256) value_error(op, "bases: expected the IPC buffers' base addresses");
  }
  Peers peers{};
  for (int r = 0; r < world; ++r) peers.base[r] = reinterpret_cast<char*>(bases[r]);
  const int device = resolve_device(out, op, "out");
  DeviceGuard guard(device);
  py::gil_scoped_release nogil;
  launch_all_reduce(dt, peers, reinterpret_cast<const void*>(in.ptr),
                    reinterpret_cast<void*>(out.ptr), static_cast<uint64_t>(in.numel()), slot, rank,
                    world, blocks, two_shot, as_stream(out.stream));
}

}  // namespace

void bind(py::module_& m) {
  m.def("comm_ipc_layout", &layout, py::arg("max_bytes"),
        "Sizes of one rank's IPC allocation for messages up to max_bytes: signal_bytes, "
        "slot_bytes, total_bytes, and the kernels' max_ranks, max_blocks, threads.");
  m.def("comm_ipc_alloc", &ipc_alloc, py::arg("bytes"), py::arg("device"),
        "cudaMalloc + zero + cudaIpcGetMemHandle on device; returns (pointer, handle bytes).");
  m.def("comm_ipc_open", &ipc_open, py::arg("handle"), py::arg("device"),
        "Map a peer's allocation (cudaIpcOpenMemHandle); returns the pointer.");
  m.def("comm_ipc_close", &ipc_close, py::arg("ptr"), py::arg("device"),
        "Unmap a peer's allocation (cudaIpcCloseMemHandle).");
  m.def("comm_ipc_free", &ipc_free, py::arg("ptr"), py::arg("device"),
        "Free this rank's allocation (cudaFree).");
  m.def("comm_custom_allreduce", &custom_all_reduce, py::arg("out"), py::arg("in_"),
        py::arg("bases"), py::arg("rank"), py::arg("max_bytes"), py::arg("slot"), py::arg("blocks"),
        py::arg("two_shot"),
        "out := sum over ranks of in (f16/bf16/f32, fixed rank order, float32 accumulation), "
        "one-shot or two-shot over the IPC buffers at bases (rank order); async on out.stream. "
        "Every rank must call it with the same sizes, blocks and algorithm.");
}

}  // namespace mk::comm
