// The Parameter Golf optimizer recipe as one object: Muon for the 2-d matrices inside the
// blocks (every projection's weight), Adam for the tied embedding, Adam for everything else
// (gains, scales, residual mixes, skip weights), each with its own learning rate; one LR
// multiplier (warmup / warmdown) scales all three.
#pragma once

#include <map>
#include <string>

#include "ternary/dist/communicator.hpp"
#include "ternary/nn/module.hpp"
#include "ternary/optim/adamw.hpp"
#include "ternary/optim/muon.hpp"

namespace ternary::train {

struct GolfOptimizerOptions {
  double matrix_lr = 0.04;  // Muon
  double embed_lr = 0.05;   // Adam, tied embedding
  double scalar_lr = 0.04;  // Adam, vectors and scalars
  double muon_momentum = 0.95;
  double beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  double weight_decay = 0.0;
};

template <class T = float, class B = cpu>
class GolfOptimizers {
 public:
  using StateDict = std::map<std::string, Tensor<T, B>>;

  // Projection weights inside the blocks ("blocks.3.attn.c_q.weight"); not the 2-d control
  // tensors such as resid_mix, which Adam handles like the other small tensors.
  static bool is_block_matrix(const std::string& name, const Var<T, B>& p) {
    return p.dim() == 2 && name.rfind("blocks.", 0) == 0 && name.ends_with(".weight");
  }

  GolfOptimizers(const nn::Module<T, B>& model, const GolfOptimizerOptions& o) {
    std::vector<Var<T, B>> matrices, embeddings, scalars;
    for (auto& [name, p] : model.named_parameters()) {
      if (name.find("emb") != std::string::npos)
        embeddings.push_back(p);
      else if (is_block_matrix(name, p))
        matrices.push_back(p);
      else
        scalars.push_back(p);
    }
    optim::MuonOptions mo;
    mo.lr = o.matrix_lr;
    mo.momentum = o.muon_momentum;
    mo.weight_decay = o.weight_decay;
    optim::AdamWOptions eo{o.embed_lr, o.beta1, o.beta2, o.adam_eps, 0.0};
    optim::AdamWOptions so{o.scalar_lr, o.beta1, o.beta2, o.adam_eps, 0.0};
    if (!matrices.empty()) muon_ = optim::Muon<T, B>(matrices, mo);
    if (!embeddings.empty()) embed_ = optim::AdamW<T, B>(embeddings, eo);
    if (!scalars.empty()) scalars_ = optim::AdamW<T, B>(scalars, so);
  }

  // Data-parallel runs: the ranks share Muon's Newton-Schulz work, each orthogonalising a
  // 1/world share of the matrices (optim/muon.hpp); the updates stay bit-identical on all ranks.
  void shard_muon(dist::Communicator& comm) {
    if (comm.world_size() <= 1) return;
    muon_.shard_updates(comm.rank(), comm.world_size(), [&comm](T* data, size_t n) {
      comm.all_reduce(data, n, dist::ReduceOp::sum);
      comm.wait();  // later work on the library's stream sees the sum
    });
  }

  void step() {
    muon_.step();
    embed_.step();
    scalars_.step();
  }
  void zero_grad() {
    muon_.zero_grad();
    embed_.zero_grad();
    scalars_.zero_grad();
  }
  void set_lr_scale(double s) {
    muon_.set_lr_scale(s);
    embed_.set_lr_scale(s);
    scalars_.set_lr_scale(s);
  }
  StateDict state_dict() const {
    StateDict d;
    for (auto& [k, v] : muon_.state_dict("optim.muon.")) d[k] = v;
    for (auto& [k, v] : embed_.state_dict("optim.embed.")) d[k] = v;
    for (auto& [k, v] : scalars_.state_dict("optim.scalars.")) d[k] = v;
    return d;
  }
  void load_state_dict(const StateDict& d) {
    muon_.load_state_dict(d, "optim.muon.");
    embed_.load_state_dict(d, "optim.embed.");
    scalars_.load_state_dict(d, "optim.scalars.");
  }
  size_t num_matrices() const { return muon_.num_params(); }

 private:
  optim::Muon<T, B> muon_;
  optim::AdamW<T, B> embed_, scalars_;
};

}  // namespace ternary::train
