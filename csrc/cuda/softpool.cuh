// SoftPool on CUDA: float32, float64, float16 and bfloat16 (accumulated in
// float32, float64 for double), contiguous NCHW. Plain C++ interface so the
// pybind11 module compiles with the host compiler.
#pragma once

#include "common/dtype.h"
#include "common/softpool_shape.h"
#include "cuda/launch.h"

namespace pyfundus::cuda {

// Same semantics as the CPU kernels (csrc/cpu/softpool.h). Asynchronous on the
// stream; launch errors throw std::runtime_error with CUDA's message.
void softpool2d_forward(const void* x, void* y, const SoftPoolShape& shape, DType dtype,
                        LaunchTarget target);

// True when the backward needs a float32 scratch buffer of
// shape.input_numel() elements: overlapping windows accumulate with atomics,
// and half types accumulate in float32 before one rounding to the output.
bool softpool2d_backward_needs_scratch(const SoftPoolShape& shape, DType dtype);

// scratch: a device buffer as above when softpool2d_backward_needs_scratch,
// otherwise unused (may be null).
void softpool2d_backward(const void* grad_y, const void* x, void* grad_x, void* scratch,
                         const SoftPoolShape& shape, DType dtype, LaunchTarget target);

}  // namespace pyfundus::cuda
