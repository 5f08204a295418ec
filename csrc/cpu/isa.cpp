#include "isa.h"

#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <c10/util/Exception.h>

namespace myq {
namespace {

// AMX (tiles, int8 and bf16) in the CPU, and the kernel's permission to use the tile data (Linux asks each
// process to request it; torch / oneDNN may already have done so).
bool amx_int8_usable() {
#if defined(__x86_64__) && defined(__linux__)
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool bf16 = (d >> 22) & 1, tile = (d >> 24) & 1, int8 = (d >> 25) & 1;
  if (!tile || !int8 || !bf16) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

Isa best_supported() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni"))
    return amx_int8_usable() ? Isa::Avx512Amx : Isa::Avx512Vnni;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return Isa::Avx2;
#endif
  return Isa::Scalar;
}

Isa select() {
  Isa best = best_supported();
  const char* env = std::getenv("MYQ_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  std::string want(env);
  Isa forced;
  if (want == "avx512_amx") forced = Isa::Avx512Amx;
  else if (want == "avx512_vnni") forced = Isa::Avx512Vnni;
  else if (want == "avx2") forced = Isa::Avx2;
  else if (want == "scalar") forced = Isa::Scalar;
  else {
    TORCH_WARN("myq: ignoring MYQ_CPU_ISA='", want,
               "': must be one of avx512_amx, avx512_vnni, avx2, scalar");
    return best;
  }
  // Never pick a path the CPU cannot run.
  return static_cast<int>(forced) < static_cast<int>(best) ? forced : best;
}

}  // namespace

Isa cpu_isa() {
  static const Isa isa = select();
  return isa;
}

bool cpu_has_bf16_gemm() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512Amx: return "avx512_amx";
    case Isa::Avx512Vnni: return "avx512_vnni";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace myq
