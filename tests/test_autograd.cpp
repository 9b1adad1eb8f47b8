// The tape: gradients of simple graphs, accumulation for reused inputs, NoGrad, errors.
#include <catch2/catch.hpp>

#include "ternary/ternary.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

TEST_CASE("a reused input accumulates its gradient", "[autograd]") {
  auto x = Var<double>::parameter(Tensor<double>::from({2}, {3, -1}));
  auto y = x * x + x;  // dy/dx = 2x + 1 (x used three times)
  sum(y).backward();
  CHECK(x.grad().to_vector() == std::vector<double>{7, -1});
  // A second forward/backward adds to the existing gradient until zero_grad().
  sum(x * 2.0).backward();
  CHECK(x.grad().to_vector() == std::vector<double>{9, 1});
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("the tape records one entry per op and is cleared by backward", "[autograd]") {
  Tape::current().clear();
  auto a = Var<float>::parameter(Tensor<float>::ones({3}));
  auto c = Var<float>::constant(Tensor<float>::ones({3}));
  auto y = exp(a) * c;
  CHECK(Tape::current().size() == 2);
  CHECK(Tape::current().entries()[0].op == std::string("exp"));
  auto only_constants = c * c;  // nothing requires grad: nothing recorded
  CHECK(Tape::current().size() == 2);
  CHECK_FALSE(only_constants.requires_grad());
  sum(y).backward();
  CHECK(Tape::current().size() == 0);
}

TEST_CASE("NoGrad records nothing", "[autograd]") {
  Tape::current().clear();
  auto a = Var<float>::parameter(Tensor<float>::ones({3}));
  {
    NoGrad guard;
    auto y = a * a;
    CHECK_FALSE(y.requires_grad());
    CHECK(Tape::current().size() == 0);
    CHECK_THROWS_WITH(sum(y).backward(), Contains("does not require grad"));
  }
  CHECK(grad_enabled());
  auto z = a * a;
  CHECK(z.requires_grad());
  Tape::current().clear();
}

TEST_CASE("backward twice is an error with a clear message", "[autograd]") {
  auto a = Var<float>::parameter(Tensor<float>::ones({2}));
  auto loss = sum(a * a);
  loss.backward();
  CHECK_THROWS_AS(loss.backward(), AutogradError);
  CHECK_THROWS_WITH(loss.backward(), Contains("second time"));
}

TEST_CASE("backward needs a scalar or an explicit seed", "[autograd]") {
  auto a = Var<double>::parameter(Tensor<double>::from({2}, {1, 2}));
  auto y = a * 3.0;
  CHECK_THROWS_WITH(y.backward(), Contains("shape [2]"));
  y.backward(Tensor<double>::from({2}, {1, 10}));
  CHECK(a.grad().to_vector() == std::vector<double>{3, 30});
}

TEST_CASE("gradcheck reports a wrong backward rule", "[autograd][gradcheck]") {
  // A deliberately wrong op: forward x^2, backward claims x.
  auto bad_square = [](std::vector<Var<double>>& in) {
    const auto& x = in[0];
    return Var<double>::record("bad", Tensor<double>(x.value() * x.value()), {x},
                               [x](const Tensor<double>& g) { x.accumulate_grad(g * x.value()); });
  };
  Rng rng(5);
  auto r = gradcheck(bad_square, {Tensor<double>::randn({4}, rng)});
  CHECK_FALSE(r.ok);
  CHECK_THAT(r.report, Contains("input 0"));
}

// Backward rules that add into a gradient while they write it (Var::accumulate_grad_with: the
// linear's GEMMs with beta = 1, rms_norm's and channel_mix's kernels): each input below gets
// several contributions, in every order the tape produces (fresh buffer, in place into an
// owned one, out of place over a shared one), and must still equal finite differences.
TEST_CASE("gradients added by the producing kernels equal finite differences", "[autograd]") {
  Rng rng(11);
  SECTION("one input into three linears and a residual (the attention's q, k, v)") {
    auto r = gradcheck(
        [](std::vector<Var<double>>& in) {
          const auto& x = in[0];
          return linear(x, in[1]) * linear(x, in[2]) + linear(x, in[3]) + x;
        },
        {Tensor<double>::randn({2, 3, 4}, rng), Tensor<double>::randn({4, 4}, rng),
         Tensor<double>::randn({4, 4}, rng), Tensor<double>::randn({4, 4}, rng)});
    INFO(r.report);
    CHECK(r.ok);
  }
  SECTION("rms_norm and channel_mix over a shared residual stream (the GPT block)") {
    auto r = gradcheck(
        [](std::vector<Var<double>>& in) {
          auto x = channel_mix(in[1], in[0], in[2], in[0]);  // x used twice by one op
          x = channel_mix(x, in[2], rms_norm(x) * 2.0);
          return channel_mix(x, in[1], rms_norm(x, in[3])) * rms_norm(in[0]);
        },
        {Tensor<double>::randn({2, 5, 6}, rng), Tensor<double>::randn({6}, rng),
         Tensor<double>::randn({6}, rng), Tensor<double>::randn({6}, rng)});
    INFO(r.report);
    CHECK(r.ok);
  }
  SECTION("a leaf weight over two backward passes (gradient accumulation)") {
    auto w = Var<double>::parameter(Tensor<double>::randn({3, 4}, rng));
    auto x1 = Var<double>::constant(Tensor<double>::randn({5, 4}, rng));
    auto x2 = Var<double>::constant(Tensor<double>::randn({5, 4}, rng));
    auto s1 = Tensor<double>::randn({5, 3}, rng), s2 = Tensor<double>::randn({5, 3}, rng);
    linear(x1, w).backward(s1);
    linear(x2, w).backward(s2);
    // dw = s1^T x1 + s2^T x2
    auto expected = matmul(s1.t(), x1.value()) + matmul(s2.t(), x2.value());
    CHECK(max_abs_diff(w.grad(), Tensor<double>(expected)) < 1e-12);
  }
}

TEST_CASE("straight_through: the input's gradient, no tape entry of its own", "[autograd]") {
  auto w = Var<double>::parameter(Tensor<double>::from({1, 3}, {0.4, -1.2, 2.0}));
  int ready = 0;
  std::vector<double> at_ready;
  w.set_grad_ready_hook([&] {
    ++ready;
    at_ready = w.grad().to_vector();
  });
  const size_t before = Tape::current().size();
  auto q = Var<double>::straight_through(Tensor<double>::from({1, 3}, {0.0, -1.0, 2.0}), w);
  CHECK(Tape::current().size() == before);  // nothing recorded for q itself
  CHECK(q.requires_grad());
  CHECK_FALSE(q.is_leaf());
  // q read by an expression rule (accumulate_grad) and as linear's weight (its GEMM adds dw in
  // place through accumulate_grad_with): both reach w
  auto y = sum(q * q);  // d/dq = 2 q = (0, -2, 4)
  auto z = sum(linear(Var<double>::constant(Tensor<double>::ones({2, 3})), q));  // d/dq = (2, 2, 2)
  (y + z).backward();
  CHECK(w.grad().to_vector() == std::vector<double>{2.0, 0.0, 6.0});
  CHECK_FALSE(q.grad().defined());
  CHECK(ready == 1);  // the hook fired once, with the final gradient
  CHECK(at_ready == std::vector<double>{2.0, 0.0, 6.0});
  w.set_grad_ready_hook({});
  // a constant input: a constant; a value of another shape: an error
  auto c = Var<double>::constant(Tensor<double>::ones({3}));
  CHECK_FALSE(Var<double>::straight_through(Tensor<double>::ones({3}), c).requires_grad());
  CHECK_THROWS_WITH(Var<double>::straight_through(Tensor<double>::ones({2}), w),
                    Contains("straight_through"));
}
