#include "cpu/softpool.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <omp.h>

#include "cpu/vector_math.h"

namespace pyfundus::cpu {
namespace {

template <typename T>
struct WindowStats {
  T max;    // m
  T denom;  // sum e^(x - m)
  T numer;  // sum x e^(x - m)
};

// Copies the kh x kw window whose top-left element is `win` (rows
// `row_stride` apart) into `packed`. With the window contiguous every
// reduction is one SIMD loop over kh * kw elements; row-by-row loops over
// kw = 12 elements spend more time in horizontal sums and remainders than in
// arithmetic.
template <typename T>
PYFUNDUS_INLINE void pack_window(const T* win, int64_t row_stride, int64_t kh, int64_t kw,
                                 T* packed) {
  for (int64_t r = 0; r < kh; ++r) {
    std::copy(win + r * row_stride, win + r * row_stride + kw, packed + r * kw);
  }
}

// The window whose top-left element is `win`, contiguous: in place when it
// spans whole rows (kw == w: FTHNet's last stage and the hypernetwork's global
// pooling), else packed into `packed`.
template <typename T>
PYFUNDUS_INLINE const T* window_values(const T* win, const SoftPoolShape& s, T* packed) {
  if (s.kw == s.w) return win;
  pack_window(win, s.w, s.kh, s.kw, packed);
  return packed;
}

// Two passes over a contiguous window `v` that sits in L1: the max, then both
// sums. With kKeepExps, also leaves e^(v_i - m) in `exps` for the backward.
template <bool kKeepExps, typename T>
PYFUNDUS_INLINE WindowStats<T> window_stats(const T* v, T* exps, int64_t size) {
  // std::isgreater, not std::max: it is the quiet comparison, so under the
  // default -ftrapping-math GCC may turn it into a vector select. A NaN never
  // becomes the max but still reaches the sums below, so y is NaN.
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < size; ++i) m = std::isgreater(v[i], m) ? v[i] : m;
  T denom = 0, numer = 0;
#pragma omp simd reduction(+ : denom, numer)
  for (int64_t i = 0; i < size; ++i) {
    const T e = exp_nonpositive(v[i] - m);
    if constexpr (kKeepExps) exps[i] = e;
    denom += e;
    numer += v[i] * e;
  }
  return {m, denom, numer};
}

// One thread's room for a window: its packed values and their exponentials.
template <typename T>
struct WindowBuffers {
  T* values;
  T* exps;
};

// Every thread's WindowBuffers, allocated before the parallel region (an
// exception must not escape an OpenMP region).
template <typename T>
class ThreadBuffers {
 public:
  ThreadBuffers(int num_threads, int64_t window)
      : window_(window), data_(static_cast<size_t>(num_threads) * 2 * window) {}
  WindowBuffers<T> for_this_thread() {
    T* mine = data_.data() + omp_get_thread_num() * 2 * window_;
    return {mine, mine + window_};
  }

 private:
  int64_t window_;
  std::vector<T> data_;
};

// Output row `out` (s.ow windows) from the band of input rows at `band`.
template <typename T>
PYFUNDUS_TARGET_CLONES void forward_row(const T* band, T* out, const SoftPoolShape& s,
                                        WindowBuffers<T> buf) {
  const int64_t window = s.kh * s.kw;
  for (int64_t ox = 0; ox < s.ow; ++ox) {
    const T* values = window_values(band + ox * s.sw, s, buf.values);
    const WindowStats<T> st = window_stats<false>(values, buf.exps, window);
    out[ox] = st.numer / st.denom;
  }
}

// Threads worth starting: each gets at least kGrain input elements (about
// 20 us of work; torch uses the same grain), and no more than there are tasks.
// Waking a thread costs microseconds, more when the cores are busy.
int useful_threads(const SoftPoolShape& s, int64_t tasks, int num_threads) {
  constexpr int64_t kGrain = 32768;
  const int64_t by_work = std::max<int64_t>(1, s.input_numel() / kGrain);
  return static_cast<int>(std::min<int64_t>({num_threads, tasks, by_work}));
}

// Calls task_body(task, buffers) for every task, on `threads` threads. One
// thread runs in the caller: an OpenMP region costs about 0.2 us even with a
// single thread, as much as pooling four windows of FTHNet's last stage.
template <typename T, typename TaskBody>
void for_each_task(int64_t tasks, int threads, int64_t window, TaskBody task_body) {
  ThreadBuffers<T> buffers(threads, window);
  if (threads == 1) {
    for (int64_t task = 0; task < tasks; ++task) task_body(task, buffers.for_this_thread());
    return;
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t task = 0; task < tasks; ++task) task_body(task, buffers.for_this_thread());
}

template <typename T>
void forward(const T* x, T* y, const SoftPoolShape& s, int num_threads) {
  const int64_t tasks = s.planes() * s.oh;  // one output row of one plane each
  const int threads = useful_threads(s, tasks, num_threads);
  for_each_task<T>(tasks, threads, s.kh * s.kw, [&](int64_t task, WindowBuffers<T> buf) {
    const int64_t plane = task / s.oh;
    const int64_t oy = task % s.oh;
    forward_row(x + plane * s.h * s.w + oy * s.sh * s.w, y + task * s.ow, s, buf);
  });
}

// Adds the contributions g * w_i * (1 + x_i - y) of output row `oy` of one
// plane (x_plane, grad_plane, grad_out: that plane's input, input gradient
// and output gradient) to grad_plane.
template <typename T>
PYFUNDUS_TARGET_CLONES void backward_row(const T* x_plane, T* grad_plane, const T* grad_out,
                                         int64_t oy, const SoftPoolShape& s,
                                         WindowBuffers<T> buf) {
  const int64_t window = s.kh * s.kw;
  for (int64_t ox = 0; ox < s.ow; ++ox) {
    const int64_t offset = oy * s.sh * s.w + ox * s.sw;
    const T* values = window_values(x_plane + offset, s, buf.values);
    const WindowStats<T> st = window_stats<true>(values, buf.exps, window);
    const T y = st.numer / st.denom;
    const T coef = grad_out[oy * s.ow + ox] / st.denom;
    T* contrib = buf.exps;  // e_i becomes the window's gradient contribution in place
#pragma omp simd
    for (int64_t i = 0; i < window; ++i) contrib[i] *= coef * (1 + values[i] - y);
    for (int64_t r = 0; r < s.kh; ++r) {
      T* grad_row = grad_plane + offset + r * s.w;
      const T* contrib_row = contrib + r * s.kw;
#pragma omp simd
      for (int64_t c = 0; c < s.kw; ++c) grad_row[c] += contrib_row[c];
    }
  }
}

template <typename T>
void backward(const T* grad_y, const T* x, T* grad_x, const SoftPoolShape& s, int num_threads) {
  // A task owns a horizontal band of grad_x: it zeroes the band, then adds
  // the contributions of its windows. When windows do not overlap vertically
  // (sh >= kh) each output row's windows touch only its own band of input
  // rows, so every output row is a task; otherwise windows of neighbouring
  // rows share input rows and the whole plane is one task.
  const int64_t rows_per_task = s.sh >= s.kh ? 1 : s.oh;
  const int64_t bands = s.oh / rows_per_task;
  const int64_t tasks = s.planes() * bands;
  const int threads = useful_threads(s, tasks, num_threads);
  for_each_task<T>(tasks, threads, s.kh * s.kw, [&](int64_t task, WindowBuffers<T> buf) {
    const int64_t plane = task / bands;
    const int64_t oy_begin = (task % bands) * rows_per_task;
    const int64_t oy_end = oy_begin + rows_per_task;
    // The band runs from its first window's top row to the next band's top
    // row; the last band also takes the rows below the last window.
    const int64_t row_begin = oy_begin * s.sh;
    const int64_t row_end = oy_end == s.oh ? s.h : oy_end * s.sh;

    T* grad_plane = grad_x + plane * s.h * s.w;
    std::fill(grad_plane + row_begin * s.w, grad_plane + row_end * s.w, T(0));
    for (int64_t oy = oy_begin; oy < oy_end; ++oy) {
      backward_row(x + plane * s.h * s.w, grad_plane, grad_y + plane * s.oh * s.ow, oy, s, buf);
    }
  });
}

void check_cpu_dtype(DType dtype) {
  PYFUNDUS_CHECK(dtype == DType::Float32 || dtype == DType::Float64,
                 std::string("softpool2d CPU kernels take float32 or float64, got ") +
                     dtype_name(dtype) + " (compute half types in float32)");
}

}  // namespace

// PYFUNDUS_TARGET_CLONES needs the loader's ifunc support, so Linux only; its
// resolver then makes the same test as widest_supported_variant().
CpuVariant softpool_variant() {
#if defined(__linux__)
  return widest_supported_variant();
#else
  return CpuVariant::Baseline;
#endif
}

void softpool2d_forward(const void* x, void* y, const SoftPoolShape& shape, DType dtype,
                        int num_threads) {
  check_cpu_dtype(dtype);
  if (dtype == DType::Float32) {
    forward(static_cast<const float*>(x), static_cast<float*>(y), shape, num_threads);
  } else {
    forward(static_cast<const double*>(x), static_cast<double*>(y), shape, num_threads);
  }
}

void softpool2d_backward(const void* grad_y, const void* x, void* grad_x,
                         const SoftPoolShape& shape, DType dtype, int num_threads) {
  check_cpu_dtype(dtype);
  if (dtype == DType::Float32) {
    backward(static_cast<const float*>(grad_y), static_cast<const float*>(x),
             static_cast<float*>(grad_x), shape, num_threads);
  } else {
    backward(static_cast<const double*>(grad_y), static_cast<const double*>(x),
             static_cast<double*>(grad_x), shape, num_threads);
  }
}

}  // namespace pyfundus::cpu
