// Argument checks shared by the CPU and CUDA modules. A failed check throws
// std::invalid_argument, which pybind11 turns into a Python ValueError.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace pyfundus {

// The message is an expression evaluated only when the check fails: building
// every message on every call (std::to_string, concatenations) cost 0.65 us, a
// quarter of a SoftPool call at FTHNet's last stage.
#define PYFUNDUS_CHECK(ok, message)                                \
  do {                                                             \
    if (!(ok)) throw std::invalid_argument(message);               \
  } while (false)

// Pointers arrive from Python as integers (tensor.data_ptr()).
inline void check_pointer(std::uintptr_t address, const char* name) {
  PYFUNDUS_CHECK(address != 0, std::string(name) + " is a null pointer");
}

}  // namespace pyfundus
