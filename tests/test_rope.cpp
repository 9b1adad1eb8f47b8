// Tests for ops/rope.hpp: values against a hand-written rotation, identity at position 0,
// norm of each rotated pair, relative-position property, gradients, shape errors.
#include <catch2/catch.hpp>
#include <cmath>

#include "ternary/autograd/gradcheck.hpp"
#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/reduce.hpp"
#include "ternary/ops/rope.hpp"
#include "ternary/ops/view.hpp"

using namespace ternary;

namespace {

// Direct transcription of the documented convention, in double, element by element.
template <class T>
Tensor<double> rope_naive(const Tensor<T>& x, double base, int64_t offset) {
  const int64_t dh = x.size(-1), half = dh / 2, seq = x.size(-2);
  auto xd = x.template to<double>();
  auto out = Tensor<double>::empty(x.shape());
  const int64_t rows = x.numel() / dh;
  for (int64_t r = 0; r < rows; ++r) {
    const double pos = double(offset + r % seq);
    for (int64_t i = 0; i < half; ++i) {
      const double ang = pos * std::pow(base, -2.0 * double(i) / double(dh));
      const double x1 = xd.data()[r * dh + i], x2 = xd.data()[r * dh + half + i];
      out.data()[r * dh + i] = x1 * std::cos(ang) + x2 * std::sin(ang);
      out.data()[r * dh + half + i] = -x1 * std::sin(ang) + x2 * std::cos(ang);
    }
  }
  return out;
}

}  // namespace

TEST_CASE("rope: position 0 is the identity", "[rope]") {
  Rng rng(1);
  auto x = Tensor<float>::randn({2, 3, 1, 10}, rng);
  auto y = rope(x);
  REQUIRE(y.shape() == x.shape());
  CHECK(max_abs_diff(x, y) == 0.0);
}

TEST_CASE("rope: hand-computed small case", "[rope]") {
  // Dh = 4, base = 100: freq_0 = 1, freq_1 = 100^(-1/2) = 0.1. Pairs (0, 2) and (1, 3).
  auto x = Tensor<double>::from({1, 1, 3, 4}, {1, 2, 3, 4,  //
                                               1, 2, 3, 4,  //
                                               -1, 0.5, 2, -3});
  auto y = rope(x, 100.0);
  for (int64_t t = 0; t < 3; ++t) {
    const double a0 = double(t) * 1.0, a1 = double(t) * 0.1;
    const double x0 = x(0, 0, t, 0), x1 = x(0, 0, t, 1), x2 = x(0, 0, t, 2), x3 = x(0, 0, t, 3);
    CHECK(y(0, 0, t, 0) == Approx(x0 * std::cos(a0) + x2 * std::sin(a0)).epsilon(1e-14));
    CHECK(y(0, 0, t, 2) == Approx(-x0 * std::sin(a0) + x2 * std::cos(a0)).epsilon(1e-14));
    CHECK(y(0, 0, t, 1) == Approx(x1 * std::cos(a1) + x3 * std::sin(a1)).epsilon(1e-14));
    CHECK(y(0, 0, t, 3) == Approx(-x1 * std::sin(a1) + x3 * std::cos(a1)).epsilon(1e-14));
  }
  // Position 1, first pair, angle 1 rad: (1, 3) -> (cos 1 + 3 sin 1, -sin 1 + 3 cos 1).
  CHECK(y(0, 0, 1, 0) == Approx(std::cos(1.0) + 3 * std::sin(1.0)));
  CHECK(y(0, 0, 1, 2) == Approx(-std::sin(1.0) + 3 * std::cos(1.0)));
}

TEST_CASE("rope: matches the naive rotation on random shapes, offsets and layouts", "[rope]") {
  Rng rng(2);
  struct Case {
    Shape shape;
    double base;
    int64_t offset;
  };
  for (const Case& c : {Case{{2, 3, 7, 6}, 10000.0, 0}, Case{{1, 2, 5, 34}, 10000.0, 3},
                        Case{{3, 1, 9, 64}, 500000.0, 17}, Case{{4, 2}, 10.0, 1000},
                        Case{{2, 4, 3, 16}, 10000.0, 2}}) {
    auto xd = Tensor<double>::randn(c.shape, rng);
    CHECK(max_abs_diff(rope(xd, c.base, c.offset), rope_naive(xd, c.base, c.offset)) < 1e-12);
    auto xf = Tensor<float>::randn(c.shape, rng);
    CHECK(max_abs_diff(rope(xf, c.base, c.offset).to<double>(), rope_naive(xf, c.base, c.offset)) <
          1e-5);
  }
  // A non-contiguous input: [B, T, H, Dh] viewed as [B, H, T, Dh].
  auto raw = Tensor<float>::randn({2, 5, 3, 12}, rng);
  auto xt = raw.transpose(1, 2);
  REQUIRE_FALSE(xt.is_contiguous());
  CHECK(max_abs_diff(rope(xt).to<double>(), rope_naive(xt.contiguous(), 10000.0, 0)) < 1e-5);
}

TEST_CASE("rope: offsets continue the sequence; the table survives growth", "[rope]") {
  Rng rng(3);
  auto x = Tensor<double>::randn({1, 2, 40, 8}, rng);
  auto full = rope(x);
  // Later positions via position_offset (asks the cache for a longer table, then a shorter one).
  for (int64_t off : {30, 5, 39, 0}) {
    auto tail = x.narrow(2, off, 40 - off);
    CHECK(max_abs_diff(rope(tail, 10000.0, off), full.narrow(2, off, 40 - off).contiguous()) <
          1e-15);
  }
  auto big = rope(x.narrow(2, 0, 1), 10000.0, 100000);
  CHECK(max_abs_diff(big, rope_naive(x.narrow(2, 0, 1).contiguous(), 10000.0, 100000)) < 1e-9);
}

TEST_CASE("rope: each rotated pair keeps its norm", "[rope]") {
  Rng rng(4);
  auto x = Tensor<float>::randn({2, 3, 11, 18}, rng, 0, 3);
  auto y = rope(x, 10000.0, 7);
  const int64_t half = 9;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < 3; ++h)
      for (int64_t t = 0; t < 11; ++t)
        for (int64_t i = 0; i < half; ++i) {
          const double nx = std::hypot(double(x(b, h, t, i)), double(x(b, h, t, i + half)));
          const double ny = std::hypot(double(y(b, h, t, i)), double(y(b, h, t, i + half)));
          CHECK(ny == Approx(nx).epsilon(1e-5).margin(1e-6));
        }
}

TEST_CASE("rope: q.k after rotation depends only on the relative position", "[rope]") {
  Rng rng(5);
  auto q = Tensor<double>::randn({1, 1, 1, 8}, rng), k = Tensor<double>::randn({1, 1, 1, 8}, rng);
  auto dot_at = [&](int64_t m, int64_t n) {
    auto a = rope(q, 10000.0, m), b = rope(k, 10000.0, n);
    double s = 0;
    for (int64_t i = 0; i < 8; ++i) s += a(0, 0, 0, i) * b(0, 0, 0, i);
    return s;
  };
  CHECK(dot_at(7, 3) == Approx(dot_at(4, 0)).epsilon(1e-12));
  CHECK(dot_at(20, 13) == Approx(dot_at(107, 100)).epsilon(1e-12));
  CHECK(dot_at(3, 3) == Approx(dot_at(0, 0)).epsilon(1e-12));
  CHECK(std::abs(dot_at(5, 0) - dot_at(0, 0)) > 1e-6);  // a nonzero shift does change it
}

TEST_CASE("rope: gradcheck", "[rope][grad]") {
  Rng rng(6);
  SECTION("contiguous, with offset") {
    auto r = gradcheck([](std::vector<Var<double>>& in) { return rope(in[0], 10000.0, 3); },
                       {Tensor<double>::randn({2, 3, 5, 6}, rng)});
    INFO(r.report);
    CHECK(r.ok);
  }
  SECTION("transposed view input, Dh spanning SIMD and tail") {
    auto raw = Tensor<double>::randn({2, 4, 3, 10}, rng);
    auto r = gradcheck([](std::vector<Var<double>>& in) { return rope(in[0], 50.0); },
                       {raw.transpose(1, 2)});
    INFO(r.report);
    CHECK(r.ok);
  }
  SECTION("composed: the gradient flows through a following op") {
    auto r = gradcheck(
        [](std::vector<Var<double>>& in) { return square(rope(in[0] * in[1], 100.0, 1)); },
        {Tensor<double>::randn({1, 2, 4, 4}, rng), Tensor<double>::randn({4}, rng)});
    INFO(r.report);
    CHECK(r.ok);
  }
}

TEST_CASE("rope: backward is the inverse rotation", "[rope][grad]") {
  Rng rng(7);
  auto x = Var<float>::parameter(Tensor<float>::randn({2, 2, 6, 20}, rng));
  auto g = Tensor<float>::randn({2, 2, 6, 20}, rng);
  rope(x, 10000.0, 4).backward(g);
  // R^T R = I, so rotating the gradient back gives g.
  CHECK(max_abs_diff(rope(x.grad(), 10000.0, 4), g) < 1e-5);
}

TEST_CASE("rope: shape and argument errors", "[rope][errors]") {
  CHECK_THROWS_AS(rope(Tensor<float>({2, 3, 4, 5})), ShapeError);
  CHECK_THROWS_AS(rope(Tensor<float>({8})), ShapeError);
  CHECK_THROWS_AS(rope(Tensor<float>({1, 2, 4}), 10000.0, -1), IndexError);
  CHECK_THROWS_AS(rope(Tensor<float>({1, 2, 4}), 0.0), Error);
  CHECK_THROWS_WITH(rope(Var<float>::parameter(Tensor<float>({1, 2, 3, 7}))),
                    Catch::Contains("Dh = 7") && Catch::Contains("even"));
}
