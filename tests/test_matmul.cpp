// matmul and linear: values against a naive triple loop, batching, broadcasting,
// transposed operands (read in place), and gradients.
#include <catch2/catch.hpp>

#include <omp.h>

#include <array>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "ternary/ternary.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

namespace {
// bf16 values widened back to float, exactly (the bf16 paths' reference rules).
Tensor<float> widen_bf16(const Tensor<ternary::bf16>& t) {
  auto out = Tensor<float>::empty(t.shape());
  for (int64_t i = 0; i < t.numel(); ++i) out.data()[i] = float(t.data()[i]);
  return out;
}
// t rounded to bf16 and widened back: the value a bf16 operand holds.
Tensor<float> round_bf16(const Tensor<float>& t) {
  return widen_bf16(backend::to_bf16(cpu{}, t));
}
Tensor<double> naive_matmul(const Tensor<double>& a, const Tensor<double>& b) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  auto c = Tensor<double>::zeros({M, N});
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j)
      for (int64_t k = 0; k < K; ++k) c(i, j) += a(i, k) * b(k, j);
  return c;
}
void require_gradcheck(const std::function<Var<double>(std::vector<Var<double>>&)>& f,
                       const std::vector<Tensor<double>>& in) {
  auto r = gradcheck(f, in);
  INFO(r.report);
  REQUIRE(r.ok);
}
}  // namespace

TEST_CASE("2-d matmul matches a naive loop for every operand layout", "[ops][matmul]") {
  Rng rng(7);
  for (auto [M, K, N] : {std::tuple{1, 1, 1}, {3, 5, 2}, {17, 33, 9}, {64, 64, 64}}) {
    auto a = Tensor<double>::randn({M, K}, rng);
    auto b = Tensor<double>::randn({K, N}, rng);
    auto ref = naive_matmul(a, b);
    CHECK(max_abs_diff(matmul(a, b), ref) < 1e-10);
    auto at = a.t().contiguous().t();  // column-major a
    auto bt = b.t().contiguous().t();
    CHECK(max_abs_diff(matmul(at, bt), ref) < 1e-10);
    auto a_strided =
        Tensor<double>::randn({M, 2 * K}, rng).slice(1, 0, 2 * K, 2);  // neither layout
    a_strided.assign(a);
    CHECK(max_abs_diff(matmul(a_strided, b), ref) < 1e-10);
  }
}

TEST_CASE("batched matmul broadcasts batch axes", "[ops][matmul]") {
  Rng rng(8);
  auto a = Tensor<double>::randn({2, 3, 4, 5}, rng);
  auto b = Tensor<double>::randn({3, 5, 6}, rng);
  auto c = matmul(a, b);
  REQUIRE(c.shape() == Shape{2, 3, 4, 6});
  CHECK(max_abs_diff(c.select(0, 1).select(0, 2),
                     naive_matmul(a.select(0, 1).select(0, 2), b.select(0, 2))) < 1e-10);
  auto w = Tensor<double>::randn({5, 7}, rng);
  auto folded = matmul(a, w);  // [..., K] x [K, N]: folded into one GEMM
  CHECK(max_abs_diff(folded.select(0, 0).select(0, 1),
                     naive_matmul(a.select(0, 0).select(0, 1), w)) < 1e-10);
  CHECK_THROWS_WITH(matmul(a, w.t()), Contains("matmul") && Contains("[7, 5]"));
  CHECK_THROWS_AS(matmul(Tensor<double>::zeros({3}), w), ShapeError);
}

TEST_CASE("matmul and linear gradients", "[ops][matmul]") {
  Rng rng(9);
  require_gradcheck([](auto& v) { return matmul(v[0], v[1]); },
                    {Tensor<double>::randn({3, 4}, rng), Tensor<double>::randn({4, 2}, rng)});
  require_gradcheck([](auto& v) { return matmul(v[0], v[1]); },
                    {Tensor<double>::randn({2, 3, 4}, rng), Tensor<double>::randn({4, 5}, rng)});
  require_gradcheck(
      [](auto& v) { return matmul(v[0], v[1]); },
      {Tensor<double>::randn({2, 1, 3, 4}, rng), Tensor<double>::randn({3, 4, 2}, rng)});
  require_gradcheck(
      [](auto& v) { return matmul(v[0], v[1]); },
      {Tensor<double>::randn({4, 3}, rng).t(), Tensor<double>::randn({2, 4}, rng).t()});
  require_gradcheck([](auto& v) { return linear(v[0], v[1]); },
                    {Tensor<double>::randn({2, 3, 4}, rng), Tensor<double>::randn({5, 4}, rng)});
  auto x = Var<double>::constant(Tensor<double>::zeros({2, 3}));
  auto w = Var<double>::constant(Tensor<double>::zeros({4, 5}));
  CHECK_THROWS_WITH(linear(x, w), Contains("linear") && Contains("[4, 5]"));
}

// ---- the packed GEMM kernel (backend/cpu/gemm_kernel.hpp) -------------------------------------
namespace {
// A rows x cols matrix in its own storage, laid out as asked, with its values kept in double.
// layout 0: row-major (padded rows), 1: column-major (a transposed view), 2: neither (strides
// 2 and 2 cols + 1), 3: row-major with a gap of 3 elements between columns.
template <class T>
struct TestMat {
  std::vector<T> buf;
  backend::MatView<T> v;
  TestMat(int64_t rows, int64_t cols, int layout) {
    int64_t rs = 1, cs = 1, size = 0;
    if (layout == 0) rs = cols + 3, size = rows * rs;
    if (layout == 1) cs = rows + 2, size = cols * cs;
    if (layout == 2) cs = 2, rs = 2 * cols + 1, size = rows * rs;
    if (layout == 3) cs = 3, rs = 3 * cols, size = rows * rs;
    buf.assign(size_t(std::max<int64_t>(size, 1)), T(0));
    v = {buf.data(), rows, cols, rs, cs};
  }
  T& at(int64_t i, int64_t j) { return v.data[i * v.row_stride + j * v.col_stride]; }
  backend::MatView<const T> cview() const {
    return {v.data, v.rows, v.cols, v.row_stride, v.col_stride};
  }
};

// C = alpha A B + beta C through gemm_packed against a double loop; C starts as NaN when
// beta == 0. Error bound per element: rel * sqrt(K) * (|alpha| sum_k |a b| + |beta c|).
template <class T>
void check_packed_gemm(int64_t M, int64_t N, int64_t K, int la, int lb, int lc, double alpha,
                       double beta, Rng& rng, double rel) {
  TestMat<T> a(M, K, la), b(K, N, lb), c(M, N, lc);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < K; ++k) a.at(i, k) = T(rng.uniform(-1, 1));
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = 0; j < N; ++j) b.at(k, j) = T(rng.uniform(-1, 1));
  std::vector<double> c0(size_t(M * N));
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      c.at(i, j) = beta == 0 ? std::numeric_limits<T>::quiet_NaN() : T(rng.uniform(-1, 1));
      c0[i * N + j] = c.at(i, j);
    }
  backend::gemm_packed(cpu{}, a.cview(), b.cview(), c.v, T(alpha), T(beta));
  int64_t bad = 0;
  double worst = 0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        ref += double(a.at(i, k)) * double(b.at(k, j));
        mag += std::abs(double(a.at(i, k)) * double(b.at(k, j)));
      }
      ref *= alpha, mag *= std::abs(alpha);
      if (beta != 0) ref += beta * c0[i * N + j], mag += std::abs(beta * c0[i * N + j]);
      const double err = std::abs(double(c.at(i, j)) - ref);
      const double tol = rel * std::sqrt(double(std::max<int64_t>(K, 1))) * mag + 1e-30;
      if (!(err <= tol)) ++bad;  // NaN fails too
      if (err / (mag + 1e-30) > worst || err != err) worst = err / (mag + 1e-30);
    }
  INFO("M " << M << " N " << N << " K " << K << " layouts a " << la << " b " << lb << " c " << lc
            << " alpha " << alpha << " beta " << beta << " threads " << omp_get_max_threads()
            << " worst relative error " << worst);
  CHECK(bad == 0);
}
}  // namespace

// build-asan runs this file at -O0 under AddressSanitizer, where the reference loops below take
// minutes (362 s for the edge test). There each layout around the cache blocks gets one
// (alpha, beta) pair, the block-sized products run on 2 threads only, and the products large
// enough to be split over threads in one layout each; every tile and block edge still runs.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

TEST_CASE("packed gemm matches a double loop at tile and block edges", "[gemm]") {
  Rng rng(11);
  const int saved = omp_get_max_threads();
  const std::vector<int64_t> edges{1, 5, 6, 7, 15, 16, 17, 63};
  const std::vector<std::tuple<double, double>> scales{{1, 0}, {0.5, 2}, {1, 1}};
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    // Every combination of the small sizes, every layout pair; alpha/beta cycled.
    int n = 0;
    for (int64_t M : edges)
      for (int64_t N : edges)
        for (int64_t K : edges)
          for (int la : {0, 1})
            for (int lb : {0, 1}) {
              auto [alpha, beta] = scales[size_t(n++) % scales.size()];
              check_packed_gemm<float>(M, N, K, la, lb, 0, alpha, beta, rng, 1e-6);
            }
    if (kSanitized && threads == 1) continue;
    // Around the cache blocks (KC 512, MC 96, NC 4096 for float), all layouts of A, B and C.
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{257, 300, 257},
                           {300, 17, 513},
                           {97, 257, 300},
                           {193, 31, 1025},
                           {1, 300, 257},
                           {300, 1, 256},
                           {63, 15, 1},
                           {7, 4099, 5}})
      for (int la : {0, 1, 2})
        for (int lb : {0, 1, 2})
          for (int lc : {0, 1, 2, 3})
            for (size_t si = 0; si < scales.size(); ++si) {
              if (!((la + lb + lc) % 3 == 0 || (la == 0 && lb == 0))) continue;  // a third
              if (kSanitized && si != size_t(la + lb + lc) % scales.size()) continue;
              auto [alpha, beta] = scales[si];
              check_packed_gemm<float>(M, N, K, la, lb, lc, alpha, beta, rng, 1e-6);
            }
    // Large enough (>= 2^26 multiply-adds) to be split across threads: by rows and by columns.
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1030, 130, 520}, {130, 1030, 520}})
      for (int lc : {0, 1, 2})
        if (!kSanitized || lc == 0)
          check_packed_gemm<float>(M, N, K, lc == 1 ? 1 : 0, lc == 2 ? 1 : 0, lc, 0.5,
                                   lc == 0 ? 0 : 2, rng, 1e-6);
  }
  omp_set_num_threads(saved);
}

TEST_CASE("packed gemm in double, empty sums, and calls from inside a parallel region", "[gemm]") {
  Rng rng(12);
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {7, 9, 300}, {65, 33, 17}})
    for (int la : {0, 1, 2})
      for (int lb : {0, 1, 2}) check_packed_gemm<double>(M, N, K, la, lb, la, 1.5, 0, rng, 1e-14);
  // K = 0: C = beta C, and beta == 0 clears NaN.
  for (double beta : {0.0, 2.0}) check_packed_gemm<float>(6, 17, 0, 0, 0, 2, 1, beta, rng, 1e-6);
  check_packed_gemm<float>(0, 5, 3, 0, 0, 0, 1, 0, rng, 1e-6);
  // Each thread runs its own product on its own pack buffer.
  std::vector<int64_t> failures(8, 0);
#pragma omp parallel for num_threads(2) schedule(static, 1)
  for (int t = 0; t < 8; ++t) {
    const int64_t M = 40 + 13 * t, N = 50 + 7 * t, K = 200 + 31 * t;
    std::vector<float> a(size_t(M * K)), b(size_t(K * N)), c(size_t(M * N));
    for (size_t i = 0; i < a.size(); ++i) a[i] = float(int(i % 7) - 3);
    for (size_t i = 0; i < b.size(); ++i) b[i] = float(int(i % 5) - 2);
    backend::gemm_packed(cpu{}, backend::MatView<const float>{a.data(), M, K, K, 1},
                         backend::MatView<const float>{b.data(), K, N, 1, K},  // column-major
                         backend::MatView<float>{c.data(), M, N, N, 1}, 1.f, 0.f);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double ref = 0;  // small integers: exact in float
        for (int64_t k = 0; k < K; ++k) ref += double(a[size_t(i * K + k)]) * b[size_t(j * K + k)];
        if (c[size_t(i * N + j)] != ref) ++failures[size_t(t)];
      }
  }
  for (int t = 0; t < 8; ++t) CHECK(failures[size_t(t)] == 0);
  CHECK_THROWS_WITH(backend::gemm_packed(cpu{}, backend::MatView<const float>{nullptr, 2, 3, 3, 1},
                                         backend::MatView<const float>{nullptr, 4, 5, 5, 1},
                                         backend::MatView<float>{nullptr, 2, 5, 5, 1}, 1.f, 0.f),
                    Contains("gemm") && Contains("[2, 3] x [4, 5]"));
}

TEST_CASE("gemm (the packed kernel) and gemm_eigen agree", "[gemm]") {
  Rng rng(13);
  const int64_t M = 77, N = 45, K = 290;
  std::vector<float> a(size_t(M * K)), b(size_t(K * N)), c1(size_t(M * N)), c2(size_t(M * N));
  for (auto& x : a) x = float(rng.uniform(-1, 1));
  for (auto& x : b) x = float(rng.uniform(-1, 1));
  for (size_t i = 0; i < c1.size(); ++i) c1[i] = c2[i] = float(rng.uniform(-1, 1));
  backend::MatView<const float> av{a.data(), M, K, 1, M}, bv{b.data(), K, N, N, 1};
  backend::gemm(cpu{}, av, bv, backend::MatView<float>{c1.data(), M, N, N, 1}, 0.5f, 1.5f);
  backend::gemm_eigen(cpu{}, av, bv, backend::MatView<float>{c2.data(), M, N, N, 1}, 0.5f, 1.5f);
  float worst = 0;
  for (size_t i = 0; i < c1.size(); ++i) worst = std::max(worst, std::abs(c1[i] - c2[i]));
  CHECK(worst < 1e-4f);
}

// linear() with bf16 operands (detail::linear_bf16: the CUDA backend's path under
// cuda::set_bf16; on the CPU it runs only when called directly, as here): the products of the
// bf16-rounded operands, with fp32 sums, for the value and both gradients, also when the
// gradients are added into earlier ones (x used twice, w over two backward passes).
TEST_CASE("linear with bf16 operands multiplies the rounded operands", "[ops][matmul]") {
  Rng rng(21);
  const auto round = round_bf16;
  auto hx = Tensor<float>::randn({2, 5, 12}, rng), hw = Tensor<float>::randn({7, 12}, rng);
  auto hg = Tensor<float>::randn({2, 5, 7}, rng);
  // rounding really happens: the reference differs from the fp32 product
  CHECK(max_abs_diff(round(hx), hx) > 1e-4);
  auto x = Var<float>::parameter(hx), w = Var<float>::parameter(hw);
  auto y = detail::linear_bf16(x, w);
  const auto xr = round(hx), wr = round(hw), gr = round(hg);
  CHECK(max_abs_diff(y.value(), matmul(xr, wr.t())) < 1e-5);
  y.backward(hg);
  const auto g2 = gr.reshape({10, 7});
  CHECK(max_abs_diff(x.grad(), matmul(g2, wr).reshape({2, 5, 12})) < 1e-5);
  CHECK(max_abs_diff(w.grad(), matmul(g2.t(), xr.reshape({10, 12}))) < 1e-5);
  // x used twice (the GEMM adds into the residual's gradient), w over two backward passes
  auto hr = Tensor<float>::randn({2, 5, 12}, rng);
  auto x2 = Var<float>::parameter(hx), w2 = Var<float>::parameter(hw);
  for (int pass = 0; pass < 2; ++pass) {
    auto loss = sum(detail::linear_bf16(x2, w2) * Var<float>::constant(hg)) +
                sum(x2 * Var<float>::constant(hr));
    loss.backward();
  }
  CHECK(max_abs_diff(x2.grad(), Tensor<float>(2.0f * (matmul(g2, wr).reshape({2, 5, 12}) + hr))) <
        1e-4);
  CHECK(max_abs_diff(w2.grad(), Tensor<float>(2.0f * matmul(g2.t(), xr.reshape({10, 12})))) < 1e-4);
}

TEST_CASE("relu2_linear is linear(relu2(h), w); its bf16 path rounds relu(h)^2 once",
          "[ops][matmul]") {
  Rng rng(22);
  auto hh = Tensor<float>::randn({2, 5, 12}, rng), hw = Tensor<float>::randn({7, 12}, rng);
  auto hg = Tensor<float>::randn({2, 5, 7}, rng);
  // CPU: exactly the composition, values and gradients
  auto h1 = Var<float>::parameter(hh.clone()), w1 = Var<float>::parameter(hw.clone());
  auto h2 = Var<float>::parameter(hh.clone()), w2 = Var<float>::parameter(hw.clone());
  auto y1 = relu2_linear(h1, w1);
  CHECK(max_abs_diff(y1.value(), linear(relu2(h2), w2).value()) == 0.0);
  y1.backward(hg);
  linear(relu2(h2), w2).backward(hg);
  CHECK(max_abs_diff(h1.grad(), h2.grad()) == 0.0);
  CHECK(max_abs_diff(w1.grad(), w2.grad()) == 0.0);
  // gradcheck in double
  auto r = gradcheck([&](std::vector<Var<double>>& in) { return relu2_linear(in[0], in[1]); },
                     {Tensor<double>::randn({3, 4}, rng), Tensor<double>::randn({2, 4}, rng)});
  INFO(r.report);
  CHECK(r.ok);
  // The tensor-core path's rule on the CPU reference: bf16(relu(h)^2), bf16(w), bf16(g)
  const auto ar = widen_bf16(backend::relu2_to_bf16(cpu{}, hh)).reshape({10, 12});
  const auto wr = widen_bf16(backend::to_bf16(cpu{}, hw));
  const auto gr = widen_bf16(backend::to_bf16(cpu{}, hg));
  CHECK(max_abs_diff(ar, Tensor<float>(relu2(hh)).reshape({10, 12})) >
        1e-4);  // rounding really happens
  auto h3 = Var<float>::parameter(hh.clone()), w3 = Var<float>::parameter(hw.clone());
  auto y3 = detail::relu2_linear_bf16(h3, w3);
  CHECK(max_abs_diff(y3.value().reshape({10, 7}), matmul(ar, wr.t())) < 1e-5);
  y3.backward(hg);
  const auto g2 = gr.reshape({10, 7});
  const auto dh = Tensor<float>(matmul(g2, wr).reshape({2, 5, 12}) * 2.0f * relu(hh));
  CHECK(max_abs_diff(h3.grad(), dh) < 1e-5);
  CHECK(max_abs_diff(w3.grad(), matmul(g2.t(), ar)) < 1e-5);
  CHECK_THROWS_WITH(relu2_linear(h1, Var<float>::parameter(Tensor<float>::zeros({7, 11}))),
                    Catch::Contains("[7, 11]"));
}

TEST_CASE("residual_linear is channel_mix(x, b, linear(a, w)); its bf16 rule", "[ops][matmul]") {
  Rng rng(23);
  auto ha = Tensor<float>::randn({2, 5, 12}, rng), hw = Tensor<float>::randn({7, 12}, rng);
  auto hx = Tensor<float>::randn({2, 5, 7}, rng), hb = Tensor<float>::randn({7}, rng, 1, 0.5);
  auto hg = Tensor<float>::randn({2, 5, 7}, rng);
  // CPU: exactly the composition, for both forms
  for (bool square : {false, true}) {
    INFO((square ? "relu2" : "plain"));
    auto a1 = Var<float>::parameter(ha.clone()), w1 = Var<float>::parameter(hw.clone());
    auto x1 = Var<float>::parameter(hx.clone()), b1 = Var<float>::parameter(hb.clone());
    auto a2 = Var<float>::parameter(ha.clone()), w2 = Var<float>::parameter(hw.clone());
    auto x2 = Var<float>::parameter(hx.clone()), b2 = Var<float>::parameter(hb.clone());
    const Residual<float, cpu> r1{x1, b1};
    auto y1 = square ? residual_relu2_linear(r1, a1, w1) : residual_linear(r1, a1, w1);
    y1.backward(hg);  // one graph at a time: backward frees the tape
    auto y2 = channel_mix(x2, b2, square ? linear(relu2(a2), w2) : linear(a2, w2));
    CHECK(max_abs_diff(y1.value(), y2.value()) == 0.0);
    y2.backward(hg);
    CHECK(max_abs_diff(a1.grad(), a2.grad()) == 0.0);
    CHECK(max_abs_diff(w1.grad(), w2.grad()) == 0.0);
    CHECK(max_abs_diff(x1.grad(), x2.grad()) == 0.0);
    CHECK(max_abs_diff(b1.grad(), b2.grad()) == 0.0);
  }
  auto r = gradcheck(
      [&](std::vector<Var<double>>& in) {
        return residual_linear(Residual<double, cpu>{in[0], in[1]}, in[2], in[3]);
      },
      {Tensor<double>::randn({3, 2}, rng), Tensor<double>::randn({2}, rng),
       Tensor<double>::randn({3, 4}, rng), Tensor<double>::randn({2, 4}, rng)});
  INFO(r.report);
  CHECK(r.ok);
  // The tensor-core path's rule on the CPU reference backend (see ops/residual_linear.hpp)
  const auto round = round_bf16;
  auto a = Var<float>::parameter(ha.clone()), w = Var<float>::parameter(hw.clone());
  auto x = Var<float>::parameter(hx.clone()), b = Var<float>::parameter(hb.clone());
  auto y = detail::residual_linear_bf16(Residual<float, cpu>{x, b}, a, w);
  const auto ar = round(ha).reshape({10, 12}), wr = round(hw), gr = round(hg).reshape({10, 7});
  const auto b_col = hb.reshape({7, 1});
  // (the product rounded to bf16 before the sum, as the GEMM writes it on the GPU)
  CHECK(max_abs_diff(y.value().reshape({10, 7}),
                     Tensor<float>(hx.reshape({10, 7}) + hb * round(matmul(ar, wr.t())))) < 1e-5);
  y.backward(hg);
  const auto G = matmul(gr.t(), ar);
  CHECK(max_abs_diff(x.grad(), hg) == 0.0);
  CHECK(max_abs_diff(w.grad(), Tensor<float>(G * b_col)) < 1e-5);
  CHECK(max_abs_diff(b.grad(), sum(Tensor<float>(G * hw), {1})) < 1e-4);
  CHECK(max_abs_diff(a.grad().reshape({10, 12}), matmul(gr, round(Tensor<float>(hw * b_col)))) <
        1e-5);
  // the relu2 form: relu(a)^2 rounded once, da through relu2's slope
  auto a2 = Var<float>::parameter(ha.clone()), w2 = Var<float>::parameter(hw.clone());
  auto x2 = Var<float>::parameter(hx.clone()), b2 = Var<float>::parameter(hb.clone());
  auto y2 = detail::residual_linear_bf16(Residual<float, cpu>{x2, b2}, a2, w2, true);
  const auto sq = widen_bf16(backend::relu2_to_bf16(cpu{}, ha)).reshape({10, 12});
  CHECK(max_abs_diff(y2.value().reshape({10, 7}),
                     Tensor<float>(hx.reshape({10, 7}) + hb * round(matmul(sq, round(hw).t())))) <
        1e-5);
  y2.backward(hg);
  const auto G2 = matmul(gr.t(), sq);
  CHECK(max_abs_diff(w2.grad(), Tensor<float>(G2 * b_col)) < 1e-5);
  CHECK(max_abs_diff(b2.grad(), sum(Tensor<float>(G2 * hw), {1})) < 1e-4);
  CHECK(
      max_abs_diff(a2.grad(),
                   Tensor<float>(matmul(gr, round(Tensor<float>(hw * b_col))).reshape({2, 5, 12}) *
                                 2.0f * relu(ha))) < 1e-5);
  CHECK_THROWS_WITH(residual_linear(Residual<float, cpu>{x, b}, a,
                                    Var<float>::parameter(Tensor<float>::zeros({6, 12}))),
                    Contains("residual"));
}

// The weight side of residual_linear's bf16 rule in one pass: dw = prior + scale G,
// dscale = prior + rowsum(w G), wb16 = bf16(scale w); priors absent, separate, in place.
TEST_CASE("scaled_weight_backward: dw, dscale and bf16(scale * w) in one pass", "[ops][matmul]") {
  Rng rng(29);
  for (int64_t in : {int64_t(12), int64_t(37)}) {
    const int64_t out = 5;
    auto G = Tensor<float>::randn({out, in}, rng), w = Tensor<float>::randn({out, in}, rng);
    auto sc = Tensor<float>::randn({out}, rng, 1, 0.5);
    auto pw = Tensor<float>::randn({out, in}, rng), ps = Tensor<float>::randn({out}, rng);
    const auto col = sc.reshape({out, 1});
    const auto want_wb = round_bf16(Tensor<float>(w * col));
    for (int prior : {0, 1, 2}) {  // none, separate, in place
      INFO("in " << in << " prior " << prior);
      auto dw = prior == 2 ? pw.clone() : Tensor<float>::empty({out, in});
      auto ds = prior == 2 ? ps.clone() : Tensor<float>::empty({out});
      auto wb = Tensor<bf16>::empty({out, in});
      const float* dwp = prior == 0 ? nullptr : prior == 1 ? pw.data() : dw.data();
      const float* dsp = prior == 0 ? nullptr : prior == 1 ? ps.data() : ds.data();
      backend::scaled_weight_backward(cpu{}, G.data(), w.data(), sc.data(), dw.data(), dwp,
                                      ds.data(), dsp, wb.data(), out, in);
      const Tensor<float> base_w = prior ? pw : Tensor<float>::zeros({out, in});
      const Tensor<float> base_s = prior ? ps : Tensor<float>::zeros({out});
      CHECK(max_abs_diff(dw, Tensor<float>(base_w + G * col)) < 1e-6);
      CHECK(max_abs_diff(ds, Tensor<float>(base_s + sum(Tensor<float>(G * w), {1}))) < 1e-4);
      CHECK(max_abs_diff(widen_bf16(wb), want_wb) == 0.0);
    }
    // no gradients wanted: G may be null, only the scaled weight is written
    auto wb = Tensor<bf16>::empty({out, in});
    backend::scaled_weight_backward<float>(cpu{}, nullptr, w.data(), sc.data(), nullptr, nullptr,
                                           nullptr, nullptr, wb.data(), out, in);
    CHECK(max_abs_diff(widen_bf16(wb), want_wb) == 0.0);
  }
}

TEST_CASE("rms_norm_mlp is the composition rms_norm, linear, relu2_linear (+ residual)",
          "[ops][matmul]") {
  Rng rng(24);
  auto hx = Tensor<float>::randn({2, 5, 12}, rng), hfc = Tensor<float>::randn({20, 12}, rng);
  auto hproj = Tensor<float>::randn({12, 20}, rng), hres = Tensor<float>::randn({2, 5, 12}, rng);
  auto hb = Tensor<float>::randn({12}, rng, 1, 0.5), hg = Tensor<float>::randn({2, 5, 12}, rng);
  for (bool residual : {false, true}) {
    INFO((residual ? "residual" : "plain"));
    std::array<Var<float>, 5> p1, p2;
    for (auto* p : {&p1, &p2}) {
      const std::array<Tensor<float>, 5> init{hx, hfc, hproj, hres, hb};
      for (size_t i = 0; i < 5; ++i) (*p)[i] = Var<float>::parameter(init[i].clone());
    }
    const Residual<float, cpu> r1{p1[3], p1[4]};
    auto y1 = residual ? rms_norm_mlp(p1[0], p1[1], p1[2], 1e-6, r1)
                       : rms_norm_mlp(p1[0], p1[1], p1[2], 1e-6);
    y1.backward(hg);
    auto y2 = linear(relu2(linear(rms_norm(p2[0], 1e-6), p2[1])), p2[2]);
    if (residual) y2 = channel_mix(p2[3], p2[4], y2);
    CHECK(max_abs_diff(y1.value(), y2.value()) == 0.0);
    y2.backward(hg);
    for (size_t i = 0; i < (residual ? 5u : 3u); ++i) {
      INFO("input " << i);
      CHECK(max_abs_diff(p1[i].grad(), p2[i].grad()) == 0.0);
    }
  }
  require_gradcheck(
      [](auto& v) {
        return rms_norm_mlp(v[0], v[1], v[2], 1e-6, Residual<double, cpu>{v[3], v[4]});
      },
      {Tensor<double>::randn({3, 4}, rng), Tensor<double>::randn({6, 4}, rng),
       Tensor<double>::randn({4, 6}, rng), Tensor<double>::randn({3, 4}, rng),
       Tensor<double>::randn({4}, rng)});
  auto x = Var<float>::parameter(hx.clone()), fc = Var<float>::parameter(hfc.clone());
  CHECK_THROWS_WITH(
      rms_norm_mlp(x, fc, Var<float>::parameter(Tensor<float>::zeros({12, 19})), 1e-6),
      Contains("do not chain"));
  CHECK_THROWS_WITH(rms_norm_mlp(x, fc, Var<float>::parameter(hproj.clone()), 1e-6,
                                 Residual<float, cpu>{Var<float>::parameter(hfc.clone()),
                                                      Var<float>::parameter(hb.clone())}),
                    Contains("residual"));
}

// detail::weight_to_bf16 (the bf16 products' weight operands): rounded once per
// QuantizedWeightCache scope, with a view (here the transpose of a square weight: the same
// memory and shape) and a weight computed in the scope kept apart.
TEST_CASE("weight_to_bf16: one rounding per QuantizedWeightCache scope, views apart") {
  Rng rng(91);
  const auto w = Tensor<float>::randn({4, 4}, rng);
  const auto rounded = [](const Tensor<bf16>& t) { return t.to<float>(); };
  CHECK(detail::weight_to_bf16(w).data() != detail::weight_to_bf16(w).data());  // no scope
  {
    quant::QuantizedWeightCache scope;
    const auto a = detail::weight_to_bf16(w), b = detail::weight_to_bf16(w);
    CHECK(a.data() == b.data());
    CHECK(max_abs_diff(rounded(a), round_bf16(w)) == 0.0);
    const auto t = detail::weight_to_bf16(w.t());
    CHECK(t.data() != a.data());
    CHECK(max_abs_diff(rounded(t), Tensor<float>(round_bf16(w).t())) == 0.0);
    for (float k : {2.f, 3.f}) {  // temporaries: each its own entry, never a stale one
      const auto c = detail::weight_to_bf16(Tensor<float>(w * k));
      CHECK(max_abs_diff(rounded(c), round_bf16(Tensor<float>(w * k))) == 0.0);
    }
    CHECK(scope.size() == 4);
  }
}
