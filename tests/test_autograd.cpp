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

TEST_CASE("bf16-born gradients: kept for rules that take them, widened for the rest",
          "[autograd]") {
  // Values exactly representable in bf16, so every path gives the same numbers.
  const auto seed = Tensor<float>::from({4}, {0.5f, 1.25f, 3.0f, -2.0f});
  auto to16 = [](const Tensor<float>& g) { return backend::to_bf16(cpu{}, g); };
  auto x = Var<float>::parameter(Tensor<float>::from({4}, {1, 2, 3, 4}));
  Tensor<float> seen;
  Tensor<bf16> seen16;
  // probe(x) = x, with a rule that takes (g, g16); source(y) = y hands y its gradient in bf16
  auto probe = [&](const Var<float>& in) {
    return Var<float>::record("probe", in.value().clone(), {in},
                              [&, in](const Tensor<float>& g, const Tensor<bf16>& g16) {
                                seen = g;
                                seen16 = g16;
                                in.accumulate_grad(g16.defined() ? g16.to<float>() : g);
                              });
  };
  auto source = [&](const Var<float>& in) {
    return Var<float>::record(
        "source", in.value().clone(), {in},
        [in, to16](const Tensor<float>& g) { in.accumulate_grad_bf16(to16(g)); });
  };
  SECTION("one bf16 gradient reaches a two-argument rule as it is") {
    source(probe(x)).backward(seed);
    CHECK_FALSE(seen.defined());
    REQUIRE(seen16.defined());
    CHECK(seen16.to<float>().to_vector() == seed.to_vector());
    CHECK(x.grad().to_vector() == seed.to_vector());
  }
  SECTION("the pure views pass it on in bf16") {
    auto x2 = Var<float>::parameter(Tensor<float>::from({2, 2}, {1, 2, 3, 4}));
    source(reshape(transpose(unsqueeze(permute(probe(x2), {1, 0}), 0), 0, 1), Shape{4}))
        .backward(seed);
    CHECK_FALSE(seen.defined());
    REQUIRE(seen16.defined());
    // seed as [2, 2] after the permute, (0.5, 1.25; 3, -2), is the probe's output transposed
    CHECK(seen16.to<float>().to_vector() == std::vector<float>{0.5f, 3.0f, 1.25f, -2.0f});
    CHECK(x2.grad().to_vector() == std::vector<float>{0.5f, 3.0f, 1.25f, -2.0f});
  }
  SECTION("a second gradient widens the first and adds") {
    auto y = probe(x);
    (source(y) + source(y)).backward(seed);  // two bf16 gradients
    CHECK_FALSE(seen16.defined());
    REQUIRE(seen.defined());
    CHECK(seen.to_vector() == std::vector<float>{1.0f, 2.5f, 6.0f, -4.0f});
    CHECK(x.grad().to_vector() == std::vector<float>{1.0f, 2.5f, 6.0f, -4.0f});
  }
  SECTION("a one-argument rule, and grad(), see it widened") {
    auto y = x * 1.0f;  // an expression rule: reads g in fp32
    source(y).backward(seed);
    CHECK(x.grad().to_vector() == seed.to_vector());
  }
  SECTION("a leaf's gradient is fp32") {
    source(x).backward(seed);
    CHECK(x.grad().to_vector() == seed.to_vector());
    CHECK_THROWS_WITH(x.accumulate_grad_bf16(to16(Tensor<float>::ones({3}))),
                      Contains("accumulate_grad_bf16"));
  }
  SECTION("a multi-output rule taking (grads, grads16) gets each as it came") {
    std::array<Tensor<float>, 2> outs{x.value().clone(), x.value().clone()};
    std::array<bool, 2> as16{};
    std::array<bool, 2> as32{};
    const Var<float> in[] = {x};
    auto ys = Var<float>::record_multi(
        "pair", outs, in, in + 1,
        [&](const std::array<Tensor<float>, 2>& g, const std::array<Tensor<bf16>, 2>& g16) {
          for (size_t k = 0; k < 2; ++k) {
            as32[k] = g[k].defined();
            as16[k] = g16[k].defined();
            x.accumulate_grad(g16[k].defined() ? g16[k].to<float>() : g[k]);
          }
        });
    (source(ys[0]) + ys[1]).backward(seed);
    CHECK((as16[0] && !as32[0] && as32[1] && !as16[1]));
    CHECK(x.grad().to_vector() == std::vector<float>{1.0f, 2.5f, 6.0f, -4.0f});
  }
  // copier(y) = y, whose rule adds y's gradient (plus 0.25, so the copy is seen to be of the
  // sum) into its input through accumulate_grad_with_bf16, writing the bf16 copy too
  bool copy_asked = false;  // the copier's last call was handed a bf16 buffer to fill
  auto copier = [&](const Var<float>& in) {
    return Var<float>::record(
        "copier", in.value().clone(), {in}, [in, to16, &copy_asked](const Tensor<float>& g) {
          in.accumulate_grad_with_bf16(
              [&](const Tensor<float>& dst, const Tensor<float>& prior, const Tensor<bf16>& dst16) {
                copy_asked = dst16.defined();
                Tensor<float> v = g + 0.25f;
                if (prior.defined()) v += prior;
                Tensor<float>(dst).assign(v);
                if (dst16.defined()) {
                  const Tensor<bf16> r = to16(v);
                  std::copy(r.data(), r.data() + r.numel(), dst16.data());
                }
              });
        });
  };
  SECTION("a gradient with its bf16 copy: a two-argument rule gets both") {
    copier(probe(x)).backward(seed);
    REQUIRE(seen.defined());
    REQUIRE(seen16.defined());
    CHECK(seen.to_vector() == std::vector<float>{0.75f, 1.5f, 3.25f, -1.75f});
    CHECK(seen16.to<float>().to_vector() == seen.to_vector());
  }
  SECTION("the copy is dropped when another gradient is added, and through views") {
    auto y = probe(x);
    auto z = y * 1.0f;  // recorded before the copier: its rule adds to y's gradient after
    (copier(y) + z).backward(seed);
    CHECK_FALSE(seen16.defined());
    CHECK(seen.to_vector() == std::vector<float>{1.25f, 2.75f, 6.25f, -3.75f});
    auto x2 = Var<float>::parameter(Tensor<float>::from({4}, {1, 2, 3, 4}));
    copier(reshape(probe(x2), Shape{2, 2})).backward(seed.reshape(Shape{2, 2}));
    CHECK_FALSE(seen16.defined());  // the view passed the fp32 gradient on
    CHECK(seen.to_vector() == std::vector<float>{0.75f, 1.5f, 3.25f, -1.75f});
  }
  SECTION("no copy where the input's own rule reads its gradient in fp32 alone") {
    auto y = x * 1.0f;  // an expression rule: one argument
    copier(y).backward(seed);
    CHECK_FALSE(copy_asked);
    CHECK(x.grad().to_vector() == std::vector<float>{0.75f, 1.5f, 3.25f, -1.75f});
    copier(probe(x)).backward(seed);  // a two-argument rule: the copy is written
    CHECK(copy_asked);
  }
  SECTION("a leaf gets no copy") {
    copier(x).backward(seed);
    CHECK_FALSE(copy_asked);
    CHECK(x.grad().to_vector() == std::vector<float>{0.75f, 1.5f, 3.25f, -1.75f});
  }
  SECTION("channel_mix(x, b, y) passes x its gradient with the copy (accumulate_grad_passing)") {
    auto b = Var<float>::parameter(Tensor<float>::from({4}, {0.5f, 0.5f, 0.5f, 0.5f}));
    auto y = Var<float>::parameter(Tensor<float>::from({4}, {1, 1, 1, 1}));
    copier(channel_mix(probe(x), b, y)).backward(seed);
    CHECK(copy_asked);  // channel_mix's rule takes (g, g16): the copier wrote one
    REQUIRE(seen.defined());
    REQUIRE(seen16.defined());  // ... and x's rule got it beside g
    CHECK(seen.to_vector() == std::vector<float>{0.75f, 1.5f, 3.25f, -1.75f});
    CHECK(seen16.to<float>().to_vector() == seen.to_vector());
    CHECK(y.grad().to_vector() == std::vector<float>{0.375f, 0.75f, 1.625f, -0.875f});
    // with a second gradient for x (here y is x's producer too) the copy is dropped
    auto p = probe(x);
    copier(channel_mix(p, b, p)).backward(seed);
    CHECK_FALSE(seen16.defined());
    CHECK(seen.to_vector() == std::vector<float>{1.125f, 2.25f, 4.875f, -2.625f});
  }
}

// record_bf16_only: a value kept in bf16 alone (the CUDA attention's output for a reader that
// rounds it anyway). Its shape without a widening, views that stay in bf16, the first read in
// T widening it (to the bf16 values), and its gradient through the views as any value's.
TEST_CASE("a value held in bf16 only: shape, views, widened on first read", "[autograd]") {
  auto x = Var<float>::parameter(Tensor<float>::from({2, 3}, {1, 2, 3, 4, 5, 6}));
  auto rounded = Tensor<float>::from({2, 3}, {1.001f, 2, 3, 4, 5, 6.01f});  // not all in bf16
  auto half = [&](const Var<float>& in) {  // y = bf16(rounded), dy/dx = 1
    return Var<float>::record_bf16_only("half", backend::to_bf16(cpu{}, rounded), {in},
                                        [in](const Tensor<float>& g) { in.accumulate_grad(g); });
  };
  const auto expect = backend::to_bf16(cpu{}, rounded).to<float>().to_vector();
  auto y = half(x);
  CHECK(y.value_in_bf16_only());
  CHECK(y.shape() == Shape{2, 3});
  CHECK(y.dim() == 2);
  CHECK(y.size(-1) == 3);
  CHECK(y.numel() == 6);
  auto v = reshape(transpose(y, 0, 1), Shape{6});
  CHECK(v.value_in_bf16_only());  // views of it stay in bf16
  CHECK(y.value_in_bf16_only());
  REQUIRE(v.value_bf16().defined());
  CHECK(transpose(y, 0, 1).value_bf16().to<float>().to_vector() ==
        std::vector<float>{expect[0], expect[3], expect[1], expect[4], expect[2], expect[5]});
  CHECK(y.value().to_vector() == expect);  // the first read in float widens the bf16 copy
  CHECK_FALSE(y.value_in_bf16_only());
  CHECK(expect[0] != 1.001f);
  sum(v * Var<float>::constant(Tensor<float>::from({6}, {1, 2, 3, 4, 5, 6}))).backward();
  CHECK(x.grad().to_vector() == std::vector<float>{1, 3, 5, 2, 4, 6});
  CHECK_THROWS_WITH(
      Var<float>::record_bf16_only("none", Tensor<bf16>(), {x}, [](const Tensor<float>&) {}),
      Contains("no bf16 output"));
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
