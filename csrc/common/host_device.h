// PYFUNDUS_HOST_DEVICE marks the small shape helpers that both the C++ and
// the CUDA kernels call.
#pragma once

#if defined(__CUDACC__)
#define PYFUNDUS_HOST_DEVICE __host__ __device__
#else
#define PYFUNDUS_HOST_DEVICE
#endif
