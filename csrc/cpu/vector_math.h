// Helpers for the CPU kernels' inner loops: function multiversioning and an
// exponential the compiler vectorises.
#pragma once

#include <cmath>
#include <cstdint>

namespace pyfundus::cpu {

// The inner loops are compiled three times on x86-64 Linux with GCC: for
// AVX-512 (x86-64-v4), for AVX2 + FMA (x86-64-v3, about twice as fast as the
// baseline) and for the baseline, picked once at load time by an ifunc
// resolver, so wheels still run on older CPUs. GCC inlines a helper into a
// clone for another -march only when the helper is always_inline, hence
// PYFUNDUS_INLINE on everything the cloned functions call (and
// PYFUNDUS_INLINE_LAMBDA on the lambdas they pass to such helpers).
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define PYFUNDUS_TARGET_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define PYFUNDUS_INLINE inline __attribute__((always_inline))
#define PYFUNDUS_INLINE_LAMBDA __attribute__((always_inline))
#else
#define PYFUNDUS_TARGET_CLONES
#define PYFUNDUS_INLINE inline
#define PYFUNDUS_INLINE_LAMBDA
#endif

// e^x for x <= 0, the only range softpool and softmax need (x is an element
// minus its window or row maximum). glibc's expf is vectorised only under
// -ffast-math, which would also break NaN propagation, so this is a version
// the compiler vectorises: x = n ln2 + r with |r| <= ln2/2 (Cody-Waite, two
// steps), e^r from a degree-5 polynomial, and 2^n built in the exponent bits.
// The coefficients are a minimax fit of the relative error on [-ln2/2, ln2/2]
// (1.03e-7 before rounding; scripts/fit_exp_polynomial.py). Measured over
// every float in [ln(FLT_MIN), 0] against double exp, the worst error is
// 2.2 ulp (tests/test_exp_accuracy.py). That is two degrees fewer than
// Cephes' expf (1.0 ulp) and 16-27% faster per element (AVX2, AVX-512).
// Below ln(FLT_MIN) the result would be subnormal (slow, and below float
// resolution next to the maximum, whose weight is 1), so it is 0. NaN in
// gives NaN out.
//
// The only select is on integer bits at the end: under GCC's default
// -ftrapping-math a float select (a clamp of x, say) keeps the loop scalar.
PYFUNDUS_INLINE float exp_nonpositive(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;     // ln 2 = kLn2Hi + kLn2Lo, kLn2Hi has few
  constexpr float kLn2Lo = -2.12194440e-4f;  // mantissa bits so n * kLn2Hi is exact
  constexpr float kRound = 12582912.0f;      // 1.5 * 2^23: adding it rounds to an integer
  constexpr float kMin = -87.3365447f;       // ln(FLT_MIN)

  const float shifted = x * kLog2e + kRound;  // the low mantissa bits hold n
  const float n = shifted - kRound;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;

  float p = 8.3178756759e-3f;
  p = p * r + 4.1897945106e-2f;
  p = p * r + 1.6667181253e-1f;
  p = p * r + 4.9999150634e-1f;
  p = p * r + 9.9999988079e-1f;
  p = p * r + 1.0f;

  // std::bit_cast is C++20; GCC and Clang have had the builtin since 11 / 9.
  // The low 9 bits of kRound's pattern are 0, so shifting the sum's bits left
  // by 23 leaves n mod 2^9 in the exponent field: 2^n once the bias is added.
  // Unsigned arithmetic: for x below kMin the bits are garbage but defined,
  // and the mask below discards them. The scale is multiplied, not added to
  // p's exponent bits, so a NaN keeps whatever payload it has.
  const uint32_t exponent = __builtin_bit_cast(uint32_t, shifted) << 23;
  const float scale = __builtin_bit_cast(float, exponent + (127u << 23));  // 2^n
  const uint32_t keep = x < kMin ? 0u : ~0u;
  return __builtin_bit_cast(float, __builtin_bit_cast(uint32_t, p * scale) & keep);
}

// float64 is for gradient checks and reference work: accuracy over speed.
PYFUNDUS_INLINE double exp_nonpositive(double x) { return std::exp(x); }

// bfloat16 storage: the upper half of a float32. Kernels that take bfloat16
// tensors read them into float32, compute in float32 and round the results
// back, which gives bit for bit what computing on a float32 copy and casting
// the result with torch's .to(torch.bfloat16) gives, without the copies.
struct BFloat16 {
  uint16_t bits;
};

PYFUNDUS_INLINE float widen(BFloat16 v) {
  return __builtin_bit_cast(float, static_cast<uint32_t>(v.bits) << 16);
}
PYFUNDUS_INLINE float widen(float v) { return v; }
PYFUNDUS_INLINE double widen(double v) { return v; }

// Storage type S from the compute type: round to nearest even, as torch rounds
// (a NaN becomes the quiet NaN 0x7FC0, as in torch's scalar conversion).
template <typename S>
struct Narrow {
  template <typename T>
  PYFUNDUS_INLINE static S from(T v) { return static_cast<S>(v); }
};
template <>
struct Narrow<BFloat16> {
  PYFUNDUS_INLINE static BFloat16 from(float v) {
    const uint32_t u = __builtin_bit_cast(uint32_t, v);
    if (v != v) return {static_cast<uint16_t>(0x7FC0)};
    return {static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16)};
  }
};

}  // namespace pyfundus::cpu
