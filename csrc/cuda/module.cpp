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
#include "common/window_attention_shape.h"
#include "cuda/softpool.cuh"
#include "cuda/window_attention.cuh"

namespace py = pybind11;

namespace pyfundus::cuda {
namespace {

LaunchTarget checked_target(int device, std::uintptr_t stream, const char* op) {
  PYFUNDUS_CHECK(device >= 0, std::string(op) + ": device must be a CUDA device index >= 0, got " +
                                  std::to_string(device));
  return LaunchTarget{device, stream};
}

void softpool2d_forward_py(std::uintptr_t x_ptr, std::uintptr_t y_ptr, int64_t n, int64_t c,
                           int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                           int dtype, int device, std::uintptr_t stream) {
  const SoftPoolShape shape = make_softpool_shape(n, c, h, w, kh, kw, sh, sw);
  const DType type = dtype_from_code(dtype);
  const LaunchTarget target = checked_target(device, stream, "softpool2d");
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
  const LaunchTarget target = checked_target(device, stream, "softpool2d");
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

// mask_ptr 0 means no mask.
void window_attention_forward_py(std::uintptr_t qkv_ptr, std::uintptr_t bias_ptr,
                                 std::uintptr_t mask_ptr, std::uintptr_t out_ptr, int64_t batch,
                                 int64_t height, int64_t width, int64_t channels, int64_t heads,
                                 int64_t window, int64_t shift, int dtype, int device,
                                 std::uintptr_t stream) {
  const WindowAttentionShape shape =
      make_window_attention_shape(batch, height, width, channels, heads, window, shift);
  const DType type = dtype_from_code(dtype);
  const LaunchTarget target = checked_target(device, stream, "window_attention");
  if (shape.instances() == 0) return;
  check_pointer(qkv_ptr, "window_attention_forward: qkv_ptr");
  check_pointer(bias_ptr, "window_attention_forward: bias_ptr");
  check_pointer(out_ptr, "window_attention_forward: out_ptr");
  window_attention_forward(reinterpret_cast<const void*>(qkv_ptr),
                           reinterpret_cast<const void*>(bias_ptr),
                           reinterpret_cast<const void*>(mask_ptr), reinterpret_cast<void*>(out_ptr),
                           shape, type, target);
}

void window_attention_backward_py(std::uintptr_t grad_out_ptr, std::uintptr_t qkv_ptr,
                                  std::uintptr_t bias_ptr, std::uintptr_t mask_ptr,
                                  std::uintptr_t grad_qkv_ptr, std::uintptr_t grad_bias_ptr,
                                  int64_t batch, int64_t height, int64_t width, int64_t channels,
                                  int64_t heads, int64_t window, int64_t shift, int dtype,
                                  int device, std::uintptr_t stream) {
  const WindowAttentionShape shape =
      make_window_attention_shape(batch, height, width, channels, heads, window, shift);
  const DType type = dtype_from_code(dtype);
  const LaunchTarget target = checked_target(device, stream, "window_attention");
  if (shape.instances() == 0) return;  // the zeroed gradient buffers are the answer
  check_pointer(grad_out_ptr, "window_attention_backward: grad_out_ptr");
  check_pointer(qkv_ptr, "window_attention_backward: qkv_ptr");
  check_pointer(bias_ptr, "window_attention_backward: bias_ptr");
  check_pointer(grad_qkv_ptr, "window_attention_backward: grad_qkv_ptr");
  check_pointer(grad_bias_ptr, "window_attention_backward: grad_bias_ptr");
  window_attention_backward(
      reinterpret_cast<const void*>(grad_out_ptr), reinterpret_cast<const void*>(qkv_ptr),
      reinterpret_cast<const void*>(bias_ptr), reinterpret_cast<const void*>(mask_ptr),
      reinterpret_cast<void*>(grad_qkv_ptr), reinterpret_cast<void*>(grad_bias_ptr), shape, type,
      target);
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
  m.def("window_attention_forward", &window_attention_forward_py, py::arg("qkv_ptr"),
        py::arg("bias_ptr"), py::arg("mask_ptr"), py::arg("out_ptr"), py::arg("batch"),
        py::arg("height"), py::arg("width"), py::arg("channels"), py::arg("num_heads"),
        py::arg("window_size"), py::arg("shift_size"), py::arg("dtype"), py::arg("device"),
        py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "Window attention forward on `stream` of CUDA device `device` (asynchronous). Layout\n"
        "as in pyfundus._C; dtype: any of DTYPE_CODES.");
  m.def("window_attention_backward", &window_attention_backward_py, py::arg("grad_out_ptr"),
        py::arg("qkv_ptr"), py::arg("bias_ptr"), py::arg("mask_ptr"), py::arg("grad_qkv_ptr"),
        py::arg("grad_bias_ptr"), py::arg("batch"), py::arg("height"), py::arg("width"),
        py::arg("channels"), py::arg("num_heads"), py::arg("window_size"), py::arg("shift_size"),
        py::arg("dtype"), py::arg("device"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>(),
        "Window attention backward (asynchronous). grad_qkv_ptr, grad_bias_ptr: ZEROED float32\n"
        "buffers (float64 for float64) shaped like qkv and bias; the kernel adds into them.");
}
