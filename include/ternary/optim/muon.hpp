// Muon (Keller Jordan et al.): momentum SGD whose update for a 2-d weight matrix is replaced
// by the nearest semi-orthogonal matrix, found with a few Newton-Schulz iterations. The
// update of modded-nanogpt and Parameter Golf's train_gpt.py, for p [rows, cols] with
// gradient g, lr the group's lr times the schedule's scale:
//
//   buf = momentum * buf + g                         (buf starts at zero)
//   g'  = nesterov ? g + momentum * buf : buf
//   O   = newton_schulz5(g')                        (~ U V^T for g' = U S V^T)
//   p   = p * (1 - lr * weight_decay) - lr * max(1, rows / cols)^0.5 * O
//
// newton_schulz5 (in float): X = G / (||G||_F + 1e-7), transposed so that rows <= cols, then
// `steps` times  A = X X^T,  X = a X + (b A + c A A) X  with the quintic (a, b, c) =
// (3.4445, -4.7750, 2.0315), which pushes the singular values of X into about [0.7, 1.2]
// quickly rather than converging exactly (each step multiplies a small one by ~a, so those
// below ~a^-steps of the largest stay small, as in the reference). Only for 2-d parameters: use
// AdamW for the embeddings, gains and scalars. Tests: tests/test_optim.cpp.
//
// Data-parallel runs can share the Newton-Schulz work (shard_updates, as the Parameter Golf
// reference does): every rank still updates every momentum buffer (so any rank's state is
// complete), but rank r orthogonalises only the matrices i with i % world == r, writes them
// into one flat buffer (zeros elsewhere), and a sum over the ranks hands every rank every O
// (x + 0 is exact, so all ranks apply bit-identical updates). Tests: tests/test_dist.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ternary/ops/matmul.hpp"
#include "ternary/optim/optimizer.hpp"

namespace ternary::optim {

// The orthogonalised G (same shape), computed in float and returned as T.
template <class T, class B>
Tensor<T, B> newton_schulz5(const Tensor<T, B>& G, int steps = 5, double eps = 1e-7) {
  if (G.dim() != 2)
    throw ShapeError(detail::cat("newton_schulz5: expects a 2-d matrix, got shape ", G.shape()));
  if (steps < 0) throw Error(detail::cat("newton_schulz5: steps must be >= 0, got ", steps));
  constexpr float a = 3.4445f, b = -4.7750f, c = 2.0315f;
  using F = Tensor<float, B>;
  const bool transposed = G.size(0) > G.size(1);
  F X;
  if constexpr (std::is_same_v<T, float>)
    X = transposed ? G.t().clone() : G.clone();
  else
    X = (transposed ? G.t() : G).template to<float>().contiguous();
  if constexpr (B::on_host)
    X *= float(1.0 / (std::sqrt(detail::squared_norm(X)) + eps));
  else  // the norm stays on the device (backend/cuda/quant.cuh): no host round trip
    scale_by_inverse_norm(B{}, X, eps);
  for (int k = 0; k < steps; ++k) {
    F A = matmul(X, X.t());              // [r, r], r = min(rows, cols)
    A.assign(A * b + matmul(A, A) * c);  // b A + c A^2
    X.assign(X * a + matmul(A, X));      // a X + (b A + c A^2) X
  }
  if (transposed) X = X.t().contiguous();
  if constexpr (std::is_same_v<T, float>)
    return X;
  else
    return X.template to<T>();
}

struct MuonOptions {
  double lr = 0.02;
  double momentum = 0.95;
  bool nesterov = true;
  int ns_steps = 5;
  double weight_decay = 0;  // decoupled, as in AdamW
};

template <class T = float, class B = cpu>
class Muon : public GroupedOptimizer<MuonOptions, T, B> {
 public:
  using Base = GroupedOptimizer<MuonOptions, T, B>;
  using VarT = Var<T, B>;
  using TensorT = Tensor<T, B>;
  using Group = typename Base::Group;

  Muon() = default;
  explicit Muon(std::vector<VarT> params, MuonOptions options = {}) {
    this->add_param_group(std::move(params), options);
  }
  explicit Muon(std::vector<Group> groups) {
    for (auto& g : groups) this->add_param_group(std::move(g.params), g.options);
  }

  // Shares the orthogonalisation over `world` ranks; sum_over_ranks(data, n) must sum n
  // values over all ranks in place (an all-reduce) and return once data may be read.
  void shard_updates(int rank, int world, std::function<void(T*, size_t)> sum_over_ranks) {
    if (world < 1 || rank < 0 || rank >= world || !sum_over_ranks)
      throw Error(detail::cat("Muon::shard_updates: rank ", rank, " of ", world,
                              " ranks (and a sum function) needed"));
    rank_ = rank;
    world_ = world;
    sum_over_ranks_ = std::move(sum_over_ranks);
  }

 protected:
  void validate(const std::vector<VarT>& params, const MuonOptions& o) const override {
    Base::validate(params, o);
    for (size_t k = 0; k < params.size(); ++k)
      if (params[k].defined() && params[k].dim() != 2)
        throw ShapeError(detail::cat("Muon: parameter ", this->num_params() + k, " has shape ",
                                     params[k].shape(),
                                     "; Muon only updates 2-d weight matrices (give embeddings, "
                                     "gains and scalars to AdamW)"));
    if (!(o.momentum >= 0 && o.momentum < 1))
      throw Error(detail::cat("Muon: momentum must lie in [0, 1), got ", o.momentum));
    if (o.ns_steps < 0) throw Error(detail::cat("Muon: ns_steps must be >= 0, got ", o.ns_steps));
    if (!(o.weight_decay >= 0))
      throw Error(detail::cat("Muon: weight_decay must be >= 0, got ", o.weight_decay));
  }
  std::vector<std::string> state_names() const override { return {"momentum_buffer"}; }

  void update(size_t index, TensorT& p, const TensorT& g, typename Base::State& state,
              int64_t) override {
    const MuonOptions& o = this->options_of(index);
    const double lr = this->lr_of(index);
    TensorT& buf = Base::state_tensor(state, "momentum_buffer", p.shape());
    buf.assign(buf * T(o.momentum) + g);
    const TensorT eff = o.nesterov ? TensorT(g + buf * T(o.momentum)) : buf;
    const double scale = std::sqrt(std::max(1.0, double(p.size(0)) / double(p.size(1))));
    const T decay = T(1 - lr * o.weight_decay), step = T(lr * scale);
    if (world_ > 1) {  // orthogonalised by its owner rank in finish_step
      pending_.push_back({index, p, eff, decay, step});
      return;
    }
    p.assign(p * decay - newton_schulz5(eff, o.ns_steps) * step);
  }

  void finish_step() override {
    if (pending_.empty()) return;
    int64_t total = 0;
    for (const auto& m : pending_) total += m.eff.numel();
    TensorT flat = TensorT::zeros(Shape{total});
    int64_t offset = 0;
    for (const auto& m : pending_) {
      if (int(m.index % size_t(world_)) == rank_)
        flat.narrow(0, offset, m.eff.numel())
            .view(m.eff.shape())
            .assign(newton_schulz5(m.eff, this->options_of(m.index).ns_steps));
      offset += m.eff.numel();
    }
    sum_over_ranks_(flat.data(), size_t(total));
    offset = 0;
    for (auto& m : pending_) {
      const TensorT O = flat.narrow(0, offset, m.eff.numel()).view(m.eff.shape());
      m.p.assign(m.p * m.decay - O * m.step);
      offset += m.eff.numel();
    }
    pending_.clear();
  }

 private:
  struct Pending {  // a matrix whose update waits for the ranks' orthogonalisations
    size_t index;
    TensorT p, eff;
    T decay, step;
  };
  int rank_ = 0, world_ = 1;
  std::function<void(T*, size_t)> sum_over_ranks_;
  std::vector<Pending> pending_;
};

}  // namespace ternary::optim
