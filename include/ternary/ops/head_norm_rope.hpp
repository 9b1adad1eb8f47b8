// The attention's query/key preparation as one op: per head row, RMSNorm (no gain), RoPE,
// then an optional gain per head:
//
//   head_norm_rope(x, eps, base)          = rope(rms_norm(x, eps), base)
//   head_norm_rope(x, gain, eps, base)    = rope(rms_norm(x, eps), base) * gain[h]
//
// for x [B, H, T, Dh] (positions along T, from 0; gain [H]). With rstd = 1 / sqrt(mean(x^2) +
// eps), n = x * rstd, z = R(t) n and u = R(t)^T g (the rotation is orthogonal):
//   dx = gain[h] * rstd * (u - n * mean(u * n))
//   dgain[h] = sum over the rows of head h of <g, z> = sum(u * n)
//
// Written with the separate ops, the GPT's q and k take four passes forward (norm, rope, the
// gain's broadcast product, and a copy of the permuted head view the norm wants contiguous)
// and five or six backward, each a tape node with its own buffer. Here it is one pass each
// way, and the rows are read and written through the strides of x: the [B, H, T, Dh] head
// view of a [B, T, H * Dh] projection needs no copy, and the output and dx are laid out the
// same way (token-major), so the gradient flows back through the head split as it is.
// The values are those of the composition up to rounding (the sums run in another order).
// Kernels: backend/cpu/head_norm_rope.hpp, backend/cuda/head_norm_rope.cuh. Tests:
// tests/test_head_norm_rope.cpp (and tests/cuda/test_cuda_ops.cu against the CPU).
#pragma once

#include <type_traits>

#include "ternary/autograd/var.hpp"
#include "ternary/backend/cpu/head_norm_rope.hpp"
#include "ternary/ops/reduce.hpp"
#include "ternary/ops/rope.hpp"

namespace ternary {

namespace detail {

template <class T, class B>
void check_head_norm_rope(const Tensor<T, B>& x, const Tensor<T, B>* gain, double eps,
                          double base) {
  if (x.dim() != 4)
    throw ShapeError(cat("head_norm_rope: expects x [B, H, T, Dh], got shape ", x.shape()));
  if (x.size(3) % 2 != 0)
    throw ShapeError(cat("head_norm_rope: the head size Dh = ", x.size(3),
                         " must be even (pairs i, i + Dh/2 are rotated); shape ", x.shape()));
  if (gain && !(gain->shape() == Shape{x.size(1)}))
    throw ShapeError(cat("head_norm_rope: gain of shape ", gain->shape(), " for x ", x.shape(),
                         " (needs one value per head: [", x.size(1), "])"));
  if (!(eps >= 0)) throw Error(cat("head_norm_rope: eps must be >= 0, got ", eps));
  if (!(base > 0.0)) throw Error(cat("head_norm_rope: base must be positive, got ", base));
}

// The rows of a [B, H, T, Dh] tensor whose last axis is contiguous.
template <class T, class B>
backend::HeadRows head_rows_of(const Tensor<T, B>& t) {
  return {t.size(0),      t.size(1),      t.size(2),     t.size(3),
          t.strides()[0], t.strides()[1], t.strides()[2]};
}

// x itself if its rows are contiguous (any strides over B, H, T), else a contiguous copy.
template <class T, class B>
Tensor<T, B> with_unit_rows(const Tensor<T, B>& x) {
  return x.size(3) <= 1 || x.strides()[3] == 1 ? x : x.contiguous();
}

// A new [B, H, T, Dh] tensor laid out as `like`: token-major ([B, T, H, Dh] memory) when
// `like` is, else contiguous; of element type E (like's by default).
template <class E = void, class T, class B>
auto empty_heads_like(const Tensor<T, B>& like) {
  using U = std::conditional_t<std::is_void_v<E>, T, E>;
  if (!like.is_contiguous() && like.permute({0, 2, 1, 3}).is_contiguous())
    return Tensor<U, B>::empty(Shape{like.size(0), like.size(2), like.size(1), like.size(3)})
        .permute({0, 2, 1, 3});
  return Tensor<U, B>::empty(like.shape());
}

template <class T, class B>
Tensor<T, B> head_norm_rope_forward(const Tensor<T, B>& x_rows, const Tensor<T, B>* gain,
                                    const backend::RopeTable<T>& table, double eps) {
  auto y = empty_heads_like(x_rows);
  if (x_rows.numel() > 0)
    backend::head_norm_rope_forward(B{}, x_rows.data(), head_rows_of(x_rows),
                                    gain ? gain->data() : static_cast<const T*>(nullptr), y.data(),
                                    head_rows_of(y), table, eps);
  return y;
}

// The backward for output gradient g_in: dx added into x's gradient, dgain into w's (w
// undefined: no gain); x_rows, gain_c and table are the forward's. With dx_bf16 (on the
// device, where the vector kernels run) dx is written in bf16 and handed on as a gradient born
// in bf16 (Var::accumulate_grad_bf16), for a reader that rounds it to bf16 anyway.
template <class T, class B, class Table>
void head_norm_rope_backward_var(const Var<T, B>& x, const Var<T, B>& w, const Tensor<T, B>& x_rows,
                                 const Tensor<T, B>& gain_c, const Table& table, double eps,
                                 const Tensor<T, B>& g_in, bool dx_bf16 = false) {
  const bool want_dx = x.requires_grad(), want_dw = w.defined() && w.requires_grad();
  if (x_rows.numel() == 0) {
    if (want_dx) x.accumulate_grad(Tensor<T, B>::zeros(x.shape()));
    if (want_dw) w.accumulate_grad(Tensor<T, B>::zeros(w.shape()));
    return;
  }
  const auto g = with_unit_rows(g_in);
  // One dot product per row, in (b, h, t) order, summed per head below.
  auto row_dot =
      want_dw ? Tensor<T, B>::empty(Shape{x.size(0), x.size(1), x.size(2)}) : Tensor<T, B>();
  const T* gain_p = gain_c.defined() ? gain_c.data() : static_cast<const T*>(nullptr);
  T* row_dot_p = want_dw ? row_dot.data() : nullptr;
  bool dx_done = false;  // written in bf16 and handed on
  if constexpr (!B::on_host) {
    if (dx_bf16 && want_dx) {
      const auto dx16 = empty_heads_like<bf16>(x_rows);
      // (a device-only backend function: by argument-dependent lookup on the tag)
      dx_done = head_norm_rope_backward_bf16(B{}, x_rows.data(), head_rows_of(x_rows), gain_p,
                                             g.data(), head_rows_of(g), dx16.data(),
                                             head_rows_of(dx16), row_dot_p, *table, eps);
      if (dx_done) x.accumulate_grad_bf16(dx16);
    }
  }
  if (!dx_done) {
    auto dx = want_dx ? empty_heads_like(x_rows) : Tensor<T, B>();
    backend::head_norm_rope_backward(B{}, x_rows.data(), head_rows_of(x_rows), gain_p, g.data(),
                                     head_rows_of(g), want_dx ? dx.data() : nullptr,
                                     want_dx ? head_rows_of(dx) : backend::HeadRows{}, row_dot_p,
                                     *table, eps);
    if (want_dx) x.accumulate_grad(dx);
  }
  if (!want_dw) return;
  if constexpr (!B::on_host) {  // one launch: the per-head sums added into w's gradient so far
    w.accumulate_grad_with([&](const Tensor<T, B>& dst, const Tensor<T, B>& prior) {
      head_row_sums(B{}, row_dot.data(), x.size(0), x.size(1), x.size(2), dst.data(),
                    prior.defined() ? prior.data() : static_cast<const T*>(nullptr));
    });
  } else {  // sum_to, not sum(row_dot, {0, 2}): no heap allocation per step (tests/test_alloc.cpp)
    w.accumulate_grad(sum_to(row_dot, Shape{w.size(0), 1}).reshape(w.shape()));
  }
}

template <class T, class B>
Var<T, B> head_norm_rope_var(const Var<T, B>& x, const Var<T, B>* gain, double eps, double base) {
  check_head_norm_rope(x.value(), gain ? &gain->value() : nullptr, eps, base);
  const auto x_rows = with_unit_rows(x.value());
  const auto gain_c = gain ? gain->value().contiguous() : Tensor<T, B>();
  auto table = backend::rope_table<T>(B{}, x.size(2), x.size(3) / 2, base);
  auto y = head_norm_rope_forward(x_rows, gain ? &gain_c : nullptr, *table, eps);
  const Var<T, B> w = gain ? *gain : Var<T, B>();
  auto backward = [x, w, x_rows, gain_c, table, eps](const Tensor<T, B>& g_in) {
    head_norm_rope_backward_var(x, w, x_rows, gain_c, table, eps, g_in);
  };
  if (gain) return Var<T, B>::record("head_norm_rope", y, {x, *gain}, backward);
  return Var<T, B>::record("head_norm_rope", y, {x}, backward);
}

}  // namespace detail

// ---- tensor level ---------------------------------------------------------------------------
template <class T, class B>
Tensor<T, B> head_norm_rope(const Tensor<T, B>& x, double eps = 1e-6, double base = 10000.0) {
  detail::check_head_norm_rope(x, static_cast<const Tensor<T, B>*>(nullptr), eps, base);
  auto table = backend::rope_table<T>(B{}, x.size(2), x.size(3) / 2, base);
  return detail::head_norm_rope_forward(detail::with_unit_rows(x),
                                        static_cast<const Tensor<T, B>*>(nullptr), *table, eps);
}
template <class T, class B>
Tensor<T, B> head_norm_rope(const Tensor<T, B>& x, const Tensor<T, B>& gain, double eps = 1e-6,
                            double base = 10000.0) {
  detail::check_head_norm_rope(x, &gain, eps, base);
  auto table = backend::rope_table<T>(B{}, x.size(2), x.size(3) / 2, base);
  const auto gain_c = gain.contiguous();
  return detail::head_norm_rope_forward(detail::with_unit_rows(x), &gain_c, *table, eps);
}

// ---- differentiable -------------------------------------------------------------------------
template <class T, class B>
Var<T, B> head_norm_rope(const Var<T, B>& x, double eps = 1e-6, double base = 10000.0) {
  return detail::head_norm_rope_var(x, static_cast<const Var<T, B>*>(nullptr), eps, base);
}
template <class T, class B>
Var<T, B> head_norm_rope(const Var<T, B>& x, const Var<T, B>& gain, double eps = 1e-6,
                         double base = 10000.0) {
  return detail::head_norm_rope_var(x, &gain, eps, base);
}

}  // namespace ternary
