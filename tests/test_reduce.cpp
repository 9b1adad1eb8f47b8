// Reductions: sum / mean / max over axes with keepdim, sum_to, and their gradients.
#include <catch2/catch.hpp>

#include "ternary/ternary.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

namespace {
void require_gradcheck(const std::function<Var<double>(std::vector<Var<double>>&)>& f,
                       const std::vector<Tensor<double>>& in) {
  auto r = gradcheck(f, in);
  INFO(r.report);
  REQUIRE(r.ok);
}
}  // namespace

TEST_CASE("sum, mean and max values", "[ops][reduce]") {
  auto t = Tensor<float>::arange(24).reshape({2, 3, 4});
  CHECK(sum(t).item() == 276);
  CHECK(sum(t, {2}).shape() == Shape{2, 3});
  CHECK(sum(t, {2})(1, 2) == 20 + 21 + 22 + 23);
  CHECK(sum(t, {0}, true).shape() == Shape{1, 3, 4});
  CHECK(sum(t, {0})(2, 3) == 11 + 23);  // leading-axes path
  CHECK(sum(t, {0, 2})(1) == (4 + 5 + 6 + 7) + (16 + 17 + 18 + 19));
  CHECK(sum(t, {1})(1, 0) == 12 + 16 + 20);              // middle axis: permuted path
  CHECK(sum(t.transpose(0, 2), {-1})(3, 2) == 11 + 23);  // strided input
  CHECK(mean(t, {-1})(0, 0) == Approx(1.5));
  CHECK(mean(t).item() == Approx(11.5));
  CHECK(max(t, {1})(1, 3) == 23);
  CHECK(max(t).item() == 23);
  CHECK_THROWS_WITH(sum(t, {3}), Contains("axis 3") && Contains("rank 3"));
  CHECK_THROWS_AS(sum(t, {1, 1}), ShapeError);
  Rng rng(2);
  auto big = Tensor<double>::randn({300, 517}, rng);  // threaded + SIMD tails
  double ref = 0;
  for (double v : big.to_vector()) ref += v;
  CHECK(sum(big).item() == Approx(ref).margin(1e-9));
  CHECK(sum(sum(big, {0})).item() == Approx(ref).margin(1e-9));
}

TEST_CASE("sum_to reverses broadcasting", "[ops][reduce]") {
  auto g = Tensor<float>::ones({2, 3, 4});
  CHECK(sum_to(g, {4}).to_vector() == std::vector<float>(4, 6));
  CHECK(sum_to(g, {3, 1}).to_vector() == std::vector<float>(3, 8));
  CHECK(sum_to(g, {2, 3, 4}).shares_storage_with(g));
  CHECK_THROWS_AS(sum_to(g, {5}), ShapeError);
}

TEST_CASE("reduction gradients", "[ops][reduce]") {
  Rng rng(4);
  auto x = Tensor<double>::randn({3, 4, 5}, rng);
  require_gradcheck([](auto& v) { return sum(v[0]); }, {x});
  require_gradcheck([](auto& v) { return sum(v[0], {1}); }, {x});
  require_gradcheck([](auto& v) { return sum(v[0], {0, 2}, true); }, {x});
  require_gradcheck([](auto& v) { return mean(v[0], {-1}); }, {x});
  require_gradcheck([](auto& v) { return mean(v[0]); }, {x.transpose(0, 2)});
  require_gradcheck([](auto& v) { return max(v[0], {1}); }, {x});
  require_gradcheck([](auto& v) { return max(v[0], {0, 2}, true); }, {x.permute({2, 0, 1})});
}
