// pybind11 module pyfundus._C_cuda: the CUDA kernels.
//
// Same calling convention as pyfundus._C plus the device index and the
// cudaStream_t (torch.cuda.current_stream(device).cuda_stream) as integers.
// Importing makes no CUDA call, so the module imports on machines without a
// GPU. Bad arguments raise ValueError, CUDA errors RuntimeError.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common/bindings.h"
#include "common/checks.h"
#include "common/dtype.h"
#include "common/softpool_shape.h"
#include "cuda/softpool.cuh"

namespace py = pybind11;

namespace pyfundus::cuda {
namespace {

LaunchTarget checked_target(int device, std::uintptr_t stream) {
  check_arg(device >= 0, "softpool2d: device must be a CUDA device index >= 0, got " +
                             std::to_string(device));
  return LaunchTarget{device, stream};
}

void softpool2d_forward_py(std::uintptr_t x_ptr, std::uintptr_t y_ptr, int64_t n, int64_t c,
                           int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                           int dtype, int device, std::uintptr_t stream) {
  const SoftPoolShape shape = make_softpool_shape(n, c, h, w, kh, kw, sh, sw);
  const DType type = dtype_from_code(dtype);
  const LaunchTarget target = checked_target(device, stream);
  if (shape.planes() == 0) return;  // empty tensors may have null data
  check_pointer(x_ptr, "softpool2d_forward: x_ptr");
  check_pointer(y_ptr, "softpool2d_forward: y_ptr");
  softpool2d_forward(reinterpret_cast<const void*>(x_ptr), reinterpret_cast<void*>(y_ptr), shape,
                     type, target);
}

void softpool2d_backward_py(std::uintptr_t grad_y_ptr, std::uintptr_t x_ptr,
                            std::uintptr_t grad_x_ptr, std::uintptr_t scratch_ptr, int64_t n,
                            int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                            int64_t sw, int dtype, int device, std::uintptr_t stream) {
  const SoftPoolShape shape = make_softpool_shape(n, c, h, w, kh, kw, sh, sw);
  const DType type = dtype_from_code(dtype);
  const LaunchTarget target = checked_target(device, stream);
  if (shape.planes() == 0) return;
  check_pointer(grad_y_ptr, "softpool2d_backward: grad_y_ptr");
  check_pointer(x_ptr, "softpool2d_backward: x_ptr");
  check_pointer(grad_x_ptr, "softpool2d_backward: grad_x_ptr");
  if (softpool2d_backward_needs_scratch(shape, type)) {
    check_pointer(scratch_ptr,
                  "softpool2d_backward: scratch_ptr (a float32 buffer shaped like x, needed "
                  "for half types with overlapping windows)");
  }
  softpool2d_backward(reinterpret_cast<const void*>(grad_y_ptr),
                      reinterpret_cast<const void*>(x_ptr), reinterpret_cast<void*>(grad_x_ptr),
                      reinterpret_cast<void*>(scratch_ptr), shape, type, target);
}

bool backward_needs_scratch_py(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int dtype) {
  // The input size does not matter here; a shape that fits the kernel is enough.
  return softpool2d_backward_needs_scratch(make_softpool_shape(1, 1, kh, kw, kh, kw, sh, sw),
                                           dtype_from_code(dtype));
}

}  // namespace
}  // namespace pyfundus::cuda

PYBIND11_MODULE(_C_cuda, m) {
  using namespace pyfundus::cuda;
  m.doc() = "pyfundus CUDA kernels (raw pointers and stream handles in, no libtorch)";
  pyfundus::add_dtype_codes(m);

  m.def("softpool2d_forward", &softpool2d_forward_py, py::arg("x_ptr"), py::arg("y_ptr"),
        py::arg("n"), py::arg("c"), py::arg("h"), py::arg("w"), py::arg("kh"), py::arg("kw"),
        py::arg("sh"), py::arg("sw"), py::arg("dtype"), py::arg("device"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>(),
        "SoftPool forward on `stream` of CUDA device `device` (asynchronous). x: contiguous\n"
        "NCHW; y: contiguous (n, c, oh, ow). dtype: any of DTYPE_CODES.");
  m.def("softpool2d_backward", &softpool2d_backward_py, py::arg("grad_y_ptr"), py::arg("x_ptr"),
        py::arg("grad_x_ptr"), py::arg("scratch_ptr"), py::arg("n"), py::arg("c"), py::arg("h"),
        py::arg("w"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
        py::arg("dtype"), py::arg("device"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>(),
        "SoftPool backward (asynchronous): writes every element of grad_x. scratch_ptr: a\n"
        "float32 buffer with as many elements as x when backward_needs_scratch(...), else 0.");
  m.def("backward_needs_scratch", &backward_needs_scratch_py, py::arg("kh"), py::arg("kw"),
        py::arg("sh"), py::arg("sw"), py::arg("dtype"),
        "Whether softpool2d_backward needs the float32 scratch buffer (half types with\n"
        "overlapping windows).");
}
