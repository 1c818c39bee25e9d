// pybind11 helpers shared by the _C and _C_cuda module definitions.
#pragma once

#include <pybind11/pybind11.h>

#include "common/dtype.h"

namespace pyfundus {

// Exposes the dtype codes as DTYPE_CODES = {"float32": 0, ...}.
inline void add_dtype_codes(pybind11::module_& m) {
  pybind11::dict codes;
  for (const auto& [name, dtype] : kDTypeNames) codes[name] = static_cast<int>(dtype);
  m.attr("DTYPE_CODES") = codes;
}

}  // namespace pyfundus
