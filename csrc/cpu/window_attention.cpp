#include "cpu/window_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <omp.h>

#include "cpu/vector_math.h"

namespace pyfundus::cpu {

// The widest variant the CPU runs, or a narrower one where $PYFUNDUS_CPU_ISA
// asks for it ("avx2" or "baseline": for tests and comparisons; it never
// raises the choice above what the CPU supports). Read on every call.
CpuVariant window_attention_variant() {
  const char* env = std::getenv("PYFUNDUS_CPU_ISA");
  const std::string cap = env == nullptr ? "" : env;
  PYFUNDUS_CHECK(cap.empty() || cap == "avx512" || cap == "avx2" || cap == "baseline",
                 "PYFUNDUS_CPU_ISA must be avx512, avx2 or baseline, got '" + cap + "'");
  const CpuVariant widest = widest_supported_variant();
  if (cap == "baseline") return CpuVariant::Baseline;
  if (cap == "avx2" && widest == CpuVariant::Avx512) return CpuVariant::Avx2;
  return widest;
}

namespace {

// ---- small dense products ----------------------------------------------------

// Every per-window matrix is copied into a thread-local buffer whose sides are
// padded with zeros to multiples of kPad (144 tokens and head_dim 16 or 32 need
// no padding), so the products run whole SIMD vectors with no remainder loops.
constexpr int64_t kPad = 16;

int64_t padded(int64_t n) { return (n + kPad - 1) / kPad * kPad; }

// The products' register blocking for one instruction set: kRows x kPad
// blocks of the result in kBytes-wide vectors (GCC/Clang vector extension).
// AVX-512 has 32 registers and one register holds kPad floats, so it takes
// twice the rows; AVX2 (and the SSE baseline, in pairs of registers) holds
// 4 x 2 accumulators.
struct Avx2 {
  static constexpr int kBytes = 32;
  static constexpr int64_t kRows = 4;
  static constexpr int64_t kWideGroups = 1;
};
struct Avx512 {
  static constexpr int kBytes = 64;
  static constexpr int64_t kRows = 8;
  static constexpr int64_t kWideGroups = 3;  // see token_wide_matmul()
};
constexpr int64_t kMaxRows = 8;

template <typename T, int kBytes>
struct Simd {
  typedef T type __attribute__((vector_size(kBytes)));
};

// c (m x n) = op(a) (m x k) b (k x n), with op(a) = a, or a^T when kTransA (a
// is then k x m); rows lda, ldb and ldc elements apart; m a multiple of
// Isa::kRows, n of kGroups * kPad. A kRows x (kGroups * kPad) block of c stays
// in registers while p runs over k: per p, kGroups * kPad / lanes loads of b
// and kRows broadcasts of op(a) feed kRows * kGroups * kPad / lanes fused
// multiply-adds. `epilogue` (row, column, vector) may change each finished
// vector of c on its way to memory.
struct StoreAsIs {
  template <typename V>
  PYFUNDUS_INLINE void operator()(int64_t, int64_t, V&) const {}
};

template <typename Isa, bool kTransA = false, int64_t kGroups = 1, typename T,
          typename Epilogue = StoreAsIs>
PYFUNDUS_INLINE void matmul(const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc,
                            int64_t m, int64_t n, int64_t k, Epilogue epilogue = {}) {
  using V = typename Simd<T, Isa::kBytes>::type;
  constexpr int64_t kRows = Isa::kRows;
  constexpr int64_t kLanes = sizeof(V) / sizeof(T);
  constexpr int64_t kVecs = kGroups * kPad / kLanes;
  for (int64_t i = 0; i < m; i += kRows) {
    for (int64_t j = 0; j < n; j += kGroups * kPad) {
      V acc[kRows][kVecs] = {};
      for (int64_t p = 0; p < k; ++p) {
        V b_vec[kVecs];
#pragma GCC unroll 8
        for (int64_t v = 0; v < kVecs; ++v) {
          __builtin_memcpy(&b_vec[v], b + p * ldb + j + v * kLanes, sizeof(V));
        }
#pragma GCC unroll 8
        for (int64_t r = 0; r < kRows; ++r) {
          const T a_rp = kTransA ? a[p * lda + i + r] : a[(i + r) * lda + p];
#pragma GCC unroll 8
          for (int64_t v = 0; v < kVecs; ++v) acc[r][v] += a_rp * b_vec[v];
        }
      }
#pragma GCC unroll 8
      for (int64_t r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
        for (int64_t v = 0; v < kVecs; ++v) {
          epilogue(i + r, j + v * kLanes, acc[r][v]);
          __builtin_memcpy(c + (i + r) * ldc + j + v * kLanes, &acc[r][v], sizeof(V));
        }
      }
    }
  }
}

// The softmax of one row of scores (n real columns, padding up to ld) in two
// passes. The first adds the bias and the mask (in the reference's order) and
// returns the row maximum; the second turns the row into the numerators
// e^(s - max), padding columns 0, and leaves their sum in parts. Separate
// functions so a block of rows can run every first pass before any second
// one: the maximum's horizontal reduction then overlaps the next row's pass
// instead of stalling its own row's second pass.
template <typename T>
PYFUNDUS_INLINE T biased_row_max(T* s, int64_t n, const T* bias_row, const T* mask_row) {
  // std::isgreater: the quiet comparison GCC may vectorise under
  // -ftrapping-math. A NaN is never the max but still reaches the sum.
  T m = -std::numeric_limits<T>::infinity();
  if (mask_row == nullptr) {
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; ++j) {
      s[j] += bias_row[j];
      m = std::isgreater(s[j], m) ? s[j] : m;
    }
  } else {
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; ++j) {
      s[j] = s[j] + bias_row[j] + mask_row[j];
      m = std::isgreater(s[j], m) ? s[j] : m;
    }
  }
  return m;
}

// The numerators' sum is left as kSumLanes partial sums, part l at
// lane_sums[l * stride]: GCC ends a reduction loop with a chain of dependent
// scalar adds over the vector's lanes, which took 3% of a task when every row
// paid for it. row_sum_inverses() then adds the parts of all rows at once.
constexpr int64_t kSumLanes = 16;  // float lanes in an AVX-512 vector

template <typename T>
PYFUNDUS_INLINE void softmax_numerators(T* s, int64_t n, int64_t ld, T m, T* lane_sums,
                                        int64_t stride) {
  T parts[kSumLanes] = {};
  int64_t j = 0;
  for (; j + kSumLanes <= n; j += kSumLanes) {
#pragma omp simd
    for (int64_t lane = 0; lane < kSumLanes; ++lane) {
      const T e = exp_nonpositive(s[j + lane] - m);
      s[j + lane] = e;
      parts[lane] += e;
    }
  }
  for (int64_t lane = 0; j < n; ++j, ++lane) {
    const T e = exp_nonpositive(s[j] - m);
    s[j] = e;
    parts[lane] += e;
  }
  for (int64_t lane = 0; lane < kSumLanes; ++lane) lane_sums[lane * stride] = parts[lane];
  std::fill(s + n, s + ld, T(0));
}

// inv_sums[i] = 1 / (sum of row i's parts), for rows 0 .. n-1 of lane_sums
// (kSumLanes x stride, one column per row).
template <typename T>
PYFUNDUS_INLINE void row_sum_inverses(const T* lane_sums, int64_t n, int64_t stride, T* inv_sums) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T sum = 0;
    for (int64_t lane = 0; lane < kSumLanes; ++lane) sum += lane_sums[lane * stride + i];
    inv_sums[i] = T(1) / sum;
  }
}

// ---- per (window, head) tasks -------------------------------------------------

// Sizes of one task's local matrices.
struct Local {
  int64_t n, np;   // tokens, padded
  int64_t hd, dp;  // head_dim, padded

  explicit Local(const WindowAttentionShape& s)
      : n(s.tokens), np(padded(s.tokens)), hd(s.head_dim), dp(padded(s.head_dim)) {}
  int64_t forward_scratch() const {
    return 3 * np * dp + hd * np + kMaxRows * np + (kSumLanes + 1) * np;
  }
  int64_t backward_scratch() const {
    return 4 * np * dp + 2 * hd * np + 2 * np * np + (kSumLanes + 2) * np;
  }
};

// c (m x np) = a (m x hd) b (hd x np): the products as wide as the window's
// token count (scores, and dP in the backward). On AVX-512 with np a multiple
// of 48 (FTHNet's 144 tokens) a block spans three groups of 16 columns: 8 x 48
// accumulators fill 24 of the 32 registers and each broadcast element of a
// feeds three multiply-adds instead of one, so loads stop limiting the product.
template <typename Isa, typename T, typename Epilogue = StoreAsIs>
PYFUNDUS_INLINE void token_wide_matmul(const T* a, int64_t lda, const T* b, T* c, const Local& l,
                                       int64_t m, Epilogue epilogue = {}) {
  if (Isa::kWideGroups > 1 && l.np % (Isa::kWideGroups * kPad) == 0) {
    matmul<Isa, false, Isa::kWideGroups>(a, lda, b, l.np, c, l.np, m, l.np, l.hd, epilogue);
  } else {
    matmul<Isa>(a, lda, b, l.np, c, l.np, m, l.np, l.hd, epilogue);
  }
}

// The scores' epilogue for windows without padding tokens (np == n, as with
// FTHNet's 144): adds the bias and the mask in the reference's order as the
// product stores each vector, and keeps each row's running maximum per lane.
// That replaces biased_row_max(), a second load and store of every score.
// `bias` and `mask` (or nullptr) point at the row block's first row.
template <typename T, typename V>
struct AddBiasKeepMax {
  const T* bias;
  const T* mask;
  int64_t n;
  V* lane_max;

  PYFUNDUS_INLINE void operator()(int64_t row, int64_t column, V& scores) const {
    V add;
    __builtin_memcpy(&add, bias + row * n + column, sizeof(V));
    scores += add;
    if (mask != nullptr) {
      __builtin_memcpy(&add, mask + row * n + column, sizeof(V));
      scores += add;
    }
    // An ordered comparison, as in biased_row_max(): a NaN never becomes the max.
    lane_max[row] = scores > lane_max[row] ? scores : lane_max[row];
  }
};

// The scores of query rows i0 .. i0 + Isa::kRows into p, biased and masked, and
// each row's maximum into row_max.
template <typename Isa, typename T>
PYFUNDUS_INLINE void biased_scores(const T* q, const T* kt, const T* bias_head,
                                   const T* mask_head, T* p, T* row_max, const Local& l,
                                   int64_t i0) {
  constexpr int64_t kRows = Isa::kRows;
  const int64_t rows = std::min(kRows, l.n - i0);
  if (l.np != l.n) {
    token_wide_matmul<Isa>(q + i0 * l.dp, l.dp, kt, p, l, kRows);
    for (int64_t r = 0; r < rows; ++r) {
      row_max[r] = biased_row_max(p + r * l.np, l.n, bias_head + (i0 + r) * l.n,
                                  mask_head == nullptr ? nullptr : mask_head + (i0 + r) * l.n);
    }
    return;
  }
  // n is then a multiple of kPad, so of kRows: every row of the block is real.
  using V = typename Simd<T, Isa::kBytes>::type;
  constexpr int64_t kLanes = sizeof(V) / sizeof(T);
  V lane_max[kRows];
  for (int64_t r = 0; r < kRows; ++r) lane_max[r] = V{} - std::numeric_limits<T>::infinity();
  const T* mask_block = mask_head == nullptr ? nullptr : mask_head + i0 * l.n;
  token_wide_matmul<Isa>(q + i0 * l.dp, l.dp, kt, p, l, kRows,
                         AddBiasKeepMax<T, V>{bias_head + i0 * l.n, mask_block, l.n, lane_max});
  for (int64_t r = 0; r < kRows; ++r) {
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      m = std::isgreater(lane_max[r][lane], m) ? lane_max[r][lane] : m;
    }
    row_max[r] = m;
  }
}

// Calls f(token, pixel) for each token of window instance `instance` in token
// order, pixel being its index in the (B, H, W) grid as in
// WindowAttentionShape::pixel(). Row by row and without a division per token:
// pixel()'s six divisions per token took 8% of a forward task at FTHNet's
// last stage.
template <typename F>
PYFUNDUS_INLINE void for_each_token(const WindowAttentionShape& s, int64_t instance, F&& f) {
  const int64_t image = instance / s.windows();
  const int64_t w = instance % s.windows();
  // Below 2 * height and 2 * width, so one subtraction wraps the cyclic shift.
  const int64_t y0 = w / s.cols * s.window + s.shift;
  const int64_t x0 = w % s.cols * s.window + s.shift;
  for (int64_t ty = 0; ty < s.window; ++ty) {
    const int64_t y = y0 + ty < s.height ? y0 + ty : y0 + ty - s.height;
    const int64_t row = (image * s.height + y) * s.width;
    for (int64_t tx = 0; tx < s.window; ++tx) {
      const int64_t x = x0 + tx < s.width ? x0 + tx : x0 + tx - s.width;
      f(ty * s.window + tx, row + x);
    }
  }
}

// Square tiles of lanes x lanes elements are transposed in registers: log2(lanes)
// rounds, each pairing row i with row i + lanes/2 and interleaving their
// halves, give the transpose (every round is a perfect shuffle of the index
// bits). __builtin_shufflevector is in Clang and GCC 12+; without it the
// transpose is element by element.
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define PYFUNDUS_TILE_TRANSPOSE 1
#endif
#endif

#ifdef PYFUNDUS_TILE_TRANSPOSE
template <typename V, int64_t kLanes, size_t... I>
PYFUNDUS_INLINE void interleave_halves(const V& a, const V& b, V& low, V& high,
                                       std::index_sequence<I...>) {
  constexpr int64_t kHalf = kLanes / 2;
  low = __builtin_shufflevector(a, b, (I % 2 ? kLanes + I / 2 : I / 2)...);
  high = __builtin_shufflevector(a, b, (I % 2 ? kLanes + kHalf + I / 2 : kHalf + I / 2)...);
}

template <typename V, int64_t kLanes>
PYFUNDUS_INLINE void transpose_tile(V (&tile)[kLanes]) {
  for (int64_t round = 1; round < kLanes; round *= 2) {
    V next[kLanes];
#pragma GCC unroll 16
    for (int64_t i = 0; i < kLanes / 2; ++i) {
      interleave_halves<V, kLanes>(tile[i], tile[i + kLanes / 2], next[2 * i], next[2 * i + 1],
                                   std::make_index_sequence<kLanes>{});
    }
#pragma GCC unroll 16
    for (int64_t i = 0; i < kLanes; ++i) tile[i] = next[i];
  }
}
#endif

// cols (hd x np) = the first n rows of rows (np x dp), transposed. The tasks
// copy k (and v) from qkv row by row and transpose them here: storing them
// transposed straight from qkv, one scattered store per element, took a tenth
// of a forward task at FTHNet's last stage.
template <typename Isa, typename T>
PYFUNDUS_INLINE void transpose_rows(const T* rows, T* cols, const Local& l) {
  int64_t t0 = 0;
#ifdef PYFUNDUS_TILE_TRANSPOSE
  using V = typename Simd<T, Isa::kBytes>::type;
  constexpr int64_t kLanes = sizeof(V) / sizeof(T);  // divides dp, a multiple of kPad
  for (; t0 + kLanes <= l.n; t0 += kLanes) {
    for (int64_t d0 = 0; d0 < l.hd; d0 += kLanes) {
      V tile[kLanes];
#pragma GCC unroll 16
      for (int64_t i = 0; i < kLanes; ++i) {
        __builtin_memcpy(&tile[i], rows + (t0 + i) * l.dp + d0, sizeof(V));
      }
      transpose_tile<V, kLanes>(tile);
      // Tile rows past hd hold the zero padding columns of rows: not stored.
      for (int64_t j = 0; j < std::min(kLanes, l.hd - d0); ++j) {
        __builtin_memcpy(cols + (d0 + j) * l.np + t0, &tile[j], sizeof(V));
      }
    }
  }
#endif
  for (int64_t d = 0; d < l.hd; ++d) {
    for (int64_t t = t0; t < l.n; ++t) cols[d * l.np + t] = rows[t * l.dp + d];
  }
}

template <typename T>
T softmax_scale(const WindowAttentionShape& s) {
  return static_cast<T>(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
}

template <typename T>
const T* mask_rows(const T* mask, const WindowAttentionShape& s, int64_t instance) {
  return mask == nullptr ? nullptr : mask + (instance % s.windows()) * s.tokens * s.tokens;
}

// qkv and out are stored as S (T, or bfloat16 with T float); everything else is T.
template <typename Isa, typename S, typename T>
PYFUNDUS_INLINE void forward_task(const S* qkv, const T* bias, const T* mask, S* out,
                                  const WindowAttentionShape& s, int64_t instance, int64_t head,
                                  T* scratch) {
  const Local l(s);
  T* q = scratch;           // np x dp, times the softmax scale
  T* v = q + l.np * l.dp;   // np x dp
  T* o = v + l.np * l.dp;   // np x dp
  T* kt = o + l.np * l.dp;  // hd x np: k transposed
  T* p = kt + l.hd * l.np;  // Isa::kRows x np: scores, then softmax numerators
  T* lane_sums = p + kMaxRows * l.np;        // kSumLanes x np: parts of each row's sum
  T* inv_sums = lane_sums + kSumLanes * l.np;  // np: 1 / softmax denominator of each row
  const T scale = softmax_scale<T>(s);
  const int64_t c = s.channels;
  T* k = o;  // k's rows until they are transposed; o is free until the first product with v
  for_each_token(s, instance, [&](int64_t t, int64_t pixel) PYFUNDUS_INLINE_LAMBDA {
    const S* src = qkv + pixel * 3 * c + head * l.hd;
#pragma omp simd
    for (int64_t d = 0; d < l.hd; ++d) q[t * l.dp + d] = widen(src[d]) * scale;
#pragma omp simd
    for (int64_t d = 0; d < l.hd; ++d) k[t * l.dp + d] = widen(src[c + d]);
#pragma omp simd
    for (int64_t d = 0; d < l.hd; ++d) v[t * l.dp + d] = widen(src[2 * c + d]);
  });
  transpose_rows<Isa>(k, kt, l);
  // kRows query rows at a time: their scores stay in L1 from the product
  // through the softmax to the product with v. Padding rows of q are 0, so
  // padding rows of p stay 0 and add nothing.
  constexpr int64_t kRows = Isa::kRows;
  const T* bias_rows = bias + head * l.n * l.n;
  const T* mask_h = mask_rows(mask, s, instance);
  for (int64_t i0 = 0; i0 < l.n; i0 += kRows) {
    T row_max[kMaxRows];
    biased_scores<Isa>(q, kt, bias_rows, mask_h, p, row_max, l, i0);
    const int64_t i1 = std::min(i0 + kRows, l.n);
    for (int64_t i = i0; i < i1; ++i) {
      softmax_numerators(p + (i - i0) * l.np, l.n, l.np, row_max[i - i0], lane_sums + i, l.np);
    }
    // The rows are normalised after the product: head_dim multiplies, not n.
    matmul<Isa>(p, l.np, v, l.dp, o + i0 * l.dp, l.dp, kRows, l.dp, l.np);
  }
  row_sum_inverses(lane_sums, l.n, l.np, inv_sums);
  for_each_token(s, instance, [&](int64_t t, int64_t pixel) PYFUNDUS_INLINE_LAMBDA {
    S* dst = out + pixel * c + head * l.hd;
    for (int64_t d = 0; d < l.hd; ++d) dst[d] = Narrow<S>::from(o[t * l.dp + d] * inv_sums[t]);
  });
}

// Writes res (np x dp) rows, times `factor`, to the q, k or v slot (`slot` 0, 1, 2) of
// this window's tokens in grad_qkv.
template <typename T>
PYFUNDUS_INLINE void scatter(const T* res, T factor, T* grad_qkv, int slot,
                             const WindowAttentionShape& s, const Local& l, int64_t instance,
                             int64_t head) {
  for_each_token(s, instance, [&](int64_t t, int64_t pixel) PYFUNDUS_INLINE_LAMBDA {
    T* dst = grad_qkv + pixel * 3 * s.channels + slot * s.channels + head * l.hd;
    for (int64_t d = 0; d < l.hd; ++d) dst[d] = res[t * l.dp + d] * factor;
  });
}

// With P the probabilities, dO the output gradient and S the scores:
// dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(P * dP)), dQ = scale dS K,
// dK = scale dS^T Q, d(bias) = dS (added to grad_bias_head, n x n).
template <typename Isa, typename T>
PYFUNDUS_INLINE void backward_task(const T* grad_out, const T* qkv, const T* bias,
                                   const T* mask, T* grad_qkv, T* grad_bias_head,
                                   bool add_to_grad_bias, const WindowAttentionShape& s,
                                   int64_t instance, int64_t head, T* scratch) {
  const Local l(s);
  T* q = scratch;             // np x dp, times the softmax scale
  T* k = q + l.np * l.dp;     // np x dp
  T* dout = k + l.np * l.dp;  // np x dp
  T* res = dout + l.np * l.dp;  // np x dp: dV, dQ, dK in turn
  T* kt = res + l.np * l.dp;  // hd x np
  T* vt = kt + l.hd * l.np;   // hd x np
  T* p = vt + l.hd * l.np;    // np x np: probabilities
  T* ds = p + l.np * l.np;    // np x np: dP, then dS
  T* lane_sums = ds + l.np * l.np;             // kSumLanes x np: parts of each row's sum
  T* inv_sums = lane_sums + kSumLanes * l.np;  // np
  T* row_max = inv_sums + l.np;                // np
  const T scale = softmax_scale<T>(s);
  const int64_t c = s.channels;
  T* v = res;  // v's rows until they are transposed
  for_each_token(s, instance, [&](int64_t t, int64_t pixel) PYFUNDUS_INLINE_LAMBDA {
    const T* src = qkv + pixel * 3 * c + head * l.hd;
    const T* src_grad = grad_out + pixel * c + head * l.hd;
#pragma omp simd
    for (int64_t d = 0; d < l.hd; ++d) q[t * l.dp + d] = src[d] * scale;
#pragma omp simd
    for (int64_t d = 0; d < l.hd; ++d) k[t * l.dp + d] = src[c + d];
#pragma omp simd
    for (int64_t d = 0; d < l.hd; ++d) v[t * l.dp + d] = src[2 * c + d];
#pragma omp simd
    for (int64_t d = 0; d < l.hd; ++d) dout[t * l.dp + d] = src_grad[d];
  });
  transpose_rows<Isa>(k, kt, l);
  transpose_rows<Isa>(v, vt, l);
  const T* bias_rows = bias + head * l.n * l.n;
  const T* mask_h = mask_rows(mask, s, instance);
  // Every block up to np, so padding rows of p are written too (0: those of q are).
  for (int64_t i0 = 0; i0 < l.np; i0 += Isa::kRows) {
    biased_scores<Isa>(q, kt, bias_rows, mask_h, p + i0 * l.np, row_max + i0, l, i0);
  }
  for (int64_t i = 0; i < l.n; ++i) {
    softmax_numerators(p + i * l.np, l.n, l.np, row_max[i], lane_sums + i, l.np);
  }
  row_sum_inverses(lane_sums, l.n, l.np, inv_sums);
  for (int64_t i = 0; i < l.n; ++i) {
    T* p_row = p + i * l.np;
#pragma omp simd
    for (int64_t j = 0; j < l.n; ++j) p_row[j] *= inv_sums[i];
  }
  token_wide_matmul<Isa>(dout, l.dp, vt, ds, l, l.np);
  for (int64_t i = 0; i < l.n; ++i) {
    T* ds_row = ds + i * l.np;
    const T* p_row = p + i * l.np;
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < l.np; ++j) dot += p_row[j] * ds_row[j];
#pragma omp simd
    for (int64_t j = 0; j < l.np; ++j) ds_row[j] = p_row[j] * (ds_row[j] - dot);
    T* gb_row = grad_bias_head + i * l.n;
    if (add_to_grad_bias) {
#pragma omp simd
      for (int64_t j = 0; j < l.n; ++j) gb_row[j] += ds_row[j];
    } else {
      std::copy(ds_row, ds_row + l.n, gb_row);
    }
  }
  // Padding rows of p and dP are 0 (padding rows of q and dO are), so those of dS are too.
  matmul<Isa, true>(p, l.np, dout, l.dp, res, l.dp, l.np, l.dp, l.np);
  scatter(res, T(1), grad_qkv, 2, s, l, instance, head);
  matmul<Isa>(ds, l.np, k, l.dp, res, l.dp, l.np, l.dp, l.np);
  scatter(res, scale, grad_qkv, 0, s, l, instance, head);
  matmul<Isa, true>(ds, l.np, q, l.dp, res, l.dp, l.np, l.dp, l.np);  // q carries the scale
  scatter(res, T(1), grad_qkv, 1, s, l, instance, head);
}

// ---- one compiled variant per instruction set ----------------------------------

template <typename S, typename T>
struct TaskKernels {
  void (*forward)(const S*, const T*, const T*, S*, const WindowAttentionShape&, int64_t,
                  int64_t, T*);
  void (*backward)(const T*, const T*, const T*, const T*, T*, T*, bool,
                   const WindowAttentionShape&, int64_t, int64_t, T*);
};

// The task bodies are always_inline, so each wrapper below compiles them for
// its own target: these are the only out-of-line copies.
#define PYFUNDUS_TASK_VARIANT(name, isa, target)                                              \
  template <typename S, typename T>                                                            \
  target void forward_##name(const S* qkv, const T* bias, const T* mask, S* out,              \
                             const WindowAttentionShape& s, int64_t instance, int64_t head,   \
                             T* scratch) {                                                     \
    forward_task<isa>(qkv, bias, mask, out, s, instance, head, scratch);                      \
  }                                                                                            \
  template <typename T>                                                                        \
  target void backward_##name(const T* grad_out, const T* qkv, const T* bias, const T* mask,  \
                              T* grad_qkv, T* grad_bias_head, bool add_to_grad_bias,          \
                              const WindowAttentionShape& s, int64_t instance, int64_t head,  \
                              T* scratch) {                                                    \
    backward_task<isa>(grad_out, qkv, bias, mask, grad_qkv, grad_bias_head, add_to_grad_bias, \
                       s, instance, head, scratch);                                            \
  }

PYFUNDUS_TASK_VARIANT(baseline, Avx2, )

// On x86-64 the AVX-512 and AVX2 + FMA variants are picked at run time, so one
// build runs everywhere and uses the widest vectors the CPU has. AVX-512
// matters on CPUs with full-width units (Zen 5, Intel server parts), where it
// takes about a quarter off each task.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
PYFUNDUS_TASK_VARIANT(avx512, Avx512,
                      __attribute__((target("arch=x86-64-v4,prefer-vector-width=512"))))
PYFUNDUS_TASK_VARIANT(avx2, Avx2, __attribute__((target("arch=x86-64-v3"))))
#endif
#undef PYFUNDUS_TASK_VARIANT

template <typename S, typename T>
TaskKernels<S, T> task_kernels() {
  switch (window_attention_variant()) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    case CpuVariant::Avx512:
      return {forward_avx512<S, T>, backward_avx512<T>};
    case CpuVariant::Avx2:
      return {forward_avx2<S, T>, backward_avx2<T>};
#endif
    default:
      return {forward_baseline<S, T>, backward_baseline<T>};
  }
}

// ---- drivers -----------------------------------------------------------------

// Zero-initialised room per thread, allocated before the parallel region (an
// exception must not escape an OpenMP region). Padding is never written by
// the gathers, so it stays 0 from task to task.
template <typename T>
class ThreadScratch {
 public:
  ThreadScratch(int threads, int64_t per_thread)
      : per_thread_(per_thread), data_(static_cast<size_t>(threads) * per_thread) {}
  T* for_this_thread() { return data_.data() + omp_get_thread_num() * per_thread_; }

 private:
  int64_t per_thread_;
  std::vector<T> data_;
};

int useful_threads(int64_t tasks, int num_threads) {
  return static_cast<int>(std::clamp<int64_t>(tasks, 1, num_threads));
}

template <typename S, typename T>
void forward(const S* qkv, const T* bias, const T* mask, S* out, const WindowAttentionShape& s,
             int num_threads) {
  const int64_t tasks = s.instances() * s.heads;
  if (tasks == 0) return;
  const int threads = useful_threads(tasks, num_threads);
  ThreadScratch<T> scratch(threads, Local(s).forward_scratch());
  const auto forward_task = task_kernels<S, T>().forward;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t task = 0; task < tasks; ++task) {
    forward_task(qkv, bias, mask, out, s, task / s.heads, task % s.heads,
                 scratch.for_this_thread());
  }
}

// Tasks the backward aims for: each owns one head and a fixed chunk of window
// instances, and sums its bias gradient into a partial of its own (chunk 0's
// is grad_bias itself).
constexpr int64_t kBackwardTasks = 64;

template <typename T>
void backward(const T* grad_out, const T* qkv, const T* bias, const T* mask, T* grad_qkv,
              T* grad_bias, const WindowAttentionShape& s, int num_threads) {
  const int64_t instances = s.instances();
  const int64_t bias_numel = s.heads * s.tokens * s.tokens;
  if (instances == 0) {
    std::fill(grad_bias, grad_bias + bias_numel, T(0));
    return;
  }
  // The chunks do not depend on the thread count, and the partials are added
  // in chunk order below, so grad_bias is the same for any num_threads. Every
  // chunk has at least one instance, and its first one assigns the partial
  // instead of adding to it, so no partial needs zeroing: at FTHNet's last
  // stage (one window, one chunk) zeroing and summing a partial took a sixth
  // of the backward.
  const int64_t chunks = std::clamp<int64_t>(kBackwardTasks / s.heads, 1, instances);
  const int64_t tasks = chunks * s.heads;
  const int threads = useful_threads(tasks, num_threads);
  std::unique_ptr<T[]> partials(new T[static_cast<size_t>(chunks - 1) * bias_numel]);
  ThreadScratch<T> scratch(threads, Local(s).backward_scratch());
  const auto backward_task = task_kernels<T, T>().backward;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t chunk = task / s.heads;
    const int64_t head = task % s.heads;
    T* partial = (chunk == 0 ? grad_bias : partials.get() + (chunk - 1) * bias_numel) +
                 head * s.tokens * s.tokens;
    T* room = scratch.for_this_thread();
    const int64_t first = chunk * instances / chunks;
    for (int64_t instance = first; instance < (chunk + 1) * instances / chunks; ++instance) {
      backward_task(grad_out, qkv, bias, mask, grad_qkv, partial, instance > first, s, instance,
                    head, room);
    }
  }
  if (chunks > 1) {
#pragma omp parallel for simd schedule(static) num_threads(threads)
    for (int64_t e = 0; e < bias_numel; ++e) {
      T sum = grad_bias[e];
      for (int64_t chunk = 1; chunk < chunks; ++chunk) {
        sum += partials[(chunk - 1) * bias_numel + e];
      }
      grad_bias[e] = sum;
    }
  }
}

void check_cpu_dtype(DType dtype, bool bfloat16_allowed) {
  PYFUNDUS_CHECK(dtype == DType::Float32 || dtype == DType::Float64 ||
                     (bfloat16_allowed && dtype == DType::BFloat16),
                 std::string("window_attention CPU kernels take float32 or float64") +
                     (bfloat16_allowed ? " (bfloat16 forward)" : "") + ", got " +
                     dtype_name(dtype) + " (compute other half types in float32)");
}

}  // namespace

void window_attention_forward(const void* qkv, const void* bias, const void* mask, void* out,
                              const WindowAttentionShape& shape, DType dtype, int num_threads) {
  check_cpu_dtype(dtype, true);
  if (dtype == DType::BFloat16) {
    forward(static_cast<const BFloat16*>(qkv), static_cast<const float*>(bias),
            static_cast<const float*>(mask), static_cast<BFloat16*>(out), shape, num_threads);
  } else if (dtype == DType::Float32) {
    forward(static_cast<const float*>(qkv), static_cast<const float*>(bias),
            static_cast<const float*>(mask), static_cast<float*>(out), shape, num_threads);
  } else {
    forward(static_cast<const double*>(qkv), static_cast<const double*>(bias),
            static_cast<const double*>(mask), static_cast<double*>(out), shape, num_threads);
  }
}

void window_attention_backward(const void* grad_out, const void* qkv, const void* bias,
                               const void* mask, void* grad_qkv, void* grad_bias,
                               const WindowAttentionShape& shape, DType dtype, int num_threads) {
  check_cpu_dtype(dtype, false);
  if (dtype == DType::Float32) {
    backward(static_cast<const float*>(grad_out), static_cast<const float*>(qkv),
             static_cast<const float*>(bias), static_cast<const float*>(mask),
             static_cast<float*>(grad_qkv), static_cast<float*>(grad_bias), shape, num_threads);
  } else {
    backward(static_cast<const double*>(grad_out), static_cast<const double*>(qkv),
             static_cast<const double*>(bias), static_cast<const double*>(mask),
             static_cast<double*>(grad_qkv), static_cast<double*>(grad_bias), shape, num_threads);
  }
}

}  // namespace pyfundus::cpu
