// Learning-rate multiplier for Optimizer::set_lr_scale: linear warmup over the first
// `warmup_steps` steps, constant 1, then a linear warmdown to 0 over the last
// `warmdown_steps` steps (Parameter Golf's train_gpt.py schedule). Steps are 0-based: the
// multiplier for step s is used for the s-th update.
//
//   warmup:    (s + 1) / W                 for s < W  (the first update is not wasted at 0)
//   warmdown:  (total - s) / D             for s >= total - D  (1 / D at the last step,
//                                          0 at s = total)
//   both apply: the smaller one wins.
//
// Parameter Golf stops by wall clock, when the step count is unknown in advance; then the
// warmdown covers the last `warmdown_fraction` of the time budget:
//   warmdown:  (total_s - elapsed_s) / (warmdown_fraction * total_s)
//              once elapsed_s >= (1 - warmdown_fraction) * total_s (0 once the time is up).
//
//   optim::LrSchedule sched{.warmup_steps = 20, .warmdown_steps = 300};
//   opt.set_lr_scale(sched.lr_multiplier(step, total_steps));
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ternary/core/error.hpp"

namespace ternary::optim {

struct LrSchedule {
  int64_t warmup_steps = 0;
  int64_t warmdown_steps = 0;      // used by lr_multiplier
  double warmdown_fraction = 0.0;  // used by lr_multiplier_by_time, in [0, 1]

  // Multiplier for 0-based step `step` of a run of `total_steps` steps.
  double lr_multiplier(int64_t step, int64_t total_steps) const {
    check("lr_multiplier");
    if (step < 0 || total_steps < 0)
      throw Error(detail::cat("LrSchedule::lr_multiplier: step ", step, " and total_steps ",
                              total_steps, " must be >= 0"));
    double m = warmup(step);
    if (warmdown_steps > 0 && step >= total_steps - warmdown_steps)
      m = std::min(m, std::max(0.0, double(total_steps - step) / double(warmdown_steps)));
    return m;
  }

  // Multiplier for step `step` when the run stops after `total_s` seconds and `elapsed_s` have
  // passed (warmup still counts steps).
  double lr_multiplier_by_time(int64_t step, double elapsed_s, double total_s) const {
    check("lr_multiplier_by_time");
    if (step < 0 || !(elapsed_s >= 0) || !(total_s > 0))
      throw Error(
          detail::cat("LrSchedule::lr_multiplier_by_time: needs step >= 0, elapsed_s >= 0 "
                      "and total_s > 0, got ",
                      step, ", ", elapsed_s, ", ", total_s));
    double m = warmup(step);
    if (warmdown_fraction > 0) {
      const double window = warmdown_fraction * total_s;
      const double remaining = std::max(0.0, total_s - elapsed_s);
      if (remaining <= window) m = std::min(m, remaining / window);
    }
    return m;
  }

 private:
  double warmup(int64_t step) const {
    return step < warmup_steps ? double(step + 1) / double(warmup_steps) : 1.0;
  }
  void check(const char* op) const {
    if (warmup_steps < 0 || warmdown_steps < 0 ||
        !(warmdown_fraction >= 0 && warmdown_fraction <= 1))
      throw Error(detail::cat("LrSchedule::", op, ": warmup_steps ", warmup_steps,
                              " and warmdown_steps ", warmdown_steps,
                              " must be >= 0 and warmdown_fraction ", warmdown_fraction,
                              " must lie in [0, 1]"));
  }
};

}  // namespace ternary::optim
