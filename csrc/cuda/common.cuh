// Helpers shared by the CUDA kernels: error checks, device selection, the
// element types and their float32 (float64) accumulation type, dtype dispatch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/dtype.h"

namespace pyfundus::cuda {

// ---- errors and device selection --------------------------------------------

inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("pyfundus CUDA: ") + what + " failed: " +
                             cudaGetErrorString(status));
  }
}

// Makes `device` current for the launch and restores the previous device
// afterwards, as torch's CUDAGuard does. This module links its own (static)
// cudart, so it cannot rely on torch having selected the device, and must not
// leave the caller's thread on another device either.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) {
      check_cuda(cudaSetDevice(device), "cudaSetDevice");
      changed_ = true;
    }
  }
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(previous_);  // best effort: destructors must not throw
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

// ---- element types ----------------------------------------------------------

// Accumulation type: float for float and the half types, double for double.
template <typename T>
struct Accum {
  using type = float;
};
template <>
struct Accum<double> {
  using type = double;
};
template <typename T>
using accum_t = typename Accum<T>::type;

__device__ __forceinline__ float to_accum(float v) { return v; }
__device__ __forceinline__ double to_accum(double v) { return v; }
__device__ __forceinline__ float to_accum(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_accum(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_accum(accum_t<T> v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(v);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(v);
  } else {
    return v;
  }
}

__device__ __forceinline__ float exp_accum(float v) { return expf(v); }
__device__ __forceinline__ double exp_accum(double v) { return exp(v); }

inline cudaStream_t as_stream(std::uintptr_t handle) {
  return reinterpret_cast<cudaStream_t>(handle);
}

// Calls fn(T{}) with T the C++ type of `dtype`.
template <typename Fn>
void dispatch(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float32: return fn(float{});
    case DType::Float64: return fn(double{});
    case DType::Float16: return fn(__half{});
    case DType::BFloat16: return fn(__nv_bfloat16{});
  }
  throw std::invalid_argument(std::string("unsupported dtype ") + dtype_name(dtype));
}

}  // namespace pyfundus::cuda
