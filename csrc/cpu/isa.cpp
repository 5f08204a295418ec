#include "isa.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include <c10/util/Exception.h>

namespace myq {
namespace {

Isa best_supported() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni"))
    return Isa::Avx512Vnni;
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
  if (want == "avx512_vnni") forced = Isa::Avx512Vnni;
  else if (want == "avx2") forced = Isa::Avx2;
  else if (want == "scalar") forced = Isa::Scalar;
  else
    TORCH_CHECK(false, "MYQ_CPU_ISA must be one of avx512_vnni, avx2, scalar; got '", want, "'");
  // Never pick a path the CPU cannot run.
  return static_cast<int>(forced) < static_cast<int>(best) ? forced : best;
}

}  // namespace

Isa cpu_isa() {
  static const Isa isa = select();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512Vnni: return "avx512_vnni";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace myq
