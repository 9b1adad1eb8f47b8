// Projection: what a model needs from a linear layer, y = x W^T with W stored [out, in].
// Linear (full precision) and BitLinear (ternary) both implement it, so a model picks one by
// configuration and the rest of its code does not change.
#pragma once

#include "ternary/nn/module.hpp"

namespace ternary::nn {

template <class T = float, class B = cpu>
class Projection : public Module<T, B> {
 public:
  virtual Var<T, B> forward(const Var<T, B>& x) const = 0;
  // The (latent, full-precision) weight [out, in].
  virtual Var<T, B> weight() const = 0;
  virtual bool is_ternary() const { return false; }
  int64_t in_features() const { return weight().size(1); }
  int64_t out_features() const { return weight().size(0); }
};

}  // namespace ternary::nn
