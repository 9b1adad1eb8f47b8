// Gradient clipping by global norm, as torch.nn.utils.clip_grad_norm_:
//
//   total = sqrt(sum over parameters with a grad of ||grad||^2)
//   coef  = max_norm / (total + 1e-6);   if coef < 1: every grad *= coef
//
// Returns `total` (before clipping) for logging. max_norm <= 0 turns clipping off (the norm
// is still returned). Parameters whose grad() is undefined are skipped; a Var listed twice
// (tied weights) counts and is scaled once.
#pragma once

#include <cmath>
#include <vector>

#include "ternary/autograd/var.hpp"
#include "ternary/backend/multi_update.hpp"
#include "ternary/optim/optimizer.hpp"

namespace ternary::optim {

template <class T, class B>
double clip_grad_norm(const std::vector<Var<T, B>>& params, double max_norm) {
  // The i-th parameter's grad if it has one that no earlier parameter shares. A linear scan
  // (models have tens of parameters) instead of a set keeps the step free of heap allocation.
  auto distinct_grad = [&](size_t i) -> const Tensor<T, B>* {
    const Tensor<T, B>& g = params[i].grad();
    if (!g.defined()) return nullptr;
    for (size_t j = 0; j < i; ++j)
      if (params[j].grad().defined() && params[j].grad().data() == g.data()) return nullptr;
    return &g;
  };
  double sq = 0;
  if constexpr (B::on_host) {
    for (size_t i = 0; i < params.size(); ++i)
      if (const auto* g = distinct_grad(i)) sq += detail::squared_norm(*g);
  } else {  // one device sum and one host copy for all of them (backend/cuda/optim.cuh)
    std::vector<Tensor<T, B>> grads;
    for (size_t i = 0; i < params.size(); ++i)
      if (const auto* g = distinct_grad(i)) grads.push_back(*g);
    sq = squared_norm_sum(B{}, grads);
  }
  const double total = std::sqrt(sq);
  if (max_norm > 0) {
    const double coef = max_norm / (total + 1e-6);
    if (coef < 1) {
      [[maybe_unused]] std::vector<backend::ValueRun<T>> runs;  // (device: one launch for all)
      for (size_t i = 0; i < params.size(); ++i)
        if (const auto* g = distinct_grad(i)) {
          Tensor<T, B> shared = *g;  // shares the gradient's storage: scaled in place
          if constexpr (!B::on_host) {
            if (shared.is_contiguous()) {
              runs.push_back({shared.data(), shared.numel()});
              continue;
            }
          }
          shared *= T(coef);
        }
      if constexpr (!B::on_host)
        if (!runs.empty()) scale_runs(B{}, runs, T(coef));  // backend/cuda/optim.cuh
    }
  }
  return total;
}

}  // namespace ternary::optim
