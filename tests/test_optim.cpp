// Optimizers, schedule and clipping (include/ternary/optim/).
// core/simd.hpp before Eigen: it includes <immintrin.h> with GCC 12's false AVX-512 warnings off.
#include "ternary/core/simd.hpp"

#include <Eigen/Dense>
#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/matmul.hpp"
#include "ternary/ops/reduce.hpp"
#include "ternary/optim/adamw.hpp"
#include "ternary/optim/clip.hpp"
#include "ternary/optim/muon.hpp"
#include "ternary/optim/schedule.hpp"

using namespace ternary;
using TF = Tensor<float>;
using VF = Var<float>;

namespace {

// Sets p's gradient to exactly g (as a backward pass would).
void set_grad(VF& p, const TF& g) {
  p.zero_grad();
  p.accumulate_grad(g);
}

Eigen::MatrixXd to_eigen(const TF& t) {
  Eigen::MatrixXd m(t.size(0), t.size(1));
  for (int64_t i = 0; i < t.size(0); ++i)
    for (int64_t j = 0; j < t.size(1); ++j) m(i, j) = t(i, j);
  return m;
}

Eigen::VectorXd singular_values(const TF& t) {
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(to_eigen(t));
  return svd.singularValues();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
TEST_CASE("AdamW: two steps match the hand-computed PyTorch update", "[optim][adamw]") {
  // lr 0.1, betas (0.9, 0.999), eps 1e-8, weight_decay 0.1. Step 1: m_hat = g and
  // sqrt(v_hat) = |g|, so p = p * (1 - 0.01) - 0.1 * sign(g) (up to eps); a zero gradient
  // leaves only the decay. Step 2 values from the formula in adamw.hpp, evaluated in double.
  VF p = VF::parameter(TF::from({4}, {1.0f, -2.0f, 0.5f, 0.0f}));
  optim::AdamW<float> opt(
      {p}, {.lr = 0.1, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1});

  set_grad(p, TF::from({4}, {0.1f, -0.2f, 0.3f, 0.0f}));
  opt.step();
  const std::vector<double> step1 = {0.890000009999999, -1.8800000049999999, 0.3950000033333332,
                                     0.0};
  for (int i = 0; i < 4; ++i) CHECK(p.value()(i) == Approx(step1[i]).margin(1e-6));

  set_grad(p, TF::from({4}, {0.4f, 0.0f, -0.5f, 1e-3f}));
  opt.step();
  const std::vector<double> step2 = {0.7926623638751169, -1.7941941842755587, 0.4204061230647948,
                                     -0.07441263026631013};
  for (int i = 0; i < 4; ++i) CHECK(p.value()(i) == Approx(step2[i]).margin(1e-6));
  CHECK(opt.step_count() == 2);
  CHECK(opt.param_step_count(0) == 2);
  // m = 0.9 * 0.1 * g1 + 0.1 * g2
  CHECK(opt.state(0).at("exp_avg")(0) == Approx(0.9 * 0.1 * 0.1 + 0.1 * 0.4).margin(1e-7));
  CHECK(opt.state(0).at("exp_avg_sq")(2) ==
        Approx(0.999 * 0.001 * 0.09 + 0.001 * 0.25).margin(1e-9));
}

TEST_CASE("AdamW: scaled lr and groups; lr scale 0 freezes, weight decay is decoupled",
          "[optim][adamw]") {
  VF a = VF::parameter(TF::full({3}, 2.0f));
  VF b = VF::parameter(TF::full({2, 2}, -1.0f));
  optim::AdamW<float> opt(
      {{{a}, {.lr = 0.1, .weight_decay = 0}}, {{b}, {.lr = 0.01, .weight_decay = 0}}});
  REQUIRE(opt.num_groups() == 2);
  REQUIRE(opt.num_params() == 2);
  set_grad(a, TF::full({3}, 5.0f));
  set_grad(b, TF::full({2, 2}, -3.0f));
  opt.set_lr_scale(0.5);
  CHECK(opt.lr(0) == Approx(0.05));
  opt.step();
  // First Adam step moves by lr * sign(g) (up to eps).
  CHECK(a.value()(0) == Approx(2.0 - 0.05).margin(1e-6));
  CHECK(b.value()(1, 1) == Approx(-1.0 + 0.005).margin(1e-6));

  // Weight decay alone (zero gradient) multiplies by 1 - lr * wd.
  VF c = VF::parameter(TF::full({2}, 4.0f));
  optim::AdamW<float> decay({c}, {.lr = 0.1, .weight_decay = 0.5});
  set_grad(c, TF::zeros({2}));
  decay.step();
  CHECK(c.value()(1) == Approx(4.0 * (1 - 0.05)).margin(1e-6));
  decay.set_lr_scale(0);
  set_grad(c, TF::full({2}, 1.0f));
  decay.step();
  CHECK(c.value()(1) == Approx(4.0 * (1 - 0.05)).margin(1e-6));

  CHECK_THROWS_AS(opt.set_lr_scale(-1), Error);
  CHECK_THROWS_AS(optim::AdamW<float>({c}, {.beta1 = 1.0}), Error);
  CHECK_THROWS_AS(optim::AdamW<float>({c, c}), Error);  // the same parameter twice
}

TEST_CASE("Optimizer: parameters without a gradient are skipped", "[optim]") {
  VF a = VF::parameter(TF::full({2}, 1.0f));
  VF b = VF::parameter(TF::full({2}, 1.0f));
  optim::AdamW<float> opt({a, b}, {.lr = 0.1, .weight_decay = 0.1});
  set_grad(a, TF::full({2}, 1.0f));
  opt.step();
  CHECK(a.value()(0) != 1.0f);
  CHECK(b.value()(0) == 1.0f);  // no decay either
  CHECK(opt.state(1).empty());
  CHECK(opt.param_step_count(1) == 0);
  CHECK(opt.param_step_count(0) == 1);
  opt.zero_grad();
  CHECK_FALSE(a.grad().defined());
}

TEST_CASE("AdamW minimizes a quadratic", "[optim][adamw]") {
  Rng rng(7);
  TF target = TF::randn({5, 3}, rng);
  VF w = VF::parameter(TF::zeros({5, 3}));
  VF tgt = VF::constant(target);
  optim::AdamW<float> opt({w}, {.lr = 0.05, .weight_decay = 0});
  const optim::LrSchedule sched{.warmup_steps = 10, .warmdown_steps = 200};
  double first = 0, last = 0;
  const int steps = 600;
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    VF loss = sum(square(w - tgt));
    if (s == 0) first = loss.item();
    last = loss.item();
    loss.backward();
    opt.set_lr_scale(sched.lr_multiplier(s, steps));
    opt.step();
  }
  CHECK(first > 5.0);
  CHECK(last < 1e-4 * first);
  CHECK(max_abs_diff(w.value(), target) < 1e-2);
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("Muon: Newton-Schulz output is near-orthogonal", "[optim][muon]") {
  Rng rng(11);
  for (auto shape : {Shape{32, 32}, Shape{16, 48}, Shape{48, 16}, Shape{64, 64}, Shape{7, 3}}) {
    DYNAMIC_SECTION("shape " << shape) {
      TF G = TF::randn(shape, rng);
      TF X = optim::newton_schulz5(G);
      REQUIRE(X.shape() == shape);
      Eigen::VectorXd sv = singular_values(X);
      INFO("singular values: " << sv.transpose());
      CHECK(sv.minCoeff() > 0.5);
      CHECK(sv.maxCoeff() < 1.5);
      // X X^T (for rows <= cols, else X^T X) is close to the identity.
      Eigen::MatrixXd E = to_eigen(X);
      Eigen::MatrixXd gram = shape[0] <= shape[1] ? Eigen::MatrixXd(E * E.transpose())
                                                  : Eigen::MatrixXd(E.transpose() * E);
      const Eigen::MatrixXd off = gram - Eigen::MatrixXd(gram.diagonal().asDiagonal());
      CHECK(off.cwiseAbs().maxCoeff() < 0.5);
      // Same singular vectors as G: X ~ U V^T (the polar factor), not some other matrix.
      Eigen::JacobiSVD<Eigen::MatrixXd> svd(to_eigen(G), Eigen::ComputeThinU | Eigen::ComputeThinV);
      Eigen::MatrixXd polar = svd.matrixU() * svd.matrixV().transpose();
      CHECK((E - polar).norm() / polar.norm() < 0.35);
    }
  }
  // Scale invariant (the input is normalised first), exact on an orthogonal input's direction.
  TF G = TF::randn({8, 12}, rng);
  TF G3 = G * 3.0f;
  CHECK(max_abs_diff(optim::newton_schulz5(G), optim::newton_schulz5(G3)) < 1e-5);
  // Double input goes through float and comes back as double.
  Tensor<double> Gd = G.to<double>();
  CHECK(max_abs_diff(optim::newton_schulz5(Gd).to<float>(), optim::newton_schulz5(G)) < 1e-6);
  CHECK_THROWS_AS(optim::newton_schulz5(TF::zeros({2, 2, 2, 2})), ShapeError);
  CHECK_THROWS_AS(optim::newton_schulz5(TF::zeros({4})), ShapeError);
}

TEST_CASE("Muon: a stack of matrices is orthogonalised matrix by matrix", "[optim][muon]") {
  Rng rng(12);
  for (auto shape : {Shape{3, 16, 24}, Shape{4, 24, 16}}) {  // the second is transposed inside
    INFO("stack " << shape);
    // different scales per matrix: each is normalised by its own norm
    TF S = TF::randn(shape, rng);
    for (int64_t i = 0; i < shape[0]; ++i) S.select(0, i) *= float(1 + 10 * i);
    const TF X = optim::newton_schulz5(S);
    REQUIRE(X.shape() == shape);
    for (int64_t i = 0; i < shape[0]; ++i)
      CHECK(max_abs_diff(X.select(0, i), optim::newton_schulz5(S.select(0, i).contiguous())) <
            1e-5);
  }
}

TEST_CASE("Muon: one and two steps follow the update formula", "[optim][muon]") {
  Rng rng(3);
  for (auto shape : {Shape{12, 4}, Shape{4, 12}}) {
    TF w0 = TF::randn(shape, rng);
    TF g1 = TF::randn(shape, rng), g2 = TF::randn(shape, rng);
    VF w = VF::parameter(w0.clone());
    const double lr = 0.03, mu = 0.9, wd = 0.1;
    optim::Muon<float> opt({w}, {.lr = lr, .momentum = mu, .weight_decay = wd});
    const double scale = std::sqrt(std::max(1.0, double(shape[0]) / double(shape[1])));

    set_grad(w, g1);
    opt.step();
    // buf = g1, g' = g1 + mu * g1
    TF eff1 = g1 * float(1 + mu);
    TF expect1 = w0 * float(1 - lr * wd) - optim::newton_schulz5(eff1) * float(lr * scale);
    CHECK(max_abs_diff(w.value(), expect1) < 1e-6);

    set_grad(w, g2);
    opt.step();
    TF buf = g1 * float(mu) + g2;
    TF eff2 = g2 + buf * float(mu);
    TF expect2 = expect1 * float(1 - lr * wd) - optim::newton_schulz5(eff2) * float(lr * scale);
    CHECK(max_abs_diff(w.value(), expect2) < 1e-6);
    CHECK(max_abs_diff(opt.state(0).at("momentum_buffer"), buf) < 1e-6);
  }

  // Without Nesterov the momentum buffer itself is orthogonalised.
  TF w0 = TF::randn({5, 5}, rng), g1 = TF::randn({5, 5}, rng), g2 = TF::randn({5, 5}, rng);
  VF w = VF::parameter(w0.clone());
  optim::Muon<float> opt({w}, {.lr = 0.1, .momentum = 0.5, .nesterov = false});
  set_grad(w, g1);
  opt.step();
  set_grad(w, g2);
  opt.step();
  TF buf = g1 * 0.5f + g2;
  TF expect = w0 - optim::newton_schulz5(g1) * 0.1f - optim::newton_schulz5(buf) * 0.1f;
  CHECK(max_abs_diff(w.value(), expect) < 1e-5);
}

// finish_step stacks the matrices of one shape and step count (one Newton-Schulz over the
// stack): every parameter still gets its own update, whatever the mix of shapes and groups.
TEST_CASE("Muon: matrices of one shape are orthogonalised together, each its own update",
          "[optim][muon]") {
  Rng rng(4);
  const std::vector<Shape> shapes{{8, 12}, {8, 12}, {12, 8}, {8, 12}, {8, 12}};
  std::vector<TF> w0, g;
  std::vector<VF> w;
  for (const Shape& s : shapes) {
    w0.push_back(TF::randn(s, rng));
    g.push_back(TF::randn(s, rng, 0, 1 + 3 * double(g.size())));  // unequal norms
    w.push_back(VF::parameter(w0.back().clone()));
  }
  // the last two in a group with 3 Newton-Schulz steps: their own stack
  optim::Muon<float> opt(std::vector<optim::Muon<float>::Group>{
      {{w[0], w[1], w[2]}, {.lr = 0.05, .momentum = 0.9}},
      {{w[3], w[4]}, {.lr = 0.05, .momentum = 0.9, .ns_steps = 3}}});
  for (size_t i = 0; i < w.size(); ++i) set_grad(w[i], g[i]);
  opt.step();
  for (size_t i = 0; i < w.size(); ++i) {
    INFO("parameter " << i);
    const double scale = std::sqrt(std::max(1.0, double(shapes[i][0]) / double(shapes[i][1])));
    const TF expect =
        w0[i] - optim::newton_schulz5(TF(g[i] * 1.9f), i >= 3 ? 3 : 5) * float(0.05 * scale);
    CHECK(max_abs_diff(w[i].value(), expect) < 1e-5);
  }
}

TEST_CASE("Muon rejects parameters that are not 2-d", "[optim][muon]") {
  VF v = VF::parameter(TF::zeros({4}));
  VF m = VF::parameter(TF::zeros({4, 4}));
  try {
    optim::Muon<float> opt({m, v});
    FAIL("Muon accepted a 1-d parameter");
  } catch (const ShapeError& e) {
    const std::string msg = e.what();
    CHECK(msg.find("Muon") != std::string::npos);
    CHECK(msg.find("parameter 1") != std::string::npos);
    CHECK(msg.find("[4]") != std::string::npos);
  }
  optim::Muon<float> opt({m});
  CHECK_THROWS_AS(opt.add_param_group({VF::parameter(TF::zeros({2, 2, 2}))}, {}), ShapeError);
  CHECK_THROWS_AS(optim::Muon<float>({m}, {.momentum = 1.5}), Error);
}

TEST_CASE("Muon minimizes a matrix least-squares loss", "[optim][muon]") {
  // loss = mean((X W^T - Y)^2) with Y = X W*^T: W -> W*.
  Rng rng(5);
  TF x = TF::randn({64, 16}, rng);
  TF w_star = TF::randn({8, 16}, rng, 0, 0.5);
  VF X = VF::constant(x);
  VF Y = VF::constant(matmul(x, w_star.t()));
  VF W = VF::parameter(TF::zeros({8, 16}));
  optim::Muon<float> opt({W}, {.lr = 0.05, .momentum = 0.9});
  const optim::LrSchedule sched{.warmup_steps = 5, .warmdown_steps = 150};
  const int steps = 300;
  double first = 0, last = 0;
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    VF loss = mean(square(linear(X, W) - Y));
    if (s == 0) first = loss.item();
    last = loss.item();
    loss.backward();
    opt.set_lr_scale(sched.lr_multiplier(s, steps));
    opt.step();
  }
  INFO("first " << first << " last " << last);
  CHECK(first > 1.0);
  CHECK(last < 1e-3 * first);
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("LrSchedule: warmup, constant, warmdown", "[optim][schedule]") {
  const optim::LrSchedule s{.warmup_steps = 10, .warmdown_steps = 20};
  CHECK(s.lr_multiplier(0, 100) == Approx(0.1));  // warmup start
  CHECK(s.lr_multiplier(4, 100) == Approx(0.5));  // warmup middle
  CHECK(s.lr_multiplier(9, 100) == Approx(1.0));
  CHECK(s.lr_multiplier(50, 100) == Approx(1.0));  // constant
  CHECK(s.lr_multiplier(79, 100) == Approx(1.0));
  CHECK(s.lr_multiplier(80, 100) == Approx(1.0));   // warmdown start: (100 - 80) / 20
  CHECK(s.lr_multiplier(90, 100) == Approx(0.5));   // warmdown middle
  CHECK(s.lr_multiplier(99, 100) == Approx(0.05));  // last step
  CHECK(s.lr_multiplier(100, 100) == 0.0);          // warmdown end
  CHECK(s.lr_multiplier(120, 100) == 0.0);
  // Overlapping warmup and warmdown: the smaller wins.
  CHECK(s.lr_multiplier(5, 12) == Approx(std::min(6.0 / 10, 7.0 / 20)));
  // No warmup or warmdown: always 1.
  CHECK(optim::LrSchedule{}.lr_multiplier(0, 10) == 1.0);
  CHECK(optim::LrSchedule{}.lr_multiplier(10, 10) == 1.0);

  // Wall clock: the last 25% of 100 s.
  const optim::LrSchedule t{.warmup_steps = 4, .warmdown_fraction = 0.25};
  CHECK(t.lr_multiplier_by_time(0, 0.0, 100.0) == Approx(0.25));  // warmup counts steps
  CHECK(t.lr_multiplier_by_time(10, 50.0, 100.0) == 1.0);
  CHECK(t.lr_multiplier_by_time(10, 75.0, 100.0) == Approx(1.0));
  CHECK(t.lr_multiplier_by_time(10, 87.5, 100.0) == Approx(0.5));
  CHECK(t.lr_multiplier_by_time(10, 100.0, 100.0) == 0.0);
  CHECK(t.lr_multiplier_by_time(10, 130.0, 100.0) == 0.0);

  CHECK_THROWS_AS(s.lr_multiplier(-1, 10), Error);
  CHECK_THROWS_AS((optim::LrSchedule{.warmup_steps = -1}.lr_multiplier(0, 10)), Error);
  CHECK_THROWS_AS((optim::LrSchedule{.warmdown_fraction = 2}.lr_multiplier_by_time(0, 1, 2)),
                  Error);
  CHECK_THROWS_AS(t.lr_multiplier_by_time(0, 1, 0), Error);
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("clip_grad_norm: global L2 norm and scaling", "[optim][clip]") {
  VF a = VF::parameter(TF::zeros({2}));
  VF b = VF::parameter(TF::zeros({2, 2}));
  VF c = VF::parameter(TF::zeros({3}));  // no gradient: skipped
  auto reset = [&] {
    set_grad(a, TF::from({2}, {3.0f, 4.0f}));
    set_grad(b, TF::from({2, 2}, {0.0f, 12.0f, 0.0f, 0.0f}));
    c.zero_grad();
  };
  const std::vector<VF> params = {a, b, c};
  // sqrt(9 + 16 + 144) = 13
  reset();
  CHECK(optim::clip_grad_norm(params, 1000.0) == Approx(13.0));
  CHECK(a.grad()(1) == 4.0f);  // below the limit: unchanged
  CHECK(optim::clip_grad_norm(params, 20.0) == Approx(13.0));
  CHECK(b.grad()(0, 1) == 12.0f);  // never scaled up

  reset();
  CHECK(optim::clip_grad_norm(params, 6.5) == Approx(13.0));
  const double coef = 6.5 / (13.0 + 1e-6);
  CHECK(a.grad()(0) == Approx(3.0 * coef));
  CHECK(b.grad()(0, 1) == Approx(12.0 * coef));
  CHECK_FALSE(c.grad().defined());
  // After clipping, the norm is max_norm.
  CHECK(optim::clip_grad_norm(params, 0.0) == Approx(6.5).epsilon(1e-6));

  reset();
  CHECK(optim::clip_grad_norm(params, -1.0) == Approx(13.0));  // off: norm only
  CHECK(b.grad()(0, 1) == 12.0f);

  // A Var listed twice (tied weights) counts once.
  reset();
  CHECK(optim::clip_grad_norm(std::vector<VF>{a, a}, 100.0) == Approx(5.0));
  CHECK(optim::clip_grad_norm(std::vector<VF>{a, a}, 2.5) == Approx(5.0));
  CHECK(a.grad()(0) == Approx(3.0 * 2.5 / (5.0 + 1e-6)));

  // Large gradients: blocks summed in double, far closer than one float running sum.
  Rng rng(1);
  VF big = VF::parameter(TF::zeros({300000}));
  TF g = TF::randn({300000}, rng);
  set_grad(big, g);
  double ref = 0;
  for (float v : g.to_vector()) ref += double(v) * v;
  CHECK(optim::clip_grad_norm(std::vector<VF>{big}, 0) == Approx(std::sqrt(ref)).epsilon(1e-7));
}

// ---------------------------------------------------------------------------------------------
namespace {
// Two identical models (by value), each with its own optimizer.
struct Setup {
  std::vector<VF> params;
  explicit Setup(const std::vector<TF>& init) {
    for (const auto& t : init) params.push_back(VF::parameter(t.clone()));
  }
  void grads(const std::vector<TF>& g) {
    for (size_t i = 0; i < params.size(); ++i) {
      if (g[i].defined())
        set_grad(params[i], g[i]);
      else
        params[i].zero_grad();
    }
  }
};
std::vector<TF> random_grads(const std::vector<TF>& like, Rng& rng, bool skip_last) {
  std::vector<TF> g;
  for (size_t i = 0; i < like.size(); ++i)
    g.push_back(skip_last && i + 1 == like.size() ? TF() : TF::randn(like[i].shape(), rng));
  return g;
}
}  // namespace

TEMPLATE_TEST_CASE("state_dict round trip gives identical next steps", "[optim][state]",
                   optim::AdamW<float>, optim::Muon<float>) {
  Rng rng(21);
  const std::vector<TF> init = {TF::randn({4, 6}, rng), TF::randn({6, 3}, rng),
                                TF::randn({3, 3}, rng)};
  Setup a(init);
  TestType opt_a({{{a.params[0], a.params[1]}, {.lr = 0.01}}, {{a.params[2]}, {.lr = 0.02}}});
  // Three steps; the last parameter gets no gradient on the first, so its counts differ.
  for (int s = 0; s < 3; ++s) {
    a.grads(random_grads(init, rng, s == 0));
    opt_a.set_lr_scale(0.5 + 0.1 * s);
    opt_a.step();
  }
  auto dict = opt_a.state_dict("optim.");
  CHECK(dict.at("optim.step").item() == 3.0f);
  CHECK(dict.at("optim.0.step").item() == 3.0f);
  CHECK(dict.at("optim.2.step").item() == 2.0f);

  // A fresh model with the same values and a fresh optimizer loaded from the dict.
  std::vector<TF> now;
  for (auto& p : a.params) now.push_back(p.value().clone());
  Setup b(now);
  TestType opt_b({{{b.params[0], b.params[1]}, {.lr = 0.01}}, {{b.params[2]}, {.lr = 0.02}}});
  dict["model.weight"] = TF::zeros({1});  // other prefixes are ignored
  opt_b.load_state_dict(dict, "optim.");
  CHECK(opt_b.step_count() == 3);
  CHECK(opt_b.param_step_count(2) == 2);
  dict.at("optim.0.step").fill(99.0f);  // loading copied the tensors
  CHECK(opt_b.param_step_count(0) == 3);

  for (int s = 0; s < 3; ++s) {
    auto g = random_grads(init, rng, false);
    a.grads(g);
    b.grads(g);
    opt_a.set_lr_scale(0.8);
    opt_b.set_lr_scale(0.8);
    opt_a.step();
    opt_b.step();
    for (size_t i = 0; i < init.size(); ++i)
      CHECK(max_abs_diff(a.params[i].value(), b.params[i].value()) == 0.0);
  }
  // A fresh optimizer without the state takes a different step (the test can fail).
  Setup c(now);
  TestType opt_c({{{c.params[0], c.params[1]}, {.lr = 0.01}}, {{c.params[2]}, {.lr = 0.02}}});
  auto g = random_grads(init, rng, false);
  c.grads(g);
  opt_c.step();
  CHECK(max_abs_diff(c.params[0].value(), now[0]) > 0);

  // Malformed dicts.
  auto good = opt_a.state_dict();
  {
    auto d = good;
    d.erase("step");
    CHECK_THROWS_AS(opt_b.load_state_dict(d), Error);
  }
  {
    auto d = good;
    d["7.step"] = TF::scalar(1.0f);
    CHECK_THROWS_AS(opt_b.load_state_dict(d), Error);
  }
  {
    auto d = good;
    d["0.bogus"] = TF::zeros({4, 6});
    CHECK_THROWS_AS(opt_b.load_state_dict(d), Error);
  }
  {
    auto d = good;
    for (auto& [k, t] : d)
      if (k.rfind("1.", 0) == 0 && k != "1.step") t = TF::zeros({2, 2});
    CHECK_THROWS_AS(opt_b.load_state_dict(d), ShapeError);
  }
  {
    auto d = good;
    d.erase("0.step");  // tensors without a count
    CHECK_THROWS_AS(opt_b.load_state_dict(d), Error);
  }
  {
    auto d = good;
    d["step"] = TF::scalar(1.5f);
    CHECK_THROWS_AS(opt_b.load_state_dict(d), Error);
  }
  // A failed load leaves the state untouched.
  CHECK(opt_b.step_count() == 6);
}
