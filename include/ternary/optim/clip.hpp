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
#include <set>
#include <vector>

#include "ternary/autograd/var.hpp"
#include "ternary/optim/optimizer.hpp"

namespace ternary::optim {

template <class T, class B>
double clip_grad_norm(const std::vector<Var<T, B>>& params, double max_norm) {
  std::vector<Tensor<T, B>> grads;
  std::set<const T*> seen;
  for (const auto& p : params)
    if (p.grad().defined() && seen.insert(p.grad().data()).second) grads.push_back(p.grad());
  double sq = 0;
  if constexpr (B::on_host) {
    for (const auto& g : grads) sq += detail::squared_norm(g);
  } else {  // one device sum and one host copy for all of them (backend/cuda/quant.cuh)
    sq = squared_norm_sum(B{}, grads);
  }
  const double total = std::sqrt(sq);
  if (max_norm > 0) {
    const double coef = max_norm / (total + 1e-6);
    if (coef < 1)
      for (auto& g : grads) g *= T(coef);  // g shares the gradient's storage: scaled in place
  }
  return total;
}

}  // namespace ternary::optim
