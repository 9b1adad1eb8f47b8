// AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, the update of PyTorch's
// torch.optim.AdamW (amsgrad=False, maximize=False). For each parameter p with gradient g, at
// its t-th update (t = 1, 2, ...), with lr the group's lr times the schedule's scale:
//
//   p  = p * (1 - lr * weight_decay)
//   m  = beta1 * m + (1 - beta1) * g
//   v  = beta2 * v + (1 - beta2) * g^2
//   p  = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// m and v start at zero. In Parameter Golf, Adam (weight_decay = 0) trains the embeddings and
// the scalar/vector parameters while Muon trains the 2-d matrices. Tests: tests/test_optim.cpp.
#pragma once

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "ternary/backend/multi_update.hpp"
#include "ternary/optim/optimizer.hpp"

namespace ternary::optim {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;  // PyTorch's AdamW default; use 0 for plain Adam
};

template <class T = float, class B = cpu>
class AdamW : public GroupedOptimizer<AdamWOptions, T, B> {
 public:
  using Base = GroupedOptimizer<AdamWOptions, T, B>;
  using VarT = Var<T, B>;
  using TensorT = Tensor<T, B>;
  using Group = typename Base::Group;

  AdamW() = default;
  explicit AdamW(std::vector<VarT> params, AdamWOptions options = {}) {
    this->add_param_group(std::move(params), options);
  }
  explicit AdamW(std::vector<Group> groups) {
    for (auto& g : groups) this->add_param_group(std::move(g.params), g.options);
  }

 protected:
  void validate(const std::vector<VarT>& params, const AdamWOptions& o) const override {
    Base::validate(params, o);
    if (!(o.beta1 >= 0 && o.beta1 < 1) || !(o.beta2 >= 0 && o.beta2 < 1))
      throw Error(
          detail::cat("AdamW: betas must lie in [0, 1), got (", o.beta1, ", ", o.beta2, ")"));
    if (!(o.eps >= 0)) throw Error(detail::cat("AdamW: eps must be >= 0, got ", o.eps));
    if (!(o.weight_decay >= 0))
      throw Error(detail::cat("AdamW: weight_decay must be >= 0, got ", o.weight_decay));
  }
  std::vector<std::string> state_names() const override { return {"exp_avg", "exp_avg_sq"}; }

  // Three fused passes: m, v, then p (decay and Adam step together). On a device backend the
  // values are the same, computed for every parameter of the step in one launch at its end
  // (backend/multi_update.hpp): the GPT's ~40 small tensors would each cost three launches.
  void update(size_t index, TensorT& p, const TensorT& g, typename Base::State& state,
              int64_t t) override {
    const AdamWOptions& o = this->options_of(index);
    const double lr = this->lr_of(index);
    TensorT& m = Base::state_tensor(state, "exp_avg", p.shape());
    TensorT& v = Base::state_tensor(state, "exp_avg_sq", p.shape());
    const T beta1 = T(o.beta1), one_minus_beta1 = T(1 - o.beta1);
    const T beta2 = T(o.beta2), one_minus_beta2 = T(1 - o.beta2);
    const T decay = T(1 - lr * o.weight_decay);
    const T step_size = T(lr / (1 - std::pow(o.beta1, double(t))));
    const T bc2_sqrt = T(std::sqrt(1 - std::pow(o.beta2, double(t))));
    const T eps = T(o.eps);
    if constexpr (!B::on_host) {
      if (p.is_contiguous() && g.is_contiguous()) {
        runs_.push_back({p.data(), g.data(), m.data(), v.data(), p.numel(), decay, beta1,
                         one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps});
        grads_.push_back(g);  // (kept to the launch)
        return;
      }
    }
    m.assign(m * beta1 + g * one_minus_beta1);
    v.assign(v * beta2 + square(g) * one_minus_beta2);
    p.assign(p * decay - m * step_size / (sqrt(v) / bc2_sqrt + eps));
  }
  void finish_step() override {
    if constexpr (!B::on_host) {
      if (!runs_.empty()) adamw_update_runs(B{}, runs_);  // (backend/cuda/optim.cuh)
      runs_.clear();
      grads_.clear();
    }
  }

 private:
  // The step's device updates, applied by finish_step (members: their capacity is kept).
  std::vector<backend::AdamWRun<T>> runs_;
  std::vector<TensorT> grads_;
};

}  // namespace ternary::optim
