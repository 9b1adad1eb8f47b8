// channel_mix: values and gradients against the same math composed from broadcasting ops
// (small, strided and threaded shapes), gradchecks of both forms, inputs that need no
// gradient, and shape errors.
#include <catch2/catch.hpp>
#include <vector>

#include "ternary/autograd/gradcheck.hpp"
#include "ternary/ops/channel_mix.hpp"
#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/reduce.hpp"
#include "test_util.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

namespace {
double max_abs_diff(const Tensor<float>& a, const Tensor<float>& b) {
  REQUIRE(a.shape() == b.shape());
  const auto va = a.to_vector(), vb = b.to_vector();
  double m = 0;
  for (size_t i = 0; i < va.size(); ++i) m = std::max(m, double(std::abs(va[i] - vb[i])));
  return m;
}
}  // namespace

TEST_CASE("channel_mix matches a * x + b * y and x + b * y, values and gradients", "[mix]") {
  Rng rng(31);
  std::vector<Tensor<float>> xs = {
      Tensor<float>::randn({3, 5}, rng), Tensor<float>::randn({2, 3, 16}, rng),
      Tensor<float>::randn({17, 4}, rng).t(),   // a transposed view: D = 17 (a SIMD tail)
      Tensor<float>::randn({64, 40, 24}, rng),  // 61,440 values: the threaded path
  };
  for (const auto& x_in : xs) {
    const int64_t D = x_in.size(-1);
    INFO("shape " << x_in.shape());
    auto y_in = Tensor<float>::randn(x_in.shape(), rng);
    auto a_in = Tensor<float>::randn({D}, rng), b_in = Tensor<float>::randn({D}, rng);
    auto w = Tensor<float>::randn(x_in.shape(), rng);  // loss = sum(w * out)
    for (bool with_a : {true, false}) {
      auto a = Var<float>::parameter(a_in.clone()), b = Var<float>::parameter(b_in.clone());
      auto x = Var<float>::parameter(x_in.clone()), y = Var<float>::parameter(y_in.clone());
      auto a2 = Var<float>::parameter(a_in.clone()), b2 = Var<float>::parameter(b_in.clone());
      auto x2 = Var<float>::parameter(x_in.clone()), y2 = Var<float>::parameter(y_in.clone());
      // One graph at a time: backward() consumes the tape.
      auto out = with_a ? channel_mix(a, x, b, y) : channel_mix(x, b, y);
      sum(out * Var<float>::constant(w)).backward();
      auto ref = with_a ? a2 * x2 + b2 * y2 : x2 + b2 * y2;
      sum(ref * Var<float>::constant(w)).backward();
      CHECK(max_abs_diff(out.value(), ref.value()) < 1e-5);
      CHECK(max_abs_diff(x.grad(), x2.grad()) < 1e-5);
      CHECK(max_abs_diff(y.grad(), y2.grad()) < 1e-5);
      CHECK(max_abs_diff(b.grad(), b2.grad()) < 1e-3);  // sums of up to 15k products
      if (with_a) CHECK(max_abs_diff(a.grad(), a2.grad()) < 1e-3);
      CHECK(max_abs_diff(channel_mix(x_in, b_in, y_in), (x2 + b2 * y2).value()) < 1e-5);
    }
  }
}

TEST_CASE("channel_mix gradchecks", "[mix][grad]") {
  Rng rng(32);
  auto x = Tensor<double>::randn({2, 3, 6}, rng), y = Tensor<double>::randn({2, 3, 6}, rng);
  auto a = Tensor<double>::randn({6}, rng), b = Tensor<double>::randn({6}, rng);
  auto r1 = gradcheck(
      [](std::vector<Var<double>>& in) { return channel_mix(in[0], in[1], in[2], in[3]); },
      {a, x, b, y});
  INFO(r1.report);
  CHECK(r1.ok);
  auto r2 = gradcheck([](std::vector<Var<double>>& in) { return channel_mix(in[0], in[1], in[2]); },
                      {x, b, y});
  INFO(r2.report);
  CHECK(r2.ok);
  // Inside a graph: x feeds both operands, the weights come from a strided row of a matrix.
  auto r3 = gradcheck(
      [](std::vector<Var<double>>& in) {
        return channel_mix(select(in[1], 0, 0), in[0], select(in[1], 0, 1), in[0] * in[0]);
      },
      {x, Tensor<double>::randn({2, 6}, rng)});
  INFO(r3.report);
  CHECK(r3.ok);
}

TEST_CASE("channel_mix: operands without gradients, empty inputs", "[mix]") {
  Rng rng(33);
  auto x = Var<float>::parameter(Tensor<float>::randn({4, 8}, rng));
  auto y = Var<float>::constant(Tensor<float>::randn({4, 8}, rng));
  auto b = Var<float>::constant(Tensor<float>::randn({8}, rng));
  sum(channel_mix(x, b, y)).backward();
  CHECK(max_abs_diff(x.grad(), Tensor<float>::ones({4, 8})) == 0);  // g itself
  auto e = Var<float>::parameter(Tensor<float>::zeros({0, 8}));
  auto eb = Var<float>::parameter(Tensor<float>::ones({8}));
  auto out = channel_mix(e, eb, e);
  CHECK(out.shape() == Shape{0, 8});
  sum(out).backward();
  CHECK(max_abs_diff(eb.grad(), Tensor<float>::zeros({8})) == 0);
}

TEST_CASE("channel_mix shape errors name the shapes", "[mix][errors]") {
  auto x = Tensor<float>::zeros({2, 4}), y = Tensor<float>::zeros({2, 5});
  auto w4 = Tensor<float>::ones({4}), w5 = Tensor<float>::ones({5});
  CHECK_THROWS_AS(channel_mix(x, w4, y), ShapeError);
  CHECK_THROWS_WITH(channel_mix(x, w4, y), Contains("[2, 4]") && Contains("[2, 5]"));
  CHECK_THROWS_WITH(channel_mix(x, w5, x), Contains("must be [4]"));
  CHECK_THROWS_WITH(channel_mix(w5, x, w4, x), Contains("must be [4]"));
  CHECK_THROWS_WITH(channel_mix(Tensor<float>::ones({2, 4}), x, w4, x), Contains("[2, 4]"));
}
