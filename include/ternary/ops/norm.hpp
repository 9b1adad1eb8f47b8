// RMSNorm over the last axis, for Tensor and Var, with or without a gain of shape [D].
// Kernels: backend/cpu/norm.hpp (fused forward saving the per-row rstd; fused backward).
// Tests: tests/test_norm.cpp.
//
//   rstd = 1 / sqrt(mean(x^2) + eps),  x_hat = x * rstd,  y = x_hat * gain
//   gg = g * gain:  dx = rstd * (gg - x_hat * mean(gg * x_hat))
//   dgain = sum over all rows of g * x_hat
#pragma once

#include <array>
#include <cmath>
#include <tuple>

#include "ternary/autograd/var.hpp"
#include "ternary/backend/cpu/norm.hpp"

namespace ternary {

namespace detail {

template <class T, class B>
void check_rms_norm(const Tensor<T, B>& x, const Tensor<T, B>* gain, double eps) {
  if (x.dim() == 0)
    throw ShapeError(
        "rms_norm: expects at least 1 axis (normalized over the last), got a 0-d tensor");
  if (!(eps >= 0)) throw Error(detail::cat("rms_norm: eps must be >= 0, got ", eps));
  if (gain && gain->defined() && !(gain->shape() == Shape{x.size(-1)}))
    throw ShapeError(detail::cat("rms_norm: gain of shape ", gain->shape(), " for input ",
                                 x.shape(), " (needs [", x.size(-1), "])"));
}

// Forward on rows; returns y (x's shape) and the per-row rstd. `options` go on to the
// backend's kernel (the CUDA one takes int8_output).
template <class T, class B, class... Options>
Tensor<T, B> rms_norm_rows(const Tensor<T, B>& x_c, const Tensor<T, B>& gain_c, double eps,
                           Tensor<T, B>& rstd, Options... options) {
  const int64_t D = x_c.size(-1), rows = D ? x_c.numel() / D : 0;
  auto y = Tensor<T, B>::empty(x_c.shape());
  rstd = Tensor<T, B>::empty(Shape{rows});
  backend::rms_norm_forward(B{}, x_c.reshape(Shape{rows, D}), gain_c, y.reshape(Shape{rows, D}),
                            rstd, eps, options...);
  return y;
}

// The differentiable rms_norm. `forward(x_c, w_c, eps, rstd)` computes the output and rstd;
// another forward than rms_norm_rows may post-process the output with a straight-through
// gradient (quant::rms_norm_quantize_activations), since the backward is always rms_norm's.
template <class T, class B, class Forward>
Var<T, B> rms_norm_var(const Var<T, B>& x, const Var<T, B>* gain, double eps, const char* name,
                       Forward&& forward) {
  const bool has_gain = gain != nullptr;
  check_rms_norm(x.value(), has_gain ? &gain->value() : nullptr, eps);
  Tensor<T, B> x_c = x.value().contiguous();
  Tensor<T, B> w_c = has_gain ? gain->value().contiguous() : Tensor<T, B>();
  Tensor<T, B> rstd;
  Tensor<T, B> y = forward(x_c, w_c, eps, rstd);
  const Var<T, B> w = has_gain ? *gain : Var<T, B>();
  auto backward = [x, w, x_c, w_c, rstd](const Tensor<T, B>& g) {
    const int64_t D = x_c.size(-1), rows = rstd.numel();
    const bool want_dx = x.requires_grad(), want_dw = w.defined() && w.requires_grad();
    Tensor<T, B> dw = want_dw ? Tensor<T, B>::empty(Shape{D}) : Tensor<T, B>();
    const auto g_rows = g.contiguous().reshape(Shape{rows, D});
    const auto x_rows = x_c.reshape(Shape{rows, D});
    if (want_dx) {  // dx is added by the kernel into x's gradient so far (one pass)
      x.accumulate_grad_with([&](const Tensor<T, B>& dst, const Tensor<T, B>& prior) {
        const auto prior_rows = prior.defined() ? prior.reshape(Shape{rows, D}) : prior;
        backend::rms_norm_backward(B{}, x_rows, w_c, rstd, g_rows, dst.reshape(Shape{rows, D}), dw,
                                   prior_rows);
      });
    } else if (want_dw) {
      backend::rms_norm_backward(B{}, x_rows, w_c, rstd, g_rows, Tensor<T, B>(), dw);
    }
    if (want_dw) w.accumulate_grad(dw);
  };
  if (has_gain) return Var<T, B>::record(name, y, {x, *gain}, backward);
  return Var<T, B>::record(name, y, {x}, backward);
}
template <class T, class B>
Var<T, B> rms_norm_var(const Var<T, B>& x, const Var<T, B>* gain, double eps) {
  return rms_norm_var(x, gain, eps, "rms_norm",
                      [](auto&&... a) { return rms_norm_rows<T, B>(a...); });
}

// How norm_shared_backward writes x's gradient, for readers that round it to bf16 anyway.
enum class DxBf16 {
  no,            // in T only
  copy,          // in T, and rounded to bf16 beside it (Var::accumulate_grad_with_bf16)
  born_if_first  // in bf16 alone while it is x's first gradient (Var::grad_bf16_target), else in
                 // T: x is a value born in bf16 (Var::value_bf16), whose readers round it so
};

// The device backward of the K-output norm ops (quant::rms_norm_quantize_activations,
// quant::rms_norm_linear, rms_norm_mlp): one rms_norm_shared_backward for the K output gradients gs
// (undefined: none reached that output), dx added by the kernel into x's gradient so far (or
// written as dx_bf16 says), and each wanted gain's gradient (want_dgain[k]) added by it too. x2d
// is x's [rows, D] view; rstd_pre and relu2_input are the forward's. gs in T, or in bf16 as the
// bf16 nodes' GEMMs write them (CUDA).
template <size_t K, class T, class B, class G>
void norm_shared_backward(const Var<T, B>& x, const Tensor<T, B>& x2d, const Tensor<T, B>& rstd,
                          const std::array<Var<T, B>, K>& gains,
                          const std::array<Tensor<T, B>, K>& gains_c,
                          const std::array<Tensor<G, B>, K>& gs,
                          const std::array<bool, K>& want_dgain, const Tensor<T, B>& rstd_pre,
                          bool relu2_input = false, DxBf16 dx_bf16 = DxBf16::no) {
  const Shape rows_d = x2d.shape();
  // Each wanted gain's gradient is written by the kernels as the gradient so far plus this one
  // (no addition pass)
  std::array<Tensor<T, B>, K> dg, dg_prior;
  for (size_t k = 0; k < K; ++k)
    if (want_dgain[k]) std::tie(dg[k], dg_prior[k]) = gains[k].accumulate_grad_target();
  auto run = [&](const Tensor<T, B>& dx, const Tensor<T, B>& prior,
                 const Tensor<bf16, B>& dx16 = Tensor<bf16, B>()) {
    rms_norm_shared_backward(B{}, x2d, rstd, gains_c, gs, dx.defined() ? dx.reshape(rows_d) : dx,
                             dg, rstd_pre, prior.defined() ? prior.reshape(rows_d) : prior,
                             relu2_input, dx16.defined() ? dx16.reshape(rows_d) : dx16,
                             static_cast<const backend::NormMix<T, B>*>(nullptr), dg_prior);
  };
  if (!x.requires_grad()) {
    run(Tensor<T, B>(), Tensor<T, B>());
  } else if (dx_bf16 == DxBf16::copy) {  // x's whole gradient, also in bf16 for its reader
    x.accumulate_grad_with_bf16(run);
  } else if (const Tensor<bf16, B> dx16 =
                 dx_bf16 == DxBf16::born_if_first ? x.grad_bf16_target() : Tensor<bf16, B>();
             dx16.defined()) {  // x's first gradient, born in bf16: half the bytes each way
    run(Tensor<T, B>(), Tensor<T, B>(), dx16);
  } else {  // dx added by the kernel into x's gradient so far
    x.accumulate_grad_with(run);
  }
}

}  // namespace detail

// ---- tensor level ---------------------------------------------------------------------------
// `gain` may be an undefined Tensor (no gain).
template <class T, class B>
Tensor<T, B> rms_norm(const Tensor<T, B>& x, const Tensor<T, B>& gain, double eps = 1e-6) {
  detail::check_rms_norm(x, &gain, eps);
  Tensor<T, B> rstd;
  return detail::rms_norm_rows(x.contiguous(), gain.defined() ? gain.contiguous() : gain, eps,
                               rstd);
}
template <class T, class B>
Tensor<T, B> rms_norm(const Tensor<T, B>& x, double eps = 1e-6) {
  return rms_norm(x, Tensor<T, B>(), eps);
}

// ---- differentiable -------------------------------------------------------------------------
template <class T, class B>
Var<T, B> rms_norm(const Var<T, B>& x, const Var<T, B>& gain, double eps = 1e-6) {
  return detail::rms_norm_var(x, &gain, eps);
}
template <class T, class B>
Var<T, B> rms_norm(const Var<T, B>& x, double eps = 1e-6) {
  return detail::rms_norm_var(x, static_cast<const Var<T, B>*>(nullptr), eps);
}

}  // namespace ternary
