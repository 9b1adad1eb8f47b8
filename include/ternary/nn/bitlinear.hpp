// BitLinear (BitNet b1.58 with the extra RMSNorm of "An Extra RMSNorm is All You Need for
// Fine Tuning to 1.58 Bits"):
//
//   y = int8(rms_norm(x) * g) . ternary(W)^T        W [out, in] latent, g [in], no bias
//
// Each part can be switched off (extra_norm, act_quant), and lambda in [0, 1] blends full
// precision into the quantized weights and activations for gradual fine-tuning (lambda = 0
// is a Linear with the extra norm, lambda = 1 plain BitLinear). After freeze() the layer
// uses fixed trits and scales (a reloaded artifact); PackedBitLinear runs the same layer
// with int8 x 2-bit integer kernels for inference.
#pragma once

#include <cmath>
#include <memory>
#include <optional>
#include <type_traits>

#include "ternary/backend/cpu/ternary_gemm.hpp"
#include "ternary/nn/linear.hpp"
#include "ternary/nn/projection.hpp"
#include "ternary/nn/rmsnorm.hpp"
#include "ternary/ops/matmul.hpp"
#include "ternary/quant/activation.hpp"
#include "ternary/quant/norm_linear.hpp"
#include "ternary/quant/packing.hpp"
#include "ternary/quant/quest.hpp"
#include "ternary/quant/ternary.hpp"

namespace ternary::nn {

struct BitLinearConfig {
  bool extra_norm = true;  // RMSNorm (learnable gain) before the projection
  bool act_quant = true;   // per-token int8 activations
  quant::TernaryConfig weight{};
  double norm_eps = 1e-6;
  double init_std = 0;  // as LinearConfig: > 0 normal init, 0 PyTorch's default uniform
};

template <class T = float, class B = cpu, class Estimator = quant::STE>
class BitLinear : public Projection<T, B> {
 public:
  BitLinear(int64_t in, int64_t out, Rng& rng, BitLinearConfig c = {}) : c_(c) {
    // The same draw as Linear's: equal seeds give equal latent weights.
    weight_ = this->register_parameter(
        "weight", init_projection_weight<T, B>(in, out, rng, c_.init_std, "BitLinear"));
    quant::scale_group(weight_.shape(), c_.weight);  // a bad group size fails here, not mid-run
    if (c_.extra_norm) {
      norm_ = std::make_unique<RMSNorm<T, B>>(in, c_.norm_eps);
      this->register_module("norm", *norm_);
    }
  }

  Var<T, B> forward(const Var<T, B>& x) const override {
    if (x.size(-1) != weight_.size(1))
      throw ShapeError(detail::cat("BitLinear: input ", x.shape(),
                                   " does not match weight [out, in] = ", weight_.shape()));
    Var<T, B> h;
    if (fuses_norm_and_int8())  // one pass (one kernel on CUDA; with bf16 products, one node)
      return quant::rms_norm_linear<1>(x, {norm_->gain()}, {quantized_weight()}, norm_->eps(),
                                       std::nullopt, true)[0];
    else {
      h = norm_ ? norm_->forward(x) : x;
      if (c_.act_quant) h = quant::quantize_activations(h, lambda_);
    }
    return linear(h, quantized_weight());
  }
  // forward(relu2(h)) with relu2_input, else forward(h); with a residual r, r.x + r.scale *
  // that (ops/residual_linear.hpp). With the extra norm and int8 activations one
  // quant::rms_norm_linear: on the tensor-core path the square runs inside the norm kernels
  // (relu(h)^2 and its gradient never reach memory) and the residual sum's backward needs no
  // pass of its own. The GPT's attention and MLP projections.
  Var<T, B> forward_fused(const Var<T, B>& h, bool relu2_input,
                          const Residual<T, B>* residual = nullptr) const {
    if (fuses_norm_and_int8() && h.size(-1) == weight_.size(1))
      return quant::rms_norm_linear<1>(h, {norm_->gain()}, {quantized_weight()}, norm_->eps(),
                                       std::nullopt, true, relu2_input, residual)[0];
    const Var<T, B> y = forward(relu2_input ? relu2(h) : h);
    return residual ? channel_mix(residual->x, residual->scale, y) : y;
  }
  // True when forward(x) = project(quant::rms_norm_quantize_activations(x, gain)): the extra
  // norm and int8 activations at lambda = 1. Several such layers reading one x may then be
  // computed together: quant::rms_norm_linear<K> with their gains and quantized weights (the
  // GPT's q, k, v), or the K-gain rms_norm_quantize_activations followed by project().
  bool fuses_norm_and_int8() const { return norm_ && c_.act_quant && lambda_ >= 1; }
  // The product of activations already normalised and quantized as forward() does it.
  Var<T, B> project(const Var<T, B>& h) const { return linear(h, quantized_weight()); }
  // The weight the forward pass multiplies by (blended by lambda; fixed once frozen).
  Var<T, B> quantized_weight() const {
    if (frozen_) return frozen_weight_;
    return Estimator::apply(weight_, c_.weight, lambda_);
  }
  Var<T, B> weight() const override { return weight_; }
  bool is_ternary() const override { return true; }
  const RMSNorm<T, B>* norm() const { return norm_.get(); }
  const BitLinearConfig& config() const { return c_; }

  void set_lambda(double lambda) {
    if (!(lambda >= 0 && lambda <= 1))
      throw Error(detail::cat("BitLinear: lambda must lie in [0, 1], got ", lambda));
    lambda_ = lambda;
  }
  double lambda() const { return lambda_; }

  // The trits and scales the forward pass uses at lambda = 1 (what export writes).
  quant::TernaryWeights ternary_weights() const {
    return frozen_ ? *frozen_ : Estimator::quantize(weight_.value(), c_.weight);
  }
  // Uses these exact trits and scales from now on (e.g. after loading an artifact).
  void freeze(quant::TernaryWeights q) {
    q.validate("BitLinear::freeze");
    if (!(q.shape == weight_.shape()))
      throw ShapeError(detail::cat("BitLinear::freeze: trits of shape ", q.shape,
                                   " for a weight of shape ", weight_.shape()));
    frozen_weight_ = Var<T, B>::constant(q.template dequantize<T>());
    frozen_ = std::move(q);
  }
  bool frozen() const { return frozen_.has_value(); }

 private:
  BitLinearConfig c_;
  Var<T, B> weight_;
  std::unique_ptr<RMSNorm<T, B>> norm_;
  double lambda_ = 1.0;
  std::optional<quant::TernaryWeights> frozen_;
  Var<T, B> frozen_weight_;
};

// Inference form of a BitLinear (lambda = 1): 2-bit packed trits, int8 activations,
// int32 dot products, one float scale per weight group and per token. forward() matches
// BitLinear::forward within float rounding (same trits, same scales, same int8 activations;
// only the order of the float sums differs).
class PackedBitLinear {
 public:
  template <class Estimator>
  explicit PackedBitLinear(const BitLinear<float, cpu, Estimator>& layer) : c_(layer.config()) {
    static_assert(std::is_same_v<Estimator, quant::STE>,
                  "PackedBitLinear: only STE (absmean) layers have a packed form; a QuEST layer's "
                  "trits live in a Hadamard basis");
    const quant::TernaryWeights q = layer.ternary_weights();
    if (q.hadamard != 0 || q.shape.size() != 2)
      throw Error(detail::cat("PackedBitLinear: needs plain [out, in] trits (shape ", q.shape,
                              ", Hadamard block ", q.hadamard, ")"));
    out_ = q.shape[0];
    in_ = q.shape[1];
    w_ = quant::pack(q, TritEncoding::two_bit);
    if (layer.norm()) gain_ = layer.norm()->gain().value().clone();
  }
  // x [..., in] -> [..., out]
  Tensor<float> forward(const Tensor<float>& x) const {
    if (x.dim() == 0 || x.size(-1) != in_)
      throw ShapeError(
          detail::cat("PackedBitLinear: input ", x.shape(), " for a layer of ", in_, " inputs"));
    Tensor<float> h = gain_.defined() ? rms_norm(x, gain_, c_.norm_eps) : x.contiguous();
    const int64_t rows = h.numel() / in_;
    Shape out_shape = x.shape();
    out_shape[out_shape.size() - 1] = out_;
    if (!c_.act_quant)  // float activations: multiply by the dequantized weight
      return matmul(h, quant::unpack(w_).dequantize().t());
    auto out = Tensor<float>::empty(out_shape);
    std::vector<int8_t> act;
    std::vector<float> ascale;
    quant::quantize_rows_int8(h, act, ascale);
    backend::ternary_gemm(cpu{}, act.data(), ascale.data(), rows, in_, w_.data.data(),
                          w_.scales.data(), w_.group, out_, out.data());
    return out;
  }
  // Bytes of packed trits plus weight scales.
  int64_t packed_bytes() const { return w_.bytes(); }
  const PackedTernary& packed_weight() const { return w_; }

 private:
  BitLinearConfig c_;
  int64_t in_ = 0, out_ = 0;
  PackedTernary w_;
  Tensor<float> gain_;
};

}  // namespace ternary::nn
