// RMSNorm over the last axis with a learnable gain (initialised to ones).
#pragma once

#include "ternary/nn/module.hpp"
#include "ternary/ops/norm.hpp"

namespace ternary::nn {

template <class T = float, class B = cpu>
class RMSNorm : public Module<T, B> {
 public:
  explicit RMSNorm(int64_t dim, double eps = 1e-6) : eps_(eps) {
    if (dim <= 0) throw ShapeError(detail::cat("RMSNorm: dim must be positive, got ", dim));
    gain_ = this->register_parameter("weight", Tensor<T, B>::ones({dim}));
  }
  Var<T, B> forward(const Var<T, B>& x) const { return rms_norm(x, gain_, eps_); }
  Var<T, B> gain() const { return gain_; }
  double eps() const { return eps_; }

 private:
  Var<T, B> gain_;
  double eps_;
};

}  // namespace ternary::nn
