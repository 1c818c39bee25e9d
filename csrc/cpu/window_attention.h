// (Shifted-)window multi-head attention on the CPU: float32 and float64, and a
// bfloat16 forward (qkv and out bfloat16, bias and mask float32, float32
// arithmetic) for bf16 autocast inference; OpenMP over (window, head) tasks.
// See csrc/common/window_attention_shape.h for the layout and the shift.
#pragma once

#include "common/dtype.h"
#include "common/window_attention_shape.h"
#include "cpu/variant.h"

namespace pyfundus::cpu {

// The variant the window-attention kernels run on this CPU: the widest it
// supports, capped by $PYFUNDUS_CPU_ISA (avx512, avx2 or baseline) when set.
CpuVariant window_attention_variant();

// out = softmax(q k^T / sqrt(head_dim) + bias[head] + mask[window]) v per
// window and head, in image layout. qkv: (B, H, W, 3C); bias: (heads, N, N);
// mask: (windows, N, N) or null (no mask); out: (B, H, W, C). N = window^2.
void window_attention_forward(const void* qkv, const void* bias, const void* mask, void* out,
                              const WindowAttentionShape& shape, DType dtype, int num_threads);

// Writes every element of grad_qkv (shape of qkv) and grad_bias (shape of
// bias) from grad_out (shape of out). The attention probabilities are
// recomputed from qkv, not saved. grad_bias sums over images and windows in
// an order that does not depend on num_threads.
void window_attention_backward(const void* grad_out, const void* qkv, const void* bias,
                               const void* mask, void* grad_qkv, void* grad_bias,
                               const WindowAttentionShape& shape, DType dtype, int num_threads);

}  // namespace pyfundus::cpu
