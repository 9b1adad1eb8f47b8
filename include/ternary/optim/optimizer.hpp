// Optimizer: the base of AdamW and Muon. It owns the parameters (a flat list; each parameter's
// index is its position over all groups, in the order they were added), the per-parameter
// state (named tensors such as "exp_avg"), a step counter and the learning-rate scale that
// schedules set. GroupedOptimizer adds parameter groups, each a list of Vars with its own
// options (lr, weight decay, betas, ...).
//
//   optim::AdamW<float> adam({{embeddings, {.lr = 0.05}}, {scalars, {.lr = 0.04}}});
//   loss.backward();
//   adam.set_lr_scale(schedule.lr_multiplier(step, total));
//   adam.step();               // under NoGrad, in place; parameters without a grad are skipped
//   adam.zero_grad();
//
// state_dict() is flat, for checkpoints: "<prefix>step" (the optimizer's step counter),
// "<prefix><i>.step" (how many updates parameter i received) and "<prefix><i>.<name>" (its
// state tensors). Counters are stored as 0-d tensors of T (exact below 2^24 for float).
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#include "ternary/core/simd.hpp"

#include "ternary/autograd/tape.hpp"
#include "ternary/autograd/var.hpp"
#include "ternary/core/tensor.hpp"

namespace ternary::optim {

namespace detail {
using ternary::detail::cat;

// sum(t^2): SIMD FMA in T within short blocks, the blocks summed in double (relative error
// ~1e-9 for float even over 10^7 elements).
template <class T, class B>
double squared_norm(const Tensor<T, B>& t) {
  // Device memory: the backend's kernel (found by the tag, e.g. backend/cuda/optim.cuh).
  if constexpr (!B::on_host) return squared_norm(B{}, t);
  const Tensor<T, B> c = t.contiguous();
  const T* x = c.data();
  const int64_t n = c.numel();
  constexpr int64_t kBlock = 1024;  // short float runs per SIMD lane
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static) if (n >= (1 << 17))
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t lo = blk * kBlock, hi = std::min(n, lo + kBlock);
    int64_t i = lo;
    T s = T(0);
    if constexpr (std::is_floating_point_v<T>) {
      using batch = xsimd::batch<T>;
      constexpr int64_t W = batch::size;
      batch a0(T(0)), a1(T(0));
      for (; i + 2 * W <= hi; i += 2 * W) {
        auto v0 = batch::load_unaligned(x + i), v1 = batch::load_unaligned(x + i + W);
        a0 = xsimd::fma(v0, v0, a0);
        a1 = xsimd::fma(v1, v1, a1);
      }
      s = xsimd::hadd(a0 + a1);
    }
    double rest = 0;
    for (; i < hi; ++i) rest += double(x[i]) * double(x[i]);
    total += double(s) + rest;
  }
  return total;
}
}  // namespace detail

template <class T = float, class B = cpu>
class Optimizer {
 public:
  using VarT = Var<T, B>;
  using TensorT = Tensor<T, B>;
  using State = std::map<std::string, TensorT>;
  using StateDict = std::map<std::string, TensorT>;

  Optimizer() = default;
  virtual ~Optimizer() = default;
  // State tensors are updated in place: a copy would silently share them.
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;
  Optimizer(Optimizer&&) noexcept = default;
  Optimizer& operator=(Optimizer&&) noexcept = default;

  // One update of every parameter whose grad() is defined, in place, with recording off.
  void step() {
    NoGrad no_grad;
    ++step_count_;
    for (size_t i = 0; i < params_.size(); ++i) {
      VarT& p = params_[i];
      if (!p.grad().defined()) continue;
      ++param_steps_[i];
      update(i, p.value(), p.grad(), state_[i], param_steps_[i]);
    }
    finish_step();
  }
  // Drops every parameter's gradient (the next backward allocates fresh ones).
  void zero_grad() {
    for (auto& p : params_) p.zero_grad();
  }

  // Multiplies every group's base lr (set by schedules each step; 1 by default).
  void set_lr_scale(double scale) {
    if (!std::isfinite(scale) || scale < 0)
      throw Error(
          detail::cat("Optimizer::set_lr_scale: scale must be finite and >= 0, got ", scale));
    lr_scale_ = scale;
  }
  double lr_scale() const { return lr_scale_; }

  // Number of step() calls (restored by load_state_dict).
  int64_t step_count() const { return step_count_; }
  // Number of updates parameter i received (steps where it had a gradient).
  int64_t param_step_count(size_t i) const { return param_steps_.at(i); }
  size_t num_params() const { return params_.size(); }
  const std::vector<VarT>& params() const { return params_; }
  // Parameter i's state tensors (empty before its first update).
  const State& state(size_t i) const { return state_.at(i); }

  // A deep copy of the state, keyed by parameter index (see the header comment).
  StateDict state_dict(const std::string& prefix = "") const {
    StateDict d;
    d[prefix + "step"] = TensorT::scalar(T(step_count_));
    for (size_t i = 0; i < params_.size(); ++i) {
      if (param_steps_[i] == 0) continue;
      const std::string key = prefix + std::to_string(i) + ".";
      d[key + "step"] = TensorT::scalar(T(param_steps_[i]));
      for (const auto& [name, t] : state_[i]) d[key + name] = t.clone();
    }
    return d;
  }

  // Replaces the state with a copy of `dict`'s entries under `prefix` (other keys are ignored,
  // so one map can hold a model and several optimizers). Throws on an unknown index or name,
  // a shape that does not match the parameter, or a parameter with partial state.
  void load_state_dict(const StateDict& dict, const std::string& prefix = "") {
    const char* op = "Optimizer::load_state_dict";
    auto it = dict.find(prefix + "step");
    if (it == dict.end()) throw Error(detail::cat(op, ": no '", prefix, "step' entry"));
    const int64_t steps = read_count(it->second, it->first);
    std::vector<State> state(params_.size());
    std::vector<int64_t> param_steps(params_.size(), 0);
    const auto names = state_names();
    for (const auto& [key, t] : dict) {
      if (key.compare(0, prefix.size(), prefix) != 0 || key == prefix + "step") continue;
      const std::string rest = key.substr(prefix.size());
      const size_t dot = rest.find('.');
      const std::string idx = rest.substr(0, dot);
      if (dot == std::string::npos || idx.empty() ||
          !std::all_of(idx.begin(), idx.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
        throw Error(detail::cat(op, ": key '", key, "' is not '", prefix, "<index>.<name>'"));
      const size_t i = std::stoul(idx);
      if (i >= params_.size())
        throw Error(detail::cat(op, ": key '", key, "' names parameter ", i,
                                " but the optimizer has ", params_.size()));
      const std::string name = rest.substr(dot + 1);
      if (name == "step") {
        param_steps[i] = read_count(t, key);
      } else if (std::find(names.begin(), names.end(), name) != names.end()) {
        if (!(t.shape() == params_[i].shape()))
          throw ShapeError(detail::cat(op, ": '", key, "' has shape ", t.shape(), ", parameter ", i,
                                       " has shape ", params_[i].shape()));
        state[i][name] = t.clone();
      } else {
        throw Error(detail::cat(op, ": unknown state '", name, "' in key '", key, "'"));
      }
    }
    for (size_t i = 0; i < params_.size(); ++i) {
      const bool complete = param_steps[i] > 0 ? state[i].size() == names.size() : state[i].empty();
      if (!complete)
        throw Error(detail::cat(op, ": parameter ", i, " has partial state (", state[i].size(),
                                " of ", names.size(), " tensors, step ", param_steps[i], ")"));
    }
    step_count_ = steps;
    state_ = std::move(state);
    param_steps_ = std::move(param_steps);
  }

 protected:
  // Updates one parameter in place. `step` counts this parameter's updates, this one included.
  virtual void update(size_t index, TensorT& value, const TensorT& grad, State& state,
                      int64_t step) = 0;
  // The names of the state tensors each parameter has after its first update.
  virtual std::vector<std::string> state_names() const = 0;
  // Runs after every parameter's update() of a step (e.g. to apply work deferred by update).
  virtual void finish_step() {}

  // Appends parameters; returns the index of the first. Each Var may appear only once.
  size_t add_params(const std::vector<VarT>& params, const char* op) {
    const size_t first = params_.size();
    for (const auto& p : params) {
      if (!p.defined())
        throw Error(detail::cat(op, ": parameter ", params_.size(), " is undefined"));
      for (const auto& q : params_)
        if (q.value().data() == p.value().data() && q.shape() == p.shape())
          throw Error(detail::cat(op, ": parameter of shape ", p.shape(),
                                  " is given twice (it would be updated twice per step)"));
      params_.push_back(p);
      state_.emplace_back();
      param_steps_.push_back(0);
    }
    return first;
  }
  // The named state tensor, created as zeros of `shape` on first use.
  static TensorT& state_tensor(State& s, const std::string& name, const Shape& shape) {
    auto it = s.find(name);
    if (it == s.end()) it = s.emplace(name, TensorT::zeros(shape)).first;
    return it->second;
  }

 private:
  static int64_t read_count(const TensorT& t, const std::string& key) {
    if (t.numel() != 1)
      throw ShapeError(detail::cat("Optimizer::load_state_dict: '", key, "' has shape ", t.shape(),
                                   ", expected a scalar"));
    const double v = double(t.contiguous().item());
    if (!(v >= 0) || v != std::floor(v))
      throw Error(detail::cat("Optimizer::load_state_dict: '", key, "' = ", v,
                              " is not a non-negative integer"));
    return int64_t(v);
  }

  std::vector<VarT> params_;
  std::vector<State> state_;
  std::vector<int64_t> param_steps_;
  int64_t step_count_ = 0;
  double lr_scale_ = 1.0;
};

// A list of parameters sharing one set of options.
template <class Options, class T = float, class B = cpu>
struct ParamGroup {
  std::vector<Var<T, B>> params;
  Options options{};
};

// Options must have a `double lr` (the group's base learning rate).
template <class Options>
concept OptimizerOptions = requires(Options o) {
  { o.lr } -> std::convertible_to<double>;
};

// Optimizer with parameter groups of `Options`; derived classes implement update() and read
// their group's options through options_of(index) and the scaled lr through lr_of(index).
template <OptimizerOptions Options, class T = float, class B = cpu>
class GroupedOptimizer : public Optimizer<T, B> {
 public:
  using VarT = Var<T, B>;
  using Group = ParamGroup<Options, T, B>;

  size_t num_groups() const { return groups_.size(); }
  // Options of group g; writable (e.g. a momentum warmup), but the parameter lists are fixed.
  Options& options(size_t g) { return groups_.at(g).options; }
  const Options& options(size_t g) const { return groups_.at(g).options; }
  const std::vector<VarT>& group_params(size_t g) const { return groups_.at(g).params; }
  // The learning rate group g uses now: its base lr times the schedule's scale.
  double lr(size_t g) const { return options(g).lr * this->lr_scale(); }

  // Appends a group; its parameters get the next indices.
  void add_param_group(std::vector<VarT> params, Options options) {
    validate(params, options);
    this->add_params(params, "add_param_group");
    for (size_t k = 0; k < params.size(); ++k) group_of_.push_back(groups_.size());
    groups_.push_back(Group{std::move(params), std::move(options)});
  }

 protected:
  // Checks a group before it is added (throws with a clear message).
  virtual void validate(const std::vector<VarT>& params, const Options& options) const {
    (void)params;
    if (!(options.lr >= 0) || !std::isfinite(double(options.lr)))
      throw Error(detail::cat("add_param_group: lr must be finite and >= 0, got ", options.lr));
  }
  const Options& options_of(size_t index) const { return groups_[group_of_.at(index)].options; }
  double lr_of(size_t index) const { return lr(group_of_.at(index)); }

 private:
  std::vector<Group> groups_;
  std::vector<size_t> group_of_;  // parameter index -> group
};

}  // namespace ternary::optim
