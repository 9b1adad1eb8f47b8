// Expression templates: fused evaluation, broadcasting, strided operands, aliasing,
// SIMD tails, and the threaded path on large tensors.
#include <catch2/catch.hpp>
#include <cmath>

#include "ternary/core/tensor.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

TEST_CASE("elementwise expressions match scalar math", "[expr]") {
  Rng rng(1);
  for (int64_t n : {1, 7, 8, 9, 33, 100003}) {  // SIMD tails, threaded path
    auto a = Tensor<float>::randn({n}, rng);
    auto b = Tensor<float>::rand({n}, rng, 0.5, 2);
    Tensor<float> c = a * b + exp(a) / b - sqrt(b) + tanh(a) * sigmoid(a) - relu2(a) + silu(b);
    for (int64_t i = 0; i < n; i += std::max<int64_t>(1, n / 50)) {
      float x = a(i), y = b(i);
      float ref = x * y + std::exp(x) / y - std::sqrt(y) + std::tanh(x) * (1 / (1 + std::exp(-x))) -
                  (x > 0 ? x * x : 0) + y / (1 + std::exp(-y));
      CHECK(c(i) == Approx(ref).epsilon(1e-5).margin(1e-5));
    }
  }
}

TEST_CASE("rounding, clamping and sign", "[expr]") {
  auto x = Tensor<float>::from({8}, {-2.5f, -1.5f, -0.5f, 0.5f, 1.5f, 2.5f, 0.4f, -0.0f});
  Tensor<float> r = round(x);  // half to even
  CHECK(r.to_vector() == std::vector<float>{-2, -2, -0, 0, 2, 2, 0, 0});
  Tensor<float> c = clamp(x, -1, 1);
  CHECK(c.to_vector() == std::vector<float>{-1, -1, -0.5f, 0.5f, 1, 1, 0.4f, 0});
  Tensor<float> s = sign(x);
  CHECK(s.to_vector() == std::vector<float>{-1, -1, -1, 1, 1, 1, 1, 0});
}

TEST_CASE("broadcasting follows numpy rules", "[expr]") {
  auto a = Tensor<float>::arange(6).reshape({2, 3});
  auto row = Tensor<float>::from({3}, {10, 20, 30});
  auto col = Tensor<float>::from({2, 1}, {100, 200});
  Tensor<float> s = a + row + col;
  CHECK(s.shape() == Shape{2, 3});
  CHECK(s.to_vector() == std::vector<float>{110, 121, 132, 213, 224, 235});
  Tensor<float> outer = col * row;  // [2,1] x [3] -> [2,3]
  CHECK(outer(1, 2) == 6000);
  CHECK_THROWS_WITH(a + Tensor<float>::zeros({2}),
                    Contains("add") && Contains("[2, 3]") && Contains("[2]"));
  Tensor<float> scalar_first = 2.0f - a;
  CHECK(scalar_first(1, 2) == -3);
}

TEST_CASE("strided operands and destinations", "[expr]") {
  Rng rng(3);
  auto a = Tensor<double>::randn({5, 7}, rng);
  auto b = Tensor<double>::randn({7, 5}, rng);
  Tensor<double> c = a * b.t();  // transposed operand: the row path
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 7; ++j) CHECK(c(i, j) == a(i, j) * b(j, i));
  auto dst = Tensor<double>::zeros({7, 5});
  dst.t().assign(a + 1.0);  // strided destination
  CHECK(dst(3, 2) == a(2, 3) + 1.0);
  auto every_other = a.slice(1, 0, 7, 2);
  Tensor<double> e = every_other * 2.0;
  CHECK(e(4, 3) == a(4, 6) * 2.0);
}

TEST_CASE("in-place assignment through an aliasing expression is safe", "[expr]") {
  auto m = Tensor<float>::arange(9).reshape({3, 3});
  auto expect = m.t().contiguous();
  m.assign(m.t());  // reads the transposed view of the memory it writes
  CHECK(m.to_vector() == expect.to_vector());
  auto v = Tensor<float>::arange(4);
  v += v;
  CHECK(v.to_vector() == std::vector<float>{0, 2, 4, 6});
  CHECK_THROWS_AS(v.assign(Tensor<float>::zeros({5})), ShapeError);
}

TEST_CASE("operator= rebinds, assign writes in place", "[expr]") {
  auto a = Tensor<float>::ones({3});
  Tensor<float> b = a;  // shares
  b = a * 2.0f;         // rebinds b to new memory
  CHECK(a(0) == 1);
  CHECK(b(0) == 2);
  Tensor<float> c = a;
  c.assign(a * 3.0f);  // writes through the shared storage
  CHECK(a(0) == 3);
}
