// Linear: y = x W^T (+ b), W [out, in] in full precision. Initialised like PyTorch's
// nn.Linear (W and b uniform in +-1/sqrt(in)), or W ~ N(0, init_std^2) and b = 0 when an
// init_std is given (GPT-style init).
#pragma once

#include <cmath>

#include "ternary/nn/projection.hpp"
#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/matmul.hpp"

namespace ternary::nn {

struct LinearConfig {
  bool bias = false;
  double init_std = 0;  // > 0: normal init with this std; 0: PyTorch's default uniform
};

// The initial [out, in] weight shared by Linear and BitLinear, so the two start identical
// from the same seed and a model switches between them by configuration alone.
template <class T, class B>
Tensor<T, B> init_projection_weight(int64_t in, int64_t out, Rng& rng, double init_std,
                                    const char* op) {
  if (in <= 0 || out <= 0)
    throw ShapeError(detail::cat(op, ": sizes must be positive, got in ", in, ", out ", out));
  if (!(init_std >= 0) || !std::isfinite(init_std))
    throw Error(detail::cat(op, ": init_std must be >= 0, got ", init_std));
  if (init_std > 0) return Tensor<T, B>::randn({out, in}, rng, 0.0, init_std);
  const double bound = 1.0 / std::sqrt(double(in));
  return Tensor<T, B>::rand({out, in}, rng, -bound, bound);
}

template <class T = float, class B = cpu>
class Linear : public Projection<T, B> {
 public:
  Linear(int64_t in, int64_t out, Rng& rng, LinearConfig c = {}) {
    weight_ = this->register_parameter(
        "weight", init_projection_weight<T, B>(in, out, rng, c.init_std, "Linear"));
    if (c.bias) {
      const double bound = 1.0 / std::sqrt(double(in));
      bias_ = this->register_parameter("bias", c.init_std > 0
                                                   ? Tensor<T, B>::zeros({out})
                                                   : Tensor<T, B>::rand({out}, rng, -bound, bound));
    }
  }
  Linear(int64_t in, int64_t out, Rng& rng, bool bias)
      : Linear(in, out, rng, LinearConfig{bias, 0}) {}

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
