// Run-time ISA selection for the CPU kernels.
//
// The AVX-512 and AVX2 code is compiled per function with target attributes (no global
// -mavx* flags), and one of the paths below is chosen once, at the first call, from
// __builtin_cpu_supports. MYQ_CPU_ISA=avx512_amx|avx512_vnni|avx2|scalar forces a path (a path the
// CPU cannot run is lowered to the best one it can), so tests can cover every path on
// one machine. avx512_amx is avx512_vnni plus Intel AMX tiles (AMX-INT8 and AMX-BF16),
// used by the W8A8 product and by W8A16 / W4A16 with bfloat16 activations beyond a few
// rows; every other kernel runs its avx512_vnni code there.
#pragma once

namespace myq {

enum class Isa { Scalar = 0, Avx2 = 1, Avx512Vnni = 2, Avx512Amx = 3 };

// The vector code path of the kernels: avx512_amx runs the avx512_vnni kernels.
inline Isa vector_isa(Isa isa) { return isa == Isa::Avx512Amx ? Isa::Avx512Vnni : isa; }

// The path every kernel takes in this process (computed once, thread-safe).
Isa cpu_isa();
const char* isa_name(Isa isa);
// Whether the CPU has AVX512-BF16 (every AMX-BF16 CPU has it too), whatever MYQ_CPU_ISA says:
// torch's bfloat16 matrix product then runs on bfloat16 hardware, which chooses between
// bfloat16 and float32 tiles for at::mm; with isa avx512_vnni it also enables our own
// bfloat16 dot-product kernel (bf16_linear.cpp).
bool cpu_has_bf16_gemm();

}  // namespace myq

// Function attributes for the vector paths. Helpers called from such a function must
// carry the same attribute (GCC refuses to inline across target mismatches).
#define MYQ_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi,bmi2")))
// AVX512-BF16 (vdpbf16ps): Intel Cooper Lake and later, AMD Zen 4 and later.
#define MYQ_TARGET_AVX512_BF16                                                            \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,avx2,fma,f16c," \
                        "bmi,bmi2")))
#define MYQ_TARGET_AMX                                                                    \
  __attribute__((target("amx-tile,amx-int8,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni," \
                        "avx2,fma,f16c,bmi,bmi2")))
#define MYQ_TARGET_AVX2 __attribute__((target("avx2,fma,f16c,bmi,bmi2")))
