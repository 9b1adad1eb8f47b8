// matmul and linear: values against a naive triple loop, batching, broadcasting,
// transposed operands (read in place), and gradients.
#include <catch2/catch.hpp>

#include "ternary/ternary.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

namespace {
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
