// 8-bit activations, per token (BitNet b1.58): each row x of the last axis is scaled so
// its largest magnitude maps to 127, rounded (half to even), clamped to [-128, 127] and
// scaled back:
//   s = 127 / max|x|,   q = clamp(round(x * s), -128, 127),   x_q = q / s
// The gradient passes straight through. A row of zeros gets s = 1 and stays zero (no
// division by zero, no NaN); a NaN or inf throws. lambda blends as for weights:
//   x + lambda * stop_gradient(x_q - x)      (lambda = 0: x exactly; 1: x_q exactly)
// The integer inference kernel uses the same q and s (quantize_rows_int8), so the packed
// path sees exactly the activations the training forward used.
#pragma once

#include <array>
#include <cmath>
#include <optional>
#include <vector>

#include "ternary/autograd/var.hpp"
#include "ternary/ops/norm.hpp"
#include "ternary/quant/ternary.hpp"

namespace ternary::quant {

namespace detail {
// The per-token int8 quantizer's loop over rows of the last axis of x (contiguous): each
// row's scale s = 127 / max|x| (1 for an all-zero row) and each element's q = round(x * s)
// clamped to int8, handed to emit(r, s, i, q) (i: flat index). Throws on a NaN or inf.
template <class T, class B, class Emit>
void int8_rows(const Tensor<T, B>& xc, const Shape& shape, Emit&& emit) {
  const int64_t D = shape.size() ? shape[shape.size() - 1] : 1, rows = D ? xc.numel() / D : 0;
  const T* p = xc.data();
  int64_t bad = -1;  // a row with a NaN or inf (no throwing inside the parallel loop)
#pragma omp parallel for schedule(static) if (xc.numel() >= (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = p + r * D;
    float m = 0;
    bool finite = true;
    for (int64_t j = 0; j < D; ++j) {
      const float a = std::abs(float(row[j]));
      finite = finite && std::isfinite(a);
      m = std::max(m, a);
    }
    if (!finite) {
#pragma omp critical(ternary_act_bad)
      bad = r;
      continue;
    }
    const float s = m > 0 ? 127.0f / m : 1.0f;
    for (int64_t j = 0; j < D; ++j) {
      const float v = std::nearbyint(float(row[j]) * s);
      emit(r, s, r * D + j, int8_t(v > 127.f ? 127.f : (v < -128.f ? -128.f : v)));
    }
  }
  if (bad >= 0)
    throw Error(ternary::detail::cat("quantize_activations: row ", bad, " of an input of shape ",
                                     shape, " has a NaN or inf"));
}
}  // namespace detail

// Quantizes rows of the last axis: int8 values and the per-row scale s (x ~= q / s).
template <class T, class B>
void quantize_rows_int8(const Tensor<T, B>& x, std::vector<int8_t>& q, std::vector<float>& scale) {
  if constexpr (!B::on_host) {  // device memory: quantize a host copy (the outputs are host)
    quantize_rows_int8(Tensor<T>::from(x.shape(), x.to_vector()), q, scale);
    return;
  }
  const int64_t D = x.dim() ? x.size(-1) : 1;
  q.resize(x.numel());
  scale.resize(D ? x.numel() / D : 0);
  detail::int8_rows(x.contiguous(), x.shape(), [&](int64_t r, float s, int64_t i, int8_t v) {
    scale[r] = s;
    q[i] = v;
  });
}

// x_q = q / s as a tensor of x's shape (contiguous), written directly (no int8 and scale
// vectors: this runs in every BitLinear forward pass).
template <class T, class B>
Tensor<T, B> fake_quantize_int8(const Tensor<T, B>& x) {
  // Device memory: the same numbers from a backend kernel (found by the tag, e.g.
  // backend/cuda/quant.cuh).
  if constexpr (!B::on_host) return int8_fake_quantize(B{}, x);
  auto out = Tensor<T, B>::empty(x.shape());
  T* o = out.data();
  detail::int8_rows(x.contiguous(), x.shape(),
                    [o](int64_t, float s, int64_t i, int8_t v) { o[i] = T(float(v) / s); });
  return out;
}

// Differentiable per-token int8 fake quantization with a straight-through gradient.
template <class T, class B>
Var<T, B> quantize_activations(const Var<T, B>& x, double lambda = 1.0) {
  if (lambda <= 0) return x;
  return Var<T, B>::record("act_quant_int8",
                           detail::blend(x.value(), fake_quantize_int8(x.value()), lambda), {x},
                           [x](const Tensor<T, B>& g) { x.accumulate_grad(g); });
}

// quantize_activations(rms_norm(x, gain, eps)) at lambda = 1 as one tape node: the same
// values, bit for bit, and the same gradients (the straight-through estimator hands the
// gradient to rms_norm unchanged, so the backward is rms_norm's). BitLinear's forward with the
// extra norm uses it. On CUDA one kernel normalises and quantizes (backend/cuda/norm.cuh), so
// the normalised rows never reach memory; on the CPU the two passes run one after the other.
template <class T, class B>
Var<T, B> rms_norm_quantize_activations(const Var<T, B>& x, const Var<T, B>& gain,
                                        double eps = 1e-6) {
  auto forward = [](const Tensor<T, B>& x_c, const Tensor<T, B>& w_c, double e,
                    Tensor<T, B>& rstd) -> Tensor<T, B> {
    if constexpr (B::on_host)
      return fake_quantize_int8(ternary::detail::rms_norm_rows(x_c, w_c, e, rstd));
    else
      return ternary::detail::rms_norm_rows(x_c, w_c, e, rstd, /*int8_output=*/true);
  };
  return ternary::detail::rms_norm_var(x, &gain, eps, "rms_norm_int8", forward);
}

// The int8 activations of K BitLinears that read one input x (the attention's q, k and v
// projections): y_k = rms_norm_quantize_activations(x, gains[k], eps) for every k, as one op.
// The values are bit for bit those of the K calls. The backward adds the K gradients (each
// times its gain) before one RMSNorm backward, which equals the sum of the K backwards up to
// float rounding. On CUDA x is read once forward and once backward (one kernel each way, for
// rows of 64-1024 floats), instead of K times each way plus K - 1 gradient additions; on the
// CPU the K norms run one after the other.
namespace detail {
// The op above, and with pre_eps (the GPT block's norm in front: y_k from rms_norm(x, pre_eps)
// instead of x) on CUDA, where the kernels normalise twice in registers.
template <size_t K, class T, class B>
std::array<Var<T, B>, K> rms_norm_quantize_shared(const Var<T, B>& x,
                                                  const std::array<Var<T, B>, K>& gains, double eps,
                                                  std::optional<double> pre_eps) {
  static_assert(K >= 1, "rms_norm_quantize_activations: at least one gain");
  for (const auto& g : gains) ternary::detail::check_rms_norm(x.value(), &g.value(), eps);
  const Tensor<T, B> x_c = x.value().contiguous();
  const int64_t D = x_c.size(-1), rows = D ? x_c.numel() / D : 0;
  std::array<Tensor<T, B>, K> gains_c, ys;
  for (size_t k = 0; k < K; ++k) gains_c[k] = gains[k].value().contiguous();
  Tensor<T, B> rstd, rstd_pre;
  if constexpr (B::on_host) {
    for (size_t k = 0; k < K; ++k)
      ys[k] = fake_quantize_int8(ternary::detail::rms_norm_rows(x_c, gains_c[k], eps, rstd));
  } else {
    rstd = Tensor<T, B>::empty(Shape{rows});
    if (pre_eps) rstd_pre = Tensor<T, B>::empty(Shape{rows});
    std::array<Tensor<T, B>, K> ys2d;
    for (size_t k = 0; k < K; ++k) {
      ys[k] = Tensor<T, B>::empty(x_c.shape());
      ys2d[k] = ys[k].reshape(Shape{rows, D});
    }
    rms_norm_int8_shared_forward(B{}, x_c.reshape(Shape{rows, D}), gains_c, ys2d, rstd, eps,
                                 rstd_pre, pre_eps.value_or(0.0));
  }
  std::array<Var<T, B>, K + 1> inputs;  // x, then the gains
  inputs[0] = x;
  for (size_t k = 0; k < K; ++k) inputs[k + 1] = gains[k];
  return Var<T, B>::record_multi(
      pre_eps ? "rms_norm2_int8_shared" : "rms_norm_int8_shared", std::move(ys), inputs.data(),
      inputs.data() + K + 1,
      [x, gains, x_c, gains_c, rstd, rstd_pre, rows, D](const std::array<Tensor<T, B>, K>& g) {
        const bool want_dx = x.requires_grad();
        if constexpr (B::on_host) {
          for (size_t k = 0; k < K; ++k) {
            if (!g[k].defined()) continue;
            const bool want_dw = gains[k].requires_grad();
            Tensor<T, B> dx = want_dx ? Tensor<T, B>::empty(x_c.shape()) : Tensor<T, B>();
            Tensor<T, B> dw = want_dw ? Tensor<T, B>::empty(Shape{D}) : Tensor<T, B>();
            backend::rms_norm_backward(B{}, x_c.reshape(Shape{rows, D}), gains_c[k], rstd,
                                       g[k].contiguous().reshape(Shape{rows, D}),
                                       want_dx ? dx.reshape(Shape{rows, D}) : dx, dw);
            if (want_dx) x.accumulate_grad(dx);
            if (want_dw) gains[k].accumulate_grad(dw);
          }
        } else {
          std::array<Tensor<T, B>, K> gs;
          std::array<bool, K> want_dw{};
          for (size_t k = 0; k < K; ++k) {
            if (g[k].defined()) gs[k] = g[k].contiguous().reshape(Shape{rows, D});
            want_dw[k] = g[k].defined() && gains[k].requires_grad();
          }
          ternary::detail::norm_shared_backward<K>(x, x_c.reshape(Shape{rows, D}), rstd, gains,
                                                   gains_c, gs, want_dw, rstd_pre);
        }
      });
}
}  // namespace detail

template <size_t K, class T, class B>
std::array<Var<T, B>, K> rms_norm_quantize_activations(const Var<T, B>& x,
                                                       const std::array<Var<T, B>, K>& gains,
                                                       double eps = 1e-6) {
  return detail::rms_norm_quantize_shared<K>(x, gains, eps, std::nullopt);
}

// The same for BitLinears behind a plain pre-norm (the GPT block's: rms_norm without a gain,
// eps pre_eps): y_k = rms_norm_quantize_activations(rms_norm(x, pre_eps), gains[k], eps). On
// CUDA the two norms run in one kernel each way (the normalised x never reaches memory, nor
// does its gradient); values and gradients are those of the two ops up to float rounding. On
// the CPU it is the two ops.
template <size_t K, class T, class B>
std::array<Var<T, B>, K> rms_norm_quantize_activations_prenormed(
    const Var<T, B>& x, const std::array<Var<T, B>, K>& gains, double pre_eps, double eps) {
  if constexpr (B::on_host)
    return rms_norm_quantize_activations<K>(ternary::rms_norm(x, pre_eps), gains, eps);
  else
    return detail::rms_norm_quantize_shared<K>(x, gains, eps, pre_eps);
}

}  // namespace ternary::quant
