#include "cuda/window_attention.cuh"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "cuda/common.cuh"

namespace pyfundus::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kKeyTile = 32;                  // keys or values staged at a time
constexpr int kMaxRows = 16;                  // query rows per block, at most
constexpr size_t kSharedBytes = 48 * 1024;  // the default limit on every architecture

// ---- block-level pieces ---------------------------------------------------------

// What one block works on: window instance, head, and its query rows
// [row0, row0 + rows) of the window's tokens.
struct BlockTask {
  int64_t instance, head;
  int row0, rows;
};

__device__ BlockTask block_task(const WindowAttentionShape& s, int rows_per_block, int64_t tiles) {
  const int64_t block = blockIdx.x;
  const int64_t tile = block % tiles;
  BlockTask task;
  task.head = (block / tiles) % s.heads;
  task.instance = block / tiles / s.heads;
  task.row0 = static_cast<int>(tile) * rows_per_block;
  task.rows = min(rows_per_block, static_cast<int>(s.tokens) - task.row0);
  return task;
}

template <typename A>
__device__ __forceinline__ A warp_max(A v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const A other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// dst (rows x head_dim, row-major) = the head's slice of `rows` tokens starting
// at token `first`; `src` points at that head's slice of q, k or v of token 0
// of pixel 0, tokens 3C apart. `ld`: dst's row stride. Times `factor`.
template <typename T, typename A>
__device__ void load_rows(const T* __restrict__ src, A* dst, int ld, int first, int rows,
                          A factor, const WindowAttentionShape& s, int64_t instance) {
  const int hd = static_cast<int>(s.head_dim);
  for (int e = threadIdx.x; e < rows * hd; e += blockDim.x) {
    const int r = e / hd, d = e % hd;
    dst[r * ld + d] = to_accum(src[s.pixel(instance, first + r) * 3 * s.channels + d]) * factor;
  }
}

// out (rows x n) = a (rows x hd) b^T with b the window's k or v rows (from
// `src`), streamed through `tile` kKeyTile tokens at a time. The first
// __syncthreads() of each round also protects `tile` from the previous user.
template <typename T, typename A>
__device__ void times_keys_transposed(const A* a, const T* __restrict__ src, A* tile, A* out,
                                      int rows, const WindowAttentionShape& s, int64_t instance) {
  const int hd = static_cast<int>(s.head_dim), n = static_cast<int>(s.tokens);
  const int ld = hd + 1;  // odd stride: threads reading different tile rows hit different banks
  for (int j0 = 0; j0 < n; j0 += kKeyTile) {
    const int count = min(kKeyTile, n - j0);
    __syncthreads();
    load_rows(src, tile, ld, j0, count, A(1), s, instance);
    __syncthreads();
    for (int e = threadIdx.x; e < rows * count; e += blockDim.x) {
      const int r = e / count, jj = e % count;
      const A* a_row = a + r * hd;
      const A* b_row = tile + jj * ld;
      A dot = 0;
      for (int d = 0; d < hd; ++d) dot += a_row[d] * b_row[d];
      out[r * n + j0 + jj] = dot;
    }
  }
  __syncthreads();
}

// acc (rows x hd) += p (rows x n) b with b the window's k or v rows (from `src`).
template <typename T, typename A>
__device__ void accumulate_times_rows(const A* p, const T* __restrict__ src, A* tile, A* acc,
                                      int rows, const WindowAttentionShape& s,
                                      int64_t instance) {
  const int hd = static_cast<int>(s.head_dim), n = static_cast<int>(s.tokens);
  const int ld = hd + 1;
  for (int j0 = 0; j0 < n; j0 += kKeyTile) {
    const int count = min(kKeyTile, n - j0);
    __syncthreads();
    load_rows(src, tile, ld, j0, count, A(1), s, instance);
    __syncthreads();
    // Each thread keeps the same elements e in every round, so acc needs no barrier.
    for (int e = threadIdx.x; e < rows * hd; e += blockDim.x) {
      const int r = e / hd, d = e % hd;
      const A* p_row = p + r * n + j0;
      A sum = acc[e];
      for (int jj = 0; jj < count; ++jj) sum += p_row[jj] * tile[jj * ld + d];
      acc[e] = sum;
    }
  }
  __syncthreads();
}

// p (rows x n): scores -> + bias + mask (the reference's order) -> softmax
// probabilities, one warp per row.
template <typename T, typename A>
__device__ void softmax_rows(A* p, const T* __restrict__ bias, const T* __restrict__ mask,
                             const WindowAttentionShape& s, const BlockTask& task) {
  const int n = static_cast<int>(s.tokens);
  const T* bias_rows = bias + (task.head * n + task.row0) * n;
  const T* mask_rows =
      mask == nullptr ? nullptr : mask + ((task.instance % s.windows()) * n + task.row0) * n;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = warp; r < task.rows; r += kWarps) {
    A* row = p + r * n;
    A m = -std::numeric_limits<A>::infinity();
    for (int j = lane; j < n; j += 32) {
      A v = row[j] + to_accum(bias_rows[r * n + j]);
      if (mask_rows != nullptr) v += to_accum(mask_rows[r * n + j]);
      row[j] = v;
      m = v > m ? v : m;  // a NaN never wins but reaches the sum below
    }
    m = warp_max(m);
    A sum = 0;
    for (int j = lane; j < n; j += 32) {
      const A e = exp_accum(row[j] - m);
      row[j] = e;
      sum += e;
    }
    const A inv = A(1) / warp_sum(sum);
    for (int j = lane; j < n; j += 32) row[j] *= inv;
  }
  __syncthreads();
}

// ---- kernels ----------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ qkv, const T* __restrict__ bias,
                   const T* __restrict__ mask, T* __restrict__ out, WindowAttentionShape s,
                   int rows_per_block, int64_t tiles, accum_t<T> scale) {
  using A = accum_t<T>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const int hd = static_cast<int>(s.head_dim);
  A* q = reinterpret_cast<A*>(shared_bytes);  // rows x hd, times the scale
  A* o = q + rows_per_block * hd;              // rows x hd
  A* tile = o + rows_per_block * hd;           // kKeyTile x (hd + 1)
  A* p = tile + kKeyTile * (hd + 1);           // rows x n

  const BlockTask task = block_task(s, rows_per_block, tiles);
  const T* head_qkv = qkv + task.head * hd;
  const int64_t c = s.channels;
  load_rows(head_qkv, q, hd, task.row0, task.rows, scale, s, task.instance);
  for (int e = threadIdx.x; e < task.rows * hd; e += blockDim.x) o[e] = 0;
  times_keys_transposed(q, head_qkv + c, tile, p, task.rows, s, task.instance);
  softmax_rows(p, bias, mask, s, task);
  accumulate_times_rows(p, head_qkv + 2 * c, tile, o, task.rows, s, task.instance);
  for (int e = threadIdx.x; e < task.rows * hd; e += blockDim.x) {
    const int r = e / hd, d = e % hd;
    out[s.pixel(task.instance, task.row0 + r) * c + task.head * hd + d] = from_accum<T>(o[e]);
  }
}

// With P the probabilities and dO the output gradient: dP = dO V^T,
// dS = P (dP - rowsum(P dP)), dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO,
// d(bias) = dS. dQ rows belong to this block alone (plain stores); dK, dV and
// the bias gradient collect from many blocks (atomic adds).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ qkv,
                    const T* __restrict__ bias, const T* __restrict__ mask,
                    accum_t<T>* __restrict__ grad_qkv, accum_t<T>* __restrict__ grad_bias,
                    WindowAttentionShape s, int rows_per_block, int64_t tiles,
                    accum_t<T> scale) {
  using A = accum_t<T>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const int hd = static_cast<int>(s.head_dim), n = static_cast<int>(s.tokens);
  A* q = reinterpret_cast<A*>(shared_bytes);  // rows x hd, times the scale
  A* dout = q + rows_per_block * hd;           // rows x hd: dO, later dQ
  A* tile = dout + rows_per_block * hd;        // kKeyTile x (hd + 1)
  A* p = tile + kKeyTile * (hd + 1);           // rows x n
  A* ds = p + rows_per_block * n;              // rows x n: dP, then dS

  const BlockTask task = block_task(s, rows_per_block, tiles);
  const int64_t c = s.channels;
  const T* head_qkv = qkv + task.head * hd;
  load_rows(head_qkv, q, hd, task.row0, task.rows, scale, s, task.instance);
  // grad_out has C values per pixel where qkv has 3C, hence its own loop.
  for (int e = threadIdx.x; e < task.rows * hd; e += blockDim.x) {
    const int r = e / hd, d = e % hd;
    dout[e] = to_accum(grad_out[s.pixel(task.instance, task.row0 + r) * c + task.head * hd + d]);
  }
  times_keys_transposed(q, head_qkv + c, tile, p, task.rows, s, task.instance);
  softmax_rows(p, bias, mask, s, task);
  times_keys_transposed(dout, head_qkv + 2 * c, tile, ds, task.rows, s, task.instance);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = warp; r < task.rows; r += kWarps) {
    const A* p_row = p + r * n;
    A* ds_row = ds + r * n;
    A dot = 0;
    for (int j = lane; j < n; j += 32) dot += p_row[j] * ds_row[j];
    dot = warp_sum(dot);
    for (int j = lane; j < n; j += 32) ds_row[j] = p_row[j] * (ds_row[j] - dot);
  }
  __syncthreads();

  A* bias_rows = grad_bias + (task.head * n + task.row0) * n;
  for (int e = threadIdx.x; e < task.rows * n; e += blockDim.x) atomicAdd(bias_rows + e, ds[e]);

  // dK_j = sum_r dS_rj q_r (q carries the scale), dV_j = sum_r P_rj dO_r over this block's rows.
  for (int e = threadIdx.x; e < n * hd; e += blockDim.x) {
    const int j = e / hd, d = e % hd;
    A dk = 0, dv = 0;
    for (int r = 0; r < task.rows; ++r) {
      dk += ds[r * n + j] * q[r * hd + d];
      dv += p[r * n + j] * dout[r * hd + d];
    }
    A* dst = grad_qkv + s.pixel(task.instance, j) * 3 * c + task.head * hd + d;
    atomicAdd(dst + c, dk);
    atomicAdd(dst + 2 * c, dv);
  }
  __syncthreads();  // dout is reused for dQ below

  for (int e = threadIdx.x; e < task.rows * hd; e += blockDim.x) dout[e] = 0;
  accumulate_times_rows(ds, head_qkv + c, tile, dout, task.rows, s, task.instance);
  for (int e = threadIdx.x; e < task.rows * hd; e += blockDim.x) {
    const int r = e / hd, d = e % hd;
    grad_qkv[s.pixel(task.instance, task.row0 + r) * 3 * c + task.head * hd + d] = dout[e] * scale;
  }
}

// ---- launching ----------------------------------------------------------------------

struct Plan {
  int rows;         // query rows per block
  int64_t tiles;    // blocks per (instance, head)
  size_t shared;    // bytes of dynamic shared memory
  unsigned int blocks;
};

// The largest query tile whose shared memory fits (`matrices_n`: how many
// rows x n matrices the kernel keeps besides two rows x hd ones and the key tile).
Plan make_plan(const WindowAttentionShape& s, size_t element, int matrices_n, const char* op) {
  for (int rows = kMaxRows; rows >= 1; rows /= 2) {
    const int64_t elements =
        2 * rows * s.head_dim + kKeyTile * (s.head_dim + 1) + matrices_n * rows * s.tokens;
    if (static_cast<size_t>(elements) * element > kSharedBytes) continue;
    const int64_t tiles = (s.tokens + rows - 1) / rows;
    const int64_t blocks = s.instances() * s.heads * tiles;
    PYFUNDUS_CHECK(blocks <= std::numeric_limits<int>::max(),
                   std::string(op) + ": too many windows for one launch");
    return {rows, tiles, static_cast<size_t>(elements) * element,
            static_cast<unsigned int>(blocks)};
  }
  throw std::invalid_argument(std::string(op) + ": window_size " + std::to_string(s.window) +
                              " with head_dim " + std::to_string(s.head_dim) +
                              " needs more than 48 KiB of shared memory per block on CUDA");
}

template <typename A>
A softmax_scale(const WindowAttentionShape& s) {
  return static_cast<A>(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
}

}  // namespace

void window_attention_forward(const void* qkv, const void* bias, const void* mask, void* out,
                              const WindowAttentionShape& shape, DType dtype,
                              LaunchTarget target) {
  if (shape.instances() == 0) return;  // a zero-sized grid is a launch error
  const DeviceGuard guard(target.device);
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = accum_t<T>;
    const Plan plan = make_plan(shape, sizeof(A), 1, "window_attention");
    forward_kernel<T><<<plan.blocks, kThreads, plan.shared, as_stream(target.stream)>>>(
        static_cast<const T*>(qkv), static_cast<const T*>(bias), static_cast<const T*>(mask),
        static_cast<T*>(out), shape, plan.rows, plan.tiles, softmax_scale<A>(shape));
  });
  check_cuda(cudaGetLastError(), "window_attention forward kernel launch");
}

void window_attention_backward(const void* grad_out, const void* qkv, const void* bias,
                               const void* mask, void* grad_qkv, void* grad_bias,
                               const WindowAttentionShape& shape, DType dtype,
                               LaunchTarget target) {
  if (shape.instances() == 0) return;  // the zeroed buffers are the answer
  const DeviceGuard guard(target.device);
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = accum_t<T>;
    const Plan plan = make_plan(shape, sizeof(A), 2, "window_attention_backward");
    backward_kernel<T><<<plan.blocks, kThreads, plan.shared, as_stream(target.stream)>>>(
        static_cast<const T*>(grad_out), static_cast<const T*>(qkv),
        static_cast<const T*>(bias), static_cast<const T*>(mask), static_cast<A*>(grad_qkv),
        static_cast<A*>(grad_bias), shape, plan.rows, plan.tiles, softmax_scale<A>(shape));
  });
  check_cuda(cudaGetLastError(), "window_attention backward kernel launch");
}

}  // namespace pyfundus::cuda
