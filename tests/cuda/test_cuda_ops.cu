// The GPT's ops on the CUDA backend against the same ops on the CPU, on random shapes
// including odd sizes: forward values and the gradients of a random linear functional
// L = sum(out * W) (so every output element's gradient path is checked).
// Tolerances (relative L2 error to the CPU): rms_norm, rope, head_norm_rope, embedding 1e-5; fused
// attention forward 1e-5 and gradients 1e-4 (online softmax and fp32 sums in another order); the
// int8 activation quantizer is bit-identical (0); ternary weights 1e-6 (the same trits; the scale
// is a double sum in another order); squared norms 1e-6 (the CPU sums float blocks); Muon /
// clipping 1e-5 after 3 steps (AdamW, Muon's momentum and the clip's scaling over many tensors:
// 1e-6); tensor-core (bf16) attention 1.5e-2 / 3e-2 (see its test).
#include <catch2/catch.hpp>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "cuda_check.hpp"
#include "ternary/backend/cuda/all.cuh"
#include "ternary/ops/attention.hpp"
#include "ternary/ops/channel_mix.hpp"
#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/embedding.hpp"
#include "ternary/ops/head_norm_rope.hpp"
#include "ternary/ops/matmul.hpp"
#include "ternary/ops/norm.hpp"
#include "ternary/ops/norm_mlp.hpp"
#include "ternary/ops/reduce.hpp"
#include "ternary/ops/rope.hpp"
#include "ternary/ops/rope_attention.hpp"
#include "ternary/ops/view.hpp"
#include "ternary/optim/adamw.hpp"
#include "ternary/optim/clip.hpp"
#include "ternary/optim/muon.hpp"
#include "ternary/quant/activation.hpp"
#include "ternary/quant/bitlinear_mlp.hpp"
#include "ternary/quant/norm_linear.hpp"
#include "ternary/quant/ternary.hpp"

using namespace ternary;
using test::rel_err;

using VarH = Var<float>;
using VarD = Var<float, cuda>;

namespace {
// sum(y * w) for a fixed random w of y's shape, on either backend. Each graph must be run
// backward before the next is built: backward() runs and then clears the thread's whole tape.
template <class B>
Var<float, B> functional(const Var<float, B>& y, const Tensor<float>& w) {
  if constexpr (std::is_same_v<B, cuda>)
    return sum(y * VarD::constant(to_device(w)));
  else
    return sum(y * VarH::constant(w));
}
// cuda::set_bf16(true) for a scope: switched off again even if a check throws.
struct Bf16On {
  Bf16On() { cuda::set_bf16(true); }
  ~Bf16On() { cuda::set_bf16(false); }
};
}  // namespace

// (D = 1 is left out of the gradient check: there dx = rstd g eps / (x^2 + eps) is a
// cancellation to ~1e-6 of its terms on either backend, so no relative tolerance is meaningful.)
TEST_CASE("cuda rms_norm: forward and gradients against the CPU, with and without gain") {
  Rng rng(21);
  const std::vector<std::array<int64_t, 3>> shapes = {
      {1, 1, 3},     {2, 3, 5},    {3, 7, 33},     {4, 17, 64}, {2, 9, 130},
      {1, 300, 512}, {5, 3, 1000}, {1, 4100, 256}, {2, 5, 2000}};  // 2000: dgain apart from dx
  for (auto [a, b, d] : shapes)
    for (int with_gain = 0; with_gain < 2; ++with_gain) {
      INFO("shape " << a << "x" << b << "x" << d << " gain " << with_gain);
      auto hx = Tensor<float>::randn({a, b, d}, rng, 0.3, 1.7);
      auto hg = Tensor<float>::rand({d}, rng, 0.5, 1.5);
      auto hw = Tensor<float>::randn({a, b, d}, rng);
      auto cx = VarH::parameter(hx.clone()), cg = VarH::parameter(hg.clone());
      auto dx = VarD::parameter(to_device(hx)), dg = VarD::parameter(to_device(hg));
      auto cy = with_gain ? rms_norm(cx, cg, 1e-6) : rms_norm(cx, 1e-6);
      functional(cy, hw).backward();
      auto dy = with_gain ? rms_norm(dx, dg, 1e-6) : rms_norm(dx, 1e-6);
      CHECK(rel_err(dy.value(), cy.value()) < 1e-5);
      functional(dy, hw).backward();
      CHECK(rel_err(dx.grad(), cx.grad()) < 1e-5);
      if (with_gain) CHECK(rel_err(dg.grad(), cg.grad()) < 1e-5);
    }
  // only the gain wants a gradient (the fused backward then writes no dx)
  {
    auto hx = Tensor<float>::randn({40, 96}, rng);
    auto hg = Tensor<float>::rand({96}, rng, 0.5, 1.5);
    auto hw = Tensor<float>::randn({40, 96}, rng);
    auto cg = VarH::parameter(hg.clone());
    auto dg = VarD::parameter(to_device(hg));
    functional(rms_norm(VarH::constant(hx), cg, 1e-6), hw).backward();
    functional(rms_norm(VarD::constant(to_device(hx)), dg, 1e-6), hw).backward();
    CHECK(rel_err(dg.grad(), cg.grad()) < 1e-5);
  }
  // a transposed (non-contiguous) input goes through a copy
  auto hx = Tensor<float>::randn({6, 10}, rng);
  auto y = rms_norm(to_device(hx).t(), 1e-6);
  CHECK(rel_err(y, rms_norm(hx.t(), 1e-6)) < 1e-6);
}

TEST_CASE("cuda embedding: gather and scatter-add (repeated ids) against the CPU") {
  Rng rng(22);
  for (auto [V, D, B, T] : std::vector<std::array<int64_t, 4>>{
           {1, 1, 1, 1}, {5, 3, 2, 7}, {50, 33, 4, 13}, {1024, 64, 8, 129}}) {
    INFO("V " << V << " D " << D << " ids " << B << "x" << T);
    auto htab = Tensor<float>::randn({V, D}, rng);
    std::vector<int32_t> ids(B * T);
    for (auto& i : ids) i = int32_t(rng.uniform(0, double(V))) % int32_t(V);
    ids[0] = int32_t(V - 1);
    auto hids = Tensor<int32_t>::from({B, T}, ids);
    auto hw = Tensor<float>::randn({B, T, D}, rng);
    auto ct = VarH::parameter(htab.clone());
    auto dt = VarD::parameter(to_device(htab));
    auto cy = embedding(ct, hids);
    functional(cy, hw).backward();
    auto dy = embedding(dt, to_device(hids));
    CHECK(rel_err(dy.value(), cy.value()) == 0);
    functional(dy, hw).backward();
    CHECK(rel_err(dt.grad(), ct.grad()) < 1e-5);
  }
  // An id out of range: the kernel finds it (no host copy, no wait), gives it a zero row, and
  // the error is thrown at the next synchronisation, once; the backward skips that id.
  auto dt = VarD::parameter(to_device(Tensor<float>::from({4, 2}, {1, 2, 3, 4, 5, 6, 7, 8})));
  auto bad = embedding(dt, Tensor<int32_t, cuda>::from({3}, {0, 4, 1}));
  CHECK_THROWS_WITH(cuda::synchronize(), Catch::Contains("embedding: id 4 at position [1]") &&
                                             Catch::Contains("a table of 4 rows"));
  CHECK_NOTHROW(cuda::synchronize());
  CHECK(to_host(bad.value()).to_vector() == std::vector<float>{1, 2, 0, 0, 3, 4});
  sum(bad).backward();
  CHECK(to_host(dt.grad()).to_vector() == std::vector<float>{1, 1, 1, 1, 0, 0, 0, 0});
  auto bad2 = embedding(dt, Tensor<int32_t, cuda>::from({2, 2}, {0, 1, -3, 2}));
  CHECK_THROWS_WITH(to_host(bad2.value()), Catch::Contains("id -3 at position [1, 0]"));
}

TEST_CASE("cuda rope: forward and gradient against the CPU (offsets, odd lengths)") {
  Rng rng(23);
  for (auto [B, H, T, Dh] : std::vector<std::array<int64_t, 4>>{
           {1, 1, 1, 2}, {2, 3, 7, 6}, {2, 4, 65, 64}, {1, 2, 300, 34}}) {
    for (int64_t offset : {int64_t(0), int64_t(5)}) {
      INFO("shape " << B << "x" << H << "x" << T << "x" << Dh << " offset " << offset);
      auto hx = Tensor<float>::randn({B, H, T, Dh}, rng);
      auto hw = Tensor<float>::randn({B, H, T, Dh}, rng);
      auto cx = VarH::parameter(hx.clone());
      auto dx = VarD::parameter(to_device(hx));
      auto cy = rope(cx, 10000.0, offset);
      functional(cy, hw).backward();
      auto dy = rope(dx, 10000.0, offset);
      CHECK(rel_err(dy.value(), cy.value()) < 1e-6);
      functional(dy, hw).backward();
      CHECK(rel_err(dx.grad(), cx.grad()) < 1e-6);
    }
  }
  // a permuted (strided) input, as the GPT's heads are
  auto hx = Tensor<float>::randn({2, 9, 3, 8}, rng);
  CHECK(rel_err(rope(to_device(hx).permute({0, 2, 1, 3})), rope(hx.permute({0, 2, 1, 3}))) < 1e-6);
}

TEST_CASE("cuda head_norm_rope: values, gradients and layouts against the CPU") {
  Rng rng(31);
  // Dh 64 and 128 take the register kernels, 10 and 34 the loop; token-major views as the GPT's
  for (auto [B, H, T, Dh] : std::vector<std::array<int64_t, 4>>{
           {2, 4, 65, 64}, {1, 2, 33, 128}, {2, 3, 7, 10}, {1, 2, 300, 34}}) {
    for (bool with_gain : {false, true})
      for (bool token_major : {false, true}) {
        INFO("shape " << B << "x" << H << "x" << T << "x" << Dh << (with_gain ? " gain" : "")
                      << (token_major ? " token-major" : ""));
        auto raw = token_major ? Tensor<float>::randn({B, T, H, Dh}, rng)
                               : Tensor<float>::randn({B, H, T, Dh}, rng);
        auto view = [&](const auto& v) { return token_major ? permute(v, {0, 2, 1, 3}) : v; };
        auto hg = Tensor<float>::rand({H}, rng, 0.5, 2.0);
        auto hw = Tensor<float>::randn({B, H, T, Dh}, rng);
        auto cx = VarH::parameter(raw.clone()), cg = VarH::parameter(hg.clone());
        auto dx = VarD::parameter(to_device(raw)), dg = VarD::parameter(to_device(hg));
        auto cy = with_gain ? head_norm_rope(view(cx), cg) : head_norm_rope(view(cx));
        functional(cy, hw).backward();
        auto dy = with_gain ? head_norm_rope(view(dx), dg) : head_norm_rope(view(dx));
        CHECK(dy.value().is_contiguous() == !token_major);  // the input's layout
        CHECK(rel_err(dy.value(), cy.value()) < 1e-5);
        functional(dy, hw).backward();
        CHECK(rel_err(dx.grad(), cx.grad()) < 1e-5);
        if (with_gain) CHECK(rel_err(dg.grad(), cg.grad()) < 1e-5);
        if (with_gain) {  // a second backward adds the gain's per-head sums into its gradient
          const Tensor<float> twice(to_host(dg.grad()) * 2.0f);
          functional(head_norm_rope(view(dx), dg), hw).backward();
          CHECK(rel_err(dg.grad(), twice) < 1e-6);
        }
      }
  }
}

// The kernels that add into a gradient so far (Var::accumulate_grad_with): a residual stream
// read by rms_norm, channel_mix (also with x twice) and three linears, as in the GPT block.
TEST_CASE("cuda gradients added by the producing kernels against the CPU") {
  Rng rng(32);
  const int64_t D = 64;
  auto hx = Tensor<float>::randn({2, 9, D}, rng);
  std::vector<Tensor<float>> hp;
  for (int i = 0; i < 3; ++i) hp.push_back(Tensor<float>::rand({D}, rng, 0.5, 1.5));
  for (int i = 0; i < 3; ++i) hp.push_back(Tensor<float>::randn({D, D}, rng, 0, 0.2));
  auto hw = Tensor<float>::randn({2, 9, D}, rng);
  auto model = [](const auto& x, const auto& p) {
    auto y = channel_mix(p[0], x, p[1], x);
    y = channel_mix(y, p[2], rms_norm(y));
    auto h = rms_norm(y, p[0]);
    return channel_mix(y, p[1], linear(h, p[3]) * linear(h, p[4]) + linear(h, p[5]));
  };
  std::vector<VarH> cp;
  std::vector<VarD> dp;
  for (auto& t : hp) cp.push_back(VarH::parameter(t.clone()));
  for (auto& t : hp) dp.push_back(VarD::parameter(to_device(t)));
  auto cx = VarH::parameter(hx.clone());
  auto dx = VarD::parameter(to_device(hx));
  functional(model(cx, cp), hw).backward();
  functional(model(dx, dp), hw).backward();
  CHECK(rel_err(dx.grad(), cx.grad()) < 1e-5);
  for (size_t i = 0; i < cp.size(); ++i) {
    INFO("parameter " << i);
    CHECK(rel_err(dp[i].grad(), cp[i].grad()) < 1e-5);
  }
}

TEST_CASE("cuda causal attention (fused, GQA): forward and gradients against the CPU") {
  Rng rng(24);
  // B, Hq, Hkv, T, Dh: odd lengths, every padded head size (16, 32, 64, 128), tile edges
  const std::vector<std::array<int64_t, 5>> shapes = {
      {1, 1, 1, 1, 2},    {2, 2, 1, 7, 6},    {1, 4, 2, 65, 20},   {2, 3, 3, 64, 32},
      {1, 8, 4, 130, 64}, {2, 2, 2, 33, 100}, {1, 4, 1, 200, 128}, {1, 2, 1, 257, 64}};
  for (auto [B, Hq, Hkv, T, Dh] : shapes) {
    INFO("B " << B << " Hq " << Hq << " Hkv " << Hkv << " T " << T << " Dh " << Dh);
    auto hq = Tensor<float>::randn({B, Hq, T, Dh}, rng);
    auto hk = Tensor<float>::randn({B, Hkv, T, Dh}, rng);
    // v as the GPT makes it: a [B, T, Hkv, Dh] tensor viewed as [B, Hkv, T, Dh]
    auto hv_bthd = Tensor<float>::randn({B, T, Hkv, Dh}, rng);
    auto hw = Tensor<float>::randn({B, Hq, T, Dh}, rng);
    auto cq = VarH::parameter(hq.clone()), ck = VarH::parameter(hk.clone()),
         cv = VarH::parameter(hv_bthd.clone());
    auto dq = VarD::parameter(to_device(hq)), dk = VarD::parameter(to_device(hk)),
         dv = VarD::parameter(to_device(hv_bthd));
    auto cy = causal_attention(cq, ck, permute(cv, {0, 2, 1, 3}));
    functional(cy, hw).backward();
    auto dy = causal_attention(dq, dk, permute(dv, {0, 2, 1, 3}));
    CHECK(rel_err(dy.value(), cy.value()) < 1e-5);
    functional(dy, hw).backward();
    CHECK(rel_err(dq.grad(), cq.grad()) < 1e-4);
    CHECK(rel_err(dk.grad(), ck.grad()) < 1e-4);
    CHECK(rel_err(dv.grad(), cv.grad()) < 1e-4);
  }
  // a non-default scale, tensor level (no lse)
  auto hq = Tensor<float>::randn({1, 2, 40, 16}, rng),
       hk = Tensor<float>::randn({1, 1, 40, 16}, rng);
  auto hv = Tensor<float>::randn({1, 1, 40, 16}, rng);
  CHECK(rel_err(causal_attention(to_device(hq), to_device(hk), to_device(hv), 0.3),
                causal_attention(hq, hk, hv, 0.3)) < 1e-5);
  auto big = Tensor<float, cuda>::zeros({1, 1, 4, 130});
  CHECK_THROWS_WITH(causal_attention(big, big, big), Catch::Contains("head size 130"));
}

// Tensor-core attention (attention_mma.cuh): bf16 operands, fp32 accumulation and softmax.
// Relative error to the fp32 CPU result: bf16 rounding of q, k, v, p and ds gives ~2e-3 to
// 5e-3; the bound is 1.5e-2 (forward) and 3e-2 (gradients), and the error must be above 1e-5,
// so the test fails if the exact fp32 kernels ran instead.
TEST_CASE("cuda causal attention on tensor cores (bf16 mma): forward and gradients") {
  Rng rng(26);
  struct ResetPrecision {  // back to exact fp32 even when a check throws
    ~ResetPrecision() {
      cuda::set_bf16(false);
      cuda::set_tf32(false);
    }
  };
  const std::vector<std::array<int64_t, 5>> shapes = {
      {1, 1, 1, 1, 2},    {2, 2, 1, 7, 6},     {1, 4, 2, 65, 20},   {2, 3, 3, 64, 32},
      {1, 8, 4, 130, 64}, {2, 2, 2, 33, 100},  {1, 4, 1, 200, 128}, {1, 2, 1, 257, 64},
      {1, 2, 2, 96, 16},  {2, 4, 2, 1024, 64}, {1, 2, 1, 300, 128}};
  for (int mode = 0; mode < 2; ++mode)  // bf16 GEMMs, then TF32 GEMMs: both take this path
    for (auto [B, Hq, Hkv, T, Dh] : shapes) {
      if (mode == 1 && T > 300) continue;
      INFO("mode " << (mode ? "tf32" : "bf16") << " B " << B << " Hq " << Hq << " Hkv " << Hkv
                   << " T " << T << " Dh " << Dh);
      auto hq = Tensor<float>::randn({B, Hq, T, Dh}, rng);
      auto hk = Tensor<float>::randn({B, Hkv, T, Dh}, rng);
      auto hv_bthd = Tensor<float>::randn({B, T, Hkv, Dh}, rng);
      auto hw = Tensor<float>::randn({B, Hq, T, Dh}, rng);
      auto cq = VarH::parameter(hq.clone()), ck = VarH::parameter(hk.clone()),
           cv = VarH::parameter(hv_bthd.clone());
      auto cy = causal_attention(cq, ck, permute(cv, {0, 2, 1, 3}));
      functional(cy, hw).backward();
      ResetPrecision reset;
      if (mode == 0)
        cuda::set_bf16(true);
      else
        cuda::set_tf32(true);
      auto dq = VarD::parameter(to_device(hq)), dk = VarD::parameter(to_device(hk)),
           dv = VarD::parameter(to_device(hv_bthd));
      auto dy = causal_attention(dq, dk, permute(dv, {0, 2, 1, 3}));
      const double ey = rel_err(dy.value(), cy.value());
      functional(dy, hw).backward();
      const double eq = rel_err(dq.grad(), cq.grad()), ek = rel_err(dk.grad(), ck.grad()),
                   ev = rel_err(dv.grad(), cv.grad());
      INFO("errors: out " << ey << " dq " << eq << " dk " << ek << " dv " << ev);
      CHECK(ey < 1.5e-2);
      CHECK(eq < 3e-2);
      CHECK(ek < 3e-2);
      CHECK(ev < 3e-2);
      if (T * Dh >= 64) CHECK(ey > 1e-5);  // the bf16 path really ran
    }
}

namespace {
// Random q, k, v and output gradient for the backend's attention entry points, on the device.
struct AttentionInputs {
  Tensor<float, cuda> q, k, v, dout;
};
AttentionInputs random_attention_inputs(Rng& rng, int64_t B, int64_t Hq, int64_t Hkv, int64_t T,
                                        int64_t Dh) {
  auto q = to_device(Tensor<float>::randn({B, Hq, T, Dh}, rng));
  auto k = to_device(Tensor<float>::randn({B, Hkv, T, Dh}, rng));
  auto v = to_device(Tensor<float>::randn({B, Hkv, T, Dh}, rng));
  auto dout = to_device(Tensor<float>::randn({B, Hq, T, Dh}, rng));
  return {q, k, v, dout};
}
}  // namespace

// The tensor-core backward's two ways to dq (cuda::set_attention_scratch): the score gradients
// written by the dk/dv kernel and read back by one product (whole batch, or chunks of batch rows
// when the scratch bound is smaller), or recomputed from q, k, v (bound 0). Chunks run the same
// kernels on the same values, so chunked and whole results are equal bit for bit; the recomputed
// ds rounds different fp32 sums to bf16, so dq agrees within 1e-2 (each is within the CPU
// tolerances of the test above), and dk, dv (the same kernel either way) bit for bit.
TEST_CASE(
    "cuda causal attention on tensor cores: dq through the ds scratch, in chunks, or recomputed") {
  Rng rng(31);
  struct Reset {
    size_t scratch = cuda::attention_scratch();
    ~Reset() {
      cuda::set_bf16(false);
      cuda::set_attention_scratch(scratch);
    }
  } reset;
  cuda::set_bf16(true);
  for (auto [B, Hq, Hkv, T, Dh] : std::vector<std::array<int64_t, 5>>{
           {3, 4, 2, 200, 64}, {5, 2, 1, 64, 32}, {2, 3, 3, 97, 16}}) {
    INFO("B " << B << " Hq " << Hq << " Hkv " << Hkv << " T " << T << " Dh " << Dh);
    const AttentionInputs in = random_attention_inputs(rng, B, Hq, Hkv, T, Dh);
    const auto &q = in.q, &k = in.k, &v = in.v, &dout = in.dout;
    using TD = Tensor<float, cuda>;
    auto out = TD::empty(q.shape()), lse = TD::empty(Shape{B, Hq, T});
    backend::causal_attention_forward(cuda{}, q, k, v, 0.2f, out, &lse);
    const int64_t Tp = (T + 63) / 64 * 64;
    const size_t row_bytes = size_t(Hq * Tp * Tp) * 2;  // one batch row's ds, bf16
    struct Grads {
      TD dq, dk, dv;
    };
    auto backward = [&](size_t scratch) {
      cuda::set_attention_scratch(scratch);
      auto dq = TD::full(q.shape(), std::nanf("")), dk = TD::full(k.shape(), std::nanf("")),
           dv = TD::full(v.shape(), std::nanf(""));
      backend::causal_attention_backward(cuda{}, q, k, v, out, lse, dout, 0.2f, dq, dk, dv);
      return Grads{dq, dk, dv};
    };
    const Grads whole = backward(size_t(B) * row_bytes), one_row = backward(row_bytes),
                two_rows = backward(2 * row_bytes + 1), recomputed = backward(0);
    for (const Grads* g : {&one_row, &two_rows}) {
      CHECK(rel_err(g->dq, to_host(whole.dq)) ==
            0);  // NaN anywhere (an unwritten element) fails these
      CHECK(rel_err(g->dk, to_host(whole.dk)) == 0);
      CHECK(rel_err(g->dv, to_host(whole.dv)) == 0);
    }
    const double edq = rel_err(recomputed.dq, to_host(whole.dq));
    INFO("dq recomputed against through ds: " << edq);
    CHECK(edq < 1e-2);
    CHECK(rel_err(recomputed.dk, to_host(whole.dk)) == 0);
    CHECK(rel_err(recomputed.dv, to_host(whole.dv)) == 0);
  }
}

// The GPT's heads are views of [B, T, H, Dh] memory; the kernels read such inputs and write
// out, dq, dk and dv through their strides. Every element of a strided output must equal the
// contiguous run's (same kernels, same arithmetic), and nothing outside the view is touched.
TEST_CASE("cuda causal attention: outputs and gradients written into [B, T, H, Dh] views") {
  Rng rng(27);
  struct ResetPrecision {
    ~ResetPrecision() { cuda::set_tf32(false); }
  } reset;
  auto token_major = [](int64_t B, int64_t H, int64_t T, int64_t D) {  // poisoned, viewed
    return Tensor<float, cuda>::full(Shape{B, T, H, D}, std::nanf("")).permute({0, 2, 1, 3});
  };
  for (bool tensor_cores : {false, true})
    for (auto [B, Hq, Hkv, T, Dh] : std::vector<std::array<int64_t, 5>>{
             {2, 4, 2, 70, 64}, {1, 3, 1, 33, 20}, {1, 2, 2, 129, 128}}) {
      INFO((tensor_cores ? "tensor cores" : "fp32")
           << " B " << B << " Hq " << Hq << " T " << T << " Dh " << Dh);
      cuda::set_tf32(tensor_cores);
      const AttentionInputs in = random_attention_inputs(rng, B, Hq, Hkv, T, Dh);
      const auto &q = in.q, &k = in.k, &v = in.v, &dout = in.dout;
      using TD = Tensor<float, cuda>;
      auto out = TD::empty(q.shape()), lse = TD::empty(Shape{B, Hq, T});
      auto dq = TD::empty(q.shape()), dk = TD::empty(k.shape()), dv = TD::empty(v.shape());
      backend::causal_attention_forward(cuda{}, q, k, v, 0.2f, out, &lse);
      backend::causal_attention_backward(cuda{}, q, k, v, out, lse, dout, 0.2f, dq, dk, dv);
      auto out_v = token_major(B, Hq, T, Dh), lse_v = TD::empty(Shape{B, Hq, T});
      auto dq_v = token_major(B, Hq, T, Dh), dk_v = token_major(B, Hkv, T, Dh),
           dv_v = token_major(B, Hkv, T, Dh);
      backend::causal_attention_forward(cuda{}, q, k, v, 0.2f, out_v, &lse_v);
      backend::causal_attention_backward(cuda{}, q, k, v, out_v, lse_v, dout, 0.2f, dq_v, dk_v,
                                         dv_v);
      CHECK(rel_err(out_v, to_host(out)) == 0);  // NaN anywhere (an unwritten element) fails these
      CHECK(rel_err(lse_v, to_host(lse)) == 0);
      CHECK(rel_err(dq_v, to_host(dq)) == 0);
      CHECK(rel_err(dk_v, to_host(dk)) == 0);
      CHECK(rel_err(dv_v, to_host(dv)) == 0);
    }
}

TEST_CASE("cuda channel_mix: values and gradients of both forms against the CPU") {
  Rng rng(28);
  // [16, 64, 512]: float4 columns over many row slices; [3, 7, 5]: one float per thread.
  for (Shape shape : {Shape{16, 64, 512}, Shape{3, 7, 5}})
    for (bool with_a : {true, false}) {
      INFO("shape " << shape << (with_a ? " a x + b y" : " x + b y"));
      const int64_t D = shape.back();
      auto hx = Tensor<float>::randn(shape, rng), hy = Tensor<float>::randn(shape, rng);
      auto ha = Tensor<float>::randn({D}, rng), hb = Tensor<float>::randn({D}, rng);
      auto hw = Tensor<float>::randn(shape, rng);
      auto ca = VarH::parameter(ha.clone()), cx = VarH::parameter(hx.clone()),
           cb = VarH::parameter(hb.clone()), cy = VarH::parameter(hy.clone());
      auto cout = with_a ? channel_mix(ca, cx, cb, cy) : channel_mix(cx, cb, cy);
      functional(cout, hw).backward();
      auto da = VarD::parameter(to_device(ha)), dx = VarD::parameter(to_device(hx)),
           db = VarD::parameter(to_device(hb)), dy = VarD::parameter(to_device(hy));
      auto dout = with_a ? channel_mix(da, dx, db, dy) : channel_mix(dx, db, dy);
      CHECK(rel_err(dout.value(), cout.value()) < 1e-6);
      functional(dout, hw).backward();
      CHECK(rel_err(dx.grad(), cx.grad()) < 1e-6);
      CHECK(rel_err(dy.grad(), cy.grad()) < 1e-6);
      CHECK(rel_err(db.grad(), cb.grad()) < 1e-5);  // sums in another order
      if (with_a) CHECK(rel_err(da.grad(), ca.grad()) < 1e-5);
    }
}

TEST_CASE("cuda max: values, first-maximum argmax and its gradient against the CPU") {
  Rng rng(25);
  auto hx = Tensor<float>::randn({4, 5, 37}, rng);
  hx(1, 2, 3) = hx(1, 2, 9) = 50.f;  // a tie: the first one gets the gradient
  for (std::vector<int64_t> axes : {std::vector<int64_t>{-1}, {0}, {1}, {0, 2}, {}}) {
    auto hw = Tensor<float>::randn(max(hx, axes).shape(), rng);
    auto cx = VarH::parameter(hx.clone());
    auto dx = VarD::parameter(to_device(hx));
    auto cy = max(cx, axes);
    functional(cy, hw).backward();
    auto dy = max(dx, axes);
    CHECK(rel_err(dy.value(), cy.value()) == 0);
    functional(dy, hw).backward();
    CHECK(rel_err(dx.grad(), cx.grad()) == 0);
  }
}

TEST_CASE("cuda quantizers: ternary absmean (STE) and int8 activations against the CPU") {
  Rng rng(26);
  // small groups (a block each), then large ones split over many blocks (two passes)
  for (auto [r, c_] : std::vector<std::array<int64_t, 2>>{{48, 96}, {512, 1024}, {3, 70001}})
    for (auto g : {quant::Granularity::per_tensor, quant::Granularity::per_row,
                   quant::Granularity::per_group}) {
      INFO("weight " << r << "x" << c_ << " granularity " << int(g));
      quant::TernaryConfig c;
      c.granularity = g;
      c.group_size = r == 3 ? 70001 : 32;
      auto hw = Tensor<float>::randn({r, c_}, rng, 0, 0.1);
      auto hgrad = Tensor<float>::randn({r, c_}, rng);
      for (double lambda : {1.0, 0.4}) {
        auto cw = VarH::parameter(hw.clone());
        auto dw = VarD::parameter(to_device(hw));
        auto cq = quant::STE::apply(cw, c, lambda);
        functional(cq, hgrad).backward();
        auto dq = quant::STE::apply(dw, c, lambda);
        CHECK(rel_err(dq.value(), cq.value()) < 1e-6);
        functional(dq, hgrad).backward();
        CHECK(rel_err(dw.grad(), cw.grad()) == 0);  // straight through
      }
    }
  for (auto [rows, D] : std::vector<std::array<int64_t, 2>>{{1, 1}, {7, 33}, {300, 512}}) {
    auto hx = Tensor<float>::randn({rows, D}, rng, 0, 2);
    if (rows > 1) hx.select(0, 1).fill(0.f);  // a zero row stays zero
    auto hw = Tensor<float>::randn({rows, D}, rng);
    auto cx = VarH::parameter(hx.clone());
    auto dx = VarD::parameter(to_device(hx));
    auto cy = quant::quantize_activations(cx);
    functional(cy, hw).backward();
    auto dy = quant::quantize_activations(dx);
    CHECK(rel_err(dy.value(), cy.value()) == 0);
    functional(dy, hw).backward();
    CHECK(rel_err(dx.grad(), cx.grad()) == 0);
  }
  // rms_norm and int8 in one kernel: bit for bit the two kernels, with rms_norm's gradients;
  // against the CPU within a few roundings that land on the other side of a half
  for (auto [rows, D] : std::vector<std::array<int64_t, 2>>{{7, 33}, {300, 512}}) {
    INFO("rms_norm_quantize_activations " << rows << "x" << D);
    auto hx = Tensor<float>::randn({rows, D}, rng, 0, 2);
    hx.select(0, 1).fill(0.f);
    auto hg = Tensor<float>::randn({D}, rng, 1, 0.3);
    auto hw = Tensor<float>::randn({rows, D}, rng);
    auto fx = VarD::parameter(to_device(hx)), fg = VarD::parameter(to_device(hg));
    auto fy = quant::rms_norm_quantize_activations(fx, fg);
    functional(fy, hw).backward();
    auto ux = VarD::parameter(to_device(hx)), ug = VarD::parameter(to_device(hg));
    auto uy = quant::quantize_activations(rms_norm(ux, ug));
    functional(uy, hw).backward();
    CHECK(rel_err(fy.value(), to_host(uy.value())) == 0);
    CHECK(rel_err(fx.grad(), to_host(ux.grad())) == 0);
    CHECK(rel_err(fg.grad(), to_host(ug.grad())) == 0);
    auto cx = VarH::parameter(hx.clone()), cg = VarH::parameter(hg.clone());
    auto cy = quant::rms_norm_quantize_activations(cx, cg);
    functional(cy, hw).backward();
    CHECK(rel_err(fy.value(), cy.value()) < 1e-3);
    CHECK(rel_err(fx.grad(), cx.grad()) < 1e-4);
    CHECK(rel_err(fg.grad(), cg.grad()) < 1e-4);
  }
  // Three gains on one x (the q, k, v BitLinears): bit for bit the three single calls on the
  // device, gradients within float rounding of them and of the CPU; also with an unused output,
  // and behind the GPT block's plain pre-norm (prenormed: both norms in one kernel each way,
  // bit for bit the two ops forward). x is also read by another op (its gradient is added to).
  for (auto [rows, D] : std::vector<std::array<int64_t, 2>>{{7, 33}, {300, 512}, {257, 64}})
    for (bool use_middle : {true, false})
      for (bool prenormed : {false, true}) {
        INFO("K = 3, " << rows << "x" << D << (use_middle ? "" : ", middle output unused")
                       << (prenormed ? ", prenormed" : ""));
        auto hx = Tensor<float>::randn({rows, D}, rng, 0, 2);
        auto hr = Tensor<float>::randn({rows, D}, rng);
        std::array<Tensor<float>, 3> hg, hw;
        for (int k = 0; k < 3; ++k) {
          hg[k] = Tensor<float>::randn({D}, rng, 1, 0.3);
          hw[k] = Tensor<float>::randn({rows, D}, rng);
        }
        auto run = [&](auto x, std::array<decltype(x), 3> g, bool shared) {
          std::array<decltype(x), 3> y;
          if (shared && prenormed)
            y = quant::rms_norm_quantize_activations_prenormed<3>(x, g, 1e-6, 1e-6);
          else if (shared)
            y = quant::rms_norm_quantize_activations<3>(x, g);
          else
            for (int k = 0; k < 3; ++k)
              y[k] = quant::rms_norm_quantize_activations(prenormed ? rms_norm(x, 1e-6) : x, g[k]);
          auto loss = functional(y[0], hw[0]) + functional(y[2], hw[2]) + functional(x, hr);
          if (use_middle) loss = loss + functional(y[1], hw[1]);
          loss.backward();
          return y;
        };
        auto dx1 = VarD::parameter(to_device(hx)), dx2 = VarD::parameter(to_device(hx));
        auto cx = VarH::parameter(hx.clone());
        std::array<VarD, 3> dg1, dg2;
        std::array<VarH, 3> cg;
        for (int k = 0; k < 3; ++k) {
          dg1[k] = VarD::parameter(to_device(hg[k]));
          dg2[k] = VarD::parameter(to_device(hg[k]));
          cg[k] = VarH::parameter(hg[k].clone());
        }
        auto y1 = run(dx1, dg1, true);
        auto y2 = run(dx2, dg2, false);
        auto yc = run(cx, cg, true);
        for (int k = 0; k < 3; ++k) {
          CHECK(rel_err(y1[k].value(), to_host(y2[k].value())) == 0);
          CHECK(rel_err(y1[k].value(), yc[k].value()) < 1e-3);
          if (k != 1 || use_middle) {
            CHECK(rel_err(dg1[k].grad(), to_host(dg2[k].grad())) < 1e-5);
            CHECK(rel_err(dg1[k].grad(), cg[k].grad()) < 1e-4);
          } else {
            CHECK(!dg1[k].grad().defined());
          }
        }
        CHECK(rel_err(dx1.grad(), to_host(dx2.grad())) < 1e-5);
        CHECK(rel_err(dx1.grad(), cx.grad()) < 1e-4);
      }
  // a NaN makes its row NaN on the device (the CPU throws)
  auto bad = Tensor<float>::ones({2, 4});
  bad(1, 2) = std::nanf("");
  auto y = to_host(quant::fake_quantize_int8(to_device(bad)));
  CHECK(y(0, 0) == 1.f);
  CHECK(std::isnan(y(1, 0)));
}

TEST_CASE("cuda norms, clipping and Muon against the CPU") {
  Rng rng(27);
  auto a = Tensor<float>::randn({1000, 37}, rng), b = Tensor<float>::randn({3}, rng);
  CHECK(optim::detail::squared_norm(to_device(a)) ==
        Approx(optim::detail::squared_norm(a)).epsilon(1e-6));
  // clip_grad_norm: same total, same scaled gradients
  auto ca = VarH::parameter(a.clone()), cb = VarH::parameter(b.clone());
  auto da = VarD::parameter(to_device(a)), db = VarD::parameter(to_device(b));
  ca.accumulate_grad(a);
  cb.accumulate_grad(b);
  da.accumulate_grad(to_device(a));
  db.accumulate_grad(to_device(b));
  const double tc = optim::clip_grad_norm<float, cpu>({ca, cb, ca}, 1.0);
  const double td = optim::clip_grad_norm<float, cuda>({da, db, da}, 1.0);
  CHECK(td == Approx(tc).epsilon(1e-6));
  CHECK(rel_err(da.grad(), ca.grad()) < 1e-6);
  CHECK(rel_err(db.grad(), cb.grad()) < 1e-6);
  // Newton-Schulz (wide and tall) and three Muon steps
  for (auto [r, cdim] : std::vector<std::array<int64_t, 2>>{{64, 96}, {130, 33}}) {
    auto g = Tensor<float>::randn({r, cdim}, rng);
    CHECK(rel_err(optim::newton_schulz5(to_device(g)), optim::newton_schulz5(g)) < 1e-5);
    auto hp = Tensor<float>::randn({r, cdim}, rng, 0, 0.1);
    auto cp = VarH::parameter(hp.clone());
    auto dp = VarD::parameter(to_device(hp));
    optim::Muon<float> cm({cp}, {.lr = 0.02, .weight_decay = 0.01});
    optim::Muon<float, cuda> dm({dp}, {.lr = 0.02, .weight_decay = 0.01});
    for (int s = 0; s < 3; ++s) {
      auto hg = Tensor<float>::randn({r, cdim}, rng);
      cp.accumulate_grad(hg);
      dp.accumulate_grad(to_device(hg));
      cm.step();
      dm.step();
      cm.zero_grad();
      dm.zero_grad();
    }
    CHECK(rel_err(dp.value(), cp.value()) < 1e-5);
  }
  // A stack of matrices (one strided-batched GEMM per product), and Muon over several matrices
  // of one shape (stacked in finish_step), wide and tall.
  for (auto [r, cdim] : std::vector<std::array<int64_t, 2>>{{64, 96}, {130, 33}}) {
    auto g = Tensor<float>::randn({3, r, cdim}, rng);
    CHECK(rel_err(optim::newton_schulz5(to_device(g)), optim::newton_schulz5(g)) < 1e-5);
    std::vector<VarH> cps;
    std::vector<VarD> dps;
    for (int i = 0; i < 3; ++i) {
      auto hp = Tensor<float>::randn({r, cdim}, rng, 0, 0.1);
      cps.push_back(VarH::parameter(hp.clone()));
      dps.push_back(VarD::parameter(to_device(hp)));
    }
    optim::Muon<float> cm(cps, {.lr = 0.02});
    optim::Muon<float, cuda> dm(dps, {.lr = 0.02});
    for (int s = 0; s < 2; ++s) {
      for (int i = 0; i < 3; ++i) {
        auto hg = Tensor<float>::randn({r, cdim}, rng, 0, 1 + i);
        cps[i].accumulate_grad(hg);
        dps[i].accumulate_grad(to_device(hg));
      }
      cm.step();
      dm.step();
      cm.zero_grad();
      dm.zero_grad();
    }
    for (int i = 0; i < 3; ++i) CHECK(rel_err(dps[i].value(), cps[i].value()) < 1e-5);
  }
}

// The optimizers' updates over many tensors in one launch each (backend/cuda/optim.cuh): 40
// AdamW parameters (two launches of at most 32 runs; sizes across the 4096-value chunks, one of
// a single value), Muon over two shapes (a stack of three and a lone matrix, nesterov and plain
// momentum groups) and the clip over all of them, three steps against the CPU.
TEST_CASE("cuda optimizer runs: AdamW, Muon and clipping over many tensors against the CPU") {
  Rng rng(31);
  std::vector<VarH> cv, cm;
  std::vector<VarD> dv, dm;
  auto add = [&](Shape shape, std::vector<VarH>& c, std::vector<VarD>& d) {
    auto h = Tensor<float>::randn(shape, rng, 0, 0.1);
    c.push_back(VarH::parameter(h.clone()));
    d.push_back(VarD::parameter(to_device(h)));
  };
  for (int i = 0; i < 40; ++i) add(Shape{i == 0 ? 1 : (i % 7 == 0 ? 9000 : 5 + 97 * i)}, cv, dv);
  for (int i = 0; i < 3; ++i) add(Shape{48, 80}, cm, dm);
  add(Shape{96, 40}, cm, dm);
  optim::AdamW<float> ca(cv, {.lr = 0.01, .beta1 = 0.9, .beta2 = 0.95, .weight_decay = 0.1});
  optim::AdamW<float, cuda> da(dv, {.lr = 0.01, .beta1 = 0.9, .beta2 = 0.95, .weight_decay = 0.1});
  using MuonH = optim::Muon<float>;
  using MuonD = optim::Muon<float, cuda>;
  const optim::MuonOptions nesterov{.lr = 0.02, .weight_decay = 0.01};
  const optim::MuonOptions plain{.lr = 0.03, .momentum = 0.9, .nesterov = false};
  MuonH cmu({MuonH::Group{{cm[0], cm[1], cm[3]}, nesterov}, MuonH::Group{{cm[2]}, plain}});
  MuonD dmu({MuonD::Group{{dm[0], dm[1], dm[3]}, nesterov}, MuonD::Group{{dm[2]}, plain}});
  std::vector<VarH> call(cv);
  std::vector<VarD> dall(dv);
  call.insert(call.end(), cm.begin(), cm.end());
  dall.insert(dall.end(), dm.begin(), dm.end());
  for (int s = 0; s < 3; ++s) {
    for (size_t i = 0; i < call.size(); ++i) {
      auto g = Tensor<float>::randn(call[i].shape(), rng, 0, 1 + double(i % 3));
      call[i].accumulate_grad(g);
      dall[i].accumulate_grad(to_device(g));
    }
    const double tc = optim::clip_grad_norm(call, 10.0);  // (norms of several hundred: scaled)
    const double td = optim::clip_grad_norm(dall, 10.0);
    CHECK(td == Approx(tc).epsilon(1e-6));
    for (size_t i = 0; i < call.size(); ++i) CHECK(rel_err(dall[i].grad(), call[i].grad()) < 1e-6);
    ca.step();
    da.step();
    cmu.step();
    dmu.step();
    for (auto& p : call) p.zero_grad();
    for (auto& p : dall) p.zero_grad();
  }
  for (size_t i = 0; i < cv.size(); ++i) {
    CAPTURE(i);
    CHECK(rel_err(dv[i].value(), cv[i].value()) < 1e-6);
    CHECK(rel_err(da.state(i).at("exp_avg_sq"), ca.state(i).at("exp_avg_sq")) < 1e-6);
  }
  for (size_t i = 0; i < cm.size(); ++i) {
    CAPTURE(i);
    CHECK(rel_err(dm[i].value(), cm[i].value()) < 1e-5);
    CHECK(rel_err(dmu.state(i).at("momentum_buffer"), cmu.state(i).at("momentum_buffer")) < 1e-6);
  }
}

// matmul over one batch axis is one strided-batched GEMM on the device: against the CPU, with a
// transposed operand and a broadcast one (batch stride 0), exact fp32 and under the TF32 flag
// (where cuBLAS may still pick an exact fp32 kernel for products this small: only bounded).
TEST_CASE("cuda batched matmul (strided-batched GEMM) against the CPU") {
  Rng rng(29);
  auto ha = Tensor<float>::randn({5, 33, 20}, rng), hb = Tensor<float>::randn({5, 47, 20}, rng);
  auto hw = Tensor<float>::randn({20, 47}, rng);
  const auto ref = matmul(ha, hb.transpose(-1, -2));                       // [5, 33, 47]
  const auto ref_bcast = matmul(ha, hw.unsqueeze(0).expand({5, 20, 47}));  // stride 0
  const auto da = to_device(ha), db = to_device(hb), dw = to_device(hw);
  CHECK(rel_err(matmul(da, db.transpose(-1, -2)), ref) < 1e-6);
  CHECK(rel_err(matmul(da, dw.unsqueeze(0).expand({5, 20, 47})), ref_bcast) < 1e-6);
  cuda::set_tf32(true);
  const double e = rel_err(matmul(da, db.transpose(-1, -2)), ref);
  cuda::set_tf32(false);
  CHECK(e < 5e-3);
}

// linear() under cuda::set_bf16 (detail::linear_bf16, bf16 copies of x, w and g on the tensor
// cores) against the same function on the CPU (the rounded operands multiplied in fp32): the
// roundings are identical, only the order of the fp32 sums differs.
TEST_CASE("cuda linear with bf16 operands against the CPU's bf16 reference") {
  const Bf16On on;
  Rng rng(33);
  for (auto [rows, in, out] : std::vector<std::array<int64_t, 3>>{{64, 512, 256}, {33, 20, 7}}) {
    INFO(rows << " x " << in << " -> " << out);
    auto hx = Tensor<float>::randn({rows, in}, rng), hw = Tensor<float>::randn({out, in}, rng);
    auto hr = Tensor<float>::randn({rows, in}, rng), hg = Tensor<float>::randn({rows, out}, rng);
    auto cx = VarH::parameter(hx.clone()), cw = VarH::parameter(hw.clone());
    auto dx = VarD::parameter(to_device(hx)), dw = VarD::parameter(to_device(hw));
    auto cy = detail::linear_bf16(cx, cw);
    functional(cy, hg).backward();
    (sum(detail::linear_bf16(cx, cw) * VarH::constant(hg)) + sum(cx * VarH::constant(hr)))
        .backward();           // a second pass: both gradients are added into
    auto dy = linear(dx, dw);  // the bf16 path, chosen by the flag
    CHECK(rel_err(dy.value(), cy.value()) < 1e-5);
    functional(dy, hg).backward();
    (sum(linear(dx, dw) * VarD::constant(to_device(hg))) + sum(dx * VarD::constant(to_device(hr))))
        .backward();
    CHECK(rel_err(dx.grad(), cx.grad()) < 1e-5);
    CHECK(rel_err(dw.grad(), cw.grad()) < 1e-5);
  }
}

// relu2_linear() under cuda::set_bf16 (detail::relu2_linear_bf16: relu(h)^2 rounded by the
// pass that computes it) against the same rule on the CPU; h's gradient is also added to.
TEST_CASE("cuda relu2_linear with bf16 operands against the CPU's bf16 reference") {
  const Bf16On on;
  Rng rng(36);
  for (auto [rows, in, out] : std::vector<std::array<int64_t, 3>>{{70, 1024, 512}, {33, 21, 7}}) {
    INFO(rows << " x " << in << " -> " << out);
    auto hh = Tensor<float>::randn({rows, in}, rng), hw = Tensor<float>::randn({out, in}, rng);
    auto hr = Tensor<float>::randn({rows, in}, rng), hs = Tensor<float>::randn({rows, out}, rng);
    auto ch = VarH::parameter(hh.clone()), cw = VarH::parameter(hw.clone());
    auto cy = detail::relu2_linear_bf16(ch, cw);
    (functional(ch, hr) + functional(cy, hs)).backward();
    auto dh = VarD::parameter(to_device(hh)), dw = VarD::parameter(to_device(hw));
    auto dy = relu2_linear(dh, dw);  // the bf16 path, chosen by the flag
    CHECK(std::string(Tape::current().entries().back().op) == "relu2_linear");
    CHECK(rel_err(dy.value(), cy.value()) < 1e-5);
    (functional(dh, hr) + functional(dy, hs)).backward();
    CHECK(rel_err(dh.grad(), ch.grad()) < 1e-5);
    CHECK(rel_err(dw.grad(), cw.grad()) < 1e-5);
  }
}

namespace {
// A bf16 boundary on the CPU: the value rounded to bf16 (kept in fp32), and its gradient too;
// where rms_norm_mlp's bf16 node holds a tensor in bf16, the CPU reference puts one of these.
VarH bf16_boundary(const VarH& x) {
  auto round = [](const Tensor<float>& t) {
    const auto r = backend::to_bf16(cpu{}, t);
    auto out = Tensor<float>::empty(t.shape());
    for (int64_t i = 0; i < t.numel(); ++i) out.data()[i] = float(r.data()[i]);
    return out;
  };
  return VarH::record("bf16_boundary", round(x.value()), {x},
                      [x, round](const Tensor<float>& g) { x.accumulate_grad(round(g)); });
}
}  // namespace

// The residual rule's weight side in one kernel (backend::scaled_weight_backward: dw = prior +
// scale G, dscale = prior + rowsum(w G), bf16(scale w)) against the CPU's loop: float4 rows
// (in 1024) and scalar ones (in 37), gradients so far absent, separate and in place, and no
// gradients at all. Tolerances: dw 1e-6, dscale 1e-5 (sums in another order), the rounded
// weight exact.
TEST_CASE("cuda scaled_weight_backward against the CPU") {
  Rng rng(41);
  for (int64_t in : {int64_t(1024), int64_t(37)}) {
    const int64_t out = 96;
    auto G = Tensor<float>::randn({out, in}, rng), w = Tensor<float>::randn({out, in}, rng);
    auto sc = Tensor<float>::randn({out}, rng, 1, 0.5);
    auto pw = Tensor<float>::randn({out, in}, rng), ps = Tensor<float>::randn({out}, rng);
    auto dG = to_device(G), dwt = to_device(w), dsc = to_device(sc);
    auto dpw = to_device(pw), dps = to_device(ps);
    for (int prior : {0, 1, 2, 3}) {  // none, separate, in place; 3: no gradients wanted
      INFO("in " << in << " prior " << prior);
      const bool grads = prior != 3;
      auto cdw = prior == 2 ? pw.clone() : Tensor<float>::empty({out, in});
      auto cds = prior == 2 ? ps.clone() : Tensor<float>::empty({out});
      auto cwb = Tensor<bf16>::empty({out, in});
      Tensor<float, cuda> ddw = prior == 2 ? dpw.clone() : Tensor<float, cuda>::empty({out, in});
      Tensor<float, cuda> dds = prior == 2 ? dps.clone() : Tensor<float, cuda>::empty({out});
      auto dwb = Tensor<bf16, cuda>::empty({out, in});
      const bool sep = prior == 1, inplace = prior == 2;
      backend::scaled_weight_backward(cpu{}, grads ? G.data() : nullptr, w.data(), sc.data(),
                                      grads ? cdw.data() : nullptr,
                                      sep       ? pw.data()
                                      : inplace ? cdw.data()
                                                : nullptr,
                                      grads ? cds.data() : nullptr,
                                      sep       ? ps.data()
                                      : inplace ? cds.data()
                                                : nullptr,
                                      cwb.data(), out, in);
      backend::scaled_weight_backward(cuda{}, grads ? dG.data() : nullptr, dwt.data(), dsc.data(),
                                      grads ? ddw.data() : nullptr,
                                      sep       ? dpw.data()
                                      : inplace ? ddw.data()
                                                : nullptr,
                                      grads ? dds.data() : nullptr,
                                      sep       ? dps.data()
                                      : inplace ? dds.data()
                                                : nullptr,
                                      dwb.data(), out, in);
      CHECK(max_abs_diff(backend::widen_bf16(cpu{}, to_host(dwb)),
                         backend::widen_bf16(cpu{}, cwb)) == 0.0);
      if (grads) {
        CHECK(rel_err(ddw, cdw) < 1e-6);
        CHECK(rel_err(dds, cds) < 1e-5);
      }
    }
  }
}

// residual_linear handing the MLP its norm (NormedRows: the sum's kernel also normalises the
// sum) against the same two ops without it: the sum, the MLP's output and every gradient equal
// bit for bit; the MLP takes the rows only for the x they were computed from (a shifted x gets
// its own norm).
TEST_CASE("cuda residual_linear's NormedRows feed rms_norm_mlp, bit for bit") {
  const Bf16On on;
  Rng rng(43);
  const int64_t rows = 70, D = 512, hidden = 1024;
  auto ha = Tensor<float>::randn({rows, D}, rng), hw = Tensor<float>::randn({D, D}, rng, 0, 0.05);
  auto hx = Tensor<float>::randn({rows, D}, rng), hb = Tensor<float>::randn({D}, rng, 1, 0.5);
  auto hfc = Tensor<float>::randn({hidden, D}, rng, 0, 0.05);
  auto hproj = Tensor<float>::randn({D, hidden}, rng, 0, 0.05);
  auto hs = Tensor<float>::randn({D}, rng, 1, 0.5), hg = Tensor<float>::randn({rows, D}, rng);
  struct Run {
    Tensor<float> x, y;
    std::vector<Tensor<float>> grads;
    bool filled = false;
  };
  auto run = [&](bool use, bool shift) {
    auto a = VarD::parameter(to_device(ha)), w = VarD::parameter(to_device(hw));
    auto x0 = VarD::parameter(to_device(hx)), b = VarD::parameter(to_device(hb));
    auto fc = VarD::parameter(to_device(hfc)), proj = VarD::parameter(to_device(hproj));
    auto s = VarD::parameter(to_device(hs));
    NormedRows<float, cuda> normed;
    VarD x = residual_linear(Residual<float, cuda>{x0, b}, a, w, use ? &normed : nullptr);
    if (shift) x = x + 1.0f;  // another tensor: the rows are not its norm
    VarD y = rms_norm_mlp(x, fc, proj, 1e-6, Residual<float, cuda>{x, s}, use ? &normed : nullptr);
    Run out{to_host(x.value()), to_host(y.value()), {}, normed.xn16.defined()};
    functional(y, hg).backward();
    for (const VarD& v : {a, w, x0, b, fc, proj, s}) out.grads.push_back(to_host(v.grad()));
    return out;
  };
  for (bool shift : {false, true}) {
    INFO((shift ? "shifted x" : "the sum itself"));
    const Run plain = run(false, shift), fused = run(true, shift);
    CHECK(fused.filled);
    CHECK(max_abs_diff(fused.x, plain.x) == 0.0);
    CHECK(max_abs_diff(fused.y, plain.y) == 0.0);
    for (size_t i = 0; i < plain.grads.size(); ++i) {
      INFO("gradient " << i);
      CHECK(max_abs_diff(fused.grads[i], plain.grads[i]) == 0.0);
    }
  }
}

// The residual forms under cuda::set_bf16 (ops/residual_linear.hpp: x + b * product, whose
// backward never forms b * dout): residual_linear, residual_relu2_linear, and rms_norm_linear
// with a residual (the BitLinear projections, relu2 input on and off), against the same rule
// on the CPU (detail::residual_linear_bf16 of the same activations). The residual x is also
// read elsewhere. The rule rounds the product to bf16 before the sum. Tolerances: 1e-5; 2e-3
// where int8 rounding may flip on one backend.
TEST_CASE("cuda residual projections (bf16) against the CPU's rule") {
  const Bf16On on;
  Rng rng(37);
  enum Form { plain, square, norm_int8, norm_int8_square };
  for (Form form : {plain, square, norm_int8, norm_int8_square}) {
    const int64_t rows = 45, in = form == plain ? 512 : 1024, out = 512;
    INFO("form " << int(form));
    auto ha = Tensor<float>::randn({rows, in}, rng),
         hw = Tensor<float>::randn({out, in}, rng, 0, 0.05);
    auto hx = Tensor<float>::randn({rows, out}, rng), hb = Tensor<float>::randn({out}, rng, 1, 0.5);
    auto hgain = Tensor<float>::randn({in}, rng, 1, 0.3);
    auto hr = Tensor<float>::randn({rows, out}, rng), hs = Tensor<float>::randn({rows, out}, rng);
    const bool norm = form == norm_int8 || form == norm_int8_square;
    const bool sq = form == square || form == norm_int8_square;
    // (1e-4 on the plain forms' value: the product's rounding to bf16 may flip between the
    // backends' fp32 sums)
    const double tol = norm ? 2e-3 : 1e-5, tol_y = norm ? 2e-3 : 1e-4;
    // CPU: the activations as the GPU forms them, then the residual rule
    auto ca = VarH::parameter(ha.clone()), cw = VarH::parameter(hw.clone());
    auto cx = VarH::parameter(hx.clone()), cb = VarH::parameter(hb.clone());
    auto cgain = VarH::parameter(hgain.clone());
    VarH act = sq ? relu2(ca) : ca;
    if (norm)  // (the node's GEMM writes the activation's gradient in bf16)
      act = bf16_boundary(quant::rms_norm_quantize_activations(act, cgain, 1e-6));
    auto cy = detail::residual_linear_bf16(Residual<float, cpu>{cx, cb}, act, cw);
    (functional(cx, hr) + functional(cy, hs)).backward();
    // GPU: the fused op for the form
    auto da = VarD::parameter(to_device(ha)), dw = VarD::parameter(to_device(hw));
    auto dx = VarD::parameter(to_device(hx)), db = VarD::parameter(to_device(hb));
    auto dgain = VarD::parameter(to_device(hgain));
    const Residual<float, cuda> r{dx, db};
    VarD y = form == plain    ? residual_linear(r, da, dw)
             : form == square ? residual_relu2_linear(r, da, dw)
                              : quant::rms_norm_linear<1>(da, {dgain}, {dw}, 1e-6, std::nullopt,
                                                          true, sq, &r)[0];
    const std::string last = Tape::current().entries().back().op;
    CHECK((last == "residual_linear" || last == "residual_relu2_linear" ||
           last == "rms_norm_linear"));
    CHECK(rel_err(y.value(), cy.value()) < tol_y);
    (functional(dx, hr) + functional(y, hs)).backward();
    CHECK(rel_err(da.grad(), ca.grad()) < tol);
    CHECK(rel_err(dw.grad(), cw.grad()) < tol);
    CHECK(rel_err(dx.grad(), cx.grad()) < tol);
    CHECK(rel_err(db.grad(), cb.grad()) < tol);
    if (norm) CHECK(rel_err(dgain.grad(), cgain.grad()) < tol);
  }
}

// quant::rms_norm_linear under cuda::set_bf16: one node whose norm kernel writes the GEMMs'
// bf16 operands, against the CPU composing the same activations and linear()'s bf16 path
// (detail::linear_bf16: the same roundings; the node's GEMMs write the activations' gradients
// in bf16, a bf16_boundary on the CPU). The GPT's three uses: full-precision q, k, v behind the
// block norm (no gains, shared operand), BitLinear q, k, v behind it (pre-norm, gains, int8), a
// lone BitLinear (gain, int8). x is also read elsewhere (its gradient is added to).
// Tolerances: 1e-4 (a gradient's rounding to bf16 may flip between the backends' fp32 sums),
// and 2e-3 where int8 rounding may flip on one backend.
TEST_CASE("cuda rms_norm_linear (bf16 operands from the norm kernel) against the CPU") {
  const Bf16On on;
  Rng rng(34);
  struct Case {
    int64_t rows, D;
    bool gains, int8, pre;
  };
  for (const Case& c : {Case{70, 512, false, false, false}, Case{70, 512, true, true, true},
                        Case{33, 64, true, true, false}, Case{40, 1024, true, true, true}}) {
    INFO(c.rows << "x" << c.D << (c.gains ? " gains" : "") << (c.int8 ? " int8" : "")
                << (c.pre ? " pre-norm" : ""));
    const std::array<int64_t, 3> outs{c.D, c.D / 2, 96};
    auto hx = Tensor<float>::randn({c.rows, c.D}, rng, 0, 2);
    auto hr = Tensor<float>::randn({c.rows, c.D}, rng);
    std::array<Tensor<float>, 3> hg, hw, hs;
    for (int k = 0; k < 3; ++k) {
      hg[k] = Tensor<float>::randn({c.D}, rng, 1, 0.3);
      hw[k] = Tensor<float>::randn({outs[k], c.D}, rng, 0, 0.05);
      hs[k] = Tensor<float>::randn({c.rows, outs[k]}, rng);
    }
    const double tol = c.int8 ? 2e-3 : 1e-4;
    // CPU: the composition, then linear()'s bf16 path (its input's gradient rounded to bf16)
    auto cx = VarH::parameter(hx.clone());
    std::array<VarH, 3> cg, cw, cy;
    for (int k = 0; k < 3; ++k) {
      cg[k] = VarH::parameter(hg[k].clone());
      cw[k] = VarH::parameter(hw[k].clone());
    }
    {
      std::array<VarH, 3> a;
      const auto h = c.pre ? rms_norm(cx, 1e-6) : cx;
      for (int k = 0; k < 3; ++k)
        a[k] = c.int8 ? quant::rms_norm_quantize_activations(h, cg[k], 1e-6)
                      : (c.gains ? rms_norm(h, cg[k], 1e-6) : rms_norm(h, 1e-6));
      auto loss = functional(cx, hr);
      for (int k = 0; k < 3; ++k) {
        cy[k] = detail::linear_bf16(bf16_boundary(a[k]), cw[k]);
        loss = loss + functional(cy[k], hs[k]);
      }
      loss.backward();
    }
    // GPU: the fused op
    auto dx = VarD::parameter(to_device(hx));
    std::array<VarD, 3> gg, ww;
    for (int k = 0; k < 3; ++k) {
      gg[k] = c.gains ? VarD::parameter(to_device(hg[k])) : VarD();
      ww[k] = VarD::parameter(to_device(hw[k]));
    }
    auto y = quant::rms_norm_linear<3>(dx, gg, ww, 1e-6,
                                       c.pre ? std::optional<double>(1e-6) : std::nullopt, c.int8);
    bool fused = false;
    for (const auto& e : Tape::current().entries())
      fused = fused || std::string(e.op) == "rms_norm_linear";
    CHECK(fused);
    for (int k = 0; k < 3; ++k) CHECK(rel_err(y[k].value(), cy[k].value()) < tol);
    auto loss = functional(dx, hr);
    for (int k = 0; k < 3; ++k) loss = loss + functional(y[k], hs[k]);
    loss.backward();
    CHECK(rel_err(dx.grad(), cx.grad()) < tol);
    for (int k = 0; k < 3; ++k) {
      INFO("projection " << k);
      CHECK(rel_err(ww[k].grad(), cw[k].grad()) < tol);
      if (c.gains) CHECK(rel_err(gg[k].grad(), cg[k].grad()) < tol);
    }
  }
}

// quant::mix_rms_norm_linear under cuda::set_bf16 (the GPT block's entry: x = a x_in + b x0,
// then rms_norm_linear's q, k, v projections of x): one node for rows of 64 and 512 floats,
// full precision (no gains, one shared operand) and BitLinear (pre-norm, gains, int8), against
// the CPU composing channel_mix, the norms and linear()'s bf16 path (the node's GEMMs write each
// activation's gradient in bf16: a bf16_boundary per projection on the CPU). x is also read
// elsewhere (the attention's residual: its own gradient), and x_in and x0 have gradients from
// elsewhere before the node's backward adds to them. Rows of 96 floats compose on the GPU too.
// Tolerances: 1e-4 (a gradient's rounding to bf16 may flip between the backends' fp32 sums),
// 2e-3 where int8 rounding may flip on one backend, or where the GPU composes (its activations'
// gradients are not rounded there).
TEST_CASE("cuda mix_rms_norm_linear (the block's entry) against the CPU composition") {
  const Bf16On on;
  Rng rng(38);
  struct Case {
    int64_t D;
    bool bitlinear;
    bool one_input = false;  // x_in is x0 (the GPT's first block)
  };
  for (const Case& c : {Case{512, false}, Case{64, false}, Case{96, false}, Case{512, true},
                        Case{512, false, true}, Case{512, true, true}}) {
    const int64_t D = c.D, rows = 70;
    INFO("D " << D << (c.bitlinear ? " BitLinear" : "") << (c.one_input ? ", x_in is x0" : ""));
    const std::array<int64_t, 3> outs{D, D / 2, D / 2};
    auto hxi = Tensor<float>::randn({rows, D}, rng, 0, 2),
         hx0 = Tensor<float>::randn({rows, D}, rng);
    auto ha = Tensor<float>::randn({D}, rng, 1, 0.3), hb = Tensor<float>::randn({D}, rng, 0.5, 0.3);
    auto hr = Tensor<float>::randn({rows, D}, rng), hp = Tensor<float>::randn({rows, D}, rng),
         hq = Tensor<float>::randn({rows, D}, rng);
    std::array<Tensor<float>, 3> hw, hs, hg;
    for (int k = 0; k < 3; ++k) {
      hw[k] = Tensor<float>::randn({outs[k], D}, rng, 0, 0.05);
      hs[k] = Tensor<float>::randn({rows, outs[k]}, rng);
      hg[k] = Tensor<float>::randn({D}, rng, 1, 0.3);
    }
    // CPU: the composition, linear()'s bf16 path (each input's gradient rounded to bf16)
    auto cx0 = VarH::parameter(hx0.clone());
    auto cxi = c.one_input ? cx0 : VarH::parameter(hxi.clone());
    auto ca = VarH::parameter(ha.clone()), cb = VarH::parameter(hb.clone());
    std::array<VarH, 3> cw, cy, cg;
    for (int k = 0; k < 3; ++k) {
      cw[k] = VarH::parameter(hw[k].clone());
      cg[k] = VarH::parameter(hg[k].clone());
    }
    const auto cx = channel_mix(ca, cxi, cb, cx0);
    {
      const auto h = rms_norm(cx, 1e-6);
      auto loss = functional(cx, hr);
      for (int k = 0; k < 3; ++k) {
        const auto act = c.bitlinear ? quant::rms_norm_quantize_activations(h, cg[k], 1e-6) : h;
        cy[k] = detail::linear_bf16(bf16_boundary(act), cw[k]);
        loss = loss + functional(cy[k], hs[k]);
      }
      (loss + functional(cxi, hp) + functional(cx0, hq)).backward();
    }
    // GPU: the op
    auto dx0 = VarD::parameter(to_device(hx0));
    auto dxi = c.one_input ? dx0 : VarD::parameter(to_device(hxi));
    auto da = VarD::parameter(to_device(ha)), db = VarD::parameter(to_device(hb));
    std::array<VarD, 3> ww, gg;
    for (int k = 0; k < 3; ++k) {
      ww[k] = VarD::parameter(to_device(hw[k]));
      if (c.bitlinear) gg[k] = VarD::parameter(to_device(hg[k]));
    }
    const auto out =
        c.bitlinear
            ? quant::mix_rms_norm_linear<3>({da, dxi, db, dx0}, gg, ww, 1e-6, 1e-6, true)
            : quant::mix_rms_norm_linear<3>({da, dxi, db, dx0}, gg, ww, 1e-6, std::nullopt, false);
    bool fused = false;
    for (const auto& e : Tape::current().entries())
      fused = fused || std::string(e.op) == "mix_rms_norm_linear";
    CHECK(fused == (D != 96));
    const double tol = c.bitlinear || D == 96 ? 2e-3 : 1e-4;
    CHECK(rel_err(out.x.value(), cx.value()) < 1e-6);
    for (int k = 0; k < 3; ++k) CHECK(rel_err(out.y[k].value(), cy[k].value()) < tol);
    auto loss = functional(out.x, hr);
    for (int k = 0; k < 3; ++k) loss = loss + functional(out.y[k], hs[k]);
    (loss + functional(dxi, hp) + functional(dx0, hq)).backward();
    CHECK(rel_err(dxi.grad(), cxi.grad()) < tol);
    CHECK(rel_err(dx0.grad(), cx0.grad()) < tol);
    CHECK(rel_err(da.grad(), ca.grad()) < tol);
    CHECK(rel_err(db.grad(), cb.grad()) < tol);
    for (int k = 0; k < 3; ++k) {
      INFO("projection " << k);
      CHECK(rel_err(ww[k].grad(), cw[k].grad()) < tol);
      if (c.bitlinear) CHECK(rel_err(gg[k].grad(), cg[k].grad()) < tol);
    }
    // A second pass (a second micro-batch) accumulates: the kernels add the mix weights' and
    // gains' sums into the gradients so far, in place
    const auto twice = [](const Tensor<float, cuda>& g) {
      return Tensor<float>(to_host(g) * 2.0f);
    };
    const auto ga2 = twice(da.grad()), gb2 = twice(db.grad());
    std::array<Tensor<float>, 3> gk2;
    for (int k = 0; k < 3; ++k)
      if (c.bitlinear) gk2[k] = twice(gg[k].grad());
    {
      const auto again =
          c.bitlinear ? quant::mix_rms_norm_linear<3>({da, dxi, db, dx0}, gg, ww, 1e-6, 1e-6, true)
                      : quant::mix_rms_norm_linear<3>({da, dxi, db, dx0}, gg, ww, 1e-6,
                                                      std::nullopt, false);
      auto loss2 = functional(again.x, hr);
      for (int k = 0; k < 3; ++k) loss2 = loss2 + functional(again.y[k], hs[k]);
      (loss2 + functional(dxi, hp) + functional(dx0, hq)).backward();
    }
    CHECK(rel_err(da.grad(), ga2) < 1e-6);
    CHECK(rel_err(db.grad(), gb2) < 1e-6);
    for (int k = 0; k < 3; ++k)
      if (c.bitlinear) CHECK(rel_err(gg[k].grad(), gk2[k]) < 1e-6);
  }
  // Wrong shapes, and int8 without a gain: clear errors
  auto x = VarD::parameter(Tensor<float, cuda>::zeros({4, 64}));
  auto w = VarD::parameter(Tensor<float, cuda>::zeros({8, 32}));
  auto m = VarD::parameter(Tensor<float, cuda>::zeros({64}));
  const quant::BlockMix<float, cuda> mix{m, x, m, x};
  const std::array<VarD, 1> no_gain{};
  CHECK_THROWS_WITH(quant::mix_rms_norm_linear<1>(mix, no_gain, std::array<VarD, 1>{w}, 1e-6,
                                                  std::nullopt, false),
                    Catch::Contains("weight 0 of shape [8, 32]"));
  auto w2 = VarD::parameter(Tensor<float, cuda>::zeros({8, 64}));
  CHECK_THROWS_WITH(quant::mix_rms_norm_linear<1>(mix, no_gain, std::array<VarD, 1>{w2}, 1e-6,
                                                  std::nullopt, true),
                    Catch::Contains("has a gain"));
}

// rms_norm_linear with relu2_input (the BitLinear MLP projection, BitLinear::forward_relu2):
// the norm kernels square the rectified rows in registers and apply relu2's slope to dx, against
// the CPU composing relu2, the int8 norm and linear()'s bf16 path. D = 1024 and 64 take the
// register kernels (one node, no relu2 node); D = 100 composes on the GPU too. h's gradient is
// also added to from elsewhere. Tolerance 2e-3: int8 rounding may flip on one backend.
TEST_CASE("cuda rms_norm_linear with a relu2 input against the CPU") {
  const Bf16On on;
  Rng rng(35);
  for (int64_t D : {1024, 64, 100}) {
    INFO("D " << D);
    const int64_t rows = 37, out = 48;
    auto hx = Tensor<float>::randn({rows, D}, rng, 0, 2);
    auto hr = Tensor<float>::randn({rows, D}, rng);
    auto hg = Tensor<float>::randn({D}, rng, 1, 0.3);
    auto hw = Tensor<float>::randn({out, D}, rng, 0, 0.05);
    auto hs = Tensor<float>::randn({rows, out}, rng);
    auto cx = VarH::parameter(hx.clone()), cg = VarH::parameter(hg.clone());
    auto cw = VarH::parameter(hw.clone());
    const VarH ca = quant::rms_norm_quantize_activations(relu2(cx), cg, 1e-6);
    auto cy = detail::linear_bf16(D != 100 ? bf16_boundary(ca) : ca, cw);  // the node's bf16 da
    (functional(cx, hr) + functional(cy, hs)).backward();
    auto dx = VarD::parameter(to_device(hx)), dg = VarD::parameter(to_device(hg));
    auto dw = VarD::parameter(to_device(hw));
    auto y = quant::rms_norm_linear<1>(dx, {dg}, {dw}, 1e-6, std::nullopt, true, true)[0];
    bool fused = false, separate_relu2 = false;
    for (const auto& e : Tape::current().entries()) {
      fused = fused || std::string(e.op) == "rms_norm_linear";
      separate_relu2 = separate_relu2 || std::string(e.op) == "relu2";
    }
    CHECK(fused == (D != 100));
    CHECK(separate_relu2 == (D == 100));
    CHECK(rel_err(y.value(), cy.value()) < 2e-3);
    (functional(dx, hr) + functional(y, hs)).backward();
    CHECK(rel_err(dx.grad(), cx.grad()) < 2e-3);
    CHECK(rel_err(dg.grad(), cg.grad()) < 2e-3);
    CHECK(rel_err(dw.grad(), cw.grad()) < 2e-3);
  }
}

// rms_norm_mlp under cuda::set_bf16 (ops/norm_mlp.hpp: one node, the hidden activation h and
// its gradient in bf16) against the CPU composing rms_norm, linear()'s bf16 path and relu2 with
// bf16 boundaries at rms_norm(x) (backward: the fc GEMM's dxn), h (forward: h; backward: dh)
// and relu(h)^2 (backward: its gradient da), with and without a residual. D = 100 is not a
// norm-kernel size: the GPU composes the separate bf16 ops (no rounding of h), checked against the
// same composition on the CPU. x is also read elsewhere. Exact cases: x of +-1 (so rms_norm(x)
// rounds to +-1 on both), weights k / 64, the output's gradient k / 8 and power-of-two scales make
// every sum that is rounded to bf16 afterwards exact in fp32, so both backends round the same
// values: tolerance 1e-5. Random inputs: the GEMMs round h and da from fp32 sums taken in another
// order than the CPU's, and a value within an fp32 ulp of a bf16 tie rounds the other way (one bf16
// ulp, 2^-8, on ~1e-4 of the elements): tolerance 5e-4 (measured 1.5e-4 at 70 x 512 -> 1024).
TEST_CASE("cuda rms_norm_mlp (bf16 hidden activation) against the CPU's rule") {
  const Bf16On on;
  Rng rng(38);
  struct Case {
    int64_t rows, D, hidden;
    bool residual, exact;
  };
  auto steps = [&](Shape shape, double sd, double unit) {  // round(N(0, sd)) * unit
    auto t = Tensor<float>::randn(shape, rng, 0, sd);
    for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = std::nearbyint(t.data()[i]) * unit;
    return t;
  };
  for (const Case& c : {Case{70, 512, 1024, true, true}, Case{70, 512, 1024, true, false},
                        Case{33, 64, 96, false, true}, Case{40, 100, 200, true, true}}) {
    INFO(c.rows << " x " << c.D << " -> " << c.hidden << (c.residual ? ", residual" : "")
                << (c.exact ? ", exact sums" : ", random"));
    const bool fused_size = c.D != 100;
    Tensor<float> hx, hfc, hproj, hb, hs;
    if (c.exact) {
      hx = steps({c.rows, c.D}, 1, 1);
      for (int64_t i = 0; i < hx.numel(); ++i) hx.data()[i] = hx.data()[i] >= 0 ? 1.f : -1.f;
      hfc = steps({c.hidden, c.D}, 8, 1.0 / 64);
      hproj = steps({c.D, c.hidden}, 4, 1.0 / 64);
      hb = steps({c.D}, 1, 1);
      for (int64_t i = 0; i < hb.numel(); ++i) hb.data()[i] = std::ldexp(1.f, int(hb.data()[i]));
      hs = steps({c.rows, c.D}, 4, 1.0 / 8);
    } else {
      hx = Tensor<float>::randn({c.rows, c.D}, rng, 0, 2);
      hfc = Tensor<float>::randn({c.hidden, c.D}, rng, 0, 0.1);
      hproj = Tensor<float>::randn({c.D, c.hidden}, rng, 0, 0.05);
      hb = Tensor<float>::randn({c.D}, rng, 1, 0.5);
      hs = Tensor<float>::randn({c.rows, c.D}, rng);
    }
    auto hres = Tensor<float>::randn({c.rows, c.D}, rng),
         hr = Tensor<float>::randn({c.rows, c.D}, rng);
    // CPU: the rule, composed
    auto cx = VarH::parameter(hx.clone()), cfc = VarH::parameter(hfc.clone());
    auto cproj = VarH::parameter(hproj.clone()), cres = VarH::parameter(hres.clone());
    auto cb = VarH::parameter(hb.clone());
    const VarH xn = rms_norm(cx, 1e-6);
    VarH h = detail::linear_bf16(fused_size ? bf16_boundary(xn) : xn, cfc);  // the node's bf16 dxn
    VarH a = fused_size ? bf16_boundary(relu2(bf16_boundary(h))) : relu2(h);
    VarH cy = c.residual ? detail::residual_linear_bf16(Residual<float, cpu>{cres, cb}, a, cproj)
                         : detail::linear_bf16(a, cproj);
    VarH closs = functional(cx, hr) + functional(cy, hs);
    if (c.residual) closs = closs + functional(cres, hr);
    closs.backward();
    // GPU
    auto dx = VarD::parameter(to_device(hx)), dfc = VarD::parameter(to_device(hfc));
    auto dproj = VarD::parameter(to_device(hproj)), dres = VarD::parameter(to_device(hres));
    auto db = VarD::parameter(to_device(hb));
    const Residual<float, cuda> r{dres, db};
    VarD y =
        c.residual ? rms_norm_mlp(dx, dfc, dproj, 1e-6, r) : rms_norm_mlp(dx, dfc, dproj, 1e-6);
    CHECK((std::string(Tape::current().entries().back().op) == "rms_norm_mlp") == fused_size);
    const double tol = c.exact ? 1e-5 : 5e-4;
    CHECK(rel_err(y.value(), cy.value()) < tol);
    VarD dloss = functional(dx, hr) + functional(y, hs);
    if (c.residual) dloss = dloss + functional(dres, hr);
    dloss.backward();
    CHECK(rel_err(dx.grad(), cx.grad()) < tol);
    CHECK(rel_err(dfc.grad(), cfc.grad()) < tol);
    CHECK(rel_err(dproj.grad(), cproj.grad()) < tol);
    if (c.residual) {
      CHECK(rel_err(dres.grad(), cres.grad()) < tol);
      CHECK(rel_err(db.grad(), cb.grad()) < tol);
    }
  }
  // Shapes that do not chain are refused before any work.
  auto x = VarD::parameter(Tensor<float, cuda>::zeros({4, 64}));
  auto fc = VarD::parameter(Tensor<float, cuda>::zeros({96, 64}));
  auto bad = VarD::parameter(Tensor<float, cuda>::zeros({64, 95}));
  CHECK_THROWS_AS(rms_norm_mlp(x, fc, bad, 1e-6), ShapeError);
}

// quant::rms_norm_bitlinear_mlp under cuda::set_bf16 (one node: the hidden activation h and its
// gradient in bf16, the projection's norm kernels reading and writing bf16 rows) against the
// CPU composing the fc's pre-normed int8 norm, linear()'s bf16 path, relu2 and the projection's
// int8 norm with bf16 boundaries at a1 (backward: the fc GEMM's dxn), h (forward: h; backward:
// dh) and after the projection's norm (backward: its gradient da2). hidden = 100 is not a
// norm-kernel size: the GPU composes the two rms_norm_linear ops (no rounding of h), checked
// against that composition. Tolerance 2e-3: int8 rounding may flip on one backend (and h, da2
// at bf16 ties, as in rms_norm_mlp's test).
TEST_CASE("cuda rms_norm_bitlinear_mlp (bf16 hidden activation) against the CPU's rule") {
  const Bf16On on;
  Rng rng(39);
  struct Case {
    int64_t rows, D, hidden;
    bool residual;
  };
  for (const Case& c :
       {Case{45, 512, 1024, true}, Case{33, 64, 128, false}, Case{37, 64, 100, true}}) {
    INFO(c.rows << " x " << c.D << " -> " << c.hidden << (c.residual ? ", residual" : ""));
    const bool fused_size = c.hidden != 100;
    auto hx = Tensor<float>::randn({c.rows, c.D}, rng, 0, 2);
    auto hg1 = Tensor<float>::randn({c.D}, rng, 1, 0.3),
         hg2 = Tensor<float>::randn({c.hidden}, rng, 1, 0.3);
    auto hw1 = Tensor<float>::randn({c.hidden, c.D}, rng, 0, 0.05);
    auto hw2 = Tensor<float>::randn({c.D, c.hidden}, rng, 0, 0.05);
    auto hres = Tensor<float>::randn({c.rows, c.D}, rng),
         hb = Tensor<float>::randn({c.D}, rng, 1, 0.5);
    auto hr = Tensor<float>::randn({c.rows, c.D}, rng),
         hs = Tensor<float>::randn({c.rows, c.D}, rng);
    // CPU: the rule, composed
    auto cx = VarH::parameter(hx.clone()), cg1 = VarH::parameter(hg1.clone());
    auto cg2 = VarH::parameter(hg2.clone()), cw1 = VarH::parameter(hw1.clone());
    auto cw2 = VarH::parameter(hw2.clone()), cres = VarH::parameter(hres.clone());
    auto cb = VarH::parameter(hb.clone());
    const VarH a1 = quant::rms_norm_quantize_activations_prenormed<1>(cx, {cg1}, 1e-6, 1e-6)[0];
    VarH h = detail::linear_bf16(fused_size ? bf16_boundary(a1) : a1, cw1);  // bf16 dxn
    if (fused_size) h = bf16_boundary(h);
    VarH a2 = quant::rms_norm_quantize_activations(relu2(h), cg2, 1e-6);
    if (fused_size) a2 = bf16_boundary(a2);
    // (composed, the residual is rms_norm_linear's: channel_mix after the product)
    VarH cy = !c.residual  ? detail::linear_bf16(a2, cw2)
              : fused_size ? detail::residual_linear_bf16(Residual<float, cpu>{cres, cb}, a2, cw2)
                           : channel_mix(cres, cb, detail::linear_bf16(a2, cw2));
    VarH closs = functional(cx, hr) + functional(cy, hs);
    if (c.residual) closs = closs + functional(cres, hr);
    closs.backward();
    // GPU
    auto dx = VarD::parameter(to_device(hx)), dg1 = VarD::parameter(to_device(hg1));
    auto dg2 = VarD::parameter(to_device(hg2)), dw1 = VarD::parameter(to_device(hw1));
    auto dw2 = VarD::parameter(to_device(hw2)), dres = VarD::parameter(to_device(hres));
    auto db = VarD::parameter(to_device(hb));
    const Residual<float, cuda> r{dres, db};
    VarD y = quant::rms_norm_bitlinear_mlp(dx, 1e-6, dg1, dw1, 1e-6, dg2, dw2, 1e-6,
                                           c.residual ? &r : nullptr);
    CHECK((std::string(Tape::current().entries().back().op) == "rms_norm_bitlinear_mlp") ==
          fused_size);
    const double tol = 2e-3;
    CHECK(rel_err(y.value(), cy.value()) < tol);
    VarD dloss = functional(dx, hr) + functional(y, hs);
    if (c.residual) dloss = dloss + functional(dres, hr);
    dloss.backward();
    CHECK(rel_err(dx.grad(), cx.grad()) < tol);
    CHECK(rel_err(dg1.grad(), cg1.grad()) < tol);
    CHECK(rel_err(dg2.grad(), cg2.grad()) < tol);
    CHECK(rel_err(dw1.grad(), cw1.grad()) < tol);
    CHECK(rel_err(dw2.grad(), cw2.grad()) < tol);
    if (c.residual) {
      CHECK(rel_err(dres.grad(), cres.grad()) < tol);
      CHECK(rel_err(db.grad(), cb.grad()) < tol);
    }
  }
}

// rope_attention on the tensor cores (ops/rope_attention.hpp: one node, head_norm_rope writing
// the attention's bf16 operands) against the same composition on the GPU (head_norm_rope twice,
// then causal_attention: the same roundings, so the same values and gradients bit for bit; the
// node hands q, k and v their gradients in bf16, which these leaves widen: the composition's
// rounded to bf16) and against the CPU's fp32 composition (the tensor-core attention's
// tolerances). Heads of 64 and 128 take the node, 32 composes; q, k, v are views of
// token-major tensors, as the GPT's. Then the same with q, k, v made by bf16 projections
// (linear, and quant::rms_norm_linear<3> plain and as BitLinears), which take those gradients
// as they are: every gradient as the composition's.
TEST_CASE("cuda rope_attention (norm kernels writing the attention's operands)") {
  const Bf16On on;
  Rng rng(40);
  for (auto [B, Hq, Hkv, T, Dh] : std::vector<std::array<int64_t, 5>>{
           {2, 4, 2, 130, 64}, {1, 2, 1, 70, 128}, {1, 2, 2, 33, 32}}) {
    INFO("B " << B << " Hq " << Hq << " Hkv " << Hkv << " T " << T << " Dh " << Dh);
    auto hq = Tensor<float>::randn({B, T, Hq, Dh}, rng),
         hk = Tensor<float>::randn({B, T, Hkv, Dh}, rng);
    auto hv = Tensor<float>::randn({B, T, Hkv, Dh}, rng),
         hg = Tensor<float>::randn({Hq}, rng, 1, 0.3);
    auto hw = Tensor<float>::randn({B, Hq, T, Dh}, rng);
    auto heads = [](auto x) { return permute(x, {0, 2, 1, 3}); };
    // CPU, fp32 composition
    auto cq = VarH::parameter(hq.clone()), ck = VarH::parameter(hk.clone());
    auto cv = VarH::parameter(hv.clone()), cg = VarH::parameter(hg.clone());
    auto cy = causal_attention(head_norm_rope(heads(cq), cg), head_norm_rope(heads(ck)), heads(cv));
    functional(cy, hw).backward();
    // GPU: the composition, then the op
    std::array<VarD, 2> dq, dk, dv, dg;
    std::array<Tensor<float, cuda>, 2> y;
    for (int form = 0; form < 2; ++form) {
      dq[form] = VarD::parameter(to_device(hq));
      dk[form] = VarD::parameter(to_device(hk));
      dv[form] = VarD::parameter(to_device(hv));
      dg[form] = VarD::parameter(to_device(hg));
      VarD out = form == 0 ? causal_attention(head_norm_rope(heads(dq[0]), dg[0]),
                                              head_norm_rope(heads(dk[0])), heads(dv[0]))
                           : rope_attention(heads(dq[1]), dg[1], heads(dk[1]), heads(dv[1]));
      if (form == 1)
        CHECK((std::string(Tape::current().entries().back().op) == "rope_attention") == (Dh != 32));
      y[form] = out.value();
      functional(out, hw).backward();
    }
    const bool node = Dh != 32;
    auto as_born = [&](const Tensor<float, cuda>& g) {  // the node's bf16 gradients, widened
      const auto h = to_host(g);
      return node ? backend::to_bf16(cpu{}, h).to<float>() : h;
    };
    CHECK(rel_err(y[1], to_host(y[0])) == 0);
    CHECK(rel_err(dq[1].grad(), as_born(dq[0].grad())) == 0);
    CHECK(rel_err(dk[1].grad(), as_born(dk[0].grad())) == 0);
    CHECK(rel_err(dv[1].grad(), as_born(dv[0].grad())) == 0);
    CHECK(rel_err(dg[1].grad(), to_host(dg[0].grad())) == 0);
    CHECK(rel_err(y[1], cy.value()) < 1.5e-2);
    CHECK(rel_err(dq[1].grad(), cq.grad()) < 3e-2);
    CHECK(rel_err(dk[1].grad(), ck.grad()) < 3e-2);
    CHECK(rel_err(dv[1].grad(), cv.grad()) < 3e-2);
    CHECK(rel_err(dg[1].grad(), cg.grad()) < 3e-2);
    // q, k, v from bf16 projections of one input (the GPT's attention): three linears, or one
    // quant::rms_norm_linear<3> behind the block's pre-norm (full precision; BitLinears with
    // gains and int8 activations), whose multi-output rule takes the bf16 gradients
    const int64_t Din = 64;
    auto hx = Tensor<float>::randn({B, T, Din}, rng);
    std::array<Tensor<float>, 3> hwp{Tensor<float>::randn({Hq * Dh, Din}, rng, 0, 0.2),
                                     Tensor<float>::randn({Hkv * Dh, Din}, rng, 0, 0.2),
                                     Tensor<float>::randn({Hkv * Dh, Din}, rng, 0, 0.2)};
    auto hgain = Tensor<float>::randn({Din}, rng, 1, 0.2);
    for (int proj = 0; proj < 3; ++proj) {
      INFO((proj == 0 ? "linear" : proj == 1 ? "rms_norm_linear" : "rms_norm_linear (BitLinear)"));
      std::array<VarD, 2> px;
      std::array<std::array<VarD, 3>, 2> pw, pgain;
      for (int form = 0; form < 2; ++form) {
        px[form] = VarD::parameter(to_device(hx));
        for (int j = 0; j < 3; ++j) {
          pw[form][j] = VarD::parameter(to_device(hwp[j]));
          if (proj == 2) pgain[form][j] = VarD::parameter(to_device(hgain));
        }
        dg[form] = VarD::parameter(to_device(hg));
        std::array<VarD, 3> qkv;
        if (proj == 0)
          for (int j = 0; j < 3; ++j) qkv[j] = linear(px[form], pw[form][j]);
        else
          qkv = quant::rms_norm_linear<3>(px[form], pgain[form], pw[form], 1e-6,
                                          std::optional<double>(1e-6), proj == 2);
        auto split = [&](const VarD& p, int64_t h) { return heads(reshape(p, {B, T, h, Dh})); };
        VarD q = split(qkv[0], Hq), k = split(qkv[1], Hkv), v = split(qkv[2], Hkv);
        VarD out = form == 0 ? causal_attention(head_norm_rope(q, dg[0]), head_norm_rope(k), v)
                             : rope_attention(q, dg[1], k, v);
        functional(out, hw).backward();
      }
      CHECK(rel_err(px[1].grad(), to_host(px[0].grad())) == 0);
      for (int j = 0; j < 3; ++j) {
        CHECK(rel_err(pw[1][j].grad(), to_host(pw[0][j].grad())) == 0);
        if (proj == 2) CHECK(rel_err(pgain[1][j].grad(), to_host(pgain[0][j].grad())) == 0);
      }
      CHECK(rel_err(dg[1].grad(), to_host(dg[0].grad())) == 0);
    }
  }
}

// One GPT layer's attention and output projection on random host data (B 2, 4 query heads, 2 kv
// heads, T 130, head size 64; q, k, v token-major): the attention's bf16 output tests below.
struct AttentionProjectionData {
  static constexpr int64_t B = 2, Hq = 4, Hkv = 2, T = 130, Dh = 64, D = Hq * Dh;
  Tensor<float> hq, hk, hv, hg, hwo, hx, hs, hw;
  explicit AttentionProjectionData(Rng& rng)
      : hq(Tensor<float>::randn({B, T, Hq, Dh}, rng)),
        hk(Tensor<float>::randn({B, T, Hkv, Dh}, rng)),
        hv(Tensor<float>::randn({B, T, Hkv, Dh}, rng)),
        hg(Tensor<float>::randn({Hq}, rng, 1, 0.3)),
        hwo(Tensor<float>::randn({D, D}, rng, 0, 0.1)),
        hx(Tensor<float>::randn({B, T, D}, rng)),
        hs(Tensor<float>::randn({D}, rng, 1, 0.2)),
        hw(Tensor<float>::randn({B, T, D}, rng)) {}
};

// Under bf16 products rope_attention's kernel also writes its output in bf16 (Var::value_bf16),
// and the views carry that copy to the output projection: residual_linear reads it instead of
// rounding the fp32 output (the same rounding, so the same forward bit for bit) and hands the
// attention its gradient born in bf16, whose Di = rowsum(dout * out) then comes from bf16 values
// (within bf16 tolerances of the fp32 path: the same run with the copy dropped).
TEST_CASE("cuda rope_attention's bf16 output copy: the output projection's operand and gradient") {
  const Bf16On on;
  Rng rng(41);
  const AttentionProjectionData data(rng);
  const auto& [hq, hk, hv, hg, hwo, hx, hs, hw] = data;
  constexpr int64_t B = AttentionProjectionData::B, T = AttentionProjectionData::T,
                    D = AttentionProjectionData::D;
  auto heads = [](auto x) { return permute(x, {0, 2, 1, 3}); };
  std::array<VarD, 2> dq, dk, dv, dg, dwo, dxr, ds;
  std::array<Tensor<float, cuda>, 2> out;
  for (int form = 0; form < 2; ++form) {  // 0: with the bf16 copy, 1: without
    dq[form] = VarD::parameter(to_device(hq));
    dk[form] = VarD::parameter(to_device(hk));
    dv[form] = VarD::parameter(to_device(hv));
    dg[form] = VarD::parameter(to_device(hg));
    dwo[form] = VarD::parameter(to_device(hwo));
    dxr[form] = VarD::parameter(to_device(hx));
    ds[form] = VarD::parameter(to_device(hs));
    VarD y = rope_attention(heads(dq[form]), dg[form], heads(dk[form]), heads(dv[form]));
    CHECK(y.value_bf16().defined());
    if (form == 1) y.set_value_bf16(Tensor<bf16, cuda>());
    VarD a = reshape(heads(y), {B, T, D});
    CHECK(a.value_bf16().defined() == (form == 0));
    const Residual<float, cuda> r{dxr[form], ds[form]};
    VarD o = residual_linear(r, a, dwo[form]);
    out[form] = o.value();
    functional(o, hw).backward();
  }
  CHECK(rel_err(out[0], to_host(out[1])) == 0);
  CHECK(rel_err(dwo[0].grad(), to_host(dwo[1].grad())) == 0);
  CHECK(rel_err(ds[0].grad(), to_host(ds[1].grad())) == 0);
  CHECK(rel_err(dxr[0].grad(), to_host(dxr[1].grad())) == 0);
  CHECK(rel_err(dv[0].grad(), to_host(dv[1].grad())) < 1e-2);
  CHECK(rel_err(dq[0].grad(), to_host(dq[1].grad())) < 2e-2);
  CHECK(rel_err(dk[0].grad(), to_host(dk[1].grad())) < 2e-2);
  CHECK(rel_err(dg[0].grad(), to_host(dg[1].grad())) < 2e-2);
}

// AttentionOutput::bf16_only (the GPT's choice where a bias-free Linear projects the output): no
// fp32 output is stored, the views of it stay in bf16, and the output projection and every
// gradient are those of the default, bit for bit. A reader in fp32 sees the bf16 copy widened,
// and its fp32 gradient takes the other backward branch (Di from the bf16 output).
TEST_CASE("cuda rope_attention's output kept in bf16 only: the same projection and gradients") {
  const Bf16On on;
  Rng rng(47);
  const AttentionProjectionData data(rng);
  const auto& [hq, hk, hv, hg, hwo, hx, hs, hw] = data;
  constexpr int64_t B = AttentionProjectionData::B, T = AttentionProjectionData::T,
                    D = AttentionProjectionData::D;
  auto heads = [](auto x) { return permute(x, {0, 2, 1, 3}); };
  const AttentionOutput forms[2] = {AttentionOutput::fp32_and_bf16, AttentionOutput::bf16_only};
  std::array<VarD, 2> dq, dk, dv, dg, dwo, dxr, ds;
  std::array<Tensor<float, cuda>, 2> out, a16;
  for (int form = 0; form < 2; ++form) {
    dq[form] = VarD::parameter(to_device(hq));
    dk[form] = VarD::parameter(to_device(hk));
    dv[form] = VarD::parameter(to_device(hv));
    dg[form] = VarD::parameter(to_device(hg));
    dwo[form] = VarD::parameter(to_device(hwo));
    dxr[form] = VarD::parameter(to_device(hx));
    ds[form] = VarD::parameter(to_device(hs));
    VarD y = rope_attention(heads(dq[form]), dg[form], heads(dk[form]), heads(dv[form]), 1e-6,
                            10000.0, std::nullopt, forms[form]);
    CHECK(y.value_in_bf16_only() == (form == 1));
    VarD a = reshape(heads(y), {B, T, D});
    CHECK(a.value_in_bf16_only() == (form == 1));
    CHECK(a.shape() == Shape{B, T, D});
    CHECK(a.numel() == B * T * D);
    a16[form] = widen_bf16(cuda{}, a.value_bf16().contiguous());
    const Residual<float, cuda> r{dxr[form], ds[form]};
    VarD o = residual_linear(r, a, dwo[form]);
    CHECK(a.value_in_bf16_only() == (form == 1));  // (the projection read the bf16 copy)
    out[form] = o.value();
    functional(o, hw).backward();
  }
  CHECK(rel_err(a16[0], to_host(a16[1])) == 0);
  CHECK(rel_err(out[0], to_host(out[1])) == 0);
  CHECK(rel_err(dwo[0].grad(), to_host(dwo[1].grad())) == 0);
  CHECK(rel_err(ds[0].grad(), to_host(ds[1].grad())) == 0);
  CHECK(rel_err(dxr[0].grad(), to_host(dxr[1].grad())) == 0);
  CHECK(rel_err(dv[0].grad(), to_host(dv[1].grad())) == 0);
  CHECK(rel_err(dq[0].grad(), to_host(dq[1].grad())) == 0);
  CHECK(rel_err(dk[0].grad(), to_host(dk[1].grad())) == 0);
  CHECK(rel_err(dg[0].grad(), to_host(dg[1].grad())) == 0);

  // An fp32 reader: the output widened from its bf16 copy, and gradients near the default's
  std::array<Tensor<float, cuda>, 2> read;
  for (int form = 0; form < 2; ++form) {
    dq[form] = VarD::parameter(to_device(hq));
    VarD y = rope_attention(
        heads(dq[form]), VarD::constant(to_device(hg)), heads(VarD::constant(to_device(hk))),
        heads(VarD::constant(to_device(hv))), 1e-6, 10000.0, std::nullopt, forms[form]);
    VarD a = reshape(heads(y), {B, T, D});
    read[form] = a.value();  // (form 1: widened here)
    CHECK(!a.value_in_bf16_only());
    functional(a, hw).backward();
  }
  CHECK(rel_err(read[1], to_host(a16[1])) == 0);
  CHECK(rel_err(read[0], to_host(read[1])) < 1e-2);  // bf16 rounding
  CHECK(rel_err(dq[0].grad(), to_host(dq[1].grad())) < 2e-2);
}

// A BitLinear projection of a value born in bf16 (Var::value_bf16, as the attention's output):
// rms_norm_linear's backward writes that value's first gradient in bf16 alone (its readers round
// it so), the same values rounded once: against the run without the copy, the input's
// gradient is that one rounded to bf16, bit for bit, and everything else the same bits.
TEST_CASE("cuda rms_norm_linear: the first gradient of an input born in bf16 is born in bf16") {
  const Bf16On on;
  Rng rng(43);
  for (const int64_t D : {512, 1024}) {
    const int64_t rows = 70, out = 256;
    auto hx = Tensor<float>::randn({2, rows / 2, D}, rng),
         hw = Tensor<float>::randn({rows, out}, rng);
    auto hwt = Tensor<float>::randn({out, D}, rng, 0, 0.05);
    auto hg = Tensor<float>::randn({D}, rng, 1, 0.2), hr = Tensor<float>::randn({rows, out}, rng);
    auto hs = Tensor<float>::randn({out}, rng, 1, 0.2);
    std::array<VarD, 2> px, pw, pg, pr, ps;
    std::array<Tensor<float, cuda>, 2> y;
    for (int form = 0; form < 2; ++form) {  // 0: x has its bf16 copy, 1: not
      px[form] = VarD::parameter(to_device(hx));
      pw[form] = VarD::parameter(to_device(hwt));
      pg[form] = VarD::parameter(to_device(hg));
      pr[form] = VarD::parameter(to_device(hr));
      ps[form] = VarD::parameter(to_device(hs));
      VarD x = reshape(px[form], {rows, D});  // a view (not a leaf), as the attention's output
      if (form == 0) x.set_value_bf16(backend::to_bf16(cuda{}, x.value()));
      const Residual<float, cuda> r{pr[form], ps[form]};
      VarD o = quant::rms_norm_linear<1>(x, {pg[form]}, {pw[form]}, 1e-6, std::nullopt, true, false,
                                         &r)[0];
      y[form] = o.value();
      functional(o, hw).backward();
    }
    INFO("D = " << D);
    CHECK(rel_err(y[0], to_host(y[1])) == 0);
    const auto dx_rounded = backend::to_bf16(cpu{}, to_host(px[1].grad())).to<float>();
    CHECK(rel_err(px[0].grad(), dx_rounded) == 0);
    CHECK(rel_err(px[1].grad(), dx_rounded) > 0);  // (the fp32 path did not round)
    CHECK(rel_err(pw[0].grad(), to_host(pw[1].grad())) == 0);
    CHECK(rel_err(pg[0].grad(), to_host(pg[1].grad())) == 0);
    CHECK(rel_err(pr[0].grad(), to_host(pr[1].grad())) == 0);
    CHECK(rel_err(ps[0].grad(), to_host(ps[1].grad())) == 0);
  }
}

// Under cuda::set_bf16 the products outside linear() (matmul) run in TF32 (see matmul.cuh).
TEST_CASE("cuda matmul behind cuda::set_bf16: tensor cores (TF32), not exact fp32") {
  Rng rng(28);
  auto ha = Tensor<float>::randn({65, 130}, rng), hb = Tensor<float>::randn({33, 130}, rng);
  auto hc = Tensor<float>::randn({3, 17, 65}, rng), hw = Tensor<float>::randn({29, 65}, rng);
  const auto ref = matmul(ha, hb.t());   // a transposed operand
  const auto ref2 = matmul(hc, hw.t());  // folded batch
  double e, e2;
  {
    const Bf16On on;
    e = rel_err(matmul(to_device(ha), to_device(hb).t()), ref);
    e2 = rel_err(matmul(to_device(hc), to_device(hw).t()), ref2);
  }
  INFO("relative errors " << e << ", " << e2);
  // TF32 rounds each operand to 10 bits of mantissa: ~5e-4, far above fp32's ~1e-7
  CHECK(e < 5e-3);
  CHECK(e2 < 5e-3);
  CHECK(e > 1e-5);
  CHECK(rel_err(matmul(to_device(ha), to_device(hb).t()), ref) < 1e-5);  // fp32 again
}

TEST_CASE("cuda reduce_sum: few long outputs (split into partial sums) against the CPU") {
  Rng rng(29);
  // a per-head gain's gradient (rows of 500k), a bias gradient over many rows, a middle axis
  for (auto [shape, axes] :
       std::vector<std::pair<Shape, std::vector<int64_t>>>{{{8, 500001}, {1}},
                                                           {{3, 70000}, {-1}},
                                                           {{20011, 40}, {0}},
                                                           {{4099, 512}, {0}},
                                                           {{2, 8, 1024, 64}, {0, 2, 3}},
                                                           {{5, 30001, 3}, {1}}}) {
    INFO("shape " << shape);
    auto hx = Tensor<float>::randn(shape, rng, 0.5, 1.0);
    CHECK(rel_err(sum(to_device(hx), axes), sum(hx, axes)) < 1e-5);
  }
}
