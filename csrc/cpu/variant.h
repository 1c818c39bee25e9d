// The instruction-set variants the CPU kernels are compiled in, and their names.
#pragma once

namespace pyfundus::cpu {

// x86-64 builds with GCC carry all three and pick one at run time; other
// builds have only Baseline, the compiler's default target.
enum class CpuVariant { Baseline, Avx2, Avx512 };

// The widest variant this CPU runs, where the build carries variants
// (x86-64 with GCC); Baseline elsewhere.
inline CpuVariant widest_supported_variant() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (__builtin_cpu_supports("x86-64-v4")) return CpuVariant::Avx512;
  if (__builtin_cpu_supports("x86-64-v3")) return CpuVariant::Avx2;
#endif
  return CpuVariant::Baseline;
}

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
