// Ternary weights (absmean, STE, QuEST), int8 activations and the lambda schedule.
#include <catch2/catch.hpp>

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
  auto halves = quantize_absmean(Tensor<float>::from({4}, {0.5f, -0.5f, 1.5f, -1.5f}), {Granularity::per_tensor, 128, 0.0});
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
  CHECK_THROWS_WITH(quantize_absmean(w, {Granularity::per_group, 3, 0.0}), Contains("group size 3"));
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

TEST_CASE("QuEST: Hadamard transform, Gaussian clip, trust mask", "[quant][quest]") {
  // The orthonormal Walsh-Hadamard transform is its own inverse.
  std::vector<double> x{1, 2, 3, 4, 5, 6, 7, 8}, y = x;
  fwht(y.data(), 8);
  CHECK(y[0] == Approx(36 / std::sqrt(8.0)));
  fwht(y.data(), 8);
  for (int i = 0; i < 8; ++i) CHECK(y[i] == Approx(x[i]));

  Rng rng(2);
  auto w = Tensor<float>::randn({4, 16}, rng);
  w(0, 3) = 40.0f;  // an outlier: its Hadamard row gets large, clipped entries
  auto q = QuEST::quantize(w, {});
  REQUIRE(q.group == 16);
  // scale = 1.224 * rms of the transformed row
  std::vector<float> h(w.data() + 16, w.data() + 32);
  fwht(h.data(), 16);
  double ss = 0;
  for (float e : h) ss += double(e) * e;
  CHECK(q.scales[1] == Approx(kGaussianTernaryClip * std::sqrt(ss / 16)).epsilon(1e-5));
  // The mask is 0 exactly where the rounding error exceeds half a step.
  auto mask = QuEST::trust_mask(w, {});
  int zeros = 0;
  for (int64_t r = 0; r < 4; ++r) {
    std::vector<float> hr(w.data() + r * 16, w.data() + r * 16 + 16);
    fwht(hr.data(), 16);
    for (int i = 0; i < 16; ++i) {
      const double err = std::abs(hr[i] - q.scales[r] * q.trits[r * 16 + i]);
      CHECK(mask(r, i) == (err <= q.scales[r] / 2 + 1e-6 ? 1.0f : 0.0f));
      zeros += mask(r, i) == 0.0f;
    }
  }
  CHECK(zeros > 0);
  // Its gradient: H (mask * H g); with an all-trusted row it is g itself.
  auto wv = Var<float>::parameter(w);
  auto g = Tensor<float>::randn({4, 16}, rng);
  QuEST::apply(wv, {}, 1.0).backward(g);
  std::vector<float> gr(g.data() + 16, g.data() + 32);
  fwht(gr.data(), 16);
  for (int i = 0; i < 16; ++i) gr[i] *= mask(1, i);
  fwht(gr.data(), 16);
  for (int i = 0; i < 16; ++i) CHECK(wv.grad()(1, i) == Approx(gr[i]).margin(1e-5));
  CHECK_THROWS_WITH(QuEST::quantize(Tensor<float>::zeros({2, 12}), {}), Contains("power of two"));
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
