// The ops of an MLP training step on the CUDA backend against the same ops on the CPU
// (forward values and every gradient), AdamW's update on the device, and a whole training
// run: the two-spirals MLP of examples/mlp.cpp, on Tensor<float, cuda>, whose loss must fall
// from chance (ln 2) to below 0.2 and track the CPU run step by step.
// Tolerances (relative L2 error): forward and gradients 1e-5 (fp32 GEMM, no TF32), AdamW 1e-5.
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <numbers>

#include "cuda_check.hpp"
#include "ternary/backend/cuda/all.cuh"
#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/loss.hpp"
#include "ternary/ops/matmul.hpp"
#include "ternary/ops/reduce.hpp"
#include "ternary/ops/view.hpp"
#include "ternary/optim/adamw.hpp"

using namespace ternary;
using test::rel_err;

using VarH = Var<float>;
using VarD = Var<float, cuda>;

// The loss kernels take one warp per row, float4 at a time where the rows allow (V % 4 == 0):
// the GPT's rows (1024 wide, softcap), odd widths and rows narrower than a warp's share, with
// ignored rows and -inf logits (no softcap), against the CPU. Tolerance 1e-5.
TEST_CASE("cuda cross-entropy on wide and narrow rows (softcap on and off) against the CPU") {
  Rng rng(12);
  for (int64_t V : {1024, 1000, 130, 36, 7})
    for (double cap : {0.0, 30.0}) {
      INFO("V " << V << " cap " << cap);
      const int64_t rows = 67;
      auto hx = Tensor<float>::randn({rows, V}, rng, 0, 20);
      if (cap == 0) hx.data()[5] = -std::numeric_limits<float>::infinity();
      auto tv = std::vector<int32_t>(size_t(rows));
      for (auto& t : tv) t = int32_t(rng.uniform(0, double(V))) % int32_t(V);
      tv[3] = tv[40] = -100;
      tv[0] = 6;  // row 0 holds the -inf logit, not as its target
      auto htar = Tensor<int32_t>::from({rows}, tv);
      auto run = [&](auto x, const auto& tar) {
        auto loss = cap > 0 ? softcap_cross_entropy(x, tar, cap) : cross_entropy(x, tar);
        loss.backward();
        return loss;
      };
      auto cx = VarH::parameter(hx.clone());
      auto dx = VarD::parameter(to_device(hx));
      const auto closs = run(cx, htar);
      const auto dloss = run(dx, to_device(htar));
      CHECK(dloss.item() == Approx(closs.item()).epsilon(1e-5));
      CHECK(rel_err(dx.grad(), cx.grad()) < 1e-5);
    }
}

// With bf16 products (cuda::set_bf16) the logits' gradient is written in bf16 (its reader, the
// tied head's linear, rounds it so anyway): the device gradient is the CPU's rounded to bf16
// (within 2e-4: an element near a rounding boundary may round the other way), and not the
// unrounded one (bf16 rounding moves it by ~1e-3).
TEST_CASE("cuda cross-entropy with bf16 products writes the logits' gradient in bf16") {
  Rng rng(13);
  struct Bf16On {
    Bf16On() { cuda::set_bf16(true); }
    ~Bf16On() { cuda::set_bf16(false); }
  };
  for (double cap : {0.0, 30.0}) {
    INFO("cap " << cap);
    const int64_t rows = 67, V = 1024;
    auto hx = Tensor<float>::randn({rows, V}, rng, 0, 3);
    auto tv = std::vector<int32_t>(size_t(rows));
    for (auto& t : tv) t = int32_t(rng.uniform(0, double(V))) % int32_t(V);
    tv[3] = -100;
    auto htar = Tensor<int32_t>::from({rows}, tv);
    auto cx = VarH::parameter(hx.clone());
    auto dx = VarD::parameter(to_device(hx));
    auto closs = cap > 0 ? softcap_cross_entropy(cx, htar, cap) : cross_entropy(cx, htar);
    closs.backward();
    {
      Bf16On bf16;
      auto dloss = cap > 0 ? softcap_cross_entropy(dx, to_device(htar), cap)
                           : cross_entropy(dx, to_device(htar));
      dloss.backward();
      CHECK(dloss.item() == Approx(closs.item()).epsilon(1e-5));
    }
    const Tensor<float> rounded = backend::to_bf16(cpu{}, cx.grad()).to<float>();
    CHECK(rel_err(dx.grad(), rounded) < 2e-4);
    CHECK(rel_err(dx.grad(), cx.grad()) > 5e-4);
  }
}

TEST_CASE("cuda ops: linear, bias, relu, sum/mean and cross-entropy match the CPU, with grads") {
  Rng rng(11);
  for (int trial = 0; trial < 4; ++trial) {
    const int64_t B = 3 + 5 * trial, T = 2 + trial, I = 4 + 7 * trial, H = 16 + 8 * trial,
                  V = 3 + 37 * trial;
    auto hx = Tensor<float>::randn({B, T, I}, rng), hw1 = Tensor<float>::randn({H, I}, rng, 0, 0.5);
    auto hb1 = Tensor<float>::randn({H}, rng), hw2 = Tensor<float>::randn({V, H}, rng, 0, 0.3);
    auto tv = std::vector<int32_t>(B * T);
    for (auto& t : tv) t = int32_t(rng.uniform(0, double(V))) % int32_t(V);
    tv[0] = -100;  // an ignored position
    auto htar = Tensor<int32_t>::from({B, T}, tv);
    const double cap = trial % 2 ? 5.0 : 0.0;

    auto run = [&](auto x, auto w1, auto b1, auto w2, const auto& tar) {
      auto h = relu(linear(x, w1) + b1);             // [B, T, H]
      auto logits = linear(h, w2);                   // [B, T, V]
      auto extra = mean(square(h), {0, 1}) * 0.01f;  // [H]
      auto loss = (cap > 0 ? softcap_cross_entropy(logits, tar, cap) : cross_entropy(logits, tar)) +
                  sum(extra);
      loss.backward();
      return std::pair{loss, logits};
    };
    auto cx = VarH::parameter(hx.clone()), cw1 = VarH::parameter(hw1.clone()),
         cb1 = VarH::parameter(hb1.clone()), cw2 = VarH::parameter(hw2.clone());
    auto dx = VarD::parameter(to_device(hx)), dw1 = VarD::parameter(to_device(hw1)),
         db1 = VarD::parameter(to_device(hb1)), dw2 = VarD::parameter(to_device(hw2));
    auto [closs, clog] = run(cx, cw1, cb1, cw2, htar);
    auto [dloss, dlog] = run(dx, dw1, db1, dw2, to_device(htar));
    INFO("trial " << trial << " cap " << cap);
    CHECK(dloss.item() == Approx(closs.item()).epsilon(1e-5));
    CHECK(rel_err(dlog.value(), clog.value()) < 1e-5);
    CHECK(rel_err(dx.grad(), cx.grad()) < 1e-5);
    CHECK(rel_err(dw1.grad(), cw1.grad()) < 1e-5);
    CHECK(rel_err(db1.grad(), cb1.grad()) < 1e-5);
    CHECK(rel_err(dw2.grad(), cw2.grad()) < 1e-5);
  }
  // Targets are validated for device tensors too, by the kernel: the error is thrown at the
  // next synchronisation (here: reading the loss), the row counted as ignored meanwhile.
  auto logits = VarD::parameter(Tensor<float, cuda>::zeros({2, 3}));
  auto bad = cross_entropy(logits, Tensor<int32_t, cuda>::from({2}, {1, 7}));
  CHECK_THROWS_WITH(bad.item(), Catch::Contains("cross_entropy: target 7 at position [1]") &&
                                    Catch::Contains("3 classes"));
  CHECK(bad.item() == Approx(std::log(3.0)));  // the valid row alone; the fault is cleared
  // Every target ignored: loss 0 and a zero gradient, as on the CPU (the count is on the device).
  auto none = softcap_cross_entropy(logits, Tensor<int32_t, cuda>::from({2}, {-100, -100}), 5.0);
  CHECK(none.item() == 0.0f);
  none.backward();
  CHECK(to_host(logits.grad()).to_vector() == std::vector<float>(6, 0.0f));
}

TEST_CASE("cuda elementwise Var ops: gradients match the CPU (broadcast and transposed)") {
  Rng rng(12);
  auto ha = Tensor<float>::randn({5, 7}, rng), hb = Tensor<float>::rand({7}, rng, 0.5, 2.0);
  auto f = [](auto a, auto b) {
    auto y = tanh(a) * b + exp(a / b) - sigmoid(a) + sqrt(b) * silu(a) + relu2(a) - abs(a) / b;
    return mean(y * y);
  };
  auto ca = VarH::parameter(ha.clone()), cb = VarH::parameter(hb.clone());
  auto da = VarD::parameter(to_device(ha)), db = VarD::parameter(to_device(hb));
  // One graph at a time: backward() runs (and then clears) the thread's whole tape.
  auto cl = f(ca, cb);
  cl.backward();
  auto dl = f(da, db);
  dl.backward();
  CHECK(dl.item() == Approx(cl.item()).epsilon(1e-5));
  CHECK(rel_err(da.grad(), ca.grad()) < 1e-5);
  CHECK(rel_err(db.grad(), cb.grad()) < 1e-5);
  // a transposed input through matmul
  auto ht = Tensor<float>::randn({5, 7}, rng);
  auto ct = VarH::parameter(ht.clone());
  auto dt = VarD::parameter(to_device(ht));
  auto cm = sum(square(matmul(VarH::constant(ht.clone()), transpose(ct, 0, 1) * 2.f)));
  cm.backward();
  auto dm = sum(square(matmul(VarD::constant(to_device(ht)), transpose(dt, 0, 1) * 2.f)));
  dm.backward();
  CHECK(rel_err(dt.grad(), ct.grad()) < 1e-5);
}

TEST_CASE("cuda AdamW: the device update matches the CPU update") {
  Rng rng(13);
  auto hp = Tensor<float>::randn({33, 17}, rng);
  auto cp = VarH::parameter(hp.clone());
  auto dp = VarD::parameter(to_device(hp));
  optim::AdamW<float> copt({cp}, {.lr = 1e-2, .weight_decay = 0.1});
  optim::AdamW<float, cuda> dopt({dp}, {.lr = 1e-2, .weight_decay = 0.1});
  for (int step = 0; step < 5; ++step) {
    auto g = Tensor<float>::randn({33, 17}, rng);
    cp.accumulate_grad(g);
    dp.accumulate_grad(to_device(g));
    copt.step();
    dopt.step();
    copt.zero_grad();
    dopt.zero_grad();
  }
  CHECK(rel_err(dp.value(), cp.value()) < 1e-5);
}

TEST_CASE("cuda MLP: the two-spirals MLP trains on the device, tracking the CPU run") {
  const int64_t per_class = 200, n = 2 * per_class, hidden = 64;
  Rng rng(7);
  auto points = Tensor<float>::empty({n, 2});
  auto labels = Tensor<int32_t>::empty({n});
  for (int64_t i = 0; i < n; ++i) {
    const int64_t cls = i / per_class;
    const double t = double(i % per_class) / per_class;
    const double angle = 3.0 * std::numbers::pi * t + cls * std::numbers::pi;
    points(i, 0) = float(t * std::cos(angle) + rng.normal(0, 0.02));
    points(i, 1) = float(t * std::sin(angle) + rng.normal(0, 0.02));
    labels(i) = int32_t(cls);
  }
  auto hW1 = Tensor<float>::randn({hidden, 2}, rng, 0, 1.0);
  auto hW2 = Tensor<float>::randn({2, hidden}, rng, 0, 1.0 / std::sqrt(hidden));

  // The same program for both backends: only the tensor type differs.
  auto train = [&]<class Bk>(Bk, int steps, std::vector<float>& losses) {
    auto put = [](const auto& h) {
      if constexpr (std::is_same_v<Bk, cuda>)
        return to_device(h);
      else
        return h.clone();
    };
    using V = Var<float, Bk>;
    auto x = V::constant(put(points));
    auto y = put(labels);
    auto W1 = V::parameter(put(hW1)), b1 = V::parameter(Tensor<float, Bk>::zeros({hidden}));
    auto W2 = V::parameter(put(hW2)), b2 = V::parameter(Tensor<float, Bk>::zeros({2}));
    optim::AdamW<float, Bk> opt({W1, b1, W2, b2}, {.lr = 0.02, .weight_decay = 0.0});
    for (int step = 0; step < steps; ++step) {
      auto loss = cross_entropy(linear(relu(linear(x, W1) + b1), W2) + b2, y);
      loss.backward();
      losses.push_back(loss.item());
      opt.step();
      opt.zero_grad();
    }
  };
  std::vector<float> gpu, cpu_losses;
  train(cuda{}, 1500, gpu);
  train(cpu{}, 50, cpu_losses);
  INFO("gpu loss: step 0 " << gpu[0] << ", step 500 " << gpu[500] << ", last " << gpu.back());
  CHECK(gpu[0] == Approx(std::log(2.0)).margin(0.15));  // about chance at the start
  CHECK(gpu.back() < 0.2f);
  for (int s = 0; s < 50; ++s) CHECK(gpu[s] == Approx(cpu_losses[s]).epsilon(1e-4));
  std::printf("cuda MLP: loss %.4f at step 0, %.4f at step 500, %.4f at step %zu\n", gpu[0],
              gpu[500], gpu.back(), gpu.size() - 1);
}
