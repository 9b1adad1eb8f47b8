// The training loop the programs share: for each step, set the LR multiplier (warmup /
// warmdown by steps or by wall clock), draw a batch, forward, backward, clip, update, and
// report progress. A per-step hook lets a caller change the model between steps (e.g. the
// gradual quantization schedule sets each layer's lambda).
#pragma once

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "ternary/data/batcher.hpp"
#include "ternary/nn/gpt.hpp"
#include "ternary/optim/clip.hpp"
#include "ternary/optim/schedule.hpp"
#include "ternary/train/golf_optimizers.hpp"
#include "ternary/train/progress.hpp"

namespace ternary::train {

struct LoopOptions {
  int64_t steps = 0;       // stop after this many steps (0: only --seconds stops)
  double seconds = 0;      // stop after this much wall-clock training time (0: no limit)
  int64_t start_step = 0;  // when resuming
  int64_t warmup = 10;
  double warmdown = 0.3;   // fraction of the run (steps or seconds) with a linear warmdown
  double grad_clip = 1.0;  // global gradient-norm clip (0: off)
  int64_t log_every = 10;  // progress lines when stderr is not a terminal
  std::string log_path;    // JSON lines: step, loss, lr_scale, tokens_per_s
  std::string label = "train";
};

struct LoopResult {
  int64_t steps = 0;  // the step reached (start_step + steps run)
  double seconds = 0;
  double tokens_per_s = 0;
  double final_loss = 0;  // smoothed training loss at the end
};

template <class T = float>
LoopResult train_loop(const nn::GPT<T>& model, GolfOptimizers<T>& opt, RandomBatcher& batcher,
                      const LoopOptions& o,
                      const std::function<void(int64_t step)>& before_step = {}) {
  if (o.steps <= 0 && o.seconds <= 0)
    throw Error("train_loop: give a number of steps or a time budget in seconds");
  std::ofstream log;
  if (!o.log_path.empty()) {
    log.open(o.log_path, std::ios::app);
    if (!log) throw IOError(detail::cat("train_loop: cannot open log file ", o.log_path));
  }
  optim::LrSchedule schedule{o.warmup, int64_t(o.warmdown * double(o.steps)), o.warmdown};
  const int64_t end = o.steps > 0 ? o.steps : std::numeric_limits<int64_t>::max();
  const int64_t tokens_per_step = batcher.batch_size() * batcher.seq_len();
  Progress progress(o.label, o.steps, o.log_every);
  const auto params = model.parameters();
  LoopResult r;
  int64_t step = o.start_step;
  double ema = 0;
  for (; step < end; ++step) {
    const double elapsed = progress.elapsed_seconds();
    if (o.seconds > 0 && elapsed >= o.seconds) break;
    const double lr_scale = o.seconds > 0 ? schedule.lr_multiplier_by_time(step, elapsed, o.seconds)
                                          : schedule.lr_multiplier(step, o.steps);
    opt.set_lr_scale(lr_scale);
    if (before_step) before_step(step);
    Batch b = batcher.next();
    auto loss = model.loss(b.inputs, b.targets);
    const double value = loss.item();
    if (!std::isfinite(value))
      throw Error(detail::cat(o.label, ": the loss is ", value, " at step ", step,
                              "; lower the learning rates"));
    loss.backward();
    if (o.grad_clip > 0) optim::clip_grad_norm(params, o.grad_clip);
    opt.step();
    opt.zero_grad();
    ema = step == o.start_step ? value : 0.9 * ema + 0.1 * value;
    const double tok_s =
        double((step - o.start_step + 1) * tokens_per_step) / progress.elapsed_seconds();
    char text[96];
    std::snprintf(text, sizeof text, "loss %.4f  %.0f tok/s", ema, tok_s);
    progress.update(step + 1, text);
    if (log.is_open())
      log << nlohmann::json{{"step", step + 1},
                            {"loss", value},
                            {"lr_scale", lr_scale},
                            {"tokens_per_s", tok_s}}
                 .dump()
          << "\n";
  }
  progress.finish();
  r.steps = step;
  r.seconds = progress.elapsed_seconds();
  r.tokens_per_s = double((step - o.start_step) * tokens_per_step) / std::max(r.seconds, 1e-9);
  r.final_loss = ema;
  return r;
}

}  // namespace ternary::train
