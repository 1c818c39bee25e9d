// Argument checks shared by the CPU and CUDA modules. A failed check throws
// std::invalid_argument, which pybind11 turns into a Python ValueError.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace pyfundus {

inline void check_arg(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

// Pointers arrive from Python as integers (tensor.data_ptr()).
inline void check_pointer(std::uintptr_t address, const char* name) {
  check_arg(address != 0, std::string(name) + " is a null pointer");
}

}  // namespace pyfundus
