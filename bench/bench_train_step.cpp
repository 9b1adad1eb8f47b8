// bench_train_step: the time of whole training steps of the Parameter Golf GPT (forward,
// backward, gradient clip, Muon + Adam update: train::GolfOptimizers) on random tokens.
//
//   ./build-perf/bench/bench_train_step --layers 4 --dim 256 --heads 4 --kv-heads 4
//       --mlp-mult 4 --vocab 1024 --seq 256 --batch 16 --threads 2 --steps 10 [--ternary]
//
// Progress goes to stderr; the last stdout line is one JSON object: tokens_per_s,
// ms_per_step, gflops_per_s (model FLOPs: 6 * params * tokens, plus causal attention
// 6 * B * T^2 * dim per layer, i.e. QK^T and PV over the causal half, forward and backward;
// the optimizer's Newton-Schulz products are not counted), peak_rss_mib, and heap
// allocations per step after the first (operator new, counted by the replacement below, and
// aligned_alloc, which tensor storage uses, counted through the linker's --wrap).
#include <omp.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <optional>

#include "ternary/gpt.hpp"
#include "ternary/optim/clip.hpp"
#include "ternary/train/golf_optimizers.hpp"

// ---- allocation counters --------------------------------------------------------------------
// (GCC cannot see that the replaced operator new below is malloc's, so it flags every free.)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
namespace {
std::atomic<int64_t> g_news{0}, g_aligned{0};
}
void* operator new(std::size_t n) {
  g_news.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  return operator new(n);
}
void* operator new(std::size_t n, std::align_val_t a) {
  g_news.fetch_add(1, std::memory_order_relaxed);
  const std::size_t al = static_cast<std::size_t>(a);
  if (void* p = std::aligned_alloc(al, (n + al - 1) / al * al)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return operator new(n, a);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}

extern "C" void* __real_aligned_alloc(std::size_t, std::size_t);
extern "C" void* __wrap_aligned_alloc(std::size_t al, std::size_t n) {
  g_aligned.fetch_add(1, std::memory_order_relaxed);
  return __real_aligned_alloc(al, n);
}

using namespace ternary;

int main(int argc, char** argv) {
  nn::GPTConfig c;
  c.n_layers = 4, c.dim = 256, c.n_heads = 4, c.n_kv_heads = 4, c.mlp_mult = 4, c.vocab_size = 1024;
  c.ternary = false;
  int64_t seq = 256, batch = 16, steps = 10, warmup = 2;
  int threads = 0;
  CLI::App app{"Time full GPT training steps (forward, backward, optimizer) on random tokens."};
  app.add_option("--layers", c.n_layers);
  app.add_option("--dim", c.dim);
  app.add_option("--heads", c.n_heads);
  app.add_option("--kv-heads", c.n_kv_heads);
  app.add_option("--mlp-mult", c.mlp_mult);
  app.add_option("--vocab", c.vocab_size);
  app.add_option("--seq", seq);
  app.add_option("--batch", batch);
  app.add_option("--threads", threads, "OpenMP threads (0: the default)");
  app.add_option("--steps", steps, "timed steps");
  app.add_option("--warmup", warmup, "untimed steps before (at least 1)");
  app.add_flag("--ternary", c.ternary, "BitLinear projections (STE, extra norm, int8 activations)");
  std::string optimizer = "golf";
  app.add_option("--optimizer", optimizer,
                 "golf (Muon on block matrices + Adam) or adamw (AdamW on every parameter, as the "
                 "LibTorch peer)")
      ->check(CLI::IsMember({"golf", "adamw"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (threads > 0) omp_set_num_threads(threads);
  warmup = std::max<int64_t>(warmup, 1);
  try {
    nn::GPT<float> model(c);
    const auto params = model.parameters();
    // One of the two optimizers runs; the other is left empty.
    std::optional<train::GolfOptimizers<float>> golf;
    std::optional<optim::AdamW<float>> adamw;
    if (optimizer == "golf")
      golf.emplace(model, train::GolfOptimizerOptions{});
    else
      adamw.emplace(params, optim::AdamWOptions{1e-3, 0.9, 0.95, 1e-8, 0.0});
    auto ids = Tensor<int32_t>::empty({batch, seq + 1});
    Rng rng(1);
    auto x = ids.slice(1, 0, seq).contiguous(), y = ids.slice(1, 1, seq + 1).contiguous();
    auto step = [&] {
      for (int64_t i = 0; i < ids.numel(); ++i)
        ids.data()[i] = int32_t(rng.next_u64() % uint64_t(c.vocab_size));
      x.assign(ids.slice(1, 0, seq));
      y.assign(ids.slice(1, 1, seq + 1));
      auto loss = model.loss(x, y);
      const double v = loss.item();
      loss.backward();
      optim::clip_grad_norm(params, 1.0);
      if (golf) {
        golf->step();
        golf->zero_grad();
      } else {
        adamw->step();
        adamw->zero_grad();
      }
      return v;
    };
    for (int64_t i = 0; i < warmup; ++i) step();
    const int64_t news0 = g_news.load(), aligned0 = g_aligned.load();
    double loss = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < steps; ++i) loss = step();
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double news = double(g_news.load() - news0) / double(steps);
    const double aligned = double(g_aligned.load() - aligned0) / double(steps);

    const double n_params = double(model.num_parameters()), tokens = double(batch * seq);
    const double flops_per_step = 6.0 * n_params * tokens + 6.0 * double(c.n_layers) *
                                                                double(batch) * double(seq) *
                                                                double(seq) * double(c.dim);
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    std::fprintf(
        stderr, "bench_train_step: %s GPT, %.0f parameters, %d threads, %lld steps, loss %.4f\n",
        c.ternary ? "ternary" : "fp32", n_params, omp_get_max_threads(), (long long)steps, loss);
    std::printf(
        "{\"optimizer\": \"%s\", \"ternary\": %s, \"layers\": %lld, \"dim\": %lld, \"heads\": "
        "%lld, \"kv_heads\": %lld, "
        "\"mlp_mult\": %lld, "
        "\"vocab\": %lld, \"seq\": %lld, \"batch\": %lld, \"threads\": %d, \"steps\": %lld, "
        "\"params\": %.0f, "
        "\"tokens_per_s\": %.1f, \"ms_per_step\": %.2f, \"gflops_per_s\": %.2f, \"peak_rss_mib\": "
        "%.1f, "
        "\"allocs_per_step\": %.1f, \"new_per_step\": %.1f, \"aligned_alloc_per_step\": %.1f, "
        "\"loss\": %.4f}\n",
        optimizer.c_str(), c.ternary ? "true" : "false", (long long)c.n_layers, (long long)c.dim,
        (long long)c.n_heads, (long long)c.n_kv_heads, (long long)c.mlp_mult,
        (long long)c.vocab_size, (long long)seq, (long long)batch, omp_get_max_threads(),
        (long long)steps, n_params, tokens * double(steps) / secs, 1e3 * secs / double(steps),
        flops_per_step * double(steps) / secs / 1e9, double(ru.ru_maxrss) / 1024.0, news + aligned,
        news, aligned, loss);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_train_step: %s\n", e.what());
    return 1;
  }
  return 0;
}
