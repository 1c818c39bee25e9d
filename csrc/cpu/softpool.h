// SoftPool on the CPU: float32 and float64, contiguous NCHW, OpenMP over
// (plane, output row) tasks. See csrc/common/softpool_shape.h for the geometry.
#pragma once

#include "common/dtype.h"
#include "common/softpool_shape.h"
#include "cpu/variant.h"

namespace pyfundus::cpu {

// The variant the SoftPool kernels run on this CPU: the widest it supports,
// chosen by the loader (target_clones); $PYFUNDUS_CPU_ISA does not cap it.
CpuVariant softpool_variant();

// y[p, oy, ox] = sum(x * e^(x - m)) / sum(e^(x - m)) over the window, with m
// the window maximum. x has shape.input_numel() elements, y output_numel().
void softpool2d_forward(const void* x, void* y, const SoftPoolShape& shape, DType dtype,
                        int num_threads);

// grad_x = sum over the windows holding each element of
//          grad_y * w_i * (1 + x_i - y),  w_i = e^(x_i - m) / sum(e^(x - m)).
// y is recomputed from x (the window statistics are needed anyway), so only x
// and grad_y are read. Every element of grad_x is written, gaps get 0.
void softpool2d_backward(const void* grad_y, const void* x, void* grad_x,
                         const SoftPoolShape& shape, DType dtype, int num_threads);

}  // namespace pyfundus::cpu
