// rms_norm: closed forms, a naive reference, agreement with the same math composed from
// elementwise ops (values and gradients, threaded path included), gradchecks, errors.
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "ternary/autograd/gradcheck.hpp"
#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/norm.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

namespace {
// y = x / sqrt(mean(x^2) + eps) * gain, row by row in double.
template <class T>
Tensor<double> reference_rms_norm(const Tensor<T>& x, const Tensor<T>& gain, double eps) {
  auto xd = x.template to<double>();
  const int64_t D = xd.size(-1), rows = xd.numel() / D;
  auto y = Tensor<double>::empty(xd.shape());
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0;
    for (int64_t j = 0; j < D; ++j) ms += xd.data()[r * D + j] * xd.data()[r * D + j];
    const double s = 1 / std::sqrt(ms / D + eps);
    for (int64_t j = 0; j < D; ++j)
      y.data()[r * D + j] =
          xd.data()[r * D + j] * s * (gain.defined() ? double(gain.to_vector()[j]) : 1.0);
  }
  return y;
}
// The same op composed from differentiable elementwise ops and reductions.
template <class T>
Var<T> composed_rms_norm(const Var<T>& x, const Var<T>* gain, double eps) {
  auto y = x * rsqrt(mean(square(x), {-1}, true) + eps);
  return gain ? y * *gain : y;
}
}  // namespace

TEST_CASE("rms_norm closed forms", "[norm]") {
  // A constant row c normalizes to sign(c): c / sqrt(c^2 + eps) with eps << c^2.
  auto x = Tensor<double>::from({3, 4}, {2, 2, 2, 2, -0.5, -0.5, -0.5, -0.5, 1e3, 1e3, 1e3, 1e3});
  auto gain = Tensor<double>::from({4}, {1, -2, 0.5, 3});
  auto y = rms_norm(x, gain, 1e-12);
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t j = 0; j < 4; ++j)
      CHECK(y(r, j) == Approx((r == 1 ? -1 : 1) * gain(j)).epsilon(1e-10));
  // [3, 4] has rms sqrt(12.5): y = [3, 4] / sqrt(12.5) with no gain and eps = 0.
  auto z = rms_norm(Tensor<float>::from({2}, {3, 4}), 0.0);
  CHECK(z(0) == Approx(3 / std::sqrt(12.5)));
  CHECK(z(1) == Approx(4 / std::sqrt(12.5)));
  // eps matters when the row is small: x = 0 gives 0, not NaN.
  auto zero = rms_norm(Tensor<float>::zeros({2, 5}));
  for (float v : zero.to_vector()) CHECK(v == 0.0f);
}

TEST_CASE("rms_norm matches a double reference", "[norm]") {
  Rng rng(2);
  for (int64_t D : {1, 5, 8, 9, 31, 64, 513}) {
    auto x = Tensor<float>::randn({70, D}, rng, 0.3, 2);  // rows * D crosses the threaded path
    auto g = Tensor<float>::randn({D}, rng);
    CHECK(max_abs_diff(rms_norm(x, g).to<double>(), reference_rms_norm(x, g, 1e-6)) < 2e-5);
    CHECK(max_abs_diff(rms_norm(x, 1e-3).to<double>(),
                       reference_rms_norm(x, Tensor<float>(), 1e-3)) < 1e-5);
    // Strided input: a transposed view, [D, 70], normalized over its last axis (70).
    auto xt = Tensor<float>::randn({70, D}, rng).t();
    auto g70 = Tensor<float>::randn({70}, rng);
    CHECK(max_abs_diff(rms_norm(xt, g70).to<double>(), reference_rms_norm(xt, g70, 1e-6)) < 2e-5);
  }
}

TEST_CASE("rms_norm Var agrees with the tensor op and with composed ops", "[norm][grad]") {
  Rng rng(4);
  // [64, 600] takes the threaded path (per-thread dgain partials) in forward and backward.
  for (Shape shape : {Shape{3, 7}, Shape{2, 5, 16}, Shape{64, 600}}) {
    const int64_t D = shape[shape.size() - 1];
    auto xv = Tensor<double>::randn(shape, rng);
    auto gv = Tensor<double>::randn({D}, rng);
    auto w = Tensor<double>::randn(shape, rng);
    for (bool with_gain : {true, false}) {
      auto x1 = Var<double>::parameter(xv), g1 = Var<double>::parameter(gv);
      auto x2 = Var<double>::parameter(xv), g2 = Var<double>::parameter(gv);
      // One graph at a time: backward() consumes the whole tape.
      auto y1 = with_gain ? rms_norm(x1, g1, 1e-5) : rms_norm(x1, 1e-5);
      sum(y1 * Var<double>::constant(w)).backward();
      auto y2 = composed_rms_norm<double>(x2, with_gain ? &g2 : nullptr, 1e-5);
      sum(y2 * Var<double>::constant(w)).backward();
      CHECK(max_abs_diff(y1.value(), y2.value()) < 1e-12);
      CHECK(max_abs_diff(y1.value(), with_gain ? rms_norm(xv, gv, 1e-5) : rms_norm(xv, 1e-5)) == 0);
      CHECK(max_abs_diff(x1.grad(), x2.grad()) < 1e-11);
      if (with_gain) CHECK(max_abs_diff(g1.grad(), g2.grad()) < 1e-9);
    }
  }
}

TEST_CASE("rms_norm gradchecks", "[norm][grad]") {
  Rng rng(8);
  std::vector<Tensor<double>> xs = {
      Tensor<double>::randn({6}, rng),
      Tensor<double>::randn({4, 9}, rng),
      Tensor<double>::randn({9, 4}, rng).t(),                     // transposed
      Tensor<double>::randn({2, 3, 20}, rng).slice(2, 0, 20, 2),  // strided slice, D = 10
      Tensor<double>::randn({2, 1, 3, 8}, rng),
  };
  for (const auto& x : xs) {
    const int64_t D = x.size(-1);
    auto gain = Tensor<double>::randn({2 * D}, rng).slice(0, 0, 2 * D, 2);  // strided gain
    auto r1 = gradcheck([](std::vector<Var<double>>& in) { return rms_norm(in[0], in[1], 1e-4); },
                        {x, gain});
    INFO("with gain, shape " << x.shape() << "\n" << r1.report);
    CHECK(r1.ok);
    auto r2 = gradcheck([](std::vector<Var<double>>& in) { return rms_norm(in[0]); }, {x});
    INFO("no gain\n" << r2.report);
    CHECK(r2.ok);
  }
  // Inside a graph: x feeds rms_norm and a second path.
  auto r =
      gradcheck([](std::vector<Var<double>>& in) { return rms_norm(in[0] * in[0], in[1]) + in[0]; },
                {Tensor<double>::randn({3, 5}, rng), Tensor<double>::randn({5}, rng)});
  INFO(r.report);
  CHECK(r.ok);
}

TEST_CASE("rms_norm backward for one input only", "[norm][grad]") {
  Rng rng(9);
  auto xv = Tensor<double>::randn({4, 6}, rng);
  auto gv = Tensor<double>::randn({6}, rng);
  auto w = Tensor<double>::randn({4, 6}, rng);
  // Only the gain: dgain = sum over rows of w * x_hat.
  auto g = Var<double>::parameter(gv);
  sum(rms_norm(Var<double>::constant(xv), g) * Var<double>::constant(w)).backward();
  Tensor<double> x_hat = rms_norm(xv);
  Tensor<double> expect = sum(Tensor<double>(w * x_hat), {0});
  CHECK(max_abs_diff(g.grad(), expect) < 1e-12);
  // Only x.
  auto x = Var<double>::parameter(xv);
  sum(rms_norm(x, Var<double>::constant(gv)) * Var<double>::constant(w)).backward();
  auto x2 = Var<double>::parameter(xv);
  sum(composed_rms_norm<double>(x2, nullptr, 1e-6) * Var<double>::constant(Tensor<double>(w * gv)))
      .backward();
  CHECK(max_abs_diff(x.grad(), x2.grad()) < 1e-12);
}

TEST_CASE("rms_norm errors name the op and the shapes", "[norm][errors]") {
  auto x = Var<float>::parameter(Tensor<float>::zeros({2, 3}));
  auto bad = Var<float>::parameter(Tensor<float>::ones({4}));
  try {
    rms_norm(x, bad);
    FAIL("expected ShapeError");
  } catch (const ShapeError& e) {
    CHECK_THAT(e.what(), Contains("rms_norm") && Contains("[4]") && Contains("[2, 3]"));
  }
  CHECK_THROWS_AS(rms_norm(Tensor<float>::scalar(1)), ShapeError);
  try {
    rms_norm(x, -1e-3);
    FAIL("expected Error");
  } catch (const Error& e) {
    CHECK_THAT(e.what(), Contains("rms_norm") && Contains("eps"));
  }
}
