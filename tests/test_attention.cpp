// Tests for ops/attention.hpp: the fused causal GQA kernel against closed forms and against
// causal_attention_reference (built from matmul/exp/sum), gradients, causality, errors.
#include <catch2/catch.hpp>
#include <cmath>

#include "ternary/autograd/gradcheck.hpp"
#include "ternary/ops/attention.hpp"
#include "ternary/ops/rope.hpp"

using namespace ternary;

namespace {

struct Dims5 {
  int64_t B, Hq, Hkv, T, D;
};

template <class T>
double max_abs(const Tensor<T>& t) {
  double m = 0;
  for (T x : t.to_vector()) m = std::max(m, std::abs(double(x)));
  return m;
}
// |a - b| <= tol * max|b| elementwise (relative to the tensor's scale).
template <class T>
bool rel_close(const Tensor<T>& a, const Tensor<T>& b, double tol) {
  const double err = max_abs_diff(a, b), scale = std::max(max_abs(b), 1e-30);
  UNSCOPED_INFO("max abs diff " << err << " vs scale " << scale << " (rel " << err / scale << ")");
  return err <= tol * scale;
}
template <class T>
bool all_finite(const Tensor<T>& t) {
  for (T x : t.to_vector())
    if (!std::isfinite(double(x))) return false;
  return true;
}

// Runs fused and reference forward + backward with one seed gradient; compares everything.
template <class T>
void check_against_reference(const Dims5& d, double tol, uint64_t seed,
                             std::optional<double> scale = std::nullopt) {
  Rng rng(seed);
  auto qt = Tensor<T>::randn({d.B, d.Hq, d.T, d.D}, rng);
  auto kt = Tensor<T>::randn({d.B, d.Hkv, d.T, d.D}, rng);
  auto vt = Tensor<T>::randn({d.B, d.Hkv, d.T, d.D}, rng);
  auto g = Tensor<T>::randn({d.B, d.Hq, d.T, d.D}, rng);
  auto q1 = Var<T>::parameter(qt), k1 = Var<T>::parameter(kt), v1 = Var<T>::parameter(vt);
  auto q2 = Var<T>::parameter(qt), k2 = Var<T>::parameter(kt), v2 = Var<T>::parameter(vt);
  INFO("B " << d.B << " Hq " << d.Hq << " Hkv " << d.Hkv << " T " << d.T << " Dh " << d.D);
  // One graph at a time: backward consumes the whole (per-thread) tape.
  auto fused = causal_attention(q1, k1, v1, scale);
  fused.backward(g);
  auto ref = causal_attention_reference(q2, k2, v2, scale);
  ref.backward(g);
  REQUIRE(fused.shape() == Shape{d.B, d.Hq, d.T, d.D});
  CHECK(rel_close(fused.value(), ref.value(), tol));
  CHECK(rel_close(q1.grad(), q2.grad(), tol));
  CHECK(rel_close(k1.grad(), k2.grad(), tol));
  CHECK(rel_close(v1.grad(), v2.grad(), tol));
}

const Dims5 kShapes[] = {
    {2, 2, 2, 7, 5},     // Hq = Hkv, odd T, Dh < one AVX2 float batch
    {1, 4, 1, 9, 13},    // Hq = 4 Hkv, Dh not a multiple of 8
    {2, 8, 2, 17, 24},   // Hq = 4 Hkv
    {1, 3, 3, 1, 3},     // a single position
    {3, 6, 3, 33, 40},   // large enough to run threaded
    {2, 4, 4, 16, 64},   // a power-of-two head size (T >= 16: the GEMM kernels from here on)
    {1, 4, 2, 130, 20},  // GEMM kernels: T past the packing blocks, GQA
    {2, 2, 1, 257, 64},  // odd T, Hq = 2 Hkv
};

}  // namespace

TEST_CASE("attention: closed form for T = 1 and T = 2", "[attention]") {
  SECTION("T = 1: the output is v") {
    Rng rng(1);
    auto q = Tensor<double>::randn({2, 4, 1, 3}, rng), k = Tensor<double>::randn({2, 2, 1, 3}, rng);
    auto v = Tensor<double>::randn({2, 2, 1, 3}, rng);
    auto out = causal_attention(q, k, v);
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t h = 0; h < 4; ++h)
        for (int64_t i = 0; i < 3; ++i) CHECK(out(b, h, 0, i) == Approx(v(b, h / 2, 0, i)));
  }
  SECTION("T = 2, by hand") {
    auto q = Tensor<double>::from({1, 1, 2, 2}, {1, 0, 0.5, -1});
    auto k = Tensor<double>::from({1, 1, 2, 2}, {2, 1, -1, 3});
    auto v = Tensor<double>::from({1, 1, 2, 2}, {1, 2, 3, -4});
    auto out = causal_attention(q, k, v, 0.5);
    // Row 0 sees only position 0. Row 1: s = 0.5 * (q1.k0, q1.k1) = 0.5 * (0, -3.5).
    const double s0 = 0.0, s1 = -1.75, z = std::exp(s0) + std::exp(s1);
    const double p0 = std::exp(s0) / z, p1 = std::exp(s1) / z;
    CHECK(out(0, 0, 0, 0) == Approx(1.0));
    CHECK(out(0, 0, 0, 1) == Approx(2.0));
    CHECK(out(0, 0, 1, 0) == Approx(p0 * 1 + p1 * 3).epsilon(1e-14));
    CHECK(out(0, 0, 1, 1) == Approx(p0 * 2 + p1 * -4).epsilon(1e-14));
  }
}

TEST_CASE("attention: fused matches the reference (float, 1e-5 relative)", "[attention]") {
  uint64_t seed = 10;
  for (const auto& d : kShapes) check_against_reference<float>(d, 1e-5, seed++);
  check_against_reference<float>({2, 4, 2, 11, 6}, 1e-5, 99, 0.3);  // an explicit scale
}

TEST_CASE("attention: fused matches the reference (double, 1e-12 relative)", "[attention]") {
  uint64_t seed = 20;
  for (const auto& d : kShapes) check_against_reference<double>(d, 1e-12, seed++);
}

TEST_CASE("attention: large scores stay finite and exact", "[attention]") {
  Rng rng(3);
  auto q = Var<double>::parameter(Tensor<double>::randn({1, 2, 12, 8}, rng, 0, 40));
  auto k = Var<double>::parameter(Tensor<double>::randn({1, 1, 12, 8}, rng, 0, 40));
  auto v = Var<double>::parameter(Tensor<double>::randn({1, 1, 12, 8}, rng));
  auto out = causal_attention(q, k, v);
  REQUIRE(all_finite(out.value()));
  CHECK(rel_close(out.value(), causal_attention_reference(q, k, v).value(), 1e-10));
  sum(out).backward();
  CHECK(all_finite(q.grad()));
  CHECK(all_finite(k.grad()));
  CHECK(all_finite(v.grad()));
}

TEST_CASE("attention: strided inputs are read correctly", "[attention]") {
  Rng rng(4);
  const int64_t B = 2, Hq = 4, Hkv = 2, T = 10, D = 6;
  // q as [B, T, Hq, D] transposed (unit inner stride), k sliced out of a wider last axis,
  // v with a non-unit inner stride (a transposed [B, Hkv, D, T]).
  auto q_raw = Tensor<float>::randn({B, T, Hq, D}, rng);
  auto k_raw = Tensor<float>::randn({B, Hkv, T, 2 * D + 1}, rng);
  auto v_raw = Tensor<float>::randn({B, Hkv, D, T}, rng);
  auto q = q_raw.transpose(1, 2), k = k_raw.narrow(3, 1, D), v = v_raw.transpose(2, 3);
  REQUIRE_FALSE(q.is_contiguous());
  REQUIRE_FALSE(k.is_contiguous());
  REQUIRE(v.strides()[3] != 1);
  auto out = causal_attention(q, k, v);
  auto expect = causal_attention(q.contiguous(), k.contiguous(), v.contiguous());
  CHECK(max_abs_diff(out, expect) == 0.0);
  // And the gradients through views land in the right places.
  auto g = Tensor<float>::randn({B, Hq, T, D}, rng);
  auto qv = Var<float>::parameter(q), kv = Var<float>::parameter(k), vv = Var<float>::parameter(v);
  auto qc = Var<float>::parameter(q.contiguous()), kc = Var<float>::parameter(k.contiguous());
  auto vc = Var<float>::parameter(v.contiguous());
  causal_attention(qv, kv, vv).backward(g);
  causal_attention(qc, kc, vc).backward(g);
  CHECK(max_abs_diff(qv.grad(), qc.grad()) == 0.0);
  CHECK(max_abs_diff(kv.grad(), kc.grad()) == 0.0);
  CHECK(max_abs_diff(vv.grad(), vc.grad()) == 0.0);
}

TEST_CASE("attention: gradcheck", "[attention][grad]") {
  Rng rng(5);
  auto f = [](std::vector<Var<double>>& in) { return causal_attention(in[0], in[1], in[2]); };
  SECTION("Hq = Hkv") {
    auto r = gradcheck(
        f, {Tensor<double>::randn({2, 2, 5, 3}, rng), Tensor<double>::randn({2, 2, 5, 3}, rng),
            Tensor<double>::randn({2, 2, 5, 3}, rng)});
    INFO(r.report);
    CHECK(r.ok);
  }
  SECTION("GQA, Hq = 4 Hkv, Dh spanning a SIMD batch and a tail") {
    auto r = gradcheck(
        f, {Tensor<double>::randn({1, 4, 4, 6}, rng), Tensor<double>::randn({1, 1, 4, 6}, rng),
            Tensor<double>::randn({1, 1, 4, 6}, rng)});
    INFO(r.report);
    CHECK(r.ok);
  }
  SECTION("non-contiguous q from a transposed view, GQA, explicit scale") {
    auto q_raw = Tensor<double>::randn({2, 5, 4, 3}, rng);  // [B, T, Hq, Dh]
    auto v_raw = Tensor<double>::randn({2, 2, 3, 5}, rng);  // [B, Hkv, Dh, T]
    auto r = gradcheck(
        [](std::vector<Var<double>>& in) { return causal_attention(in[0], in[1], in[2], 0.7); },
        {q_raw.transpose(1, 2), Tensor<double>::randn({2, 2, 5, 3}, rng), v_raw.transpose(2, 3)});
    INFO(r.report);
    CHECK(r.ok);
  }
  SECTION("composed with rope, as in a GPT block") {
    auto r = gradcheck(
        [](std::vector<Var<double>>& in) {
          return causal_attention(rope(in[0]), rope(in[1]), in[2]);
        },
        {Tensor<double>::randn({1, 2, 6, 4}, rng), Tensor<double>::randn({1, 1, 6, 4}, rng),
         Tensor<double>::randn({1, 1, 6, 4}, rng)});
    INFO(r.report);
    CHECK(r.ok);
  }
  SECTION("the reference itself") {
    auto r = gradcheck(
        [](std::vector<Var<double>>& in) {
          return causal_attention_reference(in[0], in[1], in[2]);
        },
        {Tensor<double>::randn({1, 4, 5, 3}, rng), Tensor<double>::randn({1, 2, 5, 3}, rng),
         Tensor<double>::randn({1, 2, 5, 3}, rng)});
    INFO(r.report);
    CHECK(r.ok);
  }
}

TEST_CASE("attention: causality", "[attention]") {
  Rng rng(6);
  const int64_t B = 2, Hq = 4, Hkv = 2, T = 9, D = 7;
  auto q = Tensor<float>::randn({B, Hq, T, D}, rng), k = Tensor<float>::randn({B, Hkv, T, D}, rng);
  auto v = Tensor<float>::randn({B, Hkv, T, D}, rng);
  auto before = causal_attention(q, k, v);
  for (int64_t t0 : {int64_t(0), int64_t(4), T - 1}) {
    auto k2 = k.clone(), v2 = v.clone();
    k2.narrow(2, t0, 1).assign(Tensor<float>::randn({B, Hkv, 1, D}, rng));
    v2.narrow(2, t0, 1).assign(Tensor<float>::randn({B, Hkv, 1, D}, rng));
    auto after = causal_attention(q, k2, v2);
    INFO("changed position " << t0);
    if (t0 > 0) CHECK(max_abs_diff(before.narrow(2, 0, t0), after.narrow(2, 0, t0)) == 0.0);
    CHECK(max_abs_diff(before.narrow(2, t0, 1), after.narrow(2, t0, 1)) > 1e-3);
  }
  // And the gradient of an early output never reaches later keys and values.
  auto kv = Var<float>::parameter(k), vv = Var<float>::parameter(v);
  auto out = causal_attention(Var<float>::parameter(q), kv, vv);
  auto seed = Tensor<float>::zeros({B, Hq, T, D});
  seed.narrow(2, 0, 3).fill(1.0f);
  out.backward(seed);
  CHECK(max_abs(kv.grad().narrow(2, 3, T - 3).contiguous()) == 0.0);
  CHECK(max_abs(vv.grad().narrow(2, 3, T - 3).contiguous()) == 0.0);
  CHECK(max_abs(vv.grad().narrow(2, 0, 3).contiguous()) > 0.0);
}

TEST_CASE("attention: gradients only for inputs that need them; NoGrad records nothing",
          "[attention][grad]") {
  Rng rng(7);
  auto q = Var<double>::parameter(Tensor<double>::randn({1, 2, 4, 3}, rng));
  auto k = Var<double>::constant(Tensor<double>::randn({1, 1, 4, 3}, rng));
  auto v = Var<double>::parameter(Tensor<double>::randn({1, 1, 4, 3}, rng));
  sum(causal_attention(q, k, v)).backward();
  CHECK(q.grad().defined());
  CHECK_FALSE(k.grad().defined());
  CHECK(v.grad().defined());
  // sum over outputs: dv_j = (number of query rows, over heads, weighting j) -> sums to 2 * 4 per
  // feature since each row's probabilities sum to 1.
  for (int64_t d = 0; d < 3; ++d) {
    double s = 0;
    for (int64_t j = 0; j < 4; ++j) s += v.grad()(0, 0, j, d);
    CHECK(s == Approx(8.0));
  }
  const size_t tape_before = Tape::current().size();
  {
    NoGrad ng;
    auto out = causal_attention(q, k, v);
    CHECK_FALSE(out.requires_grad());
  }
  CHECK(Tape::current().size() == tape_before);
}

TEST_CASE("attention: shape errors", "[attention][errors]") {
  auto t = [](Shape s) { return Tensor<float>(s); };
  CHECK_THROWS_WITH(causal_attention(t({1, 3, 4, 8}), t({1, 2, 4, 8}), t({1, 2, 4, 8})),
                    Catch::Contains("Hq = 3") && Catch::Contains("Hkv = 2"));
  CHECK_THROWS_AS(causal_attention(t({1, 3, 4, 8}), t({1, 2, 4, 8}), t({1, 2, 4, 8})), ShapeError);
  CHECK_THROWS_AS(causal_attention(t({1, 2, 4, 8}), t({1, 2, 5, 8}), t({1, 2, 5, 8})), ShapeError);
  CHECK_THROWS_AS(causal_attention(t({1, 2, 4, 8}), t({1, 2, 4, 6}), t({1, 2, 4, 6})), ShapeError);
  CHECK_THROWS_AS(causal_attention(t({2, 2, 4, 8}), t({1, 2, 4, 8}), t({1, 2, 4, 8})), ShapeError);
  CHECK_THROWS_AS(causal_attention(t({1, 2, 4, 8}), t({1, 2, 4, 8}), t({1, 1, 4, 8})), ShapeError);
  CHECK_THROWS_AS(causal_attention(t({2, 4, 8}), t({2, 4, 8}), t({2, 4, 8})), ShapeError);
  CHECK_THROWS_AS(causal_attention(t({1, 2, 4, 8}), t({1, 0, 4, 8}), t({1, 0, 4, 8})), ShapeError);
  auto p = [](Shape s) { return Var<float>::parameter(Tensor<float>(s)); };
  CHECK_THROWS_AS(causal_attention(p({1, 4, 4, 8}), p({1, 3, 4, 8}), p({1, 3, 4, 8})), ShapeError);
  CHECK_THROWS_AS(causal_attention_reference(p({1, 4, 4, 8}), p({1, 3, 4, 8}), p({1, 3, 4, 8})),
                  ShapeError);
}
