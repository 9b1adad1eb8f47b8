// softmax / log_softmax: closed forms, a naive double reference on every axis and layout
// (SIMD tails, threaded rows, strided views), stability at 1e4, gradchecks, errors.
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <vector>

#include "ternary/autograd/gradcheck.hpp"
#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/softmax.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

namespace {
// Naive double softmax (or log_softmax) of x along `axis`.
template <class T>
Tensor<double> reference_softmax(const Tensor<T>& x, int axis, bool log) {
  Tensor<double> xd = x.template to<double>();
  auto moved = xd.transpose(axis, -1).contiguous();
  const int64_t n = moved.size(-1), rows = moved.numel() / n;
  auto y = Tensor<double>::empty(moved.shape());
  for (int64_t r = 0; r < rows; ++r) {
    const double* xr = moved.data() + r * n;
    double m = -INFINITY, s = 0;
    for (int64_t j = 0; j < n; ++j) m = std::max(m, xr[j]);
    for (int64_t j = 0; j < n; ++j) s += std::exp(xr[j] - m);
    for (int64_t j = 0; j < n; ++j)
      y.data()[r * n + j] = log ? xr[j] - m - std::log(s) : std::exp(xr[j] - m) / s;
  }
  return y.transpose(axis, -1).contiguous();
}
}  // namespace

TEST_CASE("softmax closed forms", "[softmax]") {
  auto x = Tensor<double>::from({2}, {0.0, std::log(2.0)});
  auto y = softmax(x);
  CHECK(y(0) == Approx(1.0 / 3).epsilon(1e-14));
  CHECK(y(1) == Approx(2.0 / 3).epsilon(1e-14));
  auto ly = log_softmax(x);
  CHECK(ly(0) == Approx(std::log(1.0 / 3)).epsilon(1e-14));
  CHECK(ly(1) == Approx(std::log(2.0 / 3)).epsilon(1e-14));
  // Shift invariance and a uniform row.
  auto u = softmax(Tensor<float>::full({1, 8}, 123.0f));
  for (int j = 0; j < 8; ++j) CHECK(u(0, j) == Approx(0.125f));
  // A 0-d tensor is a single-element distribution.
  CHECK(softmax(Tensor<float>::scalar(5.0f)).item() == 1.0f);
  CHECK(log_softmax(Tensor<float>::scalar(5.0f)).item() == 0.0f);
}

TEST_CASE("softmax matches a double reference on every axis and layout", "[softmax]") {
  Rng rng(7);
  for (int64_t n : {1, 3, 7, 8, 9, 16, 33, 1000}) {
    for (bool log : {false, true}) {
      const double tol = log ? 1e-5 : 2e-6;  // log-probabilities reach ~-20: float ulp 2e-6
      // Last axis, contiguous; rows enough to take the threaded path at n = 1000.
      auto x = Tensor<float>::randn({40, n}, rng, 0, 3);
      auto y = log ? log_softmax(x) : softmax(x);
      CHECK(y.is_contiguous());
      CHECK(max_abs_diff(y.to<double>(), reference_softmax(x, 1, log)) < tol);
      // Axis 0 (moved to the end internally) and a transposed view on the last axis.
      auto y0 = log ? log_softmax(x, 0) : softmax(x, 0);
      CHECK(max_abs_diff(y0.to<double>(), reference_softmax(x, 0, log)) < tol);
      auto xt = x.t();
      auto yt = log ? log_softmax(xt, -1) : softmax(xt, -1);
      CHECK(yt.shape() == Shape{n, 40});
      CHECK(max_abs_diff(yt.to<double>(), reference_softmax(xt, 1, log)) < tol);
    }
  }
  // A middle axis of a 4-d strided slice.
  auto x = Tensor<double>::randn({3, 10, 5, 4}, rng).slice(1, 1, 10, 2);
  for (int axis = 0; axis < 4; ++axis) {
    CHECK(max_abs_diff(softmax(x, axis), reference_softmax(x, axis, false)) < 1e-14);
    CHECK(max_abs_diff(log_softmax(x, axis - 4), reference_softmax(x, axis, true)) < 1e-13);
  }
}

TEST_CASE("softmax rows sum to one", "[softmax]") {
  Rng rng(3);
  auto x = Tensor<float>::randn({64, 513}, rng, 0, 5);
  auto s = softmax(x);
  for (int64_t r = 0; r < 64; ++r) {
    double total = 0;
    for (int64_t j = 0; j < 513; ++j) total += s(r, j);
    CHECK(total == Approx(1.0).epsilon(1e-5));
  }
}

TEST_CASE("softmax is stable at large magnitudes", "[softmax]") {
  auto x =
      Tensor<float>::from({2, 9}, {1e4f, -1e4f, 0, 1e4f, 5e3f, -3e4f, 1e4f - 1, 0, 2e4f,  //
                                   -1e4f, -1e4f, -1e4f, -1e4f, -1e4f, -1e4f, -1e4f, -1e4f, -1e4f});
  auto y = softmax(x);
  auto ly = log_softmax(x);
  for (float v : y.to_vector()) CHECK(std::isfinite(v));
  for (float v : ly.to_vector()) CHECK(std::isfinite(v));
  CHECK(y(0, 8) == 1.0f);
  CHECK(y(0, 0) == 0.0f);
  CHECK(ly(0, 0) == Approx(-1e4f));
  CHECK(y(1, 4) == Approx(1.0f / 9));
  CHECK(ly(1, 4) == Approx(-std::log(9.0f)));
  // The backward stays finite too.
  auto v = Var<float>::parameter(x);
  sum(softmax(v) * Var<float>::constant(Tensor<float>::arange(9))).backward();
  for (float g : v.grad().to_vector()) CHECK(std::isfinite(g));
  auto w = Var<float>::parameter(x);
  sum(log_softmax(w) * Var<float>::constant(Tensor<float>::arange(9))).backward();
  for (float g : w.grad().to_vector()) CHECK(std::isfinite(g));
}

TEST_CASE("softmax and log_softmax gradchecks", "[softmax][grad]") {
  Rng rng(11);
  std::vector<Tensor<double>> inputs = {
      Tensor<double>::randn({5}, rng),
      Tensor<double>::randn({3, 9}, rng),
      Tensor<double>::randn({9, 3}, rng).t(),                     // transposed
      Tensor<double>::randn({2, 3, 12}, rng).slice(2, 1, 12, 3),  // strided slice
      Tensor<double>::randn({2, 4, 3, 2}, rng),
  };
  for (const auto& x : inputs) {
    for (int64_t axis = -x.dim(); axis < x.dim(); ++axis) {
      auto r1 =
          gradcheck([axis](std::vector<Var<double>>& in) { return softmax(in[0], axis); }, {x});
      INFO("softmax axis " << axis << " shape " << x.shape() << "\n" << r1.report);
      CHECK(r1.ok);
      auto r2 =
          gradcheck([axis](std::vector<Var<double>>& in) { return log_softmax(in[0], axis); }, {x});
      INFO("log_softmax axis " << axis << "\n" << r2.report);
      CHECK(r2.ok);
    }
  }
  // Composed with another op, so the incoming gradient is not the seed itself.
  auto r = gradcheck([](std::vector<Var<double>>& in) { return softmax(in[0] * in[1], 0); },
                     {Tensor<double>::randn({4, 3}, rng), Tensor<double>::randn({3}, rng)});
  INFO(r.report);
  CHECK(r.ok);
}

TEST_CASE("softmax backward on the threaded path matches the closed form", "[softmax][grad]") {
  Rng rng(5);
  auto x = Tensor<float>::randn({48, 1000}, rng, 0, 2);
  auto w = Tensor<float>::randn({48, 1000}, rng);
  for (bool log : {false, true}) {
    auto v = Var<float>::parameter(x);
    auto y = log ? log_softmax(v) : softmax(v);
    sum(y * Var<float>::constant(w)).backward();
    // dx = y (w - sum(w y))   or   dx = w - softmax(x) sum(w), row by row, in double.
    auto p = reference_softmax(x, 1, false);
    double worst = 0;
    for (int64_t r = 0; r < 48; ++r) {
      double dot = 0, sw = 0;
      for (int64_t j = 0; j < 1000; ++j) dot += double(w(r, j)) * p(r, j), sw += w(r, j);
      for (int64_t j = 0; j < 1000; ++j) {
        double ref = log ? w(r, j) - p(r, j) * sw : p(r, j) * (w(r, j) - dot);
        worst = std::max(worst, std::abs(ref - v.grad()(r, j)));
      }
    }
    CHECK(worst < 5e-5);
  }
}

TEST_CASE("softmax errors name the op and the axis", "[softmax][errors]") {
  auto x = Tensor<float>::zeros({2, 3});
  try {
    softmax(x, 2);
    FAIL("expected IndexError");
  } catch (const IndexError& e) {
    CHECK_THAT(e.what(), Contains("softmax") && Contains("axis 2"));
  }
  auto v = Var<float>::parameter(x);
  try {
    log_softmax(v, -3);
    FAIL("expected IndexError");
  } catch (const IndexError& e) {
    CHECK_THAT(e.what(), Contains("log_softmax") && Contains("axis -3"));
  }
}
