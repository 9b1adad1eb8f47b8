// The GPT block's entry as one op: the learned mix of the residual stream and the embedding,
// its norm, and the projections that read it:
//
//   x   = channel_mix(a, x_in, b, x0) = a * x_in + b * x0      a, b [D]: one weight per channel
//   y_k = linear(rms_norm(x, eps), w_k)                        k < K (the q, k, v projections)
//
// mix_rms_norm_linear returns x (the block's residual input, read again by the attention's
// residual sum) and the y_k. Everywhere it is that composition of the separate ops, values and
// tape alike, except on CUDA with bf16 products (cuda::set_bf16) for rows of 64-512 floats,
// where it is one node: one kernel writes x and the GEMMs' bf16 operand from x_in and x0 (x
// is not read back for its norm), and the backward runs the K GEMMs of the input gradient (bf16,
// as quant::rms_norm_linear's) and one kernel that takes the norm's backward, adds x's own
// gradient and takes the mix's backward in registers: x's whole gradient never reaches memory
// (it was written by the norm's backward and read back by channel_mix's). The values are those
// of channel_mix then quant::rms_norm_linear on the same backend (the same float operations;
// the mix weights' sums over rows run in another order). Kernels:
// backend/cuda/mix_norm.cuh. Tests: tests/cuda/test_cuda_ops.cu.
#pragma once

#include <array>
#include <optional>

#include "ternary/ops/channel_mix.hpp"
#include "ternary/ops/matmul.hpp"
#include "ternary/ops/norm.hpp"
#include "ternary/ops/residual_linear.hpp"

namespace ternary {

template <size_t K, class T, class B>
struct MixedProjections {
  Var<T, B> x;                 // a * x_in + b * x0
  std::array<Var<T, B>, K> y;  // linear(rms_norm(x), w_k)
};

namespace detail {

inline void check_mix_rms_norm_linear(const Shape& a, const Shape& x_in, const Shape& b,
                                      const Shape& x0, const std::vector<Shape>& weights) {
  if (x_in.empty() || !(x_in == x0))
    throw ShapeError(cat("mix_rms_norm_linear: x_in ", x_in, " and x0 ", x0,
                         " must have the same shape, with a channel axis last"));
  const int64_t D = x_in.back();
  if (a.size() != 1 || a[0] != D || b.size() != 1 || b[0] != D)
    throw ShapeError(
        cat("mix_rms_norm_linear: the mix weights must be [", D, "], got ", a, " and ", b));
  for (size_t k = 0; k < weights.size(); ++k)
    if (weights[k].size() != 2 || weights[k][1] != D)
      throw ShapeError(cat("mix_rms_norm_linear: weight ", k, " of shape ", weights[k],
                           " for inputs ", x_in, " (want [out, ", D, "])"));
}

// The one-node path (CUDA, bf16 products); nullopt where its kernels do not apply (rows
// outside 64-512 floats, or x_in and x0 one variable: the caller composes).
template <size_t K, class T, class B>
std::optional<MixedProjections<K, T, B>> mix_rms_norm_linear_bf16(
    const Var<T, B>& a, const Var<T, B>& x_in, const Var<T, B>& b, const Var<T, B>& x0,
    const std::array<Var<T, B>, K>& weights, double eps) {
  if constexpr (B::on_host || !std::is_same_v<T, float>) {
    return std::nullopt;
  } else {
    if (!backend::bf16_products(B{}) || x_in.same_node(x0)) return std::nullopt;
    const Tensor<T, B> xi = x_in.value().contiguous(), xz = x0.value().contiguous();
    const Tensor<T, B> ac = a.value().contiguous(), bc = b.value().contiguous();
    const int64_t D = xi.size(-1), rows = D ? xi.numel() / D : 0;
    const Shape rows_d{rows, D};
    auto x = Tensor<T, B>::empty(xi.shape());
    const auto rstd = Tensor<T, B>::empty(Shape{rows});
    const auto h16 = Tensor<bf16, B>::empty(rows_d);
    // (the device-only backend functions by argument-dependent lookup on the tag)
    if (!mix_rms_norm_bf16_forward(B{}, ac, xi.reshape(rows_d), bc, xz.reshape(rows_d),
                                   x.reshape(rows_d), rstd, h16, eps))
      return std::nullopt;
    std::array<Tensor<bf16, B>, K> w16;
    std::array<Tensor<T, B>, K + 1> outs;
    outs[0] = x;
    for (size_t k = 0; k < K; ++k) {
      w16[k] = weight_to_bf16(weights[k].value());
      outs[k + 1] =
          product_bf16(static_cast<const Residual<T, B>*>(nullptr), h16, w16[k], xi.shape());
    }
    std::vector<Var<T, B>> inputs{a, x_in, b, x0};
    for (const auto& w : weights) inputs.push_back(w);
    const auto vars = Var<T, B>::record_multi(
        "mix_rms_norm_linear", std::move(outs), inputs.data(), inputs.data() + inputs.size(),
        [a, x_in, b, x0, weights, xi, xz, ac, bc, h16, w16, rstd, rows_d](
            const std::array<Tensor<T, B>, K + 1>& g,
            const std::array<Tensor<bf16, B>, K + 1>& g_bf16) {
          // dh_k = g16_k wd16_k (bf16, as autocast's input gradients), with each weight's
          // gradient added by its GEMM (product_backward_bf16)
          std::array<Tensor<bf16, B>, K> dh;
          for (size_t k = 0; k < K; ++k) {
            if (!g[k + 1].defined() && !g_bf16[k + 1].defined()) continue;
            const auto operands = product_backward_bf16(
                std::optional<Residual<T, B>>(), h16, weights[k], w16[k], g[k + 1], g_bf16[k + 1]);
            dh[k] = Tensor<bf16, B>::empty(rows_d);
            backend::gemm_bf16(B{}, const_view(operands.first), const_view(operands.second),
                               backend::mat_view(dh[k]));
          }
          const Tensor<T, B> gx = g[0].defined()        ? g[0].contiguous()
                                  : g_bf16[0].defined() ? widen_bf16(B{}, g_bf16[0])
                                                        : Tensor<T, B>();
          const bool want_da = a.requires_grad(), want_db = b.requires_grad();
          auto da = want_da ? Tensor<T, B>::empty(Shape{rows_d[1]}) : Tensor<T, B>();
          auto db = want_db ? Tensor<T, B>::empty(Shape{rows_d[1]}) : Tensor<T, B>();
          with_grad_target(x_in, x_in.requires_grad(), [&](T* dx_in, const T* prior_in) {
            with_grad_target(x0, x0.requires_grad(), [&](T* dx0, const T* prior0) {
              mix_rms_norm_backward(B{}, ac, xi.reshape(rows_d), bc, xz.reshape(rows_d), rstd, dh,
                                    gx.defined() ? gx.data() : static_cast<const T*>(nullptr),
                                    dx_in, prior_in, dx0, prior0, da, db);
            });
          });
          if (want_da) a.accumulate_grad(da);
          if (want_db) b.accumulate_grad(db);
        });
    MixedProjections<K, T, B> result{vars[0], {}};
    for (size_t k = 0; k < K; ++k) result.y[k] = vars[k + 1];
    return result;
  }
}

}  // namespace detail

// x = a * x_in + b * x0 and y_k = linear(rms_norm(x, eps), w_k) (see the top of this file).
template <size_t K, class T, class B>
MixedProjections<K, T, B> mix_rms_norm_linear(const Var<T, B>& a, const Var<T, B>& x_in,
                                              const Var<T, B>& b, const Var<T, B>& x0,
                                              const std::array<Var<T, B>, K>& weights, double eps) {
  std::vector<Shape> ws;
  for (const auto& w : weights) ws.push_back(w.shape());
  detail::check_mix_rms_norm_linear(a.shape(), x_in.shape(), b.shape(), x0.shape(), ws);
  if (auto fused = detail::mix_rms_norm_linear_bf16<K>(a, x_in, b, x0, weights, eps)) return *fused;
  MixedProjections<K, T, B> out{channel_mix(a, x_in, b, x0), {}};
  const Var<T, B> h = rms_norm(out.x, eps);
  for (size_t k = 0; k < K; ++k) out.y[k] = linear(h, weights[k]);
  return out;
}

}  // namespace ternary
