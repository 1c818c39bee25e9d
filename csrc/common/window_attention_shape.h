// Geometry of one window_attention call, shared by the CPU and CUDA kernels.
//
// qkv is a contiguous (batch, height, width, 3 * channels) tensor in image
// layout, each token's 3C values ordered (q|k|v, head, head_dim). The image is
// cyclically shifted up and left by `shift` (torch.roll by -shift) and cut
// into window x window tiles; token t of window w is row t / window, column
// t % window of tile (w / cols, w % cols). The kernels never build the rolled
// or partitioned copies: pixel() maps (image, window, token) straight to the
// token's place in the un-shifted image, and the output (batch, height, width,
// channels) is written through the same map, which undoes the shift.
#pragma once

#include <cstdint>
#include <string>

#include "common/checks.h"
#include "common/host_device.h"

namespace pyfundus {

struct WindowAttentionShape {
  int64_t batch, height, width, channels;
  int64_t heads, head_dim;
  int64_t window, shift;
  int64_t rows, cols;  // windows down and across
  int64_t tokens;      // window * window

  PYFUNDUS_HOST_DEVICE int64_t windows() const { return rows * cols; }
  // (image, window) pairs; instance i is window i % windows() of image i / windows().
  PYFUNDUS_HOST_DEVICE int64_t instances() const { return batch * rows * cols; }

  // Index of the pixel (in units of tokens of the (B, H, W) grid) that holds
  // token `token` of window instance `instance`.
  PYFUNDUS_HOST_DEVICE int64_t pixel(int64_t instance, int64_t token) const {
    const int64_t image = instance / windows();
    const int64_t w = instance % windows();
    const int64_t y = (w / cols * window + token / window + shift) % height;
    const int64_t x = (w % cols * window + token % window + shift) % width;
    return (image * height + y) * width + x;
  }
};

// Validates the sizes received from Python.
inline WindowAttentionShape make_window_attention_shape(int64_t batch, int64_t height,
                                                        int64_t width, int64_t channels,
                                                        int64_t heads, int64_t window,
                                                        int64_t shift) {
  const auto str = [](int64_t v) { return std::to_string(v); };
  PYFUNDUS_CHECK(batch >= 0, "window_attention: batch must be >= 0, got " + str(batch));
  PYFUNDUS_CHECK(window >= 1, "window_attention: window_size must be >= 1, got " + str(window));
  PYFUNDUS_CHECK(height >= 1 && width >= 1 && height % window == 0 && width % window == 0,
                 "window_attention: window_size " + str(window) + " must divide the grid (" +
                     str(height) + ", " + str(width) + ")");
  PYFUNDUS_CHECK(heads >= 1 && channels >= 1 && channels % heads == 0,
                 "window_attention: channels " + str(channels) +
                     " must be a positive multiple of num_heads " + str(heads));
  PYFUNDUS_CHECK(shift >= 0 && shift < window, "window_attention: shift_size must be in [0, " +
                                                   str(window) + "), got " + str(shift));
  return WindowAttentionShape{batch, height, width, channels, heads, channels / heads,
                              window, shift, height / window, width / window, window * window};
}

}  // namespace pyfundus
