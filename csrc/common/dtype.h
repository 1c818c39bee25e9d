// Element types the kernels understand, identified by small integer codes.
//
// Python passes a code instead of a torch dtype (the extension never sees
// torch). Both modules export the table as DTYPE_CODES so Python reads the
// codes from the compiled module rather than keeping a second copy.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

namespace pyfundus {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// (name, dtype) pairs, the name spelled as torch spells it without "torch.".
inline constexpr std::pair<const char*, DType> kDTypeNames[] = {
    {"float32", DType::Float32},
    {"float64", DType::Float64},
    {"float16", DType::Float16},
    {"bfloat16", DType::BFloat16},
};

inline const char* dtype_name(DType dtype) {
  for (const auto& [name, value] : kDTypeNames) {
    if (value == dtype) return name;
  }
  return "unknown";
}

// Validates a code received from Python.
inline DType dtype_from_code(int code) {
  for (const auto& entry : kDTypeNames) {
    if (static_cast<int>(entry.second) == code) return entry.second;
  }
  throw std::invalid_argument("unknown dtype code " + std::to_string(code) +
                              " (expected one of DTYPE_CODES)");
}

}  // namespace pyfundus
