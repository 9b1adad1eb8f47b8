// Command-line options the programs share (train_gpt, finetune_ternary, ablate_extra_norm),
// declared once so that a flag means the same thing, with the same checks, everywhere.
// Every numeric option is range-checked by CLI11 at parse time (a bad value prints the flag,
// the value and the rule, and the program exits non-zero); cross-field rules (dim divisible
// by heads, ...) are GPTConfig::validate's and check_run_shape's.
//
// Only the programs include this header (it needs CLI11, header-only, Debian libcli11-dev);
// the library itself never does.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "ternary/core/error.hpp"
#include "ternary/nn/gpt.hpp"
#include "ternary/train/golf_optimizers.hpp"

namespace ternary::train {

// Upper bounds that catch typos (an extra zero) before they turn into an allocation of
// terabytes; far above anything a CPU or one GPU trains.
inline constexpr int64_t kMaxModelExtent = 1 << 16;
inline constexpr int64_t kMaxLayers = 1024;
inline constexpr int64_t kMaxTokensPerStep = int64_t(1) << 26;

// --layers --dim --heads --kv-heads --mlp-mult (the model's shape).
inline void add_model_shape_options(CLI::App& app, nn::GPTConfig& m, bool show_defaults) {
  auto opt = [&](const char* flag, int64_t& v, const char* help, int64_t hi) {
    auto* o = app.add_option(flag, v, help)->check(CLI::Range(int64_t(1), hi));
    if (show_defaults) o->capture_default_str();
  };
  opt("--layers", m.n_layers, "transformer blocks", kMaxLayers);
  opt("--dim", m.dim, "model width", kMaxModelExtent);
  opt("--heads", m.n_heads, "attention (query) heads", kMaxModelExtent);
  opt("--kv-heads", m.n_kv_heads, "key/value heads (grouped-query attention)", kMaxModelExtent);
  opt("--mlp-mult", m.mlp_mult, "MLP width multiplier", 64);
}

// --seq --batch (the tokens of one step). Defaults may come from a preset, so they are not
// shown here.
inline void add_batch_options(CLI::App& app, int64_t& seq, int64_t& batch) {
  app.add_option("--seq", seq, "sequence length")->check(CLI::Range(int64_t(1), kMaxModelExtent));
  app.add_option("--batch", batch, "sequences per step")
      ->check(CLI::Range(int64_t(1), kMaxModelExtent));
}

// --warmup (steps) and --warmdown (a fraction of the run).
inline void add_schedule_options(CLI::App& app, int64_t& warmup, double& warmdown) {
  app.add_option("--warmup", warmup, "LR warmup steps")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 40))
      ->capture_default_str();
  app.add_option("--warmdown", warmdown, "fraction of the run with a linear LR warmdown")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
}

// --matrix-lr --embed-lr --scalar-lr (Muon for block matrices, Adam for the rest).
inline void add_learning_rate_options(CLI::App& app, GolfOptimizerOptions& o) {
  const auto lr = CLI::Range(0.0, 100.0);
  app.add_option("--matrix-lr", o.matrix_lr, "Muon learning rate (block matrices)")
      ->check(lr)
      ->capture_default_str();
  app.add_option("--embed-lr", o.embed_lr, "Adam learning rate (tied embedding)")
      ->check(lr)
      ->capture_default_str();
  app.add_option("--scalar-lr", o.scalar_lr, "Adam learning rate (vectors, scalars)")
      ->check(lr)
      ->capture_default_str();
}

// --threads (0: all cores).
inline void add_threads_option(CLI::App& app, int& threads) {
  app.add_option("--threads", threads, "OpenMP threads (default: all cores)")
      ->check(CLI::Range(0, 4096));
}

// Checks what no single flag can: the tokens of one step must be addressable and the
// batch shape positive. Throws ternary::Error naming the values.
inline void check_run_shape(int64_t seq, int64_t batch) {
  if (seq <= 0 || batch <= 0)
    throw Error(
        detail::cat("--seq and --batch must be positive, got seq ", seq, ", batch ", batch));
  if (seq * batch > kMaxTokensPerStep)
    throw Error(detail::cat("--seq ", seq, " x --batch ", batch, " = ", seq * batch,
                            " tokens per step is more than the ", kMaxTokensPerStep, " allowed"));
}

}  // namespace ternary::train
