// The training loop the programs share: for each step, set the LR multiplier (warmup /
// warmdown by steps or by wall clock), draw a batch, forward, backward, clip, update, and
// report progress. A hook before each step lets a caller change the model (e.g. the gradual
// quantization schedule sets each layer's lambda); a hook after each step lets it save a
// checkpoint.
//
// Gradient accumulation: with micro_batch set, each rank's share of the global batch is cut
// into micro-batches of that many sequences; each runs forward and backward with its loss
// scaled by 1 / (micro-batches), so the summed gradient is the mean over the rank's rows,
// exactly the gradient of one large batch up to float rounding. Data-parallel ranks
// all-reduce only after the last micro-batch. The global batch, and so the training run, does
// not depend on the number of ranks or the micro-batch size; only memory does.
//
// Non-finite values: a NaN or Inf loss, or a NaN or Inf anywhere in the gradients (the global
// gradient norm is computed every step anyway, for clipping, so the check is free), either
// stops training with an error naming the step and the first parameter at fault (the
// default), or, with on_nonfinite = skip, skips that step's update and goes on.
#pragma once

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "ternary/data/batcher.hpp"
#include "ternary/dist/data_parallel.hpp"
#include "ternary/dist/sharding.hpp"
#include "ternary/nn/gpt.hpp"
#include "ternary/optim/clip.hpp"
#include "ternary/optim/schedule.hpp"
#include "ternary/train/golf_optimizers.hpp"
#include "ternary/train/progress.hpp"

namespace ternary::train {

enum class NonFinite { stop, skip };

struct LoopOptions {
  int64_t steps = 0;       // stop after this many steps (0: only --seconds stops)
  double seconds = 0;      // stop after this much wall-clock training time (0: no limit)
  int64_t start_step = 0;  // when resuming
  int64_t warmup = 10;
  double warmdown = 0.3;    // fraction of the run (steps or seconds) with a linear warmdown
  double grad_clip = 1.0;   // global gradient-norm clip (0: off)
  int64_t micro_batch = 0;  // sequences per forward/backward on a rank (0: the rank's whole share)
  int64_t log_every = 10;   // progress lines when stderr is not a terminal
  std::string log_path;     // JSON lines: step, loss, lr_scale, tokens_per_s
  std::string label = "train";
  NonFinite on_nonfinite = NonFinite::stop;
};

struct LoopResult {
  int64_t steps = 0;  // the step reached (start_step + steps run)
  double seconds = 0;
  double tokens_per_s = 0;
  double final_loss = 0;      // smoothed training loss at the end
  int64_t skipped_steps = 0;  // steps whose update was skipped (non-finite loss or gradient)
};

// The first parameter (in registration order) whose gradient holds a NaN or Inf, described
// as "gradient of 'name' [shape] has nan at element i"; nullopt if all are finite.
template <class T, class B>
std::optional<std::string> first_nonfinite_gradient(const nn::Module<T, B>& model) {
  for (const auto& [name, p] : model.named_parameters()) {
    if (!p.grad().defined()) continue;
    const std::vector<T> g = p.grad().to_vector();  // through the host for device tensors
    for (size_t i = 0; i < g.size(); ++i)
      if (!std::isfinite(double(g[i])))
        return detail::cat("gradient of '", name, "' ", p.shape(), " has ", double(g[i]),
                           " at element ", i);
  }
  return std::nullopt;
}

// Any backend: the batch is drawn on the host and uploaded. Data-parallel with `dp`: the
// batcher draws the global batch and each rank trains on its rows; the loss is averaged over
// ranks (so every rank takes the same decisions), gradients are averaged by dp's buckets
// during backward, and only the main rank prints progress, writes the log and runs
// `after_step` (checkpoints). `before_step` runs on every rank.
template <class T = float, class B = cpu>
LoopResult train_loop(const nn::GPT<T, B>& model, GolfOptimizers<T, B>& opt, RandomBatcher& batcher,
                      const LoopOptions& o,
                      const std::function<void(int64_t step)>& before_step = {},
                      const std::function<void(int64_t steps_done)>& after_step = {},
                      dist::DataParallel<T, B>* dp = nullptr) {
  if (o.steps <= 0 && o.seconds <= 0)
    throw Error("train_loop: give a number of steps or a time budget in seconds");
  const bool main_rank = !dp || dp->is_main();
  std::ofstream log;
  if (!o.log_path.empty() && main_rank) {
    log.open(o.log_path, std::ios::app);
    if (!log) throw IOError(detail::cat("train_loop: cannot open log file ", o.log_path));
  }
  optim::LrSchedule schedule{o.warmup, int64_t(o.warmdown * double(o.steps)), o.warmdown};
  const int64_t end = o.steps > 0 ? o.steps : std::numeric_limits<int64_t>::max();
  const int64_t tokens_per_step = batcher.batch_size() * batcher.seq_len();
  const int world = dp ? dp->world_size() : 1;
  const int64_t rank_rows = batcher.batch_size() / world;  // the batcher draws the global batch
  const int64_t micro = o.micro_batch > 0 ? o.micro_batch : rank_rows;
  if (batcher.batch_size() % world != 0 || rank_rows % micro != 0)
    throw ShapeError(detail::cat(o.label, ": the global batch of ", batcher.batch_size(),
                                 " sequences over ", world, " rank(s) gives ", rank_rows,
                                 " per rank, which is not a multiple of the micro-batch ", micro));
  const int64_t accum = rank_rows / micro;
  std::vector<Tensor<T, B>> micro_losses;  // one scalar per micro-batch, kept on the device
  Progress progress(o.label, o.steps, o.log_every);  // updated on the main rank only
  const auto params = model.parameters();
  LoopResult r;
  int64_t step = o.start_step;
  double ema = 0;
  bool have_ema = false;
  for (; step < end; ++step) {
    // Data-parallel ranks must agree on when a time budget ends: they use the mean clock.
    const double elapsed =
        dp && o.seconds > 0 ? dp->average(progress.elapsed_seconds()) : progress.elapsed_seconds();
    if (o.seconds > 0 && elapsed >= o.seconds) break;
    const double lr_scale = o.seconds > 0 ? schedule.lr_multiplier_by_time(step, elapsed, o.seconds)
                                          : schedule.lr_multiplier(step, o.steps);
    opt.set_lr_scale(lr_scale);
    if (before_step) before_step(step);
    Batch b = batcher.next();
    if (dp) b = dist::shard_batch(b, dp->rank(), dp->world_size());
    // Forward and backward of every micro-batch, without waiting for the device in between:
    // the micro-batch losses are read once, at the end. Every rank runs every backward pass,
    // so the ranks' collectives always match; a non-finite loss makes non-finite gradients,
    // and both are judged after the all-reduce, where every rank sees the same numbers.
    micro_losses.clear();
    {
      quant::QuantizedWeightCache quantize_once;  // weights are fixed until opt.step()
      for (int64_t a = 0; a < accum; ++a) {
        const Batch mb = accum > 1 ? dist::shard_batch(b, int(a), int(accum)) : b;
        auto loss = model.loss(to_backend<B>(mb.inputs), to_backend<B>(mb.targets));
        micro_losses.push_back(loss.value());
        if (dp) dp->set_sync(a == accum - 1);
        (accum > 1 ? loss * (T(1) / T(accum)) : loss).backward();
      }
    }
    if (dp) dp->finish_gradients();
    double rank_loss = 0;
    for (const auto& l : micro_losses) rank_loss += double(l.item()) / double(accum);
    const double value = dp ? dp->average(rank_loss) : rank_loss;  // the same on every rank
    std::optional<std::string> fault;
    if (!std::isfinite(value)) {
      fault = detail::cat("the loss is ", value);
    } else {
      const double norm = optim::clip_grad_norm(params, o.grad_clip);
      if (!std::isfinite(norm)) {
        fault = first_nonfinite_gradient(model);
        if (!fault) fault = detail::cat("the gradient norm is ", norm);
      }
    }
    if (fault && o.on_nonfinite == NonFinite::stop)
      throw Error(detail::cat(o.label, ": step ", step, ": ", *fault,
                              "; training stopped (lower the learning rates, or skip such steps "
                              "with --on-nonfinite skip)"));
    if (fault) {
      ++r.skipped_steps;
      if (main_rank)
        std::fprintf(stderr, "\n%s: step %lld: %s; update skipped\n", o.label.c_str(),
                     (long long)step, fault->c_str());
    } else {
      opt.step();
    }
    opt.zero_grad();
    if (!fault) {
      ema = have_ema ? 0.9 * ema + 0.1 * value : value;
      have_ema = true;
    }
    const double tok_s =
        double((step - o.start_step + 1) * tokens_per_step) / progress.elapsed_seconds();
    char text[96];
    std::snprintf(text, sizeof text, "loss %.4f  %.0f tok/s", ema, tok_s);
    if (main_rank) progress.update(step + 1, text);
    if (log.is_open())
      log << nlohmann::json{{"step", step + 1},
                            {"loss", value},
                            {"lr_scale", lr_scale},
                            {"tokens_per_s", tok_s}}
                 .dump()
          << std::endl;  // flushed: the log is read while training runs, and after a crash
    // After the log line, so that a checkpoint never holds a step the log lacks.
    if (after_step && main_rank) after_step(step + 1);
  }
  if (main_rank) progress.finish();
  r.steps = step;
  r.seconds = progress.elapsed_seconds();
  r.tokens_per_s = double((step - o.start_step) * tokens_per_step) / std::max(r.seconds, 1e-9);
  r.final_loss = ema;
  return r;
}

}  // namespace ternary::train
