// bench_cuda_gpt: whole training steps of the Parameter Golf GPT on one CUDA GPU (forward,
// backward, gradient clip at 1.0, Muon + Adam update: train::GolfOptimizers<float, cuda>) on
// random tokens, with gradient accumulation so that one step can hold 524,288 tokens.
// Defaults: the golf preset (9 layers, d 512, 8 heads, 4 kv heads, mlp x2, vocab 1024,
// seq 1024), batch 16, accum 1. The figures in docs/cuda.md use the Parameter Golf
// reference's step, 64 sequences x 8 micro-batches (pg_reference_step.py runs the same):
//
//   ./build-cuda/bench/bench_cuda_gpt [--layers 9 --dim 512 --heads 8 --kv-heads 4 --mlp-mult 2
//       --vocab 1024 --seq 1024] [--batch 64] [--accum 8] [--steps 3] [--warmup 1]
//       [--ternary] [--tf32 | --bf16] [--phases]
//
// A step runs as train::train_loop runs it: the micro-batches' forward and backward passes
// without waiting for the device (the losses are read once, after the last), then the clip and
// the update. --phases times the forward, backward and clip + update passes instead, each
// ended by a synchronisation: that breakdown costs the waits (the device idles while the host
// catches up after each), so its ms/step is higher.
//
// Progress goes to stderr; stdout has a summary line, then (last line) one JSON object:
// ms_per_step, tokens_per_s, model TFLOP/s and an MFU estimate (model FLOPs: 6 * parameters *
// tokens plus causal attention 6 * B * T^2 * dim per layer, forward and backward; the
// Newton-Schulz products of Muon are not counted) against the dense peak of the arithmetic in
// use (--peak-tflops; default 67 for fp32 FFMA, 495 for TF32 and 989 for bf16 tensor cores:
// H100 SXM dense; attention and the elementwise kernels stay fp32 either way), and the
// peak GPU memory the tensor pool held (live bytes, not its cache).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ternary/backend/cuda/all.cuh"
#include "ternary/gpt.hpp"
#include "ternary/optim/clip.hpp"
#include "ternary/train/golf_optimizers.hpp"

using namespace ternary;

namespace {
[[noreturn]] void usage(const char* bad) {
  std::fprintf(stderr,
               "bench_cuda_gpt: bad argument '%s'\nflags: --layers N --dim N --heads N "
               "--kv-heads N --mlp-mult N --vocab N --seq N --batch N --accum N --steps N "
               "--warmup N --peak-tflops X --ternary --tf32 --bf16 --phases\n",
               bad);
  std::exit(2);
}
}  // namespace

int main(int argc, char** argv) {
  nn::GPTConfig c;
  c.n_layers = 9, c.dim = 512, c.n_heads = 8, c.n_kv_heads = 4, c.mlp_mult = 2;
  c.vocab_size = 1024;
  c.ternary = false;
  int64_t seq = 1024, batch = 16, accum = 1, steps = 3, warmup = 1;
  bool tf32 = false, bf16 = false, phases = false;
  double peak_tflops = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto num = [&](int64_t& dst) {
      if (i + 1 >= argc) usage(argv[i]);
      char* end = nullptr;
      dst = std::strtoll(argv[++i], &end, 10);
      if (*end || dst < 0) usage(argv[i]);
    };
    if (a == "--layers")
      num(c.n_layers);
    else if (a == "--dim")
      num(c.dim);
    else if (a == "--heads")
      num(c.n_heads);
    else if (a == "--kv-heads")
      num(c.n_kv_heads);
    else if (a == "--mlp-mult")
      num(c.mlp_mult);
    else if (a == "--vocab")
      num(c.vocab_size);
    else if (a == "--seq")
      num(seq);
    else if (a == "--batch")
      num(batch);
    else if (a == "--accum")
      num(accum);
    else if (a == "--steps")
      num(steps);
    else if (a == "--warmup")
      num(warmup);
    else if (a == "--ternary")
      c.ternary = true;
    else if (a == "--tf32")
      tf32 = true;
    else if (a == "--bf16")
      bf16 = true;
    else if (a == "--phases")
      phases = true;
    else if (a == "--peak-tflops" && i + 1 < argc)
      peak_tflops = std::atof(argv[++i]);
    else
      usage(argv[i]);
  }
  if (batch < 1 || accum < 1 || steps < 1 || seq < 1) usage("batch/accum/steps/seq must be >= 1");
  if (peak_tflops <= 0) peak_tflops = bf16 ? 989.0 : (tf32 ? 495.0 : 67.0);
  try {
    if (cuda::device_count() == 0) {
      std::printf("SKIPPED: no CUDA device\n");
      return 0;
    }
    cuda::set_tf32(tf32);
    cuda::set_bf16(bf16);
    nn::GPT<float, cuda> model(c);
    const auto params = model.parameters();
    train::GolfOptimizers<float, cuda> opt(model, train::GolfOptimizerOptions{});
    // A few random batches made once on the host and kept on the device (tokens cost nothing
    // inside the timed steps).
    Rng rng(1);
    constexpr int kBatches = 4;
    std::vector<Tensor<int32_t, cuda>> xs, ys;
    for (int k = 0; k < kBatches; ++k) {
      auto ids = Tensor<int32_t>::empty({batch, seq + 1});
      for (int64_t i = 0; i < ids.numel(); ++i)
        ids.data()[i] = int32_t(rng.next_u64() % uint64_t(c.vocab_size));
      xs.push_back(to_device(ids.slice(1, 0, seq).contiguous()));
      ys.push_back(to_device(ids.slice(1, 1, seq + 1).contiguous()));
    }
    int64_t micro = 0;
    // With --phases: seconds spent in forward (to the loss on the host), backward, and clip +
    // update, summed over the timed steps (each phase ends with a device synchronisation).
    double t_fwd = 0, t_bwd = 0, t_opt = 0;
    std::vector<Tensor<float, cuda>> micro_losses;
    auto now = [] {
      cuda::synchronize();
      return std::chrono::steady_clock::now();
    };
    auto secs_since = [&](auto t) { return std::chrono::duration<double>(now() - t).count(); };
    auto step_as_train_loop = [&] {
      micro_losses.clear();
      {
        quant::QuantizedWeightCache quantize_once;  // as train_loop: fixed until opt.step()
        for (int64_t a = 0; a < accum; ++a, ++micro) {
          auto loss = model.loss(xs[micro % kBatches], ys[micro % kBatches]);
          micro_losses.push_back(loss.value());
          (accum > 1 ? loss * (1.0f / float(accum)) : loss).backward();
        }
      }
      double total = 0;
      for (const auto& l : micro_losses) total += double(l.item());
      optim::clip_grad_norm(params, 1.0);
      opt.step();
      opt.zero_grad();
      return total / double(accum);
    };
    auto step_in_phases = [&] {
      double total = 0;
      {
        quant::QuantizedWeightCache quantize_once;
        for (int64_t a = 0; a < accum; ++a, ++micro) {
          auto t = now();
          auto loss = model.loss(xs[micro % kBatches], ys[micro % kBatches]);
          total += loss.item();
          t_fwd += secs_since(t);
          t = now();
          (accum > 1 ? loss * (1.0f / float(accum)) : loss).backward();
          t_bwd += secs_since(t);
        }
      }
      auto t = now();
      optim::clip_grad_norm(params, 1.0);
      opt.step();
      opt.zero_grad();
      t_opt += secs_since(t);
      return total / double(accum);
    };
    auto step = [&] { return phases ? step_in_phases() : step_as_train_loop(); };
    for (int64_t i = 0; i < warmup; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      const double l = step();
      cuda::synchronize();
      std::fprintf(
          stderr, "warmup step %lld: loss %.4f, %.1f ms\n", (long long)i, l,
          1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    double loss = 0;
    t_fwd = t_bwd = t_opt = 0;
    cuda::synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < steps; ++i) {
      loss = step();
      std::fprintf(stderr, "step %lld: loss %.4f\n", (long long)i, loss);
    }
    cuda::synchronize();
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    const double n_params = double(model.num_parameters());
    const double tokens = double(batch * seq * accum);
    const double flops_per_step =
        6.0 * n_params * tokens + 6.0 * double(c.n_layers) * double(batch * accum) * double(seq) *
                                      double(seq) * double(c.dim);
    const double ms = 1e3 * secs / double(steps);
    const double tflops = flops_per_step * double(steps) / secs / 1e12;
    const double peak_gib =
        double(backend::cuda_detail::Pool::instance().peak_bytes()) / double(1 << 30);
    cudaDeviceProp prop{};
    TERNARY_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf(
        "bench_cuda_gpt: %s, %s GPT (GEMMs %s), %.2fM parameters, %lld tokens/step (batch %lld x "
        "seq %lld x "
        "accum %lld): %.1f ms/step, %.0f tokens/s, %.1f TFLOP/s (MFU %.1f%% of %.0f), peak pool "
        "memory %.2f GiB, loss %.4f\n",
        prop.name, c.ternary ? "ternary" : "fp32", bf16 ? "bf16" : (tf32 ? "tf32" : "fp32"),
        n_params / 1e6, (long long)tokens, (long long)batch, (long long)seq, (long long)accum, ms,
        tokens * double(steps) / secs, tflops, 100.0 * tflops / peak_tflops, peak_tflops, peak_gib,
        loss);
    if (phases)
      std::printf("phases per step: forward %.1f ms, backward %.1f ms, clip + optimizer %.1f ms\n",
                  1e3 * t_fwd / double(steps), 1e3 * t_bwd / double(steps),
                  1e3 * t_opt / double(steps));
    std::printf(
        "{\"device\": \"%s\", \"ternary\": %s, \"tf32\": %s, \"bf16\": %s, \"layers\": %lld, "
        "\"dim\": %lld, "
        "\"heads\": %lld, \"kv_heads\": %lld, \"mlp_mult\": %lld, \"vocab\": %lld, \"seq\": %lld, "
        "\"batch\": %lld, \"accum\": %lld, \"tokens_per_step\": %.0f, \"steps\": %lld, "
        "\"params\": %.0f, \"ms_per_step\": %.2f, \"phases\": %s, \"forward_ms\": %.2f, "
        "\"backward_ms\": %.2f, "
        "\"optimizer_ms\": %.2f, \"tokens_per_s\": %.1f, \"tflops\": %.3f, "
        "\"peak_tflops\": %.1f, \"mfu\": %.4f, \"peak_gpu_gib\": %.3f, \"loss\": %.4f}\n",
        prop.name, c.ternary ? "true" : "false", tf32 ? "true" : "false", bf16 ? "true" : "false",
        (long long)c.n_layers, (long long)c.dim, (long long)c.n_heads, (long long)c.n_kv_heads,
        (long long)c.mlp_mult, (long long)c.vocab_size, (long long)seq, (long long)batch,
        (long long)accum, tokens, (long long)steps, n_params, ms, phases ? "true" : "false",
        1e3 * t_fwd / double(steps), 1e3 * t_bwd / double(steps), 1e3 * t_opt / double(steps),
        tokens * double(steps) / secs, tflops, peak_tflops, tflops / peak_tflops, peak_gib, loss);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_gpt: %s\n", e.what());
    return 1;
  }
  return 0;
}
