// The Parameter Golf GPT (the baseline shape of openai/parameter-golf's train_gpt.py):
//
//   x0 = rms_norm(embed(ids))
//   encoder blocks 0 .. L/2-1:   x = block(x, x0), each output pushed on a skip stack
//   decoder blocks L/2 .. L-1:   x = x + skip_weight[i] * skips.pop(); x = block(x, x0)
//   logits = softcap(rms_norm(x) E^T)          (E = the embedding, tied)
//
//   block(x, x0):  x = mix[0] * x + mix[1] * x0                 (learned residual mix)
//                  x = x + attn_scale * attn(rms_norm(x))
//                  x = x + mlp_scale * proj(relu(fc(rms_norm(x)))^2)
//   attn(x):       q, k, v = Wq x, Wk x, Wv x  (GQA: fewer kv heads)
//                  q, k = rope(rms_norm(q)), rope(rms_norm(k));  q *= q_gain (per head)
//                  proj(causal_attention(q, k, v))
//
// Every projection (Wq, Wk, Wv, attention proj, fc, mlp proj) is a Linear or, with
// config.ternary, a BitLinear (extra RMSNorm + int8 activations + ternary weights).
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <memory>
#include <memory_resource>
#include <optional>
#include <string>
#include <vector>

#include "ternary/nn/bitlinear.hpp"
#include "ternary/nn/linear.hpp"
#include "ternary/nn/module.hpp"
#include "ternary/ops/attention.hpp"
#include "ternary/ops/channel_mix.hpp"
#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/embedding.hpp"
#include "ternary/ops/head_norm_rope.hpp"
#include "ternary/ops/loss.hpp"
#include "ternary/ops/matmul.hpp"
#include "ternary/ops/norm.hpp"
#include "ternary/ops/norm_mlp.hpp"
#include "ternary/ops/residual_linear.hpp"
#include "ternary/ops/rope.hpp"
#include "ternary/ops/rope_attention.hpp"
#include "ternary/ops/view.hpp"
#include "ternary/quant/bitlinear_mlp.hpp"
#include "ternary/quant/norm_linear.hpp"

namespace ternary::nn {

struct GPTConfig {
  int64_t vocab_size = 256;
  int64_t n_layers = 4;
  int64_t dim = 128;
  int64_t n_heads = 4;
  int64_t n_kv_heads = 2;
  int64_t mlp_mult = 2;
  double rope_base = 10000.0;
  double logit_softcap = 30.0;
  double qk_gain_init = 1.5;
  double tied_embed_init_std = 0.005;
  double norm_eps = 1e-6;
  bool ternary = true;     // BitLinear projections (else full-precision Linear)
  bool extra_norm = true;  // BitLinear's extra RMSNorm before each projection
  bool act_quant = true;   // BitLinear's int8 activations
  uint64_t seed = 1337;

  int64_t head_dim() const { return dim / n_heads; }
  int64_t kv_dim() const { return n_kv_heads * head_dim(); }
  // Throws with the offending values if the shape is inconsistent.
  void validate() const {
    auto bad = [](const std::string& m) { throw Error("GPTConfig: " + m); };
    if (vocab_size <= 0 || n_layers <= 0 || dim <= 0 || n_heads <= 0 || n_kv_heads <= 0 ||
        mlp_mult <= 0)
      bad(detail::cat("all sizes must be positive (vocab ", vocab_size, ", layers ", n_layers,
                      ", dim ", dim, ", heads ", n_heads, ", kv heads ", n_kv_heads, ", mlp_mult ",
                      mlp_mult, ")"));
    // Far above any trainable size, and low enough that products of sizes cannot overflow.
    if (vocab_size > (1 << 20) || dim > (1 << 20) || n_heads > (1 << 20) || n_layers > (1 << 16) ||
        mlp_mult > (1 << 10))
      bad(detail::cat("implausible size (vocab ", vocab_size, ", layers ", n_layers, ", dim ", dim,
                      ", heads ", n_heads, ", mlp_mult ", mlp_mult,
                      "; limits 2^20, 2^16, 2^20, 2^20, 2^10)"));
    if (dim % n_heads) bad(detail::cat("dim ", dim, " is not a multiple of n_heads ", n_heads));
    if (head_dim() % 2) bad(detail::cat("head_dim ", head_dim(), " must be even for RoPE"));
    if (n_heads % n_kv_heads)
      bad(detail::cat("n_heads ", n_heads, " is not a multiple of n_kv_heads ", n_kv_heads));
    if (!(logit_softcap > 0))
      bad(detail::cat("logit_softcap must be positive, got ", logit_softcap));
  }
};

// A projection that is a Linear or a BitLinear, chosen by the config.
template <class T = float, class B = cpu>
std::unique_ptr<Projection<T, B>> make_projection(int64_t in, int64_t out, const GPTConfig& c,
                                                  Rng& rng, bool zero_init) {
  std::unique_ptr<Projection<T, B>> p;
  if (c.ternary) {
    BitLinearConfig bc;
    bc.extra_norm = c.extra_norm;
    bc.act_quant = c.act_quant;
    p = std::make_unique<BitLinear<T, B>>(in, out, rng, bc);
  } else {
    p = std::make_unique<Linear<T, B>>(in, out, rng);
  }
  if (zero_init) p->weight().value().fill(T(0));
  return p;
}

// proj(relu2(h)) with relu2_input, else proj(h); with a residual r, r.x + r.scale * that. One
// op where one serves: a BitLinear that normalises and quantizes (BitLinear::forward_fused), a
// bias-free Linear (linear, relu2_linear, residual_linear, residual_relu2_linear: on CUDA with
// bf16 products the square is written as the GEMM's operand, and the residual sum's backward
// needs no pass of its own); else the separate ops.
// `normed` (with r, a Linear and no relu2 input): the next norm of the sum, by the sum's kernel
// where it can (NormedRows).
// The projection as a bias-free Linear (the kind project's one-op paths serve), else null.
template <class T, class B>
const Linear<T, B>* bias_free_linear(const Projection<T, B>& proj) {
  const auto* l = dynamic_cast<const Linear<T, B>*>(&proj);
  return l && !l->bias().defined() ? l : nullptr;
}

template <class T, class B>
Var<T, B> project(const Projection<T, B>& proj, const Var<T, B>& h, bool relu2_input,
                  const Residual<T, B>* r, NormedRows<T, B>* normed = nullptr) {
  if (const auto* b = dynamic_cast<const BitLinear<T, B>*>(&proj))
    return b->forward_fused(h, relu2_input, r);
  if (const auto* l = bias_free_linear(proj)) {
    const Var<T, B> w = l->weight();
    if (r) return relu2_input ? residual_relu2_linear(*r, h, w) : residual_linear(*r, h, w, normed);
    return relu2_input ? relu2_linear(h, w) : linear(h, w);
  }
  const Var<T, B> y = proj.forward(relu2_input ? relu2(h) : h);
  return r ? channel_mix(r->x, r->scale, y) : y;
}

template <class T = float, class B = cpu>
class CausalSelfAttention : public Module<T, B> {
 public:
  using VarT = Var<T, B>;
  CausalSelfAttention(const GPTConfig& c, Rng& rng) : c_(c) {
    wq_ = make_projection<T, B>(c.dim, c.dim, c, rng, false);
    wk_ = make_projection<T, B>(c.dim, c.kv_dim(), c, rng, false);
    wv_ = make_projection<T, B>(c.dim, c.kv_dim(), c, rng, false);
    proj_ = make_projection<T, B>(c.dim, c.dim, c, rng, true);
    this->register_module("c_q", *wq_);
    this->register_module("c_k", *wk_);
    this->register_module("c_v", *wv_);
    this->register_module("proj", *proj_);
    q_gain_ =
        this->register_parameter("q_gain", Tensor<T, B>::full({c.n_heads}, T(c.qk_gain_init)));
  }
  // x [B, T, D] -> [B, T, D]
  VarT forward(const VarT& x) const { return attend(project_qkv(x)); }
  // forward(rms_norm(x, eps)), the block's pre-norm included: for BitLinear q, k, v that
  // normalise and quantize their input, on CUDA both norms run in one kernel each way.
  // (quant::rms_norm_linear: on CUDA with bf16 products the norms write the GEMMs' operands.)
  // With a residual r: r.x + r.scale * that, the sum taken by the output projection (project).
  VarT forward_prenormed(const VarT& x, double eps, const Residual<T, B>* r = nullptr,
                         NormedRows<T, B>* normed = nullptr) const {
    if (const auto qkv = fused_projections(x, eps)) return attend(*qkv, r, normed);
    return attend(project_qkv(rms_norm(x, eps)), r, normed);
  }
  // The attention of projections q, k, v [B, T, *], then the output projection (added into the
  // residual r, if given; `normed`: see project).
  VarT attend(const std::array<VarT, 3>& qkv, const Residual<T, B>* r = nullptr,
              NormedRows<T, B>* normed = nullptr) const {
    const auto& [q_proj, k_proj, v_proj] = qkv;
    const int64_t Bn = q_proj.size(0), Tn = q_proj.size(1), Dh = c_.head_dim();
    auto heads = [&](const VarT& y, int64_t h) {  // [B, T, h*Dh] -> [B, h, T, Dh]
      return permute(reshape(y, {Bn, Tn, h, Dh}), {0, 2, 1, 3});
    };
    VarT q = heads(q_proj, c_.n_heads);
    VarT k = heads(k_proj, c_.n_kv_heads);
    VarT v = heads(v_proj, c_.n_kv_heads);
    // attention(rope(rms_norm(q)) * q_gain (per head), rope(rms_norm(k)), v): on CUDA's tensor
    // cores one node whose q and k go from the norm kernels straight to the attention's bf16
    // operands (ops/rope_attention.hpp). A bias-free Linear output projection with the
    // residual (residual_linear) reads the output only as the kernel's bf16 copy, so under bf16
    // products no fp32 copy is stored.
    const auto output =
        r && bias_free_linear(*proj_) ? AttentionOutput::bf16_only : AttentionOutput::fp32_and_bf16;
    VarT y = rope_attention(q, q_gain_, k, v, c_.norm_eps, c_.rope_base, std::nullopt,
                            output);  // [B, H, T, Dh]
    y = reshape(permute(y, {0, 2, 1, 3}), {Bn, Tn, c_.dim});
    return project(*proj_, y, false, r, normed);
  }
  // The block's entry as one node where one serves (quant::mix_rms_norm_linear on the
  // tensor-core path): x = a * x_in + b * x0 and the q, k, v projections of rms_norm(x, eps)
  // (BitLinears that normalise and quantize their input, or bias-free full-precision Linears);
  // else nullopt, and the caller mixes, then forward_prenormed.
  std::optional<quant::MixedProjections<3, T, B>> mixed_projections(const VarT& a, const VarT& x_in,
                                                                    const VarT& b, const VarT& x0,
                                                                    double eps) const {
    const quant::BlockMix<T, B> mix{a, x_in, b, x0};
    if (!quant::detail::mix_node_serves(mix)) return std::nullopt;  // (before quantizing weights)
    if (const auto o = qkv_operands(eps))
      return quant::detail::mix_rms_norm_linear_bf16<3>(mix, o->gains, o->weights, o->eps,
                                                        o->pre_eps, o->int8);
    return std::nullopt;
  }
  // The q, k, v projections of x. When all three are BitLinears that normalise and quantize
  // their input (extra norm, int8 activations, lambda = 1), x is normalised once for the three
  // (one kernel each way on CUDA instead of three, and no gradient additions); the values are
  // the same, bit for bit.
  std::array<VarT, 3> project_qkv(const VarT& x) const {
    if (const auto qkv = fused_projections(x, std::nullopt)) return *qkv;
    return {wq_->forward(x), wk_->forward(x), wv_->forward(x)};
  }
  // The q, k, v projections of x (of rms_norm(x, *pre_eps) when pre_eps is given) as one
  // quant::rms_norm_linear, where one serves: BitLinears that normalise and quantize their
  // input, or behind the pre-norm bias-free Linears; else nullopt.
  std::optional<std::array<VarT, 3>> fused_projections(const VarT& x,
                                                       std::optional<double> pre_eps) const {
    if (const auto o = qkv_operands(pre_eps))
      return quant::rms_norm_linear<3>(x, o->gains, o->weights, o->eps, o->pre_eps, o->int8);
    return std::nullopt;
  }
  // The arguments of that one rms_norm_linear (or mix_rms_norm_linear): BitLinears that
  // normalise and quantize their input (their gains, quantized weights and eps, the block norm
  // as the pre-norm, int8), or, behind the block norm (pre_eps given), bias-free Linears; else
  // nullopt.
  struct QkvOperands {
    std::array<VarT, 3> gains, weights;
    double eps;
    std::optional<double> pre_eps;
    bool int8;
  };
  std::optional<QkvOperands> qkv_operands(std::optional<double> pre_eps) const {
    if (const auto b = fused_qkv(); b[0])
      return QkvOperands{
          {b[0]->norm()->gain(), b[1]->norm()->gain(), b[2]->norm()->gain()},
          {b[0]->quantized_weight(), b[1]->quantized_weight(), b[2]->quantized_weight()},
          b[0]->norm()->eps(),
          pre_eps,
          true};
    if (pre_eps)
      if (const auto w = plain_qkv(); w[0].defined())
        return QkvOperands{{}, w, *pre_eps, std::nullopt, false};
    return std::nullopt;
  }
  // The q, k, v BitLinears when all three normalise and quantize their input with one eps
  // (so one shared norm serves them), else nulls.
  std::array<const BitLinear<T, B>*, 3> fused_qkv() const {
    using Bit = BitLinear<T, B>;
    const std::array<const Bit*, 3> b{dynamic_cast<const Bit*>(wq_.get()),
                                      dynamic_cast<const Bit*>(wk_.get()),
                                      dynamic_cast<const Bit*>(wv_.get())};
    for (const Bit* p : b)
      if (!p || !p->fuses_norm_and_int8() || p->norm()->eps() != b[0]->norm()->eps())
        return {nullptr, nullptr, nullptr};
    return b;
  }
  // The q, k, v weights when all three are bias-free full-precision Linears, else undefined.
  std::array<VarT, 3> plain_qkv() const {
    std::array<VarT, 3> w;
    const std::array<const Projection<T, B>*, 3> p{wq_.get(), wk_.get(), wv_.get()};
    for (size_t i = 0; i < 3; ++i) {
      const auto* l = dynamic_cast<const Linear<T, B>*>(p[i]);
      if (!l || l->bias().defined()) return {};
      w[i] = l->weight();
    }
    return w;
  }
  void collect_projections(const std::string& prefix,
                           std::vector<std::pair<std::string, Projection<T, B>*>>& out) const {
    out.emplace_back(prefix + "c_q", wq_.get());
    out.emplace_back(prefix + "c_k", wk_.get());
    out.emplace_back(prefix + "c_v", wv_.get());
    out.emplace_back(prefix + "proj", proj_.get());
  }

 private:
  GPTConfig c_;
  std::unique_ptr<Projection<T, B>> wq_, wk_, wv_, proj_;
  VarT q_gain_;
};

template <class T = float, class B = cpu>
class MLP : public Module<T, B> {
 public:
  MLP(const GPTConfig& c, Rng& rng) {
    fc_ = make_projection<T, B>(c.dim, c.mlp_mult * c.dim, c, rng, false);
    proj_ = make_projection<T, B>(c.mlp_mult * c.dim, c.dim, c, rng, true);
    this->register_module("fc", *fc_);
    this->register_module("proj", *proj_);
  }
  Var<T, B> forward(const Var<T, B>& x) const {
    return project(*proj_, fc_->forward(x), true, static_cast<const Residual<T, B>*>(nullptr));
  }
  // forward(rms_norm(x, eps)): full precision, one rms_norm_mlp; BitLinears that normalise and
  // quantize their inputs, one quant::rms_norm_bitlinear_mlp (on CUDA with bf16 products each
  // is one node with the hidden activation in bf16); else for a BitLinear fc that normalises
  // and quantizes its input, on CUDA both norms run in one kernel each way
  // (quant::rms_norm_linear: on CUDA with bf16 products the norms write the GEMM's operand).
  // With a residual r: r.x + r.scale * that, the sum taken by the projection.
  // `normed`: x's norm as x's producer wrote it (NormedRows), for the full-precision MLP.
  Var<T, B> forward_prenormed(const Var<T, B>& x, double eps, const Residual<T, B>* r = nullptr,
                              const NormedRows<T, B>* normed = nullptr) const {
    const auto* lfc = dynamic_cast<const Linear<T, B>*>(fc_.get());
    const auto* lproj = dynamic_cast<const Linear<T, B>*>(proj_.get());
    if (lfc && lproj && !lfc->bias().defined() && !lproj->bias().defined())
      return r ? rms_norm_mlp(x, lfc->weight(), lproj->weight(), eps, *r, normed)
               : rms_norm_mlp(x, lfc->weight(), lproj->weight(), eps);
    const auto* bfc = dynamic_cast<const BitLinear<T, B>*>(fc_.get());
    const auto* bproj = dynamic_cast<const BitLinear<T, B>*>(proj_.get());
    if (bfc && bproj && bfc->fuses_norm_and_int8() && bproj->fuses_norm_and_int8())
      return quant::rms_norm_bitlinear_mlp(x, eps, bfc->norm()->gain(), bfc->quantized_weight(),
                                           bfc->norm()->eps(), bproj->norm()->gain(),
                                           bproj->quantized_weight(), bproj->norm()->eps(), r);
    Var<T, B> h;
    if (const auto* fc = dynamic_cast<const BitLinear<T, B>*>(fc_.get());
        fc && fc->fuses_norm_and_int8())
      h = quant::rms_norm_linear<1>(x, {fc->norm()->gain()}, {fc->quantized_weight()},
                                    fc->norm()->eps(), eps, true)[0];
    else if (const auto* l = dynamic_cast<const Linear<T, B>*>(fc_.get());
             l && !l->bias().defined())
      h = quant::rms_norm_linear<1>(x, {Var<T, B>()}, {l->weight()}, eps, std::nullopt, false)[0];
    else
      h = fc_->forward(rms_norm(x, eps));
    return project(*proj_, h, true, r);
  }
  void collect_projections(const std::string& prefix,
                           std::vector<std::pair<std::string, Projection<T, B>*>>& out) const {
    out.emplace_back(prefix + "fc", fc_.get());
    out.emplace_back(prefix + "proj", proj_.get());
  }

 private:
  std::unique_ptr<Projection<T, B>> fc_, proj_;
};

template <class T = float, class B = cpu>
class Block : public Module<T, B> {
 public:
  using VarT = Var<T, B>;
  Block(const GPTConfig& c, Rng& rng) : c_(c), attn_(c, rng), mlp_(c, rng) {
    this->register_module("attn", attn_);
    this->register_module("mlp", mlp_);
    attn_scale_ = this->register_parameter("attn_scale", Tensor<T, B>::ones({c.dim}));
    mlp_scale_ = this->register_parameter("mlp_scale", Tensor<T, B>::ones({c.dim}));
    auto mix = Tensor<T, B>::zeros({2, c.dim});
    mix.select(0, 0).fill(T(1));
    resid_mix_ = this->register_parameter("resid_mix", mix);
  }
  VarT forward(const VarT& x_in, const VarT& x0) const {
    // channel_mix(a, x, b, y) = a * x + b * y and channel_mix(x, b, y) = x + b * y, with
    // per-channel weights: one tape node (one pass each way) instead of two or three.
    // The branches' sums x + scale * branch are taken by their output projections (project).
    // Where one node serves, it mixes, normalises and projects (CausalSelfAttention::
    // mixed_projections).
    const VarT mix_a = select(resid_mix_, 0, 0), mix_b = select(resid_mix_, 0, 1);
    VarT x;
    // the MLP's norm of x, written by the attention residual's sum where it can (NormedRows)
    NormedRows<T, B> mlp_norm;
    mlp_norm.eps = c_.norm_eps;
    if (auto entry = attn_.mixed_projections(mix_a, x_in, mix_b, x0, c_.norm_eps)) {
      x = entry->x;
      const Residual<T, B> after_attn{x, attn_scale_};
      x = attn_.attend(entry->y, &after_attn, &mlp_norm);  // x + attn_scale * attn(norm(x))
    } else {
      x = channel_mix(mix_a, x_in, mix_b, x0);
      const Residual<T, B> after_attn{x, attn_scale_};
      x = attn_.forward_prenormed(x, c_.norm_eps, &after_attn, &mlp_norm);
    }
    const Residual<T, B> after_mlp{x, mlp_scale_};
    x = mlp_.forward_prenormed(x, c_.norm_eps, &after_mlp,
                               &mlp_norm);  // x + mlp_scale * mlp(norm(x))
    return x;
  }
  void collect_projections(const std::string& prefix,
                           std::vector<std::pair<std::string, Projection<T, B>*>>& out) const {
    attn_.collect_projections(prefix + "attn.", out);
    mlp_.collect_projections(prefix + "mlp.", out);
  }

 private:
  GPTConfig c_;
  CausalSelfAttention<T, B> attn_;
  MLP<T, B> mlp_;
  VarT attn_scale_, mlp_scale_, resid_mix_;
};

template <class T = float, class B = cpu>
class GPT : public Module<T, B> {
 public:
  using VarT = Var<T, B>;
  explicit GPT(const GPTConfig& c) : c_(c) {
    c.validate();
    Rng rng(c.seed);
    tok_emb_ = this->register_parameter(
        "tok_emb.weight",
        Tensor<T, B>::randn({c.vocab_size, c.dim}, rng, 0, c.tied_embed_init_std));
    n_encoder_ = c.n_layers / 2;
    n_decoder_ = c.n_layers - n_encoder_;
    const int64_t n_skip = std::min(n_encoder_, n_decoder_);
    if (n_skip > 0)
      skip_weights_ = this->register_parameter("skip_weights", Tensor<T, B>::ones({n_skip, c.dim}));
    for (int64_t i = 0; i < c.n_layers; ++i) {
      blocks_.push_back(std::make_unique<Block<T, B>>(c, rng));
      this->register_module("blocks." + std::to_string(i), *blocks_.back());
    }
  }
  const GPTConfig& config() const { return c_; }

  // Final hidden states [B, T, D] (after the output norm) for token ids [B, T].
  VarT hidden(const Tensor<int32_t, B>& ids) const { return rms_norm(stream(ids), c_.norm_eps); }
  // Logits before the softcap [B, T, V]: the output norm and the tied embedding as the output
  // head, one quant::rms_norm_linear (on CUDA with bf16 products the norm kernel writes the head
  // GEMM's bf16 operand, and its backward the last block's gradient with its bf16 copy).
  VarT logits_raw(const Tensor<int32_t, B>& ids) const {
    return quant::rms_norm_linear<1>(stream(ids), {VarT()}, {tok_emb_}, c_.norm_eps, std::nullopt,
                                     false)[0];
  }
  // The residual stream after the last block [B, T, D] (before the output norm).
  VarT stream(const Tensor<int32_t, B>& ids) const {
    if (ids.dim() != 2)
      throw ShapeError(detail::cat("GPT: token ids must be [batch, seq], got ", ids.shape()));
    VarT x = rms_norm(embedding(tok_emb_, ids), c_.norm_eps);
    const VarT x0 = x;
    // The skip stack lives in a buffer on this frame (no heap per step up to 32 encoder
    // blocks; more spill to the heap).
    std::array<std::byte, 32 * sizeof(VarT)> skip_buf;
    std::pmr::monotonic_buffer_resource skip_arena(skip_buf.data(), skip_buf.size());
    std::pmr::vector<VarT> skips(&skip_arena);
    skips.reserve(size_t(n_encoder_));
    for (int64_t i = 0; i < n_encoder_; ++i) {
      x = blocks_[i]->forward(x, x0);
      skips.push_back(x);
    }
    for (int64_t i = 0; i < n_decoder_; ++i) {
      if (!skips.empty()) {
        x = channel_mix(x, select(skip_weights_, 0, i), skips.back());
        skips.pop_back();
      }
      x = blocks_[n_encoder_ + i]->forward(x, x0);
    }
    return x;
  }
  // Softcapped logits [B, T, V].
  VarT logits(const Tensor<int32_t, B>& ids) const {
    return softcap(logits_raw(ids), c_.logit_softcap);
  }
  // Mean cross-entropy (nats) of the softcapped logits against targets [B, T].
  VarT loss(const Tensor<int32_t, B>& ids, const Tensor<int32_t, B>& targets) const {
    return softcap_cross_entropy(logits_raw(ids), targets, c_.logit_softcap);
  }

  // The projections, in order, for layer-wise quantization schedules and export.
  std::vector<Projection<T, B>*> projections() const {
    std::vector<Projection<T, B>*> out;
    for (auto& [name, m] : projection_modules()) out.push_back(m);
    return out;
  }
  std::vector<std::pair<std::string, Projection<T, B>*>> projection_modules() const {
    std::vector<std::pair<std::string, Projection<T, B>*>> out;
    for (size_t i = 0; i < blocks_.size(); ++i)
      blocks_[i]->collect_projections("blocks." + std::to_string(i) + ".", out);
    return out;
  }
  int64_t num_layers() const { return c_.n_layers; }

 private:
  GPTConfig c_;
  VarT tok_emb_, skip_weights_;
  int64_t n_encoder_ = 0, n_decoder_ = 0;
  std::vector<std::unique_ptr<Block<T, B>>> blocks_;
};

}  // namespace ternary::nn
