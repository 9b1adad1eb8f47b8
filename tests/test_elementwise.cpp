// Differentiable elementwise ops: values and gradchecks with broadcasting and strided views.
#include <catch2/catch.hpp>

#include "ternary/ternary.hpp"

using namespace ternary;
using Catch::Matchers::Contains;
using Fn = std::function<Var<double>(std::vector<Var<double>>&)>;

namespace {
void require_gradcheck(const Fn& f, const std::vector<Tensor<double>>& in) {
  auto r = gradcheck(f, in);
  INFO(r.report);
  REQUIRE(r.ok);
}
}  // namespace

TEST_CASE("binary ops: values and gradients with broadcasting", "[ops][elementwise]") {
  Rng rng(11);
  auto a = Tensor<double>::randn({3, 4}, rng);
  auto row = Tensor<double>::randn({4}, rng);
  auto col = Tensor<double>::rand({3, 1}, rng, 0.5, 2.0);
  require_gradcheck([](auto& v) { return v[0] + v[1]; }, {a, row});
  require_gradcheck([](auto& v) { return v[0] - v[1]; }, {a, col});
  require_gradcheck([](auto& v) { return v[0] * v[1]; }, {row, col});
  require_gradcheck([](auto& v) { return v[0] / v[1]; }, {a, col});
  // non-contiguous inputs: a transposed view and a strided slice
  auto big = Tensor<double>::randn({4, 6}, rng);
  require_gradcheck([](auto& v) { return v[0] * v[1] + v[0]; }, {big.t().slice(0, 0, 6, 2), a});

  auto x = Var<double>::constant(Tensor<double>::from({2}, {6, 8}));
  auto y = Var<double>::constant(Tensor<double>::from({2}, {2, 4}));
  CHECK((x / y).value().to_vector() == std::vector<double>{3, 2});
  CHECK((x - y).value().to_vector() == std::vector<double>{4, 4});
  CHECK_THROWS_WITH(x + Var<double>::constant(Tensor<double>::zeros({3})),
                    Contains("add") && Contains("[3]"));
}

TEST_CASE("scalar ops", "[ops][elementwise]") {
  Rng rng(12);
  auto a = Tensor<double>::rand({5}, rng, 0.5, 1.5);
  require_gradcheck([](auto& v) { return v[0] * 3.0 + 1.0; }, {a});
  require_gradcheck([](auto& v) { return 2.0 - v[0] / 4.0; }, {a});
  require_gradcheck([](auto& v) { return 2.0 / v[0]; }, {a});
  require_gradcheck([](auto& v) { return -v[0]; }, {a});
  auto x = Var<float>::constant(Tensor<float>::from({2}, {1, 4}));
  CHECK((2.0f / x).value().to_vector() == std::vector<float>{2, 0.5f});
}

TEST_CASE("unary ops: closed-form values", "[ops][elementwise]") {
  auto x = Var<double>::constant(Tensor<double>::from({3}, {-1, 0, 2}));
  CHECK(exp(x).value()(2) == Approx(std::exp(2.0)));
  CHECK(relu(x).value().to_vector() == std::vector<double>{0, 0, 2});
  CHECK(relu2(x).value().to_vector() == std::vector<double>{0, 0, 4});
  CHECK(sigmoid(x).value()(1) == Approx(0.5));
  CHECK(tanh(x).value()(0) == Approx(std::tanh(-1.0)));
  CHECK(silu(x).value()(2) == Approx(2.0 / (1 + std::exp(-2.0))));
  CHECK(softcap(x, 1.0).value()(2) == Approx(std::tanh(2.0)));
  CHECK(softcap(x * 100.0, 30.0).value()(2) < 30.0);
  auto p = Var<double>::constant(Tensor<double>::from({2}, {4, 9}));
  CHECK(sqrt(p).value().to_vector() == std::vector<double>{2, 3});
  CHECK(rsqrt(p).value()(0) == Approx(0.5));
  CHECK(pow(p, 1.5).value()(0) == Approx(8.0));
  CHECK(log(p).value()(0) == Approx(std::log(4.0)));
  CHECK_THROWS_AS(softcap(x, 0.0), Error);
}

TEST_CASE("unary ops: gradients", "[ops][elementwise]") {
  Rng rng(13);
  auto any = Tensor<double>::randn({2, 5}, rng);
  auto positive = Tensor<double>::rand({2, 5}, rng, 0.3, 2.0);
  // keep relu-like inputs away from the kink at 0, where finite differences are wrong
  auto away = Tensor<double>(any + sign(any) * 0.1);
  require_gradcheck([](auto& v) { return exp(v[0]); }, {any});
  require_gradcheck([](auto& v) { return log(v[0]); }, {positive});
  require_gradcheck([](auto& v) { return sqrt(v[0]); }, {positive});
  require_gradcheck([](auto& v) { return rsqrt(v[0]); }, {positive});
  require_gradcheck([](auto& v) { return pow(v[0], 2.5); }, {positive});
  require_gradcheck([](auto& v) { return square(v[0]); }, {any});
  require_gradcheck([](auto& v) { return abs(v[0]); }, {away});
  require_gradcheck([](auto& v) { return tanh(v[0]); }, {any});
  require_gradcheck([](auto& v) { return sigmoid(v[0]); }, {any});
  require_gradcheck([](auto& v) { return relu(v[0]); }, {away});
  require_gradcheck([](auto& v) { return relu2(v[0]); }, {away});
  require_gradcheck([](auto& v) { return silu(v[0]); }, {any});
  require_gradcheck([](auto& v) { return softcap(v[0] * 10.0, 15.0); }, {any});
  require_gradcheck([](auto& v) { return tanh(v[0]); }, {any.t()});  // strided input
}
