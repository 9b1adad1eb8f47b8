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
// The Newton-Schulz work runs in finish_step, once per step: the matrices of one shape as one
// stack (newton_schulz5 over [n, rows, cols]).
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

#include "ternary/backend/multi_update.hpp"
#include "ternary/ops/matmul.hpp"
#include "ternary/optim/optimizer.hpp"

namespace ternary::optim {

// The orthogonalised G (same shape), computed in float and returned as T. G is one matrix
// [rows, cols], or a stack [n, rows, cols] orthogonalised matrix by matrix (each its own norm);
// on CUDA every product over a stack is one strided-batched GEMM (Muon batches its matrices of
// one shape this way: 15 GEMM launches per shape and step instead of 15 per matrix).
template <class T, class B>
Tensor<T, B> newton_schulz5(const Tensor<T, B>& G, int steps = 5, double eps = 1e-7) {
  if (G.dim() != 2 && G.dim() != 3)
    throw ShapeError(detail::cat(
        "newton_schulz5: expects a 2-d matrix or a stack [n, rows, cols], got shape ", G.shape()));
  if (steps < 0) throw Error(detail::cat("newton_schulz5: steps must be >= 0, got ", steps));
  constexpr float a = 3.4445f, b = -4.7750f, c = 2.0315f;
  using F = Tensor<float, B>;
  const bool transposed = G.size(-2) > G.size(-1);
  const Tensor<T, B> Gt = transposed ? G.transpose(-1, -2) : G;
  F X;
  if constexpr (std::is_same_v<T, float>)
    X = Gt.clone();
  else
    X = Gt.template to<float>().contiguous();
  auto normalise = [eps](F M) {  // M / (||M||_F + eps), in place
    if constexpr (B::on_host)
      M *= float(1.0 / (std::sqrt(detail::squared_norm(M)) + eps));
    else  // the norm stays on the device (backend/cuda/optim.cuh): no host round trip
      scale_by_inverse_norm(B{}, M, eps);
  };
  if (X.dim() == 3) {  // each matrix by its own norm, as it alone would be (bit for bit)
    if constexpr (B::on_host)
      for (int64_t i = 0; i < X.size(0); ++i) normalise(X.select(0, i));
    else  // one launch for the stack's norms, one for the scaling
      scale_by_inverse_norms(B{}, X, eps);
  } else {
    normalise(X);
  }
  for (int k = 0; k < steps; ++k) {
    const F Xt = X.transpose(-1, -2);
    F A = matmul(X, Xt);                 // [r, r], r = min(rows, cols)
    A.assign(A * b + matmul(A, A) * c);  // b A + c A^2
    X.assign(X * a + matmul(A, X));      // a X + (b A + c A^2) X
  }
  if (transposed) X = X.transpose(-1, -2).contiguous();
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
    const double scale = std::sqrt(std::max(1.0, double(p.size(0)) / double(p.size(1))));
    const T decay = T(1 - lr * o.weight_decay), step = T(lr * scale);
    // the momentum, the orthogonalisation and the update in finish_step, with the other
    // matrices of the step
    pending_.push_back({index, p, g, buf, TensorT(), T(o.momentum), o.nesterov, decay, step});
  }

  void finish_step() override {
    if (pending_.empty()) return;
    const bool sharded = world_ > 1;
    // (the index vectors are members: their capacity is kept, so a step allocates nothing)
    int64_t total = 0;
    offsets_.clear();
    for (const auto& m : pending_) {
      offsets_.push_back(total);
      total += m.p.numel();
    }
    // 1. This rank's matrices, grouped by shape and step count: one stack each, into which
    //    their g' go (a lone matrix gets its own); the other ranks' matrices get none.
    auto mine = [&](size_t k) {
      return !sharded || int(pending_[k].index % size_t(world_)) == rank_;
    };
    done_.assign(pending_.size(), 0);
    members_.clear();
    groups_.clear();
    for (size_t k = 0; k < pending_.size(); ++k) {
      if (done_[k] || !mine(k)) continue;
      const int steps = this->options_of(pending_[k].index).ns_steps;
      const size_t first = members_.size();
      for (size_t j = k; j < pending_.size(); ++j)
        if (!done_[j] && mine(j) && pending_[j].p.shape() == pending_[k].p.shape() &&
            this->options_of(pending_[j].index).ns_steps == steps) {
          members_.push_back(j);
          done_[j] = 1;
        }
      const int64_t n = int64_t(members_.size() - first);
      const Shape& shape = pending_[k].p.shape();
      TensorT stack = TensorT::empty(n == 1 ? shape : Shape{n, shape[0], shape[1]});
      for (int64_t i = 0; i < n; ++i)
        pending_[members_[first + size_t(i)]].eff = n == 1 ? stack : stack.select(0, i);
      groups_.push_back({first, size_t(n), steps, stack});
    }
    // 2. The momentum: buf = momentum buf + g, and g' = nesterov ? g + momentum buf : buf.
    //    On a device backend one launch for all matrices (backend/multi_update.hpp).
    if constexpr (!B::on_host) momentum_runs_.clear();
    for (Pending& m : pending_) {
      if constexpr (!B::on_host) {
        if (m.g.is_contiguous()) {
          momentum_runs_.push_back({m.buf.data(), m.g.data(),
                                    m.eff.defined() ? m.eff.data() : nullptr, m.p.numel(),
                                    m.momentum, m.nesterov});
          continue;
        }
      }
      m.buf.assign(m.buf * m.momentum + m.g);
      if (m.eff.defined()) {
        if (m.nesterov)
          m.eff.assign(m.g + m.buf * m.momentum);
        else
          m.eff.assign(m.buf);
      }
    }
    if constexpr (!B::on_host)
      if (!momentum_runs_.empty()) momentum_runs(B{}, momentum_runs_);  // backend/cuda/optim.cuh
    // 3. Newton-Schulz, one stack at a time, and the updates p = p decay - O step (into `flat`
    //    first when sharded: one buffer for the ranks' sum). On a device backend the updates go
    //    in one launch at the end.
    TensorT flat = sharded ? TensorT::zeros(Shape{total}) : TensorT();
    if constexpr (!B::on_host) {
      step_runs_.clear();
      outputs_.clear();
    }
    for (const ShapeGroup& grp : groups_) {
      const TensorT O = newton_schulz5(grp.stack, grp.steps);
      for (size_t i = 0; i < grp.count; ++i) {
        const size_t k = members_[grp.first + i];
        Pending& m = pending_[k];
        const TensorT Oi = grp.count == 1 ? O : O.select(0, int64_t(i));
        if (sharded) {
          flat.narrow(0, offsets_[k], m.p.numel()).view(m.p.shape()).assign(Oi);
          continue;
        }
        if constexpr (!B::on_host) {
          if (m.p.is_contiguous() && Oi.is_contiguous()) {
            step_runs_.push_back({m.p.data(), Oi.data(), m.p.numel(), m.decay, m.step});
            continue;
          }
        }
        m.p.assign(m.p * m.decay - Oi * m.step);
      }
      if constexpr (!B::on_host) outputs_.push_back(O);  // (kept to the launch)
    }
    if constexpr (!B::on_host)
      if (!step_runs_.empty()) decay_step_runs(B{}, step_runs_);
    if (sharded) {
      sum_over_ranks_(flat.data(), size_t(total));
      for (size_t k = 0; k < pending_.size(); ++k) {
        Pending& m = pending_[k];
        const TensorT O = flat.narrow(0, offsets_[k], m.p.numel()).view(m.p.shape());
        m.p.assign(m.p * m.decay - O * m.step);
      }
    }
    pending_.clear();
    groups_.clear();
    if constexpr (!B::on_host) outputs_.clear();
  }

 private:
  struct Pending {  // a matrix whose update waits for finish_step
    size_t index;
    TensorT p, g, buf;
    TensorT eff;  // where its g' goes (finish_step; undefined on a rank that does not own it)
    T momentum;
    bool nesterov;
    T decay, step;
  };
  struct ShapeGroup {  // matrices of one shape and step count: members_[first, first + count)
    size_t first, count;
    int steps;
    TensorT stack;  // their g', [count, rows, cols] (or [rows, cols] for one)
  };
  int rank_ = 0, world_ = 1;
  std::function<void(T*, size_t)> sum_over_ranks_;
  std::vector<Pending> pending_;
  // finish_step's scratch (kept for its capacity)
  std::vector<int64_t> offsets_;
  std::vector<char> done_;
  std::vector<size_t> members_;
  std::vector<ShapeGroup> groups_;
  std::vector<backend::MomentumRun<T>> momentum_runs_;
  std::vector<backend::DecayStepRun<T>> step_runs_;
  std::vector<TensorT> outputs_;
};

}  // namespace ternary::optim
