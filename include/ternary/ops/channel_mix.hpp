// Per-channel weighted sum of two tensors, as one op:
//
//   channel_mix(a, x, b, y) = a * x + b * y        x, y [..., D];  a, b [D] (broadcast over
//   channel_mix(x, b, y)    = x + b * y            the leading axes: one weight per channel)
//
// The GPT's residual stream is made of these (the learned residual mix of x and x0, the
// attention and MLP branches added with their scales, the U-Net skips). Written as plain
// broadcasting ops each would be two or three tape nodes, and on the GPU a broadcast product,
// an add, and in the backward a materialised g * y before its column sums. Here the forward
// is one pass and the backward one pass:
//   dx = a * g  (g itself without a)    dy = b * g
//   da = sum over the leading axes of g * x          db = sum ... of g * y
// Kernels: backend/cpu/channel_mix.hpp, backend/cuda/channel_mix.cuh. Tests:
// tests/test_channel_mix.cpp (and tests/cuda/test_cuda_ops.cu against the CPU).
#pragma once

#include "ternary/autograd/var.hpp"
#include "ternary/backend/cpu/channel_mix.hpp"

namespace ternary {

namespace detail {
template <class T, class B, class Y>
void check_channel_mix(const Tensor<T, B>* a, const Tensor<T, B>& x, const Tensor<T, B>& b,
                       const Tensor<Y, B>& y) {
  if (x.dim() == 0 || !(x.shape() == y.shape()))
    throw ShapeError(cat("channel_mix: x ", x.shape(), " and y ", y.shape(),
                         " must have the same shape, with a channel axis last"));
  const int64_t D = x.size(-1);
  if (b.dim() != 1 || b.size(0) != D || (a && (a->dim() != 1 || a->size(0) != D)))
    throw ShapeError(cat("channel_mix: the weights must be [", D, "] (one per channel of x ",
                         x.shape(), "), got ", a ? a->shape() : Shape{}, " and ", b.shape()));
}

// out = a * x + b * y on contiguous copies (views are copied once, as the kernels want rows);
// y in T, or in bf16 (Y: the bf16 nodes' residual sums, ops/residual_linear.hpp).
template <class T, class B, class Y>
Tensor<T, B> channel_mix_forward(const Tensor<T, B>* a, const Tensor<T, B>& x,
                                 const Tensor<T, B>& b, const Tensor<Y, B>& y) {
  check_channel_mix(a, x, b, y);
  const Tensor<T, B> xc = x.contiguous(), bc = b.contiguous();
  const Tensor<Y, B> yc = y.contiguous();
  const Tensor<T, B> ac = a ? a->contiguous() : Tensor<T, B>();
  auto out = Tensor<T, B>::empty(x.shape());
  const int64_t D = x.size(-1), rows = D ? x.numel() / D : 0;
  if (rows > 0)
    backend::channel_mix_forward(B{}, a ? ac.data() : static_cast<const T*>(nullptr), xc.data(),
                                 bc.data(), yc.data(), out.data(), rows, D);
  return out;
}

// Calls f(dst, prior) with where v's gradient is to be written and the gradient so far to add
// (Var::accumulate_grad_with; raw pointers, prior null if none), or f(nullptr, nullptr) if
// the gradient is not wanted.
template <class T, class B, class F>
void with_grad_target(const Var<T, B>& v, bool want, F&& f) {
  if (!want) return f(static_cast<T*>(nullptr), static_cast<const T*>(nullptr));
  const auto [dst, prior] = v.accumulate_grad_target();
  if (!dst.defined()) return;  // (v needs no gradient after all: as accumulate_grad_with)
  f(dst.data(), prior.defined() ? prior.data() : static_cast<const T*>(nullptr));
}

// The backward of either form (a null: x enters with weight 1). The kernel adds dx and dy
// into the gradients x and y have so far (one pass, no separate additions). g16: a bf16 copy of
// g_in (or undefined), which x takes with g_in where a is null (Var::accumulate_grad_passing).
template <class T, class B>
void channel_mix_backward(const Var<T, B>* a, const Var<T, B>& x, const Var<T, B>& b,
                          const Var<T, B>& y, const Tensor<T, B>& g_in,
                          const Tensor<bf16, B>& g16 = Tensor<bf16, B>()) {
  const bool want_dx = x.requires_grad(), want_dy = y.requires_grad();
  const bool want_da = a && a->requires_grad(), want_db = b.requires_grad();
  if (want_dx && !a) x.accumulate_grad_passing(g_in, g16);  // d(x + b y)/dx = 1: g, no copy
  const bool scale_dx = want_dx && a;
  if (!scale_dx && !want_dy && !want_da && !want_db) return;
  const auto g = g_in.contiguous();
  const int64_t D = g.size(-1), rows = D ? g.numel() / D : 0;
  // Only the operands a wanted gradient needs are made contiguous.
  const auto xc = want_da ? x.value().contiguous() : Tensor<T, B>();
  const auto yc = want_db ? y.value().contiguous() : Tensor<T, B>();
  const auto ac = scale_dx ? a->value().contiguous() : Tensor<T, B>();
  const auto bc = want_dy ? b.value().contiguous() : Tensor<T, B>();
  auto da = want_da ? Tensor<T, B>::empty(Shape{D}) : Tensor<T, B>();
  auto db = want_db ? Tensor<T, B>::empty(Shape{D}) : Tensor<T, B>();
  auto ptr = [](const Tensor<T, B>& t) { return t.defined() ? t.data() : nullptr; };
  auto run = [&](T* dx, const T* dx_prior, T* dy, const T* dy_prior) {
    if (rows > 0)
      backend::channel_mix_backward(B{}, g.data(), ptr(ac), ptr(xc), ptr(bc), ptr(yc), dx, dy,
                                    ptr(da), ptr(db), rows, D, dx_prior, dy_prior);
  };
  if (scale_dx && want_dy && x.same_node(y)) {  // channel_mix(a, x, b, x): one target
    with_grad_target(x, true, [&](T* dx, const T* prior) { run(dx, prior, nullptr, nullptr); });
    y.accumulate_grad(Tensor<T, B>(b.value() * g));  // after x's target is committed
  } else {
    with_grad_target(x, scale_dx, [&](T* dx, const T* dx_prior) {
      with_grad_target(y, want_dy,
                       [&](T* dy, const T* dy_prior) { run(dx, dx_prior, dy, dy_prior); });
    });
  }
  if (rows == 0) {  // no rows: the sums are empty
    if (want_da) da.fill(T(0));
    if (want_db) db.fill(T(0));
  }
  if (want_da) a->accumulate_grad(da);
  if (want_db) b.accumulate_grad(db);
}
}  // namespace detail

// ---- tensor level ---------------------------------------------------------------------------
template <class T, class B>
Tensor<T, B> channel_mix(const Tensor<T, B>& a, const Tensor<T, B>& x, const Tensor<T, B>& b,
                         const Tensor<T, B>& y) {
  return detail::channel_mix_forward(&a, x, b, y);
}
template <class T, class B>
Tensor<T, B> channel_mix(const Tensor<T, B>& x, const Tensor<T, B>& b, const Tensor<T, B>& y) {
  return detail::channel_mix_forward(static_cast<const Tensor<T, B>*>(nullptr), x, b, y);
}

// ---- differentiable -------------------------------------------------------------------------
template <class T, class B>
Var<T, B> channel_mix(const Var<T, B>& a, const Var<T, B>& x, const Var<T, B>& b,
                      const Var<T, B>& y) {
  const auto av = a.value();
  auto out = detail::channel_mix_forward(&av, x.value(), b.value(), y.value());
  return Var<T, B>::record("channel_mix", out, {a, x, b, y}, [a, x, b, y](const Tensor<T, B>& g) {
    detail::channel_mix_backward(&a, x, b, y, g);
  });
}
template <class T, class B>
Var<T, B> channel_mix(const Var<T, B>& x, const Var<T, B>& b, const Var<T, B>& y) {
  auto out = detail::channel_mix_forward(static_cast<const Tensor<T, B>*>(nullptr), x.value(),
                                         b.value(), y.value());
  // (g, g16): x's gradient is g itself, and the bf16 copy of g that its writer may have made
  // (the next GPT block's entry does) goes on with it, so x's producer need not round g again
  return Var<T, B>::record(
      "channel_mix", out, {x, b, y}, [x, b, y](const Tensor<T, B>& g, const Tensor<bf16, B>& g16) {
        detail::channel_mix_backward(static_cast<const Var<T, B>*>(nullptr), x, b, y,
                                     g.defined() ? g : Var<T, B>::widened(g16), g16);
      });
}

}  // namespace ternary
