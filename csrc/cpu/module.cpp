// pybind11 module pyfundus._C: the CPU kernels.
//
// Tensors arrive as raw addresses (tensor.data_ptr()) plus sizes and a dtype
// code, so this module never includes or links libtorch. Bad arguments raise
// ValueError; the kernels run with the GIL released.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/bindings.h"
#include "common/checks.h"
#include "common/dtype.h"
#include "common/softpool_shape.h"
#include "cpu/softpool.h"

namespace py = pybind11;

namespace pyfundus::cpu {
namespace {

int checked_threads(int num_threads) {
  check_arg(num_threads >= 1,
            "softpool2d: num_threads must be >= 1, got " + std::to_string(num_threads));
  return num_threads;
}

void softpool2d_forward_py(std::uintptr_t x_ptr, std::uintptr_t y_ptr, int64_t n, int64_t c,
                           int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                           int dtype, int num_threads) {
  const SoftPoolShape shape = make_softpool_shape(n, c, h, w, kh, kw, sh, sw);
  const DType type = dtype_from_code(dtype);
  const int threads = checked_threads(num_threads);
  if (shape.planes() == 0) return;  // empty tensors may have null data
  check_pointer(x_ptr, "softpool2d_forward: x_ptr");
  check_pointer(y_ptr, "softpool2d_forward: y_ptr");
  softpool2d_forward(reinterpret_cast<const void*>(x_ptr), reinterpret_cast<void*>(y_ptr), shape,
                     type, threads);
}

void softpool2d_backward_py(std::uintptr_t grad_y_ptr, std::uintptr_t x_ptr,
                            std::uintptr_t grad_x_ptr, int64_t n, int64_t c, int64_t h, int64_t w,
                            int64_t kh, int64_t kw, int64_t sh, int64_t sw, int dtype,
                            int num_threads) {
  const SoftPoolShape shape = make_softpool_shape(n, c, h, w, kh, kw, sh, sw);
  const DType type = dtype_from_code(dtype);
  const int threads = checked_threads(num_threads);
  if (shape.planes() == 0) return;
  check_pointer(grad_y_ptr, "softpool2d_backward: grad_y_ptr");
  check_pointer(x_ptr, "softpool2d_backward: x_ptr");
  check_pointer(grad_x_ptr, "softpool2d_backward: grad_x_ptr");
  softpool2d_backward(reinterpret_cast<const void*>(grad_y_ptr),
                      reinterpret_cast<const void*>(x_ptr), reinterpret_cast<void*>(grad_x_ptr),
                      shape, type, threads);
}

}  // namespace
}  // namespace pyfundus::cpu

PYBIND11_MODULE(_C, m) {
  using namespace pyfundus::cpu;
  m.doc() = "pyfundus CPU kernels (raw pointers in, no libtorch)";
  pyfundus::add_dtype_codes(m);

  m.def("softpool2d_forward", &softpool2d_forward_py, py::arg("x_ptr"), py::arg("y_ptr"),
        py::arg("n"), py::arg("c"), py::arg("h"), py::arg("w"), py::arg("kh"), py::arg("kw"),
        py::arg("sh"), py::arg("sw"), py::arg("dtype"), py::arg("num_threads"),
        py::call_guard<py::gil_scoped_release>(),
        "SoftPool forward. x: contiguous NCHW (n, c, h, w); y: contiguous (n, c, oh, ow) with\n"
        "oh = (h - kh) // sh + 1, ow = (w - kw) // sw + 1. dtype: DTYPE_CODES float32/float64.");
  m.def("softpool2d_backward", &softpool2d_backward_py, py::arg("grad_y_ptr"), py::arg("x_ptr"),
        py::arg("grad_x_ptr"), py::arg("n"), py::arg("c"), py::arg("h"), py::arg("w"),
        py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("dtype"),
        py::arg("num_threads"), py::call_guard<py::gil_scoped_release>(),
        "SoftPool backward: writes every element of grad_x (same shape as x) from grad_y\n"
        "(shape of y) and x. All buffers contiguous, same dtype.");
}
