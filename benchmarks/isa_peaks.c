// Peak rate and latency of the three multiply-add instructions the CPU kernels are built on,
// on one core: the ceilings that benchmarks/RESULTS.md measures the kernels against.
//
//     gcc -O2 -mavx512f -mavx512bf16 -mavx512vnni benchmarks/isa_peaks.c -o /tmp/isa_peaks
//     /tmp/isa_peaks
//
// Rate: 16 independent accumulators (zmm0-15), so only the issue rate limits the loop.
// Latency: one dependent chain. Multiply-adds per instruction: vfmadd231ps 16 (float32),
// vdpbf16ps 32 (bfloat16 pairs), vpdpbusd 64 (u8 x s8 quads). In asm, so that the compiler
// can neither keep the accumulators in memory nor drop the loop.
#include <stdio.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

#define ONE(I, R) I " %%zmm16, %%zmm17, %%zmm" R "\n"
#define SIXTEEN(I)                                                                        \
  ONE(I, "0") ONE(I, "1") ONE(I, "2") ONE(I, "3") ONE(I, "4") ONE(I, "5") ONE(I, "6")     \
  ONE(I, "7") ONE(I, "8") ONE(I, "9") ONE(I, "10") ONE(I, "11") ONE(I, "12") ONE(I, "13") \
  ONE(I, "14") ONE(I, "15")
#define CLOBBERS                                                                       \
  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", \
      "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"

// The operands, zeroed in every block (zero idioms, no execution slot): no denormals.
#define ZERO "vpxord %%zmm16, %%zmm16, %%zmm16\n vpxord %%zmm17, %%zmm17, %%zmm17\n"
#define ZREGS "xmm16", "xmm17"

#define MEASURE(NAME, I, MACS)                                                            \
  do {                                                                                    \
    const long n = 50000000;                                                              \
    double t = now();                                                                     \
    for (long it = 0; it < n; ++it) asm volatile(ZERO SIXTEEN(I) ::: CLOBBERS, ZREGS);    \
    const double rate = 16.0 * n / (now() - t) * 1e-9;                                    \
    t = now();                                                                            \
    for (long it = 0; it < n; ++it) asm volatile(ZERO ONE(I, "0") ONE(I, "0") ::: "xmm0", ZREGS); \
    const double latency = (now() - t) / (2.0 * n) * 1e9;                                 \
    printf("%-12s %5.2f per ns  %6.1f G multiply-adds/s  latency %.2f ns\n", NAME, rate, \
           rate * (MACS), latency);                                                       \
  } while (0)

int main(void) {
  printf("one core, zmm:\n");
  MEASURE("vfmadd231ps", "vfmadd231ps", 16);
  MEASURE("vdpbf16ps", "vdpbf16ps", 32);
  MEASURE("vpdpbusd", "vpdpbusd", 64);
  return 0;
}
