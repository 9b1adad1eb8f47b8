// Tests for ops/head_norm_rope.hpp: values and gradients against the composition
// rope(rms_norm(x)) * gain of the separate ops, finite differences, layouts (the token-major
// head view in, the same layout out and back), errors.
#include <catch2/catch.hpp>

#include "ternary/autograd/gradcheck.hpp"
#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/head_norm_rope.hpp"
#include "ternary/ops/norm.hpp"
#include "ternary/ops/reduce.hpp"
#include "ternary/ops/rope.hpp"
#include "ternary/ops/view.hpp"

using namespace ternary;

namespace {

// The same function from the separate differentiable ops.
template <class T>
Var<T> composed(const Var<T>& x, const Var<T>* gain, double eps, double base) {
  auto y = rope(rms_norm(x, eps), base);
  return gain ? y * reshape(*gain, {x.size(1), 1, 1}) : y;
}

// [B, T, H, Dh] memory viewed as [B, H, T, Dh], as the GPT splits its projections.
Tensor<float> token_major(const Shape& bhtd, Rng& rng) {
  return Tensor<float>::randn({bhtd[0], bhtd[2], bhtd[1], bhtd[3]}, rng).permute({0, 2, 1, 3});
}

}  // namespace

TEST_CASE("head_norm_rope: values and gradients equal the composed ops", "[head_norm_rope]") {
  Rng rng(1);
  for (const Shape& s : {Shape{2, 3, 5, 6}, Shape{1, 4, 9, 64}, Shape{2, 2, 7, 10},
                         Shape{1, 2, 3, 128}, Shape{3, 1, 1, 2}}) {
    for (bool with_gain : {false, true}) {
      for (bool tm : {false, true}) {
        INFO("shape " << s << (with_gain ? ", gain" : "") << (tm ? ", token-major" : ""));
        const auto xv = tm ? token_major(s, rng) : Tensor<float>::randn(s, rng, 0.5, 2.0);
        const auto gv = Tensor<float>::rand({s[1]}, rng, 0.5, 2.0);
        const auto seed = Tensor<float>::randn(s, rng);
        auto x1 = Var<float>::parameter(xv.clone()), g1 = Var<float>::parameter(gv.clone());
        auto x2 = Var<float>::parameter(xv.clone()), g2 = Var<float>::parameter(gv.clone());
        // one graph at a time: backward() frees the thread's tape
        auto y1 = with_gain ? head_norm_rope(x1, g1, 1e-6, 500.0) : head_norm_rope(x1, 1e-6, 500.0);
        y1.backward(seed);
        auto y2 = composed(x2, with_gain ? &g2 : nullptr, 1e-6, 500.0);
        y2.backward(seed);
        CHECK(max_abs_diff(y1.value(), y2.value()) < 2e-5);
        CHECK(max_abs_diff(x1.grad(), x2.grad()) < 5e-5);
        if (with_gain) CHECK(max_abs_diff(g1.grad(), g2.grad()) < 5e-4);
        // the tensor-level op gives the same values
        auto t = with_gain ? head_norm_rope(xv, gv, 1e-6, 500.0) : head_norm_rope(xv, 1e-6, 500.0);
        CHECK(max_abs_diff(t, y1.value()) == 0.0);
      }
    }
  }
}

TEST_CASE("head_norm_rope: a token-major view in gives token-major output and gradient",
          "[head_norm_rope]") {
  Rng rng(2);
  const auto xv = token_major({2, 4, 6, 8}, rng);
  REQUIRE_FALSE(xv.is_contiguous());
  CHECK(head_norm_rope(xv, 1e-6, 10000.0).permute({0, 2, 1, 3}).is_contiguous());
  // An inner node's gradient keeps that layout: the head split's backward needs no copy.
  auto pre = Var<float>::parameter(Tensor<float>::randn({2, 6, 32}, rng));
  auto heads = permute(reshape(pre * 2.0f, {2, 6, 4, 8}), {0, 2, 1, 3});
  auto z = head_norm_rope(heads, 1e-6, 10000.0);
  sum(square(z)).backward();
  REQUIRE(pre.grad().defined());
  // the same gradient as the composed ops
  auto pre2 = Var<float>::parameter(pre.value().clone());
  auto heads2 = permute(reshape(pre2 * 2.0f, {2, 6, 4, 8}), {0, 2, 1, 3});
  sum(square(composed(heads2, static_cast<const Var<float>*>(nullptr), 1e-6, 10000.0))).backward();
  CHECK(max_abs_diff(pre.grad(), pre2.grad()) < 1e-4);
}

TEST_CASE("head_norm_rope: gradcheck", "[head_norm_rope][grad]") {
  Rng rng(3);
  SECTION("with gain") {
    auto r = gradcheck(
        [](std::vector<Var<double>>& in) { return head_norm_rope(in[0], in[1], 1e-6, 100.0); },
        {Tensor<double>::randn({2, 3, 4, 6}, rng), Tensor<double>::rand({3}, rng, 0.5, 2.0)});
    INFO(r.report);
    CHECK(r.ok);
  }
  SECTION("without gain, a token-major view, Dh = 64 (the register path on CUDA)") {
    auto raw = Tensor<double>::randn({1, 3, 2, 64}, rng);
    auto r =
        gradcheck([](std::vector<Var<double>>& in) { return head_norm_rope(in[0], 1e-5, 10000.0); },
                  {raw.permute({0, 2, 1, 3})});
    INFO(r.report);
    CHECK(r.ok);
  }
  SECTION("composed: the gradient flows through a following op, large eps") {
    auto r = gradcheck(
        [](std::vector<Var<double>>& in) {
          return square(head_norm_rope(in[0] * in[1], in[2], 0.5, 50.0));
        },
        {Tensor<double>::randn({1, 2, 5, 4}, rng), Tensor<double>::randn({4}, rng),
         Tensor<double>::randn({2}, rng)});
    INFO(r.report);
    CHECK(r.ok);
  }
}

TEST_CASE("head_norm_rope: empty inputs", "[head_norm_rope]") {
  auto x = Var<float>::parameter(Tensor<float>({2, 3, 0, 4}));
  auto g = Var<float>::parameter(Tensor<float>::ones({3}));
  auto y = head_norm_rope(x, g);
  CHECK(y.shape() == Shape{2, 3, 0, 4});
  sum(y).backward();
  CHECK(max_abs_diff(g.grad(), Tensor<float>::zeros({3})) == 0.0);
}

TEST_CASE("head_norm_rope: shape and argument errors", "[head_norm_rope][errors]") {
  CHECK_THROWS_WITH(head_norm_rope(Tensor<float>({2, 3, 4})),
                    Catch::Contains("[B, H, T, Dh]") && Catch::Contains("[2, 3, 4]"));
  CHECK_THROWS_WITH(head_norm_rope(Tensor<float>({1, 2, 3, 7})),
                    Catch::Contains("Dh = 7") && Catch::Contains("even"));
  CHECK_THROWS_WITH(head_norm_rope(Tensor<float>({1, 2, 3, 8}), Tensor<float>({3})),
                    Catch::Contains("one value per head") && Catch::Contains("[2]"));
  CHECK_THROWS_AS(head_norm_rope(Tensor<float>({1, 2, 3, 8}), -1.0), Error);
  CHECK_THROWS_AS(head_norm_rope(Tensor<float>({1, 2, 3, 8}), 1e-6, 0.0), Error);
  CHECK_THROWS_AS(head_norm_rope(Var<float>::parameter(Tensor<float>({1, 2, 3, 7}))), ShapeError);
}
