// Tensor: factories, element access, views (reshape, transpose, permute, slice, narrow,
// select, expand), copies and printing.
#include <catch2/catch.hpp>
#include <sstream>

#include "ternary/core/tensor.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

TEST_CASE("factories and element access", "[tensor]") {
  auto t = Tensor<float>::from({2, 3}, {1, 2, 3, 4, 5, 6});
  CHECK(t.dim() == 2);
  CHECK(t.numel() == 6);
  CHECK(t(1, 2) == 6);
  CHECK(t.at({0, 1}) == 2);
  CHECK(t(-1, -1) == 6);
  CHECK(t.is_contiguous());
  CHECK(Tensor<double>::zeros({4}).to_vector() == std::vector<double>(4, 0.0));
  CHECK(Tensor<float>::full({2}, 7).to_vector() == std::vector<float>{7, 7});
  CHECK(Tensor<float>::arange(3).to_vector() == std::vector<float>{0, 1, 2});
  CHECK(Tensor<float>::scalar(3).item() == 3);
  CHECK_THROWS_AS(Tensor<float>::from({2, 2}, {1, 2, 3}), ShapeError);
  CHECK_THROWS_WITH(t(2, 0), Contains("out of range") && Contains("[2, 3]"));
  CHECK_THROWS_AS(t.item(), ShapeError);
}

TEST_CASE("seeded random tensors are reproducible and have the right moments", "[tensor]") {
  Rng a(42), b(42), c(43);
  auto x = Tensor<double>::randn({20000}, a);
  auto y = Tensor<double>::randn({20000}, b);
  auto z = Tensor<double>::randn({20000}, c);
  CHECK(x.to_vector() == y.to_vector());
  CHECK(x.to_vector() != z.to_vector());
  double m = 0, v = 0;
  for (double e : x.to_vector()) m += e;
  m /= x.numel();
  for (double e : x.to_vector()) v += (e - m) * (e - m);
  v /= x.numel();
  CHECK(std::abs(m) < 0.03);
  CHECK(std::abs(v - 1) < 0.05);
  auto u = Tensor<float>::rand({1000}, a, 2, 3);
  for (float e : u.to_vector()) CHECK((e >= 2 && e < 3));
}

TEST_CASE("views share storage and index correctly", "[tensor][view]") {
  auto t = Tensor<float>::arange(24).reshape({2, 3, 4});
  auto tr = t.transpose(0, 2);  // [4, 3, 2]
  CHECK(tr.shape() == Shape{4, 3, 2});
  CHECK(tr(3, 1, 0) == t(0, 1, 3));
  CHECK_FALSE(tr.is_contiguous());
  auto p = t.permute({1, 2, 0});
  CHECK(p(2, 3, 1) == t(1, 2, 3));
  auto s = t.slice(2, 1, 4, 2);  // columns 1, 3
  CHECK(s.shape() == Shape{2, 3, 2});
  CHECK(s(1, 2, 1) == t(1, 2, 3));
  auto n = t.narrow(1, 1, 2);
  CHECK(n(0, 0, 0) == t(0, 1, 0));
  CHECK_THROWS_AS(t.narrow(1, 2, 2), IndexError);
  auto sel = t.select(1, 2);
  CHECK(sel.shape() == Shape{2, 4});
  CHECK(sel(1, 3) == t(1, 2, 3));
  CHECK(t[1](0, 0) == 12);
  CHECK(t.unsqueeze(0).shape() == Shape{1, 2, 3, 4});
  CHECK(t.unsqueeze(3).shape() == Shape{2, 3, 4, 1});
  CHECK(t.unsqueeze(0).squeeze(0).shape() == t.shape());
  CHECK_THROWS_AS(t.squeeze(0), ShapeError);
  CHECK(t.slice(0, -1, 100).shape() == Shape{1, 3, 4});  // numpy clamping

  // writes through a view land in the base tensor
  s.fill(-1);
  CHECK(t(0, 0, 1) == -1);
  CHECK(t(0, 0, 0) == 0);

  // reshape: a view when contiguous, a copy otherwise
  auto r = t.reshape({6, -1});
  CHECK(r.shape() == Shape{6, 4});
  CHECK(r.shares_storage_with(t));
  auto rc = tr.reshape({-1});
  CHECK_FALSE(rc.shares_storage_with(t));
  CHECK(rc(1) == tr(0, 0, 1));
  CHECK_THROWS_AS(tr.view({24}), ShapeError);
  CHECK_THROWS_WITH(t.reshape({5, -1}), Contains("reshape"));
  CHECK_THROWS_AS(t.reshape({-1, -1}), ShapeError);

  auto e = Tensor<float>::from({3, 1}, {1, 2, 3}).expand({3, 4});
  CHECK(e(2, 3) == 3);
  CHECK_THROWS_AS(e.expand({2, 4}), ShapeError);
}

TEST_CASE("clone, contiguous and conversion", "[tensor]") {
  auto t = Tensor<float>::arange(6).reshape({2, 3});
  auto c = t.t().contiguous();
  CHECK(c.is_contiguous());
  CHECK(c.to_vector() == std::vector<float>{0, 3, 1, 4, 2, 5});
  auto k = t.clone();
  k(0, 0) = 100;
  CHECK(t(0, 0) == 0);
  CHECK(t.contiguous().shares_storage_with(t));
  auto d = t.to<double>();
  CHECK(d(1, 2) == 5.0);
  bf16 h(1.0f / 3.0f);
  CHECK(std::abs(float(h) - 1.0f / 3.0f) < 1e-2f);
  CHECK(float(bf16(2.0f)) == 2.0f);
}

TEST_CASE("printing shows dtype, shape and elided values", "[tensor]") {
  std::ostringstream os;
  os << Tensor<float>::arange(10);
  CHECK_THAT(os.str(), Contains("Tensor<f32>[10]") && Contains("...") && Contains("9"));
}
