// Two builds of the CPU GEMV kernels in one process, called in turns.
//
// On a shared VM the speed of memory and cores drifts by tens of percent from one second to
// the next, so a kernel timed in one process and its rival in the next can swap places
// between runs. Here both builds are linked into one program (kernel_ab.sh compiles each one's
// csrc/cpu with -Dmyq=myq_v0 / -Dmyq=myq_v1) and called alternately, so drift falls on both.
// Each call reads its own weight copy, cycling through >= 256 MB unless `copies` is given
// (copies = 1: hot weights), and is split over 2 threads by columns as the binding does;
// the thread start is inside the timing, the same for both builds.
//
//   kernel_ab int8|int4 N K M [copies [calls [avx2|avx512]]]   (the ISA path: default avx2)
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <vector>

// The kernel entry points of csrc/cpu/kernels.h, once per build.
#define DECLARE_BUILD(ns)                                                                      \
  namespace ns {                                                                               \
  enum class Isa { Scalar = 0, Avx2 = 1, Avx512Vnni = 2, Avx512Amx = 3 };                      \
  void int8_gemv(Isa, const float*, int64_t, int64_t, const int8_t*, const float*,             \
                 const float*, float*, int64_t, int64_t, int64_t);                             \
  void int4_prepare_x(const float*, int64_t, int64_t, int64_t, float*, float*);                \
  void int4_gemv(Isa, const float*, const float*, const float*, int64_t, int64_t,              \
                 const uint8_t*, const float*, const float*, int64_t, const float*, float*,    \
                 int64_t, int64_t, int64_t);                                                   \
  }
DECLARE_BUILD(myq_v0)
DECLARE_BUILD(myq_v1)

namespace {

constexpr int64_t kGroup = 128;
constexpr int64_t kColumnBlock = 24;  // the kernels' column block: each thread gets whole ones

// calls[v](copy, n0, n1) runs build v on columns [n0, n1) of weight copy `copy`.
using Call = std::function<void(int64_t, int64_t, int64_t)>;

double median_us(std::vector<double> t) {
  std::sort(t.begin(), t.end());
  return t[t.size() / 2] * 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5 || (std::strcmp(argv[1], "int8") != 0 && std::strcmp(argv[1], "int4") != 0)) {
    std::fprintf(stderr, "usage: kernel_ab int8|int4 N K M [copies [calls [avx2|avx512]]]\n");
    return 2;
  }
  const bool int4 = std::strcmp(argv[1], "int4") == 0;
  const int64_t N = std::atoll(argv[2]), K = std::atoll(argv[3]), M = std::atoll(argv[4]);
  if (N <= 0 || K <= 0 || M <= 0 || (int4 && K % kGroup != 0)) {
    std::fprintf(stderr, "N, K, M must be positive (int4: K a multiple of %ld)\n", long(kGroup));
    return 2;
  }
  const int64_t G = K / kGroup;
  const int64_t copy_bytes = int4 ? N * K / 2 + 2 * N * G * 4 : N * K;
  const int64_t copies = argc > 5 ? std::atoll(argv[5]) : std::max<int64_t>(2, (256 << 20) / copy_bytes);
  const int calls = argc > 6 ? std::atoi(argv[6]) : 2000;
  const bool avx512 = argc > 7 && std::strcmp(argv[7], "avx512") == 0;
  if (copies <= 0 || calls < 2 || (argc > 7 && !avx512 && std::strcmp(argv[7], "avx2") != 0)) {
    std::fprintf(stderr, "copies >= 1, calls >= 2, ISA avx2 or avx512\n");
    return 2;
  }

  std::mt19937 rng(0);
  std::vector<float> x(M * K), xp(M * K), xsum(M * G), y(M * N);
  for (auto& v : x) v = static_cast<float>(rng() % 2001) * 1e-3f - 1.f;
  std::vector<int8_t> w8;
  std::vector<uint8_t> packed;
  std::vector<float> scales, zeros;
  if (int4) {
    packed.resize(copies * N * K / 2);
    scales.resize(copies * N * G);
    zeros.resize(copies * N * G);
    for (auto& v : packed) v = static_cast<uint8_t>(rng());
    for (auto& v : scales) v = static_cast<float>(rng() % 100 + 1) * 1e-3f;
    for (auto& v : zeros) v = static_cast<float>(rng() % 16);
    // Both builds read v0's form of x: the outputs are not compared, only the times.
    myq_v0::int4_prepare_x(x.data(), M, K, kGroup, xp.data(), xsum.data());
  } else {
    w8.resize(copies * N * K);
    scales.resize(N);
    for (auto& v : w8) v = static_cast<int8_t>(rng());
    for (auto& v : scales) v = static_cast<float>(rng() % 100 + 1) * 1e-3f;
  }

  auto build = [&](auto int8_gemv, auto int4_gemv, auto isa) -> Call {
    if (int4)
      return [&, int4_gemv, isa](int64_t c, int64_t n0, int64_t n1) {
        int4_gemv(isa, x.data(), xp.data(), xsum.data(), M, K, packed.data() + c * N * K / 2,
                  scales.data() + c * N * G, zeros.data() + c * N * G, kGroup, nullptr, y.data(),
                  N, n0, n1);
      };
    return [&, int8_gemv, isa](int64_t c, int64_t n0, int64_t n1) {
      int8_gemv(isa, x.data(), M, K, w8.data() + c * N * K, scales.data(), nullptr, y.data(), N,
                n0, n1);
    };
  };
  const Call builds[2] = {
      build(myq_v0::int8_gemv, myq_v0::int4_gemv, avx512 ? myq_v0::Isa::Avx512Vnni : myq_v0::Isa::Avx2),
      build(myq_v1::int8_gemv, myq_v1::int4_gemv, avx512 ? myq_v1::Isa::Avx512Vnni : myq_v1::Isa::Avx2)};

  const int64_t half = std::min(N, (N / 2 + kColumnBlock - 1) / kColumnBlock * kColumnBlock);
  std::vector<double> times[2];
  for (int i = 0; i < calls; ++i) {
    const int v = i % 2;
    const int64_t c = i % copies;
    const auto t0 = std::chrono::steady_clock::now();
    std::thread second([&] { if (half < N) builds[v](c, half, N); });
    builds[v](c, 0, half);
    second.join();
    times[v].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const double us0 = median_us(times[0]), us1 = median_us(times[1]);
  std::printf("%s %ldx%ld M=%ld, %ld copies, %d calls each: v0 %.0f us, v1 %.0f us, v0/v1 %.2fx\n",
              argv[1], long(N), long(K), long(M), long(copies), calls / 2, us0, us1, us0 / us1);
}
