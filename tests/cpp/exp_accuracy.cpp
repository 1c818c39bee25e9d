// Checks exp_nonpositive (csrc/cpu/vector_math.h) against double-precision exp
// over every float in [ln(FLT_MIN), 0], plus its edges: below the range it
// gives 0, and a NaN of any payload stays a NaN. Prints the worst error in
// ulp and exits non-zero on any edge failure; tests/test_exp_accuracy.py
// compiles it, runs it and holds the worst error to its bound.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "cpu/vector_math.h"

using pyfundus::cpu::exp_nonpositive;

static float from_bits(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

int main() {
  const float lowest = -87.3365447f;  // ln(FLT_MIN), the kernel's kMin
  double worst_ulp = 0;
  float worst_x = 0;
  // Negative floats ordered by magnitude: 0x80000000 is -0, and the bit
  // pattern grows with |x|.
  for (uint32_t bits = 0x80000000u;; ++bits) {
    const float x = from_bits(bits);
    if (x < lowest) break;
    const double exact = std::exp(static_cast<double>(x));
    const double ulp = std::ldexp(1.0, std::ilogb(static_cast<float>(exact)) - 23);
    const double err = std::fabs(static_cast<double>(exp_nonpositive(x)) - exact) / ulp;
    if (err > worst_ulp) {
      worst_ulp = err;
      worst_x = x;
    }
  }
  int failures = 0;
  const float below[] = {-87.34f, -100.0f, -1e30f, -INFINITY};
  for (float x : below) {
    if (exp_nonpositive(x) != 0.0f) {
      std::printf("exp(%g) = %g, expected 0\n", x, exp_nonpositive(x));
      ++failures;
    }
  }
  const uint32_t nans[] = {0x7FC00000u, 0xFFC00000u, 0x7FC00001u, 0x7FC001FFu, 0xFFFFFFFFu};
  for (uint32_t bits : nans) {
    const float y = exp_nonpositive(from_bits(bits));
    if (y == y) {
      std::printf("exp(NaN 0x%08X) = %g, expected NaN\n", bits, y);
      ++failures;
    }
  }
  if (exp_nonpositive(0.0f) != 1.0f || exp_nonpositive(-0.0f) != 1.0f) {
    std::printf("exp(0) = %g, expected 1\n", exp_nonpositive(0.0f));
    ++failures;
  }
  std::printf("worst_ulp %.4f at %.9g\n", worst_ulp, worst_x);
  return failures == 0 ? 0 : 1;
}
