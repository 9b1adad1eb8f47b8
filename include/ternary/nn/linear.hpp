// Linear: y = x W^T (+ b), W [out, in] in full precision. Initialised like PyTorch's
// nn.Linear: uniform in +-1/sqrt(in).
#pragma once

#include <cmath>

#include "ternary/nn/projection.hpp"
#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/matmul.hpp"

namespace ternary::nn {

template <class T = float, class B = cpu>
class Linear : public Projection<T, B> {
 public:
  Linear(int64_t in, int64_t out, Rng& rng, bool bias = false) {
    if (in <= 0 || out <= 0) throw ShapeError(detail::cat("Linear: sizes must be positive, got in ", in, ", out ", out));
    const double bound = 1.0 / std::sqrt(double(in));
    weight_ = this->register_parameter("weight", Tensor<T, B>::rand({out, in}, rng, -bound, bound));
    if (bias) bias_ = this->register_parameter("bias", Tensor<T, B>::rand({out}, rng, -bound, bound));
  }
  Var<T, B> forward(const Var<T, B>& x) const override {
    Var<T, B> y = linear(x, weight_);
    return bias_.defined() ? y + bias_ : y;
  }
  Var<T, B> weight() const override { return weight_; }
  Var<T, B> bias() const { return bias_; }

 private:
  Var<T, B> weight_, bias_;
};

}  // namespace ternary::nn
