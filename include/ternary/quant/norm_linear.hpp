// K projections of one normalised input, as one op on the tensor-core path:
//
//   y_k = linear(a_k, w_k),   a_k = q(rms_norm(p(x), gain_k, eps))        k < K
//
// p = rms_norm(., pre_eps) when pre_eps is given (the GPT block's plain pre-norm in front of
// BitLinear's own), relu(.)^2 when relu2_input (the MLP's activation in front of its BitLinear
// projection), else the identity; gain_k may be an undefined Var (no gain); q is the per-token
// int8 fake quantization when int8 (BitLinear's activations), else the identity.
// The GPT's callers: the q, k, v projections (K = 3) and the MLP's fc (K = 1) behind the block
// norm, full precision (no gain, no int8) or BitLinear (gains, int8); every BitLinear with its
// extra norm and int8 activations (K = 1), the MLP's projection with relu2_input.
//
// Everywhere but the tensor-core path this is the composition of the separate ops
// (rms_norm, quant::rms_norm_quantize_activations, linear), values and tape alike. On CUDA
// with cuda::set_bf16 (backend::bf16_products), for rows of 64-1024 floats, it is one node:
// one norm kernel writes the K activations straight as the bf16 operands of the K GEMMs (the
// fp32 activations never reach memory, nor pass through a rounding kernel; with no gains and
// no int8 the K share one), and the backward runs, per output, the rounding of its gradient
// and two GEMMs (the activation's gradient written in bf16, as autocast's), then one norm kernel
// for all K (pre-norm included) that adds dx into x's gradient so far (for an x born in bf16,
// Var::value_bf16, such as the attention's output, its first gradient is written in bf16
// instead: its readers round it so, and it moves half the bytes). With relu2_input the kernels
// square the rectified rows in registers (forward) and apply relu2's slope to dx (backward):
// relu(x)^2 never reaches memory, nor its gradient. The values are those of linear()'s bf16 path
// over the composition's activations (bit for bit the same roundings), with the activations'
// gradients rounded to bf16 (tests/cuda/ test_cuda_ops.cu puts that rounding into the CPU's
// composition). With a residual (K = 1) the output is residual.x + residual.scale * y_0
// (ops/residual_linear.hpp: the same node, that file's backward).
#pragma once

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "ternary/ops/channel_mix.hpp"
#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/matmul.hpp"
#include "ternary/ops/norm.hpp"
#include "ternary/ops/residual_linear.hpp"
#include "ternary/quant/activation.hpp"

namespace ternary::quant {

// The GPT block's entry mix x = a * x_in + b * x0 (mix_rms_norm_linear below).
template <class T, class B>
struct BlockMix {
  Var<T, B> a, x_in, b, x0;
};
// mix_rms_norm_linear's outputs: x and the K projections of its norm.
template <size_t K, class T, class B>
struct MixedProjections {
  Var<T, B> x;
  std::array<Var<T, B>, K> y;
};

namespace detail {

template <size_t K, class T, class B>
std::array<Var<T, B>, K> rms_norm_linear_composed(const Var<T, B>& x,
                                                  const std::array<Var<T, B>, K>& gains,
                                                  const std::array<Var<T, B>, K>& weights,
                                                  double eps, std::optional<double> pre_eps,
                                                  bool int8, bool relu2_input,
                                                  const Residual<T, B>* residual) {
  std::array<Var<T, B>, K> a;
  if (int8) {
    a = pre_eps ? rms_norm_quantize_activations_prenormed<K>(x, gains, *pre_eps, eps)
                : rms_norm_quantize_activations<K>(relu2_input ? relu2(x) : x, gains, eps);
  } else {
    const Var<T, B> h = pre_eps ? ternary::rms_norm(x, *pre_eps) : relu2_input ? relu2(x) : x;
    Var<T, B> plain;  // rms_norm(h) without a gain, made once for all k that have none
    for (size_t k = 0; k < K; ++k) {
      if (gains[k].defined()) {
        a[k] = ternary::rms_norm(h, gains[k], eps);
      } else {
        if (!plain.defined()) plain = ternary::rms_norm(h, eps);
        a[k] = plain;
      }
    }
  }
  std::array<Var<T, B>, K> y;
  for (size_t k = 0; k < K; ++k) y[k] = linear(a[k], weights[k]);
  if (residual) y[0] = channel_mix(residual->x, residual->scale, y[0]);
  return y;
}

// Argument checks of rms_norm_linear and mix_rms_norm_linear (op names the caller in errors):
// each weight [out, D] for inputs of shape in (D their last axis); with int8, a gain for each
// projection.
template <size_t K, class T, class B>
void check_weights(const char* op, const std::array<Var<T, B>, K>& weights, int64_t D,
                   const Shape& in) {
  for (size_t k = 0; k < K; ++k)
    if (weights[k].dim() != 2 || weights[k].size(1) != D)
      throw ShapeError(ternary::detail::cat(op, ": weight ", k, " of shape ", weights[k].shape(),
                                            " for inputs ", in));
}
template <size_t K, class T, class B>
void check_int8_gains(const char* op, const std::array<Var<T, B>, K>& gains, bool int8) {
  if (int8)
    for (size_t k = 0; k < K; ++k)
      if (!gains[k].defined())
        throw Error(ternary::detail::cat(
            op, ": int8 activations are BitLinear's, which has a gain (projection ", k,
            " has none)"));
}

// The bf16 nodes' norm side (rms_norm_linear_bf16, mix_rms_norm_linear_bf16): the gains made
// contiguous, the K bf16 activations the norm kernel writes (one shared by every k when there
// are no gains and no int8), and their rstd (and the pre-norm's).
template <size_t K, class T, class B>
struct NormOperands {
  std::array<Tensor<T, B>, K> gains_c;
  std::array<Tensor<bf16, B>, K> h16;
  Tensor<T, B> rstd, rstd_pre;
  bool shared = false;
};
// Runs the norm kernel over x2d [rows, D] (with mix: x2d holds x_in, backend::NormMix); false
// (nothing written) where the register kernels do not apply.
template <size_t K, class T, class B>
bool norm_forward_bf16(NormOperands<K, T, B>& o, const Tensor<T, B>& x2d,
                       const std::array<Var<T, B>, K>& gains, double eps,
                       std::optional<double> pre_eps, bool int8, bool relu2_input,
                       const backend::NormMix<T, B>* mix = nullptr) {
  const int64_t rows = x2d.size(0), D = x2d.size(1);
  bool any_gain = false;
  for (const auto& g : gains) any_gain = any_gain || g.defined();
  o.shared = !any_gain && !int8;
  for (size_t k = 0; k < K; ++k) {
    if (gains[k].defined()) o.gains_c[k] = gains[k].value().contiguous();
    o.h16[k] = o.shared && k > 0 ? o.h16[0] : Tensor<bf16, B>::empty(Shape{rows, D});
  }
  o.rstd = Tensor<T, B>::empty(Shape{rows});
  o.rstd_pre = pre_eps ? Tensor<T, B>::empty(Shape{rows}) : Tensor<T, B>();
  // (by argument-dependent lookup on the tag: backend/cuda/norm.cuh)
  return o.shared
             ? rms_norm_bf16_forward(B{}, x2d, std::array<Tensor<T, B>, 1>{},
                                     std::array<Tensor<bf16, B>, 1>{o.h16[0]}, o.rstd, eps, false,
                                     o.rstd_pre, pre_eps.value_or(0.0), relu2_input, mix)
             : rms_norm_bf16_forward(B{}, x2d, o.gains_c, o.h16, o.rstd, eps, int8, o.rstd_pre,
                                     pre_eps.value_or(0.0), relu2_input, mix);
}

// The fused tensor-core path; nullopt where its kernels do not apply.
template <size_t K, class T, class B>
std::optional<std::array<Var<T, B>, K>> rms_norm_linear_bf16(
    const Var<T, B>& x, const std::array<Var<T, B>, K>& gains,
    const std::array<Var<T, B>, K>& weights, double eps, std::optional<double> pre_eps, bool int8,
    bool relu2_input, const Residual<T, B>* residual) {
  const Tensor<T, B> x_c = x.value().contiguous();
  const int64_t D = x_c.size(-1), rows = D ? x_c.numel() / D : 0;
  check_weights("rms_norm_linear", weights, D, x.shape());  // before any work
  const auto x2d = x_c.reshape(Shape{rows, D});
  NormOperands<K, T, B> o;
  if (!norm_forward_bf16(o, x2d, gains, eps, pre_eps, int8, relu2_input)) return std::nullopt;
  const auto& gains_c = o.gains_c;
  const auto& h16 = o.h16;
  const auto& rstd = o.rstd;
  const auto& rstd_pre = o.rstd_pre;
  std::array<Tensor<bf16, B>, K> w16;
  std::array<Tensor<T, B>, K> ys;
  for (size_t k = 0; k < K; ++k) {
    w16[k] = ternary::detail::weight_to_bf16(weights[k].value());
    ys[k] = ternary::detail::product_bf16(residual, h16[k], w16[k], x.shape());  // residual: K 1
  }
  std::vector<Var<T, B>> inputs = ternary::detail::with_residual_inputs<T, B>({x}, residual);
  const std::optional<Residual<T, B>> res =
      residual ? std::optional<Residual<T, B>>(*residual) : std::nullopt;
  for (const auto& g : gains)
    if (g.defined()) inputs.push_back(g);
  for (const auto& w : weights) inputs.push_back(w);
  return Var<T, B>::record_multi(
      "rms_norm_linear", std::move(ys), inputs.data(), inputs.data() + inputs.size(),
      [x, gains, weights, x2d, gains_c, h16, w16, rstd, rstd_pre, rows, D, relu2_input, res](
          const std::array<Tensor<T, B>, K>& g, const std::array<Tensor<bf16, B>, K>& g_bf16) {
        std::array<Tensor<bf16, B>, K> dh;  // bf16, as autocast's input gradients
        std::array<bool, K> want_dgains{};
        bool any = false;
        for (size_t k = 0; k < K; ++k) {
          if (!g[k].defined() && !g_bf16[k].defined()) continue;
          // dh = g16 wd16: bf16(dout) and bf16(scale * w) with a residual, whose backward
          // also adds the weights' and the residual's gradients (a gradient born in bf16 is
          // used as it is)
          const auto operands = ternary::detail::product_backward_bf16(res, h16[k], weights[k],
                                                                       w16[k], g[k], g_bf16[k]);
          const Tensor<bf16, B>& g16 = operands.first;
          const Tensor<bf16, B>& wd16 = operands.second;
          const bool want_dgain = gains[k].defined() && gains[k].requires_grad();
          if (x.requires_grad() || want_dgain) {
            dh[k] = Tensor<bf16, B>::empty(Shape{rows, D});
            backend::gemm_bf16(B{}, ternary::detail::const_view(g16),
                               ternary::detail::const_view(wd16), backend::mat_view(dh[k]));
            any = true;
          }
          want_dgains[k] = want_dgain;
        }
        // x born in bf16 (the attention's output, which a BitLinear projection normalises):
        // its first gradient in bf16 too, which its reader rounds it to anyway; else a bf16 copy
        // beside the gradient where x's own rule reads one (the GPT's final norm: the last MLP's)
        using ternary::detail::DxBf16;
        if (any)
          ternary::detail::norm_shared_backward<K>(
              x, x2d, rstd, gains, gains_c, dh, want_dgains, rstd_pre, relu2_input,
              x.value_bf16().defined() ? DxBf16::born_if_first : DxBf16::copy);
      });
}

// Whether mix_rms_norm_linear's one node may serve: CUDA with bf16 products (the row size is
// the kernels' to judge; x_in and x0 may be one variable). A caller that builds the projections'
// operands only for the node (the GPT quantizes its BitLinear weights) asks first.
template <class T, class B>
bool mix_node_serves(const BlockMix<T, B>&) {
  if constexpr (B::on_host || !std::is_same_v<T, float>)
    return false;
  else
    return backend::bf16_products(B{});
}

// mix_rms_norm_linear's one node (CUDA, bf16 products): rms_norm_linear_bf16's with the mix in
// front, x its first output; nullopt where the kernels do not apply (rows outside 64-1024
// floats, a relu2 input), and the caller composes. x_in and x0 may be one variable (the GPT's
// first block): its one gradient (a + b) gx is added once (NormMix::x0_is_x_in).
template <size_t K, class T, class B>
std::optional<MixedProjections<K, T, B>> mix_rms_norm_linear_bf16(
    const BlockMix<T, B>& mix, const std::array<Var<T, B>, K>& gains,
    const std::array<Var<T, B>, K>& weights, double eps, std::optional<double> pre_eps, bool int8) {
  if constexpr (B::on_host || !std::is_same_v<T, float>) {
    return std::nullopt;
  } else {
    if (!mix_node_serves(mix)) return std::nullopt;
    const Tensor<T, B> xin_c = mix.x_in.value().contiguous(), x0_c = mix.x0.value().contiguous();
    const int64_t D = xin_c.size(-1), rows = D ? xin_c.numel() / D : 0;
    const Shape rows_d{rows, D};
    const auto xin2d = xin_c.reshape(rows_d), x02d = x0_c.reshape(rows_d);
    const Tensor<T, B> a_c = mix.a.value().contiguous(), b_c = mix.b.value().contiguous();
    auto x = Tensor<T, B>::empty(xin_c.shape());
    backend::NormMix<T, B> fwd;
    fwd.a = a_c, fwd.b = b_c, fwd.x0 = x02d, fwd.x_out = x.reshape(rows_d);
    NormOperands<K, T, B> o;
    if (!norm_forward_bf16(o, xin2d, gains, eps, pre_eps, int8, false, &fwd)) return std::nullopt;
    const auto& gains_c = o.gains_c;
    const auto& h16 = o.h16;
    const auto& rstd = o.rstd;
    const auto& rstd_pre = o.rstd_pre;
    std::array<Tensor<bf16, B>, K> w16;
    std::array<Tensor<T, B>, K + 1> outs;
    outs[0] = x;
    for (size_t k = 0; k < K; ++k) {
      w16[k] = ternary::detail::weight_to_bf16(weights[k].value());
      outs[k + 1] = ternary::detail::product_bf16(static_cast<const Residual<T, B>*>(nullptr),
                                                  h16[k], w16[k], xin_c.shape());
    }
    std::vector<Var<T, B>> inputs{mix.a, mix.x_in, mix.b, mix.x0};
    for (const auto& g : gains)
      if (g.defined()) inputs.push_back(g);
    for (const auto& w : weights) inputs.push_back(w);
    const auto vars = Var<T, B>::record_multi(
        "mix_rms_norm_linear", std::move(outs), inputs.data(), inputs.data() + inputs.size(),
        [mix, gains, weights, xin2d, x02d, a_c, b_c, gains_c, h16, w16, rstd, rstd_pre, rows_d](
            const std::array<Tensor<T, B>, K + 1>& g,
            const std::array<Tensor<bf16, B>, K + 1>& g_bf16) {
          // per projection: dh = bf16(dy) bf16(w) (bf16, as autocast's input gradients), the
          // weight's gradient added by its GEMM
          std::array<Tensor<bf16, B>, K> dh;
          // The mix weights' and gains' gradients are written by the kernels as their gradients
          // so far plus these (no addition passes)
          std::array<Tensor<T, B>, K> dgains, dgain_priors;
          for (size_t k = 0; k < K; ++k) {
            if (!g[k + 1].defined() && !g_bf16[k + 1].defined()) continue;
            const auto operands =
                ternary::detail::product_backward_bf16(std::optional<Residual<T, B>>(), h16[k],
                                                       weights[k], w16[k], g[k + 1], g_bf16[k + 1]);
            dh[k] = Tensor<bf16, B>::empty(rows_d);
            backend::gemm_bf16(B{}, ternary::detail::const_view(operands.first),
                               ternary::detail::const_view(operands.second),
                               backend::mat_view(dh[k]));
            if (gains[k].defined() && gains[k].requires_grad())
              std::tie(dgains[k], dgain_priors[k]) = gains[k].accumulate_grad_target();
          }
          // x's own gradient (the attention's residual), added to the norm's by the kernel
          const Tensor<T, B> gx = g[0].defined()        ? g[0].contiguous().reshape(rows_d)
                                  : g_bf16[0].defined() ? widen_bf16(B{}, g_bf16[0]).reshape(rows_d)
                                                        : Tensor<T, B>();
          backend::NormMix<T, B> bwd;
          bwd.a = a_c, bwd.b = b_c, bwd.x0 = x02d;
          std::tie(bwd.da, bwd.da_prior) = mix.a.accumulate_grad_target();
          std::tie(bwd.db, bwd.db_prior) = mix.b.accumulate_grad_target();
          bwd.x0_is_x_in = mix.x_in.same_node(mix.x0);  // (then x_in's target takes both)
          auto run = [&](T* dx_in, const T* prior_in, bf16* dx_in16) {
            ternary::detail::with_grad_target(
                mix.x0, mix.x0.requires_grad() && !bwd.x0_is_x_in, [&](T* dx0, const T* prior0) {
                  bwd.dx_in = dx_in, bwd.prior_in = prior_in, bwd.dx_in16 = dx_in16;
                  bwd.dx0 = dx0, bwd.prior0 = prior0;
                  rms_norm_shared_backward(B{}, xin2d, rstd, gains_c, dh, Tensor<T, B>(), dgains,
                                           rstd_pre, gx, false, Tensor<bf16, B>(), &bwd,
                                           dgain_priors);
                });
          };
          // x_in's gradient also in bf16: its producer (the previous block's output projection)
          // rounds it so for its GEMMs, and need not read it again for that
          if (!mix.x_in.requires_grad()) {
            run(nullptr, nullptr, nullptr);
          } else {
            mix.x_in.accumulate_grad_with_bf16([&](const Tensor<T, B>& dst,
                                                   const Tensor<T, B>& prior,
                                                   const Tensor<bf16, B>& dst16) {
              run(dst.data(), prior.defined() ? prior.data() : nullptr,
                  dst16.defined() ? dst16.data() : nullptr);
            });
          }
        });
    MixedProjections<K, T, B> result{vars[0], {}};
    for (size_t k = 0; k < K; ++k) result.y[k] = vars[k + 1];
    return result;
  }
}

}  // namespace detail

template <size_t K, class T, class B>
std::array<Var<T, B>, K> rms_norm_linear(const Var<T, B>& x, const std::array<Var<T, B>, K>& gains,
                                         const std::array<Var<T, B>, K>& weights, double eps,
                                         std::optional<double> pre_eps, bool int8,
                                         bool relu2_input = false,
                                         const Residual<T, B>* residual = nullptr) {
  static_assert(K >= 1, "rms_norm_linear: at least one projection");
  if (pre_eps && relu2_input)
    throw Error("rms_norm_linear: a pre-norm and a relu2 input exclude each other");
  if (residual) {
    if (K != 1) throw Error("rms_norm_linear: a residual needs one projection (K = 1)");
    if (weights[0].dim() != 2)
      throw ShapeError(
          ternary::detail::cat("rms_norm_linear: weight of shape ", weights[0].shape()));
    ternary::detail::check_residual_shapes("rms_norm_linear", residual->x.shape(),
                                           residual->scale.shape(), x.shape(), weights[0].size(0));
  }
  detail::check_int8_gains("rms_norm_linear", gains, int8);
  if constexpr (!B::on_host && std::is_same_v<T, float>) {
    if (backend::bf16_products(B{}))
      if (auto y = detail::rms_norm_linear_bf16<K>(x, gains, weights, eps, pre_eps, int8,
                                                   relu2_input, residual))
        return *y;
  }
  return detail::rms_norm_linear_composed<K>(x, gains, weights, eps, pre_eps, int8, relu2_input,
                                             residual);
}

// The GPT block's entry: x = channel_mix(a, x_in, b, x0) = a * x_in + b * x0 (a, b [D]: one
// weight per channel), then rms_norm_linear's K projections of x (the q, k, v projections,
// full precision or BitLinear). Returns x (the block's residual input, read again by the
// attention's residual sum) and the K outputs. Everywhere it is that composition, values and
// tape alike, except on CUDA with bf16 products for rows of 64-1024 floats (and x_in, x0 two
// variables), where it is one node: the norm kernel reads x_in and x0, writes x and the GEMMs'
// bf16 operands (x is not read back for its norm), and the backward's norm kernel adds x's own
// gradient to the norm's and takes the mix's backward in registers (x_in's and x0's gradients
// and the mix weights' sums): x's whole gradient never reaches memory (it was written by the
// norm's backward and read back by channel_mix's). The same float operations as channel_mix then
// rms_norm_linear on the device (the mix weights' sums over rows run in another order).
// Tests: tests/cuda/test_cuda_ops.cu.
template <size_t K, class T, class B>
MixedProjections<K, T, B> mix_rms_norm_linear(const BlockMix<T, B>& mix,
                                              const std::array<Var<T, B>, K>& gains,
                                              const std::array<Var<T, B>, K>& weights, double eps,
                                              std::optional<double> pre_eps, bool int8) {
  const Shape& xs = mix.x_in.shape();
  if (xs.empty() || !(xs == mix.x0.shape()))
    throw ShapeError(ternary::detail::cat("mix_rms_norm_linear: x_in ", xs, " and x0 ",
                                          mix.x0.shape(),
                                          " must have the same shape, with a channel axis last"));
  const int64_t D = xs.back();
  if (!(mix.a.shape() == Shape{D}) || !(mix.b.shape() == Shape{D}))
    throw ShapeError(ternary::detail::cat("mix_rms_norm_linear: the mix weights must be [", D,
                                          "], got ", mix.a.shape(), " and ", mix.b.shape()));
  detail::check_weights("mix_rms_norm_linear", weights, D, xs);
  detail::check_int8_gains("mix_rms_norm_linear", gains, int8);
  if (auto fused = detail::mix_rms_norm_linear_bf16<K>(mix, gains, weights, eps, pre_eps, int8))
    return *fused;
  MixedProjections<K, T, B> out{channel_mix(mix.a, mix.x_in, mix.b, mix.x0), {}};
  out.y = rms_norm_linear<K>(out.x, gains, weights, eps, pre_eps, int8);
  return out;
}

}  // namespace ternary::quant
