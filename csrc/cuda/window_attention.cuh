// (Shifted-)window attention on CUDA: float32, float64, float16 and bfloat16,
// products and softmax in float32 (float64 for float64). Plain C++ interface
// so the pybind11 module compiles with the host compiler. Same layout and
// semantics as the CPU kernels (csrc/cpu/window_attention.h).
//
// One block per (window instance, head, tile of query rows): the block's
// queries, its scores and probabilities for every key, and one tile of keys
// or values at a time sit in shared memory, within the 48 KiB every
// architecture gives without opting in. Query tiles shrink from 16 rows to 1
// to fit; windows or heads too large for one row raise std::invalid_argument.
#pragma once

#include "common/dtype.h"
#include "common/window_attention_shape.h"
#include "cuda/launch.h"

namespace pyfundus::cuda {

// Asynchronous on the stream; launch errors throw std::runtime_error.
void window_attention_forward(const void* qkv, const void* bias, const void* mask, void* out,
                              const WindowAttentionShape& shape, DType dtype, LaunchTarget target);

// grad_qkv and grad_bias are ZEROED buffers of the accumulation type (float32,
// or float64 for float64) shaped like qkv and bias: blocks add their key,
// value and bias gradients there atomically. The caller casts them back.
void window_attention_backward(const void* grad_out, const void* qkv, const void* bias,
                               const void* mask, void* grad_qkv, void* grad_bias,
                               const WindowAttentionShape& shape, DType dtype,
                               LaunchTarget target);

}  // namespace pyfundus::cuda
