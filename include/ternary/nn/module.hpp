// Module: a named tree of parameters. A layer registers its parameters and sub-layers once,
// in its constructor; named_parameters() then lists every parameter of the tree with a
// dotted path ("blocks.0.attn.wq.weight"), which optimizers, checkpoints and the artifact
// use. Modules own their children and are neither copied nor moved (children are held by
// address), so create models with std::make_unique / std::make_shared.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ternary/autograd/var.hpp"

namespace ternary::nn {

template <class T = float, class B = cpu>
class Module {
 public:
  using VarT = Var<T, B>;
  using TensorT = Tensor<T, B>;

  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Every parameter of this module and its children, in registration order.
  std::vector<std::pair<std::string, VarT>> named_parameters() const {
    std::vector<std::pair<std::string, VarT>> out;
    collect("", out);
    return out;
  }
  std::vector<VarT> parameters() const {
    std::vector<VarT> out;
    for (auto& [name, v] : named_parameters()) out.push_back(v);
    return out;
  }
  VarT parameter(const std::string& name) const {
    for (auto& [n, v] : named_parameters())
      if (n == name) return v;
    throw Error(detail::cat("Module: no parameter named '", name, "'"));
  }
  int64_t num_parameters() const {
    int64_t n = 0;
    for (auto& [name, v] : named_parameters()) n += v.numel();
    return n;
  }
  void zero_grad() {
    for (auto& [name, v] : named_parameters()) v.zero_grad();
  }
  // Copies values into the parameters; shapes must match. Strict: every parameter must be
  // present. Not strict: parameters missing from `values` keep their current values (e.g.
  // the extra norms a ternary model adds to a full-precision checkpoint); returns their names.
  // Names in `values` that the model does not have are always an error.
  std::vector<std::string> load_parameters(const std::map<std::string, TensorT>& values,
                                           bool strict = true) {
    std::vector<std::string> missing;
    std::map<std::string, VarT> mine;
    for (auto& [name, v] : named_parameters()) mine.emplace(name, v);
    for (auto& [name, t] : values)
      if (!mine.count(name))
        throw Error(detail::cat("load_parameters: the model has no parameter named '", name, "'"));
    for (auto& [name, v] : mine) {
      auto it = values.find(name);
      if (it == values.end()) {
        if (strict) throw Error(detail::cat("load_parameters: missing parameter '", name, "'"));
        missing.push_back(name);
        continue;
      }
      if (!(it->second.shape() == v.shape()))
        throw ShapeError(detail::cat("load_parameters: '", name, "' has shape ", it->second.shape(),
                                     ", the model expects ", v.shape()));
      VarT var = v;
      var.value().assign(it->second);
    }
    return missing;
  }
  // Training or evaluation mode (layers that behave differently can read it).
  void train(bool on = true) {
    training_ = on;
    for (auto& [name, m] : children_) m->train(on);
  }
  bool is_training() const { return training_; }

 protected:
  VarT register_parameter(const std::string& name, TensorT init) {
    VarT v = VarT::parameter(std::move(init));
    params_.emplace_back(name, v);
    return v;
  }
  template <class M>
  M& register_module(const std::string& name, M& child) {
    children_.emplace_back(name, &child);
    return child;
  }

 private:
  void collect(const std::string& prefix, std::vector<std::pair<std::string, VarT>>& out) const {
    for (auto& [name, v] : params_) out.emplace_back(prefix + name, v);
    for (auto& [name, m] : children_) m->collect(prefix + name + ".", out);
  }
  std::vector<std::pair<std::string, VarT>> params_;
  std::vector<std::pair<std::string, Module*>> children_;
  bool training_ = true;
};

}  // namespace ternary::nn
