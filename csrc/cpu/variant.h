// The instruction-set variants the CPU kernels are compiled in, and their names.
#pragma once

namespace pyfundus::cpu {

// x86-64 builds with GCC carry all three and pick one at run time; other
// builds have only Baseline, the compiler's default target.
enum class CpuVariant { Baseline, Avx2, Avx512 };

inline const char* variant_name(CpuVariant variant) {
  switch (variant) {
    case CpuVariant::Avx512:
      return "avx512";
    case CpuVariant::Avx2:
      return "avx2";
    default:
      return "baseline";
  }
}

}  // namespace pyfundus::cpu
