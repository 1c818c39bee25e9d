// Geometry of one softpool2d call, shared by the CPU and CUDA kernels.
//
// Input is contiguous NCHW; every (n, c) plane is pooled independently with a
// kh x kw window moved by (sh, sw), no padding, so the output is
// floor((H - kh) / sh) + 1 by floor((W - kw) / sw) + 1.
#pragma once

#include <cstdint>
#include <string>

#include "common/checks.h"
#include "common/host_device.h"

namespace pyfundus {

struct SoftPoolShape {
  int64_t n, c, h, w;    // input
  int64_t kh, kw;        // window
  int64_t sh, sw;        // stride
  int64_t oh, ow;        // output

  PYFUNDUS_HOST_DEVICE int64_t planes() const { return n * c; }
  PYFUNDUS_HOST_DEVICE int64_t input_numel() const { return planes() * h * w; }
  PYFUNDUS_HOST_DEVICE int64_t output_numel() const { return planes() * oh * ow; }
  // Windows overlap when the stride is smaller than the window on either axis;
  // then an input element receives gradient from several windows.
  PYFUNDUS_HOST_DEVICE bool overlapping() const { return sh < kh || sw < kw; }
};

// Validates the sizes received from Python and derives the output size.
inline SoftPoolShape make_softpool_shape(int64_t n, int64_t c, int64_t h, int64_t w,
                                         int64_t kh, int64_t kw, int64_t sh, int64_t sw) {
  const auto dims = [](int64_t a, int64_t b) {
    return "(" + std::to_string(a) + ", " + std::to_string(b) + ")";
  };
  PYFUNDUS_CHECK(n >= 0 && c >= 0,
                 "softpool2d: batch and channel counts must be >= 0, got " + dims(n, c));
  PYFUNDUS_CHECK(h >= 1 && w >= 1,
                 "softpool2d: input height and width must be >= 1, got " + dims(h, w));
  PYFUNDUS_CHECK(kh >= 1 && kw >= 1, "softpool2d: kernel_size must be >= 1, got " + dims(kh, kw));
  PYFUNDUS_CHECK(sh >= 1 && sw >= 1, "softpool2d: stride must be >= 1, got " + dims(sh, sw));
  PYFUNDUS_CHECK(kh <= h && kw <= w, "softpool2d: kernel_size " + dims(kh, kw) +
                                         " does not fit in the input " + dims(h, w) +
                                         " (no padding)");
  return SoftPoolShape{n, c, h, w, kh, kw, sh, sw, (h - kh) / sh + 1, (w - kw) / sw + 1};
}

}  // namespace pyfundus
