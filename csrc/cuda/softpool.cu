#include "cuda/softpool.cuh"

#include <algorithm>
#include <type_traits>

#include "cuda/common.cuh"

namespace pyfundus::cuda {
namespace {

// ---- window statistics ------------------------------------------------------

template <typename A>
struct WindowStats {
  A max;    // m
  A denom;  // sum e^(x - m)
  A numer;  // sum x e^(x - m)
};

// One pass over the window (online softmax): when a new maximum appears the
// running sums are rescaled to it, so each element is read from global memory
// once. `win` is the window's top-left element, rows `row_stride` apart.
template <typename T>
__device__ WindowStats<accum_t<T>> window_stats(const T* __restrict__ win, int64_t row_stride,
                                                int64_t kh, int64_t kw) {
  using A = accum_t<T>;
  A m = -INFINITY, denom = 0, numer = 0;
  for (int64_t r = 0; r < kh; ++r) {
    for (int64_t c = 0; c < kw; ++c) {
      const A v = to_accum(win[r * row_stride + c]);
      if (v > m) {
        const A rescale = exp_accum(m - v);  // 0 for the first element (m = -inf)
        denom *= rescale;
        numer *= rescale;
        m = v;
      }
      const A e = exp_accum(v - m);
      denom += e;
      numer += v * e;
    }
  }
  return {m, denom, numer};
}

// Output element o of a contiguous (planes, oh, ow) tensor -> offset of its
// window's top-left element in the contiguous (planes, h, w) input.
__device__ __forceinline__ int64_t window_offset(int64_t o, const SoftPoolShape& s) {
  const int64_t ox = o % s.ow;
  const int64_t oy = (o / s.ow) % s.oh;
  const int64_t plane = o / (s.ow * s.oh);
  return plane * s.h * s.w + oy * s.sh * s.w + ox * s.sw;
}

// ---- kernels: one thread per output window, grid-stride loops ---------------

template <typename T>
__global__ void forward_kernel(const T* __restrict__ x, T* __restrict__ y, SoftPoolShape s) {
  const int64_t total = s.output_numel();
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < total;
       o += int64_t(blockDim.x) * gridDim.x) {
    const auto st = window_stats(x + window_offset(o, s), s.w, s.kh, s.kw);
    y[o] = from_accum<T>(st.numer / st.denom);
  }
}

// Writes (kAccumulate = false: windows do not overlap, each element is
// written by one thread) or atomically adds (kAccumulate = true, Out is the
// accumulation type) g * w_i * (1 + x_i - y) for every element of a window.
template <typename T, typename Out, bool kAccumulate>
__global__ void backward_kernel(const T* __restrict__ grad_y, const T* __restrict__ x,
                                Out* __restrict__ grad_x, SoftPoolShape s) {
  using A = accum_t<T>;
  const int64_t total = s.output_numel();
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < total;
       o += int64_t(blockDim.x) * gridDim.x) {
    const int64_t offset = window_offset(o, s);
    const T* win = x + offset;
    Out* grad_win = grad_x + offset;
    const auto st = window_stats(win, s.w, s.kh, s.kw);
    const A y = st.numer / st.denom;
    const A coef = to_accum(grad_y[o]) / st.denom;
    for (int64_t r = 0; r < s.kh; ++r) {
      for (int64_t c = 0; c < s.kw; ++c) {
        const int64_t i = r * s.w + c;
        const A v = to_accum(win[i]);
        const A grad = coef * exp_accum(v - st.max) * (A(1) + v - y);
        if constexpr (kAccumulate) {
          atomicAdd(grad_win + i, grad);
        } else {
          grad_win[i] = from_accum<Out>(grad);
        }
      }
    }
  }
}

template <typename T>
__global__ void cast_kernel(const float* __restrict__ in, T* __restrict__ out, int64_t numel) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < numel;
       i += int64_t(blockDim.x) * gridDim.x) {
    out[i] = from_accum<T>(in[i]);
  }
}

// ---- launching --------------------------------------------------------------

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // the grid-stride loops cover the rest

unsigned int blocks_for(int64_t work) {
  return static_cast<unsigned int>(std::min((work + kThreads - 1) / kThreads, kMaxBlocks));
}

// Some input elements lie in no window when the stride exceeds the window or
// the last window stops short of the edge; their gradient is 0.
bool has_gaps(const SoftPoolShape& s) { return s.oh * s.kh < s.h || s.ow * s.kw < s.w; }

template <typename T>
void launch_backward(const T* grad_y, const T* x, T* grad_x, float* scratch,
                     const SoftPoolShape& s, cudaStream_t stream) {
  const unsigned int blocks = blocks_for(s.output_numel());
  const size_t input_bytes = sizeof(T) * s.input_numel();
  if (!s.overlapping()) {
    // Every covered element is written exactly once with a plain store;
    // zeroing first is needed only for the uncovered ones.
    if (has_gaps(s)) {
      check_cuda(cudaMemsetAsync(grad_x, 0, input_bytes, stream), "cudaMemsetAsync");
    }
    backward_kernel<T, T, false><<<blocks, kThreads, 0, stream>>>(grad_y, x, grad_x, s);
  } else if constexpr (std::is_same_v<T, accum_t<T>>) {
    // float32 / float64: atomics straight into the zeroed output.
    check_cuda(cudaMemsetAsync(grad_x, 0, input_bytes, stream), "cudaMemsetAsync");
    backward_kernel<T, T, true><<<blocks, kThreads, 0, stream>>>(grad_y, x, grad_x, s);
  } else {
    // Half types: accumulate in a float32 scratch buffer, round once at the end.
    check_cuda(cudaMemsetAsync(scratch, 0, sizeof(float) * s.input_numel(), stream),
               "cudaMemsetAsync");
    backward_kernel<T, float, true><<<blocks, kThreads, 0, stream>>>(grad_y, x, scratch, s);
    check_cuda(cudaGetLastError(), "softpool2d backward kernel launch");
    cast_kernel<T><<<blocks_for(s.input_numel()), kThreads, 0, stream>>>(scratch, grad_x,
                                                                         s.input_numel());
  }
}

}  // namespace

void softpool2d_forward(const void* x, void* y, const SoftPoolShape& shape, DType dtype,
                        LaunchTarget target) {
  if (shape.output_numel() == 0) return;  // a zero-sized grid is a launch error
  const DeviceGuard guard(target.device);
  const unsigned int blocks = blocks_for(shape.output_numel());
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    forward_kernel<T><<<blocks, kThreads, 0, as_stream(target.stream)>>>(
        static_cast<const T*>(x), static_cast<T*>(y), shape);
  });
  check_cuda(cudaGetLastError(), "softpool2d forward kernel launch");
}

bool softpool2d_backward_needs_scratch(const SoftPoolShape& shape, DType dtype) {
  return shape.overlapping() && (dtype == DType::Float16 || dtype == DType::BFloat16);
}

void softpool2d_backward(const void* grad_y, const void* x, void* grad_x, void* scratch,
                         const SoftPoolShape& shape, DType dtype, LaunchTarget target) {
  if (shape.output_numel() == 0) return;
  const DeviceGuard guard(target.device);
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_backward<T>(static_cast<const T*>(grad_y), static_cast<const T*>(x),
                       static_cast<T*>(grad_x), static_cast<float*>(scratch), shape,
                       as_stream(target.stream));
  });
  check_cuda(cudaGetLastError(), "softpool2d backward kernel launch");
}

}  // namespace pyfundus::cuda
