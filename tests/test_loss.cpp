// cross_entropy and softcap_cross_entropy: closed forms, a naive double reference (threaded
// rows, strided logits), ignore_index (including all ignored), stability at 1e4, agreement
// of the fused softcap with softcap() + cross_entropy(), gradchecks, errors.
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "ternary/autograd/gradcheck.hpp"
#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/loss.hpp"
#include "ternary/ops/softmax.hpp"
#include "ternary/ops/view.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

namespace {
// Mean over non-ignored rows of logsumexp(z) - z[t], z = cap ? cap tanh(x / cap) : x; double.
template <class T>
double reference_ce(const Tensor<T>& logits, const Tensor<int32_t>& targets, int32_t ignore,
                    double cap = 0) {
  auto x = logits.template to<double>();
  auto t = targets.contiguous();
  const int64_t V = x.size(-1), rows = x.numel() / V;
  double total = 0;
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (t.data()[r] == ignore) continue;
    std::vector<double> z(x.data() + r * V, x.data() + (r + 1) * V);
    if (cap > 0)
      for (auto& v : z) v = cap * std::tanh(v / cap);
    double m = -INFINITY, s = 0;
    for (double v : z) m = std::max(m, v);
    for (double v : z) s += std::exp(v - m);
    total += m + std::log(s) - z[t.data()[r]];
    ++count;
  }
  return count ? total / count : 0;
}
Tensor<int32_t> random_targets(const Shape& shape, int64_t V, Rng& rng, int32_t ignore,
                               double p_ignore) {
  auto t = Tensor<int32_t>::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.data()[i] =
        rng.uniform(0, 1) < p_ignore ? ignore : int32_t(rng.uniform(0, double(V))) % int32_t(V);
  return t;
}
}  // namespace

TEST_CASE("cross_entropy closed forms", "[loss]") {
  // Uniform logits: ln V, whatever the target.
  for (int64_t V : {1, 2, 7, 8, 50, 1024}) {
    auto logits = Tensor<float>::full({3, V}, 2.5f);
    auto t = Tensor<int32_t>::from({3}, {0, int32_t(V - 1), int32_t(V / 2)});
    CHECK(cross_entropy(logits, t).item() == Approx(std::log(double(V))).margin(1e-6));
  }
  // p = softmax([0, ln 2]) = [1/3, 2/3]: target 1 costs -ln(2/3), target 0 costs ln 3.
  auto x = Tensor<double>::from({2, 2}, {0, std::log(2.0), 0, std::log(2.0)});
  CHECK(cross_entropy(x, Tensor<int32_t>::from({2}, {1, 1})).item() ==
        Approx(-std::log(2.0 / 3)).epsilon(1e-14));
  CHECK(cross_entropy(x, Tensor<int32_t>::from({2}, {0, 1})).item() ==
        Approx((std::log(3.0) - std::log(2.0 / 3)) / 2).epsilon(1e-14));
  // Gradient of the mean: (softmax - onehot) / n.
  auto v = Var<double>::parameter(x);
  cross_entropy(v, Tensor<int32_t>::from({2}, {0, 1})).backward();
  auto expect = Tensor<double>::from(
      {2, 2}, {(1.0 / 3 - 1) / 2, (2.0 / 3) / 2, (1.0 / 3) / 2, (2.0 / 3 - 1) / 2});
  CHECK(max_abs_diff(v.grad(), expect) < 1e-15);
  // softcap with a huge cap is plain cross-entropy; the cap bounds every logit to (-c, c).
  CHECK(softcap_cross_entropy(x, Tensor<int32_t>::from({2}, {0, 1}), 1e6).item() ==
        Approx(cross_entropy(x, Tensor<int32_t>::from({2}, {0, 1})).item()).epsilon(1e-10));
  auto big = Tensor<double>::from({1, 2}, {1e3, -1e3});  // capped to [1, -1]: CE = log(e + 1/e) + 1
  CHECK(softcap_cross_entropy(big, Tensor<int32_t>::from({1}, {1}), 1.0).item() ==
        Approx(std::log(1 + std::exp(2.0))).epsilon(1e-12));
}

TEST_CASE("cross_entropy matches a double reference", "[loss]") {
  Rng rng(21);
  for (int64_t V : {3, 8, 9, 33, 1000}) {
    auto logits = Tensor<float>::randn({2, 20, V}, rng, 0, 3);  // threaded at V = 1000
    auto t = random_targets({2, 20}, V, rng, -100, 0.2);
    CHECK(cross_entropy(logits, t).item() == Approx(reference_ce(logits, t, -100)).epsilon(2e-6));
    CHECK(softcap_cross_entropy(logits, t, 4.0).item() ==
          Approx(reference_ce(logits, t, -100, 4.0)).epsilon(2e-6));
    // Logits as a transposed view: [V, 40] -> [40, V].
    auto lt = Tensor<float>::randn({V, 40}, rng).t();
    auto t40 = random_targets({40}, V, rng, -100, 0.1);
    CHECK(cross_entropy(lt, t40).item() == Approx(reference_ce(lt, t40, -100)).epsilon(2e-6));
    // Var and tensor paths agree exactly.
    CHECK(cross_entropy(Var<float>::parameter(lt), t40).item() == cross_entropy(lt, t40).item());
  }
}

TEST_CASE("cross_entropy ignore_index", "[loss]") {
  Rng rng(22);
  auto logits = Tensor<double>::randn({6, 5}, rng);
  auto t = Tensor<int32_t>::from({6}, {1, -100, 4, -100, 0, 2});
  // The mean is over the 4 kept rows only.
  auto kept = Tensor<int32_t>::from({4}, {1, 4, 0, 2});
  Tensor<double> kept_logits =
      concat(std::vector<Tensor<double>>{logits.narrow(0, 0, 1), logits.narrow(0, 2, 1),
                                         logits.narrow(0, 4, 2)},
             0);
  CHECK(cross_entropy(logits, t).item() ==
        Approx(cross_entropy(kept_logits, kept).item()).epsilon(1e-14));
  // Ignored rows get a zero gradient.
  auto v = Var<double>::parameter(logits);
  cross_entropy(v, t).backward();
  for (int64_t j = 0; j < 5; ++j) {
    CHECK(v.grad()(1, j) == 0.0);
    CHECK(v.grad()(3, j) == 0.0);
  }
  // A custom ignore_index that is also a valid class: class 0 targets are skipped.
  auto t0 = Tensor<int32_t>::from({6}, {0, 1, 0, 3, 0, 4});
  CHECK(cross_entropy(logits, t0, 0).item() == Approx(reference_ce(logits, t0, 0)).epsilon(1e-14));
  // All ignored: loss 0 and gradient 0 (documented; PyTorch would give NaN).
  auto all = Tensor<int32_t>::full({6}, -100);
  auto w = Var<double>::parameter(logits);
  auto loss = softcap_cross_entropy(w, all, 3.0);
  CHECK(loss.item() == 0.0);
  loss.backward();
  REQUIRE(w.grad().defined());
  for (double g : w.grad().to_vector()) CHECK(g == 0.0);
}

TEST_CASE("cross_entropy is stable at large magnitudes", "[loss]") {
  auto logits = Tensor<float>::from({3, 4}, {1e4f, 0, -1e4f, 5e3f,    //
                                             1e4f, 1e4f, 1e4f, 1e4f,  //
                                             -1e4f, 2e4f, -3e4f, 0});
  auto t = Tensor<int32_t>::from({3}, {1, 2, 1});
  // Row 0: 1e4 - 0; row 1: ln 4; row 2: 0 (the target is the max by 2e4).
  const double expect = (1e4 + std::log(4.0) + 0) / 3;
  auto v = Var<float>::parameter(logits);
  auto loss = cross_entropy(v, t);
  CHECK(std::isfinite(loss.item()));
  CHECK(loss.item() == Approx(expect).epsilon(1e-6));
  loss.backward();
  for (float g : v.grad().to_vector()) CHECK(std::isfinite(g));
  CHECK(v.grad()(0, 0) == Approx(1.0f / 3));
  CHECK(v.grad()(0, 1) == Approx(-1.0f / 3));
  CHECK(v.grad()(1, 2) == Approx((0.25f - 1) / 3));
  // The softcap saturates instead: both finite.
  auto s = Var<float>::parameter(logits);
  auto sl = softcap_cross_entropy(s, t, 30.0);
  CHECK(std::isfinite(sl.item()));
  CHECK(sl.item() == Approx(reference_ce(logits, t, -100, 30.0)).epsilon(1e-5));
  sl.backward();
  for (float g : s.grad().to_vector()) CHECK(std::isfinite(g));
}

TEST_CASE("softcap_cross_entropy matches softcap then cross_entropy", "[loss][grad]") {
  Rng rng(23);
  const double cap = 15.0;
  for (int64_t V : {5, 16, 37, 1024}) {
    auto x = Tensor<float>::randn({3, 24, V}, rng, 0, 12);  // many logits past the cap
    auto t = random_targets({3, 24}, V, rng, -100, 0.1);
    auto w = Tensor<float>::randn({3, 24, V}, rng);
    // Compare in float: the fused op and the composition round alike.
    auto a = Var<float>::parameter(x);
    auto fused = softcap_cross_entropy(a, t, cap);
    fused.backward();
    auto b = Var<float>::parameter(x);
    auto composed = cross_entropy(softcap(b, cap), t);
    composed.backward();
    CHECK(fused.item() == Approx(composed.item()).epsilon(1e-6));
    double scale = 0;
    for (float g : b.grad().to_vector()) scale = std::max(scale, double(std::abs(g)));
    CHECK(max_abs_diff(a.grad(), b.grad()) <= 1e-5 * scale);
    // And in double, where they agree to ~1e-15.
    auto ad = Var<double>::parameter(x.to<double>());
    auto fd = softcap_cross_entropy(ad, t, cap);
    fd.backward();
    auto bd = Var<double>::parameter(x.to<double>());
    auto cd = cross_entropy(softcap(bd, cap), t);
    cd.backward();
    CHECK(fd.item() == Approx(cd.item()).epsilon(1e-13));
    CHECK(max_abs_diff(ad.grad(), bd.grad()) < 1e-15);
  }
}

TEST_CASE("cross_entropy gradchecks", "[loss][grad]") {
  Rng rng(24);
  struct Case {
    Tensor<double> logits;
    Tensor<int32_t> targets;
  };
  std::vector<Case> cases = {
      {Tensor<double>::randn({5}, rng), Tensor<int32_t>::scalar(3)},
      {Tensor<double>::randn({4, 7}, rng), Tensor<int32_t>::from({4}, {0, 6, -100, 2})},
      {Tensor<double>::randn({7, 4}, rng).t(),
       Tensor<int32_t>::from({4}, {6, 6, 1, 0})},  // transposed
      {Tensor<double>::randn({2, 3, 18}, rng).slice(2, 0, 18, 2),
       random_targets({2, 3}, 9, rng, -100, 0.3)},
      {Tensor<double>::randn({3, 2, 9}, rng, 0, 4), random_targets({3, 2}, 9, rng, -100, 0)},
  };
  for (const auto& c : cases) {
    auto t = c.targets;
    auto r1 = gradcheck([t](std::vector<Var<double>>& in) { return cross_entropy(in[0], t); },
                        {c.logits});
    INFO("cross_entropy logits " << c.logits.shape() << "\n" << r1.report);
    CHECK(r1.ok);
    auto r2 = gradcheck(
        [t](std::vector<Var<double>>& in) { return softcap_cross_entropy(in[0], t, 2.5); },
        {c.logits});
    INFO("softcap_cross_entropy\n" << r2.report);
    CHECK(r2.ok);
  }
  // Inside a graph (the incoming gradient is not 1): CE of a product, times a scale.
  auto t = Tensor<int32_t>::from({3}, {2, 0, 1});
  auto r = gradcheck(
      [t](std::vector<Var<double>>& in) {
        return softcap_cross_entropy(in[0] * in[1], t, 3.0) * 2.5;
      },
      {Tensor<double>::randn({3, 4}, rng), Tensor<double>::randn({4}, rng)});
  INFO(r.report);
  CHECK(r.ok);
}

TEST_CASE("cross_entropy errors name the op, the target and its position", "[loss][errors]") {
  auto logits = Var<float>::parameter(Tensor<float>::zeros({2, 3, 5}));
  try {
    cross_entropy(logits, Tensor<int32_t>::from({2, 3}, {0, 1, 2, 3, 4, 9}));
    FAIL("expected IndexError");
  } catch (const IndexError& e) {
    CHECK_THAT(e.what(), Contains("cross_entropy") && Contains("target 9") && Contains("[1, 2]") &&
                             Contains("5 classes"));
  }
  try {
    softcap_cross_entropy(logits, Tensor<int32_t>::from({2, 3}, {0, -1, 2, 3, 4, 0}), 30.0);
    FAIL("expected IndexError");
  } catch (const IndexError& e) {
    CHECK_THAT(e.what(),
               Contains("softcap_cross_entropy") && Contains("target -1") && Contains("[0, 1]"));
  }
  try {
    cross_entropy(logits, Tensor<int32_t>::zeros({2, 5}));
    FAIL("expected ShapeError");
  } catch (const ShapeError& e) {
    CHECK_THAT(e.what(), Contains("cross_entropy") && Contains("[2, 5]") && Contains("[2, 3, 5]"));
  }
  try {
    softcap_cross_entropy(logits, Tensor<int32_t>::zeros({2, 3}), 0.0);
    FAIL("expected Error");
  } catch (const Error& e) {
    CHECK_THAT(e.what(), Contains("softcap_cross_entropy") && Contains("cap"));
  }
  CHECK(Tape::current().size() == 0);
}
