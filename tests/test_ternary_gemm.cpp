// The fast ternary GEMM (backend/cpu/ternary_gemm.hpp) against the reference kernel on random
// shapes: odd sizes, tails shorter than a 128-trit block, every scale granularity, and
// activations at the int8 extremes (the int16 partial sums must not overflow).
#include <array>
#include <catch2/catch.hpp>
#include <cstdint>
#include <vector>

#include "ternary/backend/cpu/ternary_gemm.hpp"
#include "ternary/core/random.hpp"
#include "ternary/quant/packing.hpp"

using namespace ternary;

namespace {

struct Problem {
  int64_t rows, K, N, group;
  std::vector<int8_t> act;
  std::vector<float> ascale, wscale;
  std::vector<uint8_t> packed;
};

Problem make_problem(int64_t rows, int64_t K, int64_t N, int64_t group, Rng& rng,
                     bool extreme = false) {
  Problem p{rows, K, N, group, {}, {}, {}, {}};
  p.act.resize(rows * K);
  for (auto& a : p.act) {
    const uint64_t u = rng.next_u64();
    a = extreme ? int8_t((u & 1) ? 127 : -128) : int8_t(int(u % 256) - 128);
  }
  p.ascale.resize(rows);
  for (auto& s : p.ascale) s = 0.5f + float(rng.next_u64() % 1000) / 100.0f;
  std::vector<int8_t> trits(N * K);
  for (auto& t : trits)
    t = extreme ? int8_t(rng.next_u64() & 1 ? 1 : -1) : int8_t(int(rng.next_u64() % 3) - 1);
  p.packed = pack_trits_2bit(trits);
  p.wscale.resize(N * K / group);
  for (auto& s : p.wscale) s = 0.01f + float(rng.next_u64() % 1000) / 1000.0f;
  return p;
}

std::vector<float> run_reference(const Problem& p) {
  std::vector<float> out(p.rows * p.N);
  backend::ternary_gemm_reference(cpu{}, p.act.data(), p.ascale.data(), p.rows, p.K,
                                  p.packed.data(), p.wscale.data(), p.group, p.N, out.data());
  return out;
}

std::vector<float> run_dispatch(const Problem& p) {
  std::vector<float> out(p.rows * p.N, -12345.f);
  backend::ternary_gemm(cpu{}, p.act.data(), p.ascale.data(), p.rows, p.K, p.packed.data(),
                        p.wscale.data(), p.group, p.N, out.data());
  return out;
}

void check_same(const Problem& p) {
  INFO("rows " << p.rows << ", K " << p.K << ", N " << p.N << ", group " << p.group);
  const auto ref = run_reference(p), got = run_dispatch(p);
  REQUIRE(ref.size() == got.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    INFO("element " << i);
    REQUIRE(got[i] == Approx(ref[i]).epsilon(1e-6).margin(1e-5));
  }
}

}  // namespace

TEST_CASE("ternary_gemm: fast path applies to the shapes it should", "[ternary_gemm]") {
  using backend::cpu_detail::ternary_fast_ok;
  CHECK(ternary_fast_ok(4096, 4096 * 4096));  // per tensor
  CHECK(ternary_fast_ok(256, 256));           // per row
  CHECK(ternary_fast_ok(512, 128));           // groups of 128
  CHECK(ternary_fast_ok(132, 132));           // a row with a 4-trit tail
  CHECK_FALSE(ternary_fast_ok(130, 130));     // rows not byte-aligned
  CHECK_FALSE(ternary_fast_ok(256, 64));      // a group splits a 128-trit block
#if defined(__AVX2__)
  CHECK(backend::cpu_detail::kTernaryAvx2);
#endif
}

TEST_CASE("ternary_gemm: fast kernel equals the reference on random shapes", "[ternary_gemm]") {
  Rng rng(7);
  // (rows, K, N, group): per tensor, per row, per group; GEMV and GEMM; odd N and rows;
  // K with and without a tail; shapes the fast path refuses (they must still be right).
  const std::vector<std::array<int64_t, 4>> shapes = {
      {1, 128, 1, 128},    {1, 256, 7, 256 * 7},     {3, 384, 5, 384},
      {5, 512, 9, 128},    {4, 132, 3, 132},         {7, 260, 11, 260 * 11},
      {1, 4, 1, 4},        {2, 12, 3, 36},           {6, 640, 13, 128},
      {9, 1024, 17, 1024}, {1, 130, 3, 130},         {2, 250, 5, 1250},
      {3, 256, 4, 64},     {1, 4096, 33, 4096 * 33}, {16, 256, 768, 256 * 768}};
  for (auto [rows, K, N, group] : shapes) check_same(make_problem(rows, K, N, group, rng));
  for (int i = 0; i < 20; ++i) {  // random sizes: K a multiple of 4 plus anything
    const int64_t rows = 1 + rng.next_u64() % 9, N = 1 + rng.next_u64() % 40;
    const int64_t K =
        4 * (1 + rng.next_u64() % 300) + (i % 4 == 3 ? int64_t(rng.next_u64() % 4) : 0);
    check_same(make_problem(rows, K, N, i % 2 ? K : K * N, rng));
  }
}

TEST_CASE("ternary_gemm: int8 extremes do not overflow the int16 partial sums", "[ternary_gemm]") {
  Rng rng(11);
  for (int64_t K : {128, 512, 4096}) {
    auto p = make_problem(5, K, 6, K, rng, /*extreme=*/true);
    check_same(p);
    // All activations -128 against all trits +1: every dot is exactly -128 K.
    std::fill(p.act.begin(), p.act.end(), int8_t(-128));
    std::vector<int8_t> ones(p.N * K, 1);
    p.packed = pack_trits_2bit(ones);
    std::fill(p.wscale.begin(), p.wscale.end(), 1.0f);
    std::fill(p.ascale.begin(), p.ascale.end(), 1.0f);
    for (float v : run_dispatch(p)) REQUIRE(v == float(-128 * K));
  }
}
