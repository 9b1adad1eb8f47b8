// Ternary weights (absmean, STE, QuEST), int8 activations and the lambda schedule.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <limits>
#include <set>

#include "ternary/bitlinear.hpp"

using namespace ternary;
using namespace ternary::quant;
using Catch::Matchers::Contains;

TEST_CASE("absmean ternary quantization by hand", "[quant]") {
  // mean |w| = (0.2 + 0.5 + 1.0 + 2.3) / 4 = 1.0 (+ eps): w / s = 0.2, -0.5, 1.0, 2.3
  auto w = Tensor<float>::from({4}, {0.2f, -0.5f, 1.0f, 2.3f});
  auto q = quantize_absmean(w, {Granularity::per_tensor, 128, 0.0});
  CHECK(q.scales == std::vector<float>{1.0f});
  CHECK(q.trits == std::vector<int8_t>{0, 0, 1, 1});  // -0.5 rounds half to even: -0
  // eps is added to the scale
  auto qe = quantize_absmean(w, {Granularity::per_tensor, 128, 0.5});
  CHECK(qe.scales[0] == Approx(1.5f));
  // an all-zero tensor: scale eps, all trits 0, no NaN
  auto z = quantize_absmean(Tensor<float>::zeros({3}), {});
  CHECK(z.trits == std::vector<int8_t>{0, 0, 0});
  CHECK(z.scales[0] == Approx(1e-5f));
  // negative zero and exact ties at +-1.5 (-> +-2 -> clamped to +-1) and +-0.5 (-> 0)
  auto t = Tensor<float>::from({6}, {-0.0f, 0.5f, -0.5f, 1.5f, -1.5f, 0.0f});
  auto qt = quantize_absmean(t, {Granularity::per_tensor, 128, 0.0});
  CHECK(qt.scales[0] == Approx(4.0f / 6.0f));
  // w / s = 0, .75, -.75, 2.25, -2.25, 0
  CHECK(qt.trits == std::vector<int8_t>{0, 1, -1, 1, -1, 0});
  auto halves = quantize_absmean(Tensor<float>::from({4}, {0.5f, -0.5f, 1.5f, -1.5f}),
                                 {Granularity::per_tensor, 128, 0.0});
  // s = 1: 0.5 -> 0, -0.5 -> -0, 1.5 -> 2 -> 1, -1.5 -> -1
  CHECK(halves.trits == std::vector<int8_t>{0, 0, 1, -1});
}

TEST_CASE("per-row and per-group scales", "[quant]") {
  auto w = Tensor<float>::from({2, 4}, {1, -1, 1, -1, 4, 0, 0, 0});
  auto rows = quantize_absmean(w, {Granularity::per_row, 128, 0.0});
  CHECK(rows.group == 4);
  CHECK(rows.scales == std::vector<float>{1.0f, 1.0f});
  CHECK(rows.trits == std::vector<int8_t>{1, -1, 1, -1, 1, 0, 0, 0});
  auto groups = quantize_absmean(w, {Granularity::per_group, 2, 0.0});
  CHECK(groups.scales == std::vector<float>{1.0f, 1.0f, 2.0f, 0.0f});
  CHECK(groups.dequantize()(1, 0) == 2.0f);
  CHECK_THROWS_WITH(quantize_absmean(w, {Granularity::per_group, 3, 0.0}),
                    Contains("group size 3"));
}

TEST_CASE("the STE passes the gradient straight through, lambda blends exactly", "[quant]") {
  Rng rng(1);
  auto w = Var<float>::parameter(Tensor<float>::randn({3, 5}, rng));
  auto g = Tensor<float>::randn({3, 5}, rng);
  auto y = STE::apply(w, {}, 1.0);
  y.backward(g);
  CHECK(max_abs_diff(w.grad(), g) == 0.0);
  auto q = quantize_absmean(w.value()).dequantize();
  CHECK(max_abs_diff(y.value(), q) == 0.0);  // lambda = 1: exactly q(w)
  NoGrad ng;
  CHECK(max_abs_diff(STE::apply(w, {}, 0.0).value(), w.value()) == 0.0);  // lambda = 0: exactly w
  auto half = STE::apply(w, {}, 0.5).value();
  CHECK(half(1, 2) == Approx(0.5f * (w.value()(1, 2) + q(1, 2))));
  Ternary<STE> tw(w, {});
  CHECK(tw.quantized().trits == quantize_absmean(w.value()).trits);
}

TEST_CASE("int8 activations per token, by hand", "[quant]") {
  // row max 2: s = 63.5; 1 -> 63.5 -> 64 (half to even) -> 64 / 63.5
  auto x = Tensor<float>::from({2, 3}, {2.0f, -1.0f, 0.01f, 0.0f, 0.0f, 0.0f});
  std::vector<int8_t> q;
  std::vector<float> s;
  quantize_rows_int8(x, q, s);
  CHECK(s[0] == Approx(63.5f));
  CHECK(q == std::vector<int8_t>{127, -64, 1, 0, 0, 0});
  CHECK(s[1] == 1.0f);  // a zero row: no division by zero
  auto fq = fake_quantize_int8(x);
  CHECK(fq(0, 1) == Approx(-64.0f / 63.5f));
  CHECK(fq(1, 2) == 0.0f);
  auto v = Var<float>::parameter(x);
  auto y = quantize_activations(v);
  y.backward(Tensor<float>::ones({2, 3}));
  CHECK(v.grad().to_vector() == std::vector<float>(6, 1.0f));  // straight through
}

static int zeros_in_row(const Tensor<float>& m, int64_t r) {
  int z = 0;
  for (int64_t i = 0; i < m.size(1); ++i) z += m(r, i) == 0.0f;
  return z;
}

TEST_CASE("QuEST: Hadamard transform, Gaussian clip, trust mask", "[quant][quest]") {
  // The orthonormal Walsh-Hadamard transform is its own inverse.
  std::vector<double> x{1, 2, 3, 4, 5, 6, 7, 8}, y = x;
  fwht(y.data(), 8);
  CHECK(y[0] == Approx(36 / std::sqrt(8.0)));
  fwht(y.data(), 8);
  for (int i = 0; i < 8; ++i) CHECK(y[i] == Approx(x[i]));

  Rng rng(2);
  auto w = Tensor<float>::randn({4, 16}, rng);
  w(0, 3) = 40.0f;  // an outlier: the rotation spreads it over its whole row
  TernaryConfig rc;
  rc.granularity = Granularity::per_row;
  auto q = QuEST::quantize(w, rc);
  REQUIRE(q.group == 16);
  REQUIRE(q.hadamard == 16);
  // scale = 1.224 * rms of the transformed row
  std::vector<float> h(w.data() + 16, w.data() + 32);
  fwht(h.data(), 16);
  double ss = 0;
  for (float e : h) ss += double(e) * e;
  CHECK(q.scales[1] == Approx(kGaussianTernaryClip * std::sqrt(ss / 16) + rc.eps).epsilon(1e-6));
  // The mask is 0 exactly where the rounding error exceeds half a step.
  auto mask = QuEST::trust_mask(w, rc);
  int zeros = 0;
  for (int64_t r = 0; r < 4; ++r) {
    std::vector<float> hr(w.data() + r * 16, w.data() + r * 16 + 16);
    fwht(hr.data(), 16);
    for (int i = 0; i < 16; ++i) {
      const double err = std::abs(hr[i] - q.scales[r] * q.trits[r * 16 + i]);
      CHECK(mask(r, i) == (err <= q.scales[r] / 2.0 ? 1.0f : 0.0f));
      // with trust = 1 that is exactly the clipped entries
      CHECK(mask(r, i) == (std::abs(hr[i]) <= 1.5 * q.scales[r] ? 1.0f : 0.0f));
      zeros += mask(r, i) == 0.0f;
    }
  }
  CHECK(zeros > 0);
  // Its gradient: H (mask * H g); with an all-trusted row it is g itself.
  auto wv = Var<float>::parameter(w);
  auto g = Tensor<float>::randn({4, 16}, rng);
  QuEST::apply(wv, rc, 1.0).backward(g);
  std::vector<float> gr(g.data() + 16, g.data() + 32);
  fwht(gr.data(), 16);
  for (int i = 0; i < 16; ++i) gr[i] *= mask(1, i);
  fwht(gr.data(), 16);
  for (int i = 0; i < 16; ++i) CHECK(wv.grad()(1, i) == Approx(gr[i]).margin(1e-5));
  // A row with masked entries does lose gradient; with every entry trusted it is g itself.
  // the outlier row: every rotated coefficient is about +-40 / 4 = +-10, none clipped
  CHECK(zeros_in_row(mask, 0) == 0);
  int64_t masked_row = 0;
  for (int64_t r = 1; r < 4; ++r)
    if (zeros_in_row(mask, r) > zeros_in_row(mask, masked_row)) masked_row = r;
  REQUIRE(zeros_in_row(mask, masked_row) > 0);
  CHECK(max_abs_diff(wv.grad().select(0, masked_row), g.select(0, masked_row)) > 1e-3);
  TernaryConfig all = rc;
  all.trust = 1e9;
  auto wv2 = Var<float>::parameter(w);
  QuEST::apply(wv2, all, 1.0).backward(g);
  CHECK(max_abs_diff(wv2.grad(), g) < 1e-5);
  CHECK_THROWS_WITH(QuEST::quantize(Tensor<float>::zeros({2, 12}), {}), Contains("power of two"));
  TernaryConfig g12;
  g12.granularity = Granularity::per_group;
  g12.group_size = 12;
  CHECK_THROWS_WITH(QuEST::quantize(Tensor<float>::zeros({2, 24}), g12), Contains("power of two"));
}

TEST_CASE("the layer-wise lambda schedule", "[quant][schedule]") {
  LambdaSchedule s(4, 400, 100);  // windows of 100 steps from step 100, layers 0..3 in order
  CHECK(s.lambda(0, 0) == 0.0);
  CHECK(s.lambda(0, 150) == Approx(0.5));
  CHECK(s.lambda(0, 200) == 1.0);
  CHECK(s.lambda(1, 200) == 0.0);
  CHECK(s.lambda(1, 250) == Approx(0.5));
  CHECK(s.lambda(3, 499) == Approx(0.99));
  CHECK(s.lambda(3, 500) == 1.0);
  CHECK(s.end() == 500);
  LambdaSchedule r(4, 400, 0, LambdaSchedule::reversed(4));
  CHECK(r.lambda(3, 50) == Approx(0.5));
  CHECK(r.lambda(0, 50) == 0.0);
  CHECK(r.lambda(0, 350) == Approx(0.5));
  CHECK_THROWS_WITH(LambdaSchedule(3, 10, 0, {0, 0, 1}), Contains("permutation"));
  CHECK_THROWS_AS(s.lambda(4, 0), IndexError);
}

TEST_CASE("quantizers reject NaN and inf instead of producing garbage trits", "[quant]") {
  auto w = Tensor<float>::from({2, 2}, {1, 2, 3, 4});
  w(1, 0) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(quantize_absmean(w), Contains("NaN or inf"));
  TernaryConfig rows;
  rows.granularity = Granularity::per_row;
  CHECK_THROWS_WITH(quantize_absmean(w, rows), Contains("scale group 1"));
  CHECK_THROWS_WITH(QuEST::quantize(w, rows), Contains("NaN or inf"));
  auto x = Tensor<float>::from({3, 2}, {1, 2, 3, 4, 5, 6});
  x(2, 1) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(fake_quantize_int8(x), Contains("row 2"));
}

TEST_CASE("int8 activations: negative zero, clamping range, lambda blend", "[quant]") {
  // -0 stays a zero code; the row max maps to exactly +-127 (never -128).
  auto x = Tensor<float>::from({2, 4}, {-0.0f, -3.0f, 1.5f, 0.75f, 0.25f, -0.5f, 0.0f, 0.125f});
  std::vector<int8_t> q;
  std::vector<float> s;
  quantize_rows_int8(x, q, s);
  // row 0: s = 127 / 3; 1.5 s = 63.5 -> 64 (half to even), 0.75 s = 31.75 -> 32
  // row 1: s = 254; 0.25 s = 63.5 -> 64, 0.125 s = 31.75 -> 32
  CHECK(q == std::vector<int8_t>{0, -127, 64, 32, 64, -127, 0, 32});
  CHECK(s[0] == Approx(127.0f / 3.0f));
  CHECK(s[1] == 254.0f);
  // lambda = 0 is the identity, 1 the fake-quantized tensor, in between the blend
  auto v = Var<float>::parameter(x);
  CHECK(max_abs_diff(quantize_activations(v, 0.0).value(), x) == 0.0);
  auto fq = fake_quantize_int8(x);
  CHECK(max_abs_diff(quantize_activations(v, 1.0).value(), fq) == 0.0);
  CHECK(quantize_activations(v, 0.25).value()(0, 2) == Approx(1.5f + 0.25f * (fq(0, 2) - 1.5f)));
  // a non-contiguous (transposed) input quantizes its own rows
  auto xt = x.t();
  auto fqt = fake_quantize_int8(xt);
  // rows of x^T: (-0, 0.25) and (-3, -0.5); -0.5 * 127 / 3 = -21.17 -> -21
  CHECK(fqt(0, 1) == 0.25f);
  CHECK(fqt(1, 0) == Approx(-3.0f));
  CHECK(fqt(1, 1) == Approx(-21.0f * 3.0f / 127.0f));
}

TEST_CASE("the Gaussian-fit clip: 1.2240 sigma minimises the ternary MSE of N(0, 1)",
          "[quant][quest]") {
  // MSE(a) = E[(X - q_a(X))^2], q_a rounds to {-a, 0, a}; Simpson's rule on [-10, 10].
  auto mse = [](double a) {
    const int n = 200000;
    const double lo = -10, h = 20.0 / n;
    double acc = 0;
    for (int i = 0; i <= n; ++i) {
      const double x = lo + i * h;
      const double q = std::abs(x) < a / 2 ? 0.0 : (x > 0 ? a : -a);
      const double f = (x - q) * (x - q) * std::exp(-x * x / 2) / std::sqrt(2 * M_PI);
      acc += f * (i == 0 || i == n ? 1 : (i % 2 ? 4 : 2));
    }
    return acc * h / 3;
  };
  const double a = kGaussianTernaryClip;
  CHECK(mse(a) == Approx(0.190174).margin(2e-6));
  CHECK(mse(a) < mse(a - 0.01));
  CHECK(mse(a) < mse(a + 0.01));
  // and it is the centroid of its upper cell: a = phi(a/2) / Q(a/2)
  const double t = a / 2;
  const double centroid =
      std::exp(-t * t / 2) / std::sqrt(2 * M_PI) / (0.5 * std::erfc(t / std::sqrt(2.0)));
  CHECK(centroid == Approx(a).epsilon(1e-8));
}

TEST_CASE("exported trits and scales reproduce the forward weight exactly", "[quant]") {
  Rng rng(5);
  auto w = Var<float>::parameter(Tensor<float>::randn({6, 32}, rng, 0.0, 0.05));
  for (auto gran : {Granularity::per_tensor, Granularity::per_row, Granularity::per_group}) {
    TernaryConfig c;
    c.granularity = gran;
    c.group_size = 8;
    Ternary<STE> ste(w, c);
    Ternary<QuEST> quest(w, c);  // the same interface, the other estimator
    CHECK(max_abs_diff(ste.forward().value(), ste.quantized().dequantize()) == 0.0);
    CHECK(max_abs_diff(quest.forward().value(), quest.quantized().dequantize()) == 0.0);
    CHECK(quest.quantized().hadamard == (gran == Granularity::per_group ? 8 : 32));
    CHECK(ste.quantized().hadamard == 0);
    // the round trip through packed bytes keeps every number
    for (auto enc : {TritEncoding::two_bit, TritEncoding::base3}) {
      auto back = unpack(pack(quest.quantized(), enc));
      CHECK(max_abs_diff(back.dequantize(), quest.forward().value()) == 0.0);
    }
  }
  // QuEST at lambda = 1 is ternary in the Hadamard basis: at most 3 distinct values per block
  TernaryConfig c;
  c.granularity = Granularity::per_row;
  auto h = Ternary<QuEST>(w, c).forward().value().clone();
  fwht_blocks(h.data(), h.numel(), 32);
  std::set<long> levels;
  for (int64_t i = 0; i < 32; ++i) levels.insert(std::lround(h(2, i) * 1e5));
  CHECK(levels.size() <= 3);
  TernaryConfig g5;
  g5.granularity = Granularity::per_group;
  g5.group_size = 5;
  CHECK_THROWS_WITH(Ternary<STE>(w, g5), Contains("group size 5"));
}

TEST_CASE("the schedule sets the lambdas of a list of layers", "[quant][schedule]") {
  struct Layer {
    double lambda = -1;
    void set_lambda(double l) { lambda = l; }
  };
  std::vector<Layer> layers(3);
  std::vector<Layer*> ptrs{&layers[0], &layers[1], &layers[2]};
  LambdaSchedule s(3, 30, 10, {2, 0, 1});  // layer 2 ramps first, then 0, then 1
  s.apply(ptrs, 15);
  CHECK(layers[2].lambda == Approx(0.5));
  CHECK(layers[0].lambda == 0.0);
  CHECK(layers[1].lambda == 0.0);
  s.apply(ptrs, 35);
  CHECK(layers[2].lambda == 1.0);
  CHECK(layers[0].lambda == 1.0);
  CHECK(layers[1].lambda == Approx(0.5));
  ptrs.pop_back();
  CHECK_THROWS_WITH(s.apply(ptrs, 0), Contains("2 layers for a schedule of 3"));
  LambdaSchedule instant(2, 0, 5);  // no ramp: full precision before step 5, ternary from it
  CHECK(instant.lambda(1, 4) == 0.0);
  CHECK(instant.lambda(1, 5) == 1.0);
}

TEST_CASE("rms_norm_quantize_activations is quantize_activations(rms_norm(x)), gradients too",
          "[quant]") {
  Rng rng(12);
  for (auto shape : {Shape{5, 32}, Shape{2, 3, 17}}) {
    auto hx = Tensor<double>::randn(shape, rng, 0, 2);
    hx.select(0, 1).fill(0.0);  // a zero row stays zero
    auto hg = Tensor<double>::randn({shape.back()}, rng, 1, 0.3);
    auto upstream = Tensor<double>::randn(shape, rng);
    auto x1 = Var<double>::parameter(hx.clone()), g1 = Var<double>::parameter(hg.clone());
    auto x2 = Var<double>::parameter(hx.clone()), g2 = Var<double>::parameter(hg.clone());
    auto fused = rms_norm_quantize_activations(x1, g1, 1e-6);
    sum(fused * Var<double>::constant(upstream)).backward();  // one graph on the tape at a time
    auto composed = quantize_activations(rms_norm(x2, g2, 1e-6));
    sum(composed * Var<double>::constant(upstream)).backward();
    CHECK(max_abs_diff(fused.value(), composed.value()) == 0.0);
    CHECK(max_abs_diff(x1.grad(), x2.grad()) == 0.0);
    CHECK(max_abs_diff(g1.grad(), g2.grad()) == 0.0);
  }
  // The backward is rms_norm's exactly (straight through the rounding), checked against
  // finite differences of the un-quantized rms_norm at a random point.
  auto x = Var<double>::parameter(Tensor<double>::randn({3, 8}, rng));
  auto g = Var<double>::parameter(Tensor<double>::randn({8}, rng, 1, 0.2));
  auto up = Tensor<double>::randn({3, 8}, rng);
  sum(rms_norm_quantize_activations(x, g) * Var<double>::constant(up)).backward();
  const double h = 1e-6;
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 8; j += 3) {
      auto xp = x.value().clone(), xm = x.value().clone();
      xp(i, j) += h;
      xm(i, j) -= h;
      auto f = [&](const Tensor<double>& at) {
        return sum(Tensor<double>(rms_norm(at, g.value()) * up)).item();
      };
      const double fd = (f(xp) - f(xm)) / (2 * h);
      CHECK(x.grad()(i, j) == Approx(fd).epsilon(1e-6));
    }
  auto bad = Var<double>::parameter(Tensor<double>::ones({2, 4}));
  bad.value()(1, 2) = std::nan("");
  auto ones = Var<double>::parameter(Tensor<double>::ones({4}));
  CHECK_THROWS_WITH(rms_norm_quantize_activations(bad, ones), Contains("row 1"));
}

TEST_CASE(
    "rms_norm_quantize_activations over K gains is K calls: values, gradients, unused outputs",
    "[quant]") {
  Rng rng(13);
  for (auto shape : {Shape{5, 32}, Shape{2, 3, 17}}) {
    INFO("shape " << shape);
    const int64_t D = shape.back();
    auto hx = Tensor<double>::randn(shape, rng, 0, 2);
    std::array<Tensor<double>, 3> hg, up;
    for (int k = 0; k < 3; ++k) {
      hg[k] = Tensor<double>::randn({D}, rng, 1, 0.3);
      up[k] = Tensor<double>::randn(shape, rng);
    }
    // use = which outputs reach the loss: all three, or the first and last only
    for (std::array<bool, 3> use : {std::array<bool, 3>{true, true, true}, {true, false, true}}) {
      auto x1 = Var<double>::parameter(hx.clone()), x2 = Var<double>::parameter(hx.clone());
      std::array<Var<double>, 3> g1, g2;
      for (int k = 0; k < 3; ++k) {
        g1[k] = Var<double>::parameter(hg[k].clone());
        g2[k] = Var<double>::parameter(hg[k].clone());
      }
      auto loss_of = [&](const std::array<Var<double>, 3>& ys) {
        Var<double> loss = sum(ys[0] * Var<double>::constant(up[0]));
        for (int k = 1; k < 3; ++k)
          if (use[k]) loss = loss + sum(ys[k] * Var<double>::constant(up[k]));
        return loss;
      };
      auto shared = rms_norm_quantize_activations<3>(x1, g1, 1e-6);
      loss_of(shared).backward();  // one graph on the tape at a time
      std::array<Var<double>, 3> separate;
      for (int k = 0; k < 3; ++k) separate[k] = rms_norm_quantize_activations(x2, g2[k], 1e-6);
      loss_of(separate).backward();
      for (int k = 0; k < 3; ++k) {
        CHECK(max_abs_diff(shared[k].value(), separate[k].value()) == 0.0);
        if (use[k]) {
          CHECK(max_abs_diff(g1[k].grad(), g2[k].grad()) < 1e-12);
        } else {
          CHECK(!g1[k].grad().defined());  // no gradient reached it: none is made up
        }
      }
      CHECK(max_abs_diff(x1.grad(), x2.grad()) < 1e-12);
    }
  }
}

TEST_CASE("QuantizedWeightCache: one quantization per weight inside a scope, none outside",
          "[quant]") {
  Rng rng(5);
  auto w = Var<float>::parameter(Tensor<float>::randn({6, 8}, rng));
  TernaryConfig c;
  // outside a scope every forward quantizes anew
  CHECK(QuantizedWeightCache::active() == nullptr);
  auto a = STE::apply(w, c, 1.0), b = STE::apply(w, c, 1.0);
  CHECK(a.value().data() != b.value().data());
  CHECK(max_abs_diff(a.value(), b.value()) == 0.0);
  Tape::current().clear();
  {
    QuantizedWeightCache cache;
    auto q1 = STE::apply(w, c, 1.0);
    auto q2 = STE::apply(w, c, 1.0);
    CHECK(q1.value().data() == q2.value().data());  // the same tensor, quantized once
    CHECK(max_abs_diff(q1.value(), a.value()) == 0.0);
    auto half = STE::apply(w, c, 0.5);  // another lambda is another entry
    CHECK(half.value().data() != q1.value().data());
    c.granularity = Granularity::per_row;  // another scale group too
    auto rows = STE::apply(w, c, 1.0);
    CHECK(rows.value().data() != q1.value().data());
    c.granularity = Granularity::per_tensor;
    CHECK(cache.size() == 3);
    {
      QuantizedWeightCache nested;  // uses the outer scope
      CHECK(QuantizedWeightCache::active() == &cache);
      CHECK(STE::apply(w, c, 1.0).value().data() == q1.value().data());
    }
    // both uses pass their gradient straight through to the latent weight
    sum(q1 + q2).backward();
    CHECK(max_abs_diff(w.grad(), Tensor<float>::full({6, 8}, 2.0f)) == 0.0);
  }
  CHECK(QuantizedWeightCache::active() == nullptr);
  // after the scope, a changed weight is quantized from its new values
  w.value() *= -1.0f;
  {
    QuantizedWeightCache cache;
    CHECK(max_abs_diff(STE::apply(w, c, 1.0).value(), Tensor<float>(-a.value())) == 0.0);
  }
  Tape::current().clear();
}
