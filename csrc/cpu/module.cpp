// pybind11 module pyfundus._C: the CPU kernels.
//
// Tensors arrive as raw addresses (tensor.data_ptr()) plus sizes and a dtype
// code, so this module never includes or links libtorch. Bad arguments raise
// ValueError; the kernels run with the GIL released.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common/bindings.h"
#include "common/checks.h"
#include "common/dtype.h"
#include "common/softpool_shape.h"
#include "common/window_attention_shape.h"
#include "cpu/softpool.h"
#include "cpu/window_attention.h"

namespace py = pybind11;

namespace pyfundus::cpu {
namespace {

int checked_threads(int num_threads, const char* op) {
  PYFUNDUS_CHECK(num_threads >= 1, std::string(op) + ": num_threads must be >= 1, got " +
                                       std::to_string(num_threads));
  return num_threads;
}

void softpool2d_forward_py(std::uintptr_t x_ptr, std::uintptr_t y_ptr, int64_t n, int64_t c,
                           int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                           int dtype, int num_threads) {
  const SoftPoolShape shape = make_softpool_shape(n, c, h, w, kh, kw, sh, sw);
  const DType type = dtype_from_code(dtype);
  const int threads = checked_threads(num_threads, "softpool2d");
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
  const int threads = checked_threads(num_threads, "softpool2d");
  if (shape.planes() == 0) return;
  check_pointer(grad_y_ptr, "softpool2d_backward: grad_y_ptr");
  check_pointer(x_ptr, "softpool2d_backward: x_ptr");
  check_pointer(grad_x_ptr, "softpool2d_backward: grad_x_ptr");
  softpool2d_backward(reinterpret_cast<const void*>(grad_y_ptr),
                      reinterpret_cast<const void*>(x_ptr), reinterpret_cast<void*>(grad_x_ptr),
                      shape, type, threads);
}

// mask_ptr 0 means no mask. Empty batches have nothing to read but still a
// bias gradient to write (zeros).
void window_attention_forward_py(std::uintptr_t qkv_ptr, std::uintptr_t bias_ptr,
                                 std::uintptr_t mask_ptr, std::uintptr_t out_ptr, int64_t batch,
                                 int64_t height, int64_t width, int64_t channels, int64_t heads,
                                 int64_t window, int64_t shift, int dtype, int num_threads) {
  const WindowAttentionShape shape =
      make_window_attention_shape(batch, height, width, channels, heads, window, shift);
  const DType type = dtype_from_code(dtype);
  const int threads = checked_threads(num_threads, "window_attention");
  if (shape.instances() == 0) return;
  check_pointer(qkv_ptr, "window_attention_forward: qkv_ptr");
  check_pointer(bias_ptr, "window_attention_forward: bias_ptr");
  check_pointer(out_ptr, "window_attention_forward: out_ptr");
  window_attention_forward(reinterpret_cast<const void*>(qkv_ptr),
                           reinterpret_cast<const void*>(bias_ptr),
                           reinterpret_cast<const void*>(mask_ptr), reinterpret_cast<void*>(out_ptr),
                           shape, type, threads);
}

void window_attention_backward_py(std::uintptr_t grad_out_ptr, std::uintptr_t qkv_ptr,
                                  std::uintptr_t bias_ptr, std::uintptr_t mask_ptr,
                                  std::uintptr_t grad_qkv_ptr, std::uintptr_t grad_bias_ptr,
                                  int64_t batch, int64_t height, int64_t width, int64_t channels,
                                  int64_t heads, int64_t window, int64_t shift, int dtype,
                                  int num_threads) {
  const WindowAttentionShape shape =
      make_window_attention_shape(batch, height, width, channels, heads, window, shift);
  const DType type = dtype_from_code(dtype);
  const int threads = checked_threads(num_threads, "window_attention");
  check_pointer(bias_ptr, "window_attention_backward: bias_ptr");
  check_pointer(grad_bias_ptr, "window_attention_backward: grad_bias_ptr");
  if (shape.instances() > 0) {
    check_pointer(grad_out_ptr, "window_attention_backward: grad_out_ptr");
    check_pointer(qkv_ptr, "window_attention_backward: qkv_ptr");
    check_pointer(grad_qkv_ptr, "window_attention_backward: grad_qkv_ptr");
  }
  window_attention_backward(
      reinterpret_cast<const void*>(grad_out_ptr), reinterpret_cast<const void*>(qkv_ptr),
      reinterpret_cast<const void*>(bias_ptr), reinterpret_cast<const void*>(mask_ptr),
      reinterpret_cast<void*>(grad_qkv_ptr), reinterpret_cast<void*>(grad_bias_ptr), shape, type,
      threads);
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
  m.def("window_attention_forward", &window_attention_forward_py, py::arg("qkv_ptr"),
        py::arg("bias_ptr"), py::arg("mask_ptr"), py::arg("out_ptr"), py::arg("batch"),
        py::arg("height"), py::arg("width"), py::arg("channels"), py::arg("num_heads"),
        py::arg("window_size"), py::arg("shift_size"), py::arg("dtype"), py::arg("num_threads"),
        py::call_guard<py::gil_scoped_release>(),
        "(Shifted-)window attention forward. qkv: contiguous (batch, height, width, 3 * channels)\n"
        "in image layout; bias: (num_heads, N, N) with N = window_size**2; mask: (windows, N, N)\n"
        "or mask_ptr 0; out: contiguous (batch, height, width, channels). float32/float64, or\n"
        "bfloat16 qkv and out with float32 bias and mask.");
  m.def("window_attention_backward", &window_attention_backward_py, py::arg("grad_out_ptr"),
        py::arg("qkv_ptr"), py::arg("bias_ptr"), py::arg("mask_ptr"), py::arg("grad_qkv_ptr"),
        py::arg("grad_bias_ptr"), py::arg("batch"), py::arg("height"), py::arg("width"),
        py::arg("channels"), py::arg("num_heads"), py::arg("window_size"), py::arg("shift_size"),
        py::arg("dtype"), py::arg("num_threads"), py::call_guard<py::gil_scoped_release>(),
        "Window attention backward: writes every element of grad_qkv (shape of qkv) and\n"
        "grad_bias (shape of bias), recomputing the probabilities from qkv.");
  m.def(
      "cpu_variants",
      [] {
        py::dict variants;
        variants["window_attention"] = variant_name(window_attention_variant());
        variants["softpool"] = variant_name(softpool_variant());
        return variants;
      },
      "The instruction-set variant (avx512, avx2 or baseline) each op's kernels run on this\n"
      "CPU: the widest it supports; window attention's is capped by $PYFUNDUS_CPU_ISA.");
}
