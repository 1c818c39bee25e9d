// What every CUDA entry point takes besides its data: plain C++, so the
// pybind11 module compiles with the host compiler.
#pragma once

#include <cstdint>

namespace pyfundus::cuda {

// Where and on what a call runs: the device index (cudaSetDevice is called
// with it; the previous device is restored afterwards) and a cudaStream_t
// passed as an integer (torch.cuda.current_stream().cuda_stream).
struct LaunchTarget {
  int device;
  std::uintptr_t stream;
};

}  // namespace pyfundus::cuda
