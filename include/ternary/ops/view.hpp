// Differentiable views and joins: reshape, transpose, permute, slice, narrow, select,
// unsqueeze, squeeze, expand, concat. A view's backward applies the inverse view to the
// gradient (slices scatter it into zeros); the pure views (reshape, transpose, permute,
// unsqueeze, squeeze) pass a gradient born in bf16 on as bf16 (Var::accumulate_grad_bf16: the
// attention's dq, dk, dv reach the q, k, v projections through the head split).
// Tests: tests/test_view.cpp.
#pragma once

#include <initializer_list>
#include <vector>

#include "ternary/autograd/var.hpp"
#include "ternary/ops/reduce.hpp"

namespace ternary {

namespace detail {
// A pure view's backward rule: x's gradient is back(g), the inverse view of the output's
// gradient, in the precision it came in (fp32, or bf16 where a kernel wrote it so).
template <class T, class B, class Back>
auto view_rule(const Var<T, B>& x, Back back) {
  return [x, back](const Tensor<T, B>& g, const Tensor<bf16, B>& g16) {
    if (g.defined())  // (g16 beside it is a bf16 copy: the view passes g on)
      x.accumulate_grad(back(g, x));
    else
      x.accumulate_grad_bf16(back(g16, x));
  };
}
}  // namespace detail

namespace detail {
// A pure view y = view(x) on the tape: of x's bf16 copy too where x has one, and of that alone
// where x's value is held in bf16 only (Var::record_bf16_only: no widening for a view).
template <class T, class B, class View, class Rule>
Var<T, B> record_view(const char* op, const Var<T, B>& x, View view, Rule rule) {
  if (x.value_in_bf16_only())
    return Var<T, B>::record_bf16_only(op, view(x.value_bf16()), {x}, rule);
  auto y = Var<T, B>::record(op, view(x.value()), {x}, rule);
  if (x.value_bf16().defined()) y.set_value_bf16(view(x.value_bf16()));
  return y;
}
}  // namespace detail

template <class T, class B>
Var<T, B> reshape(const Var<T, B>& x, const Shape& shape) {
  return detail::record_view(
      "reshape", x, [&](const auto& v) { return v.reshape(shape); },
      detail::view_rule(x,
                        [](const auto& g, const Var<T, B>& in) { return g.reshape(in.shape()); }));
}
template <class T, class B>
Var<T, B> transpose(const Var<T, B>& x, int64_t a0, int64_t a1) {
  return detail::record_view(
      "transpose", x, [&](const auto& v) { return v.transpose(a0, a1); },
      detail::view_rule(x,
                        [a0, a1](const auto& g, const Var<T, B>&) { return g.transpose(a0, a1); }));
}
template <class T, class B>
Var<T, B> permute(const Var<T, B>& x, const Dims& order) {
  Dims inverse = Dims::filled(order.size(), 0);  // inline: no heap per call
  for (int i = 0; i < order.size(); ++i)
    inverse[normalize_axis(order[i], x.dim(), "permute")] = int64_t(i);
  return detail::record_view(
      "permute", x, [&](const auto& v) { return v.permute(order); },
      detail::view_rule(x,
                        [inverse](const auto& g, const Var<T, B>&) { return g.permute(inverse); }));
}
// Braced lists and std::vector orders (a braced list would be ambiguous between the two).
template <class T, class B>
Var<T, B> permute(const Var<T, B>& x, std::initializer_list<int64_t> order) {
  return permute(x, Dims(order));
}
template <class T, class B>
Var<T, B> permute(const Var<T, B>& x, const std::vector<int64_t>& order) {
  return permute(x, Dims(order));
}

namespace detail {
// Backward of any view that picks a sub-block: g added into that block of x's gradient. Where
// the gradient so far is x's own buffer (a parameter's, from the second micro-batch on) that is
// one pass over the block, in place; otherwise the gradient so far (or zeros), then the block.
template <class T, class B, class View>
void scatter_view_grad(const Var<T, B>& x, const Tensor<T, B>& g, View&& view) {
  x.accumulate_grad_with([&](const Tensor<T, B>& dst, const Tensor<T, B>& prior) {
    Tensor<T, B> d = dst;
    if (!prior.defined())
      d.fill(T(0));
    else if (prior.data() != dst.data())
      d.assign(prior);
    Tensor<T, B> block = view(d);
    block += g;
  });
}
}  // namespace detail

template <class T, class B>
Var<T, B> slice(const Var<T, B>& x, int64_t axis, int64_t start, int64_t end, int64_t step = 1) {
  return Var<T, B>::record(
      "slice", x.value().slice(axis, start, end, step), {x}, [=](const Tensor<T, B>& g) {
        detail::scatter_view_grad(
            x, g, [&](const Tensor<T, B>& t) { return t.slice(axis, start, end, step); });
      });
}
template <class T, class B>
Var<T, B> narrow(const Var<T, B>& x, int64_t axis, int64_t start, int64_t length) {
  return Var<T, B>::record(
      "narrow", x.value().narrow(axis, start, length), {x}, [=](const Tensor<T, B>& g) {
        detail::scatter_view_grad(
            x, g, [&](const Tensor<T, B>& t) { return t.narrow(axis, start, length); });
      });
}
template <class T, class B>
Var<T, B> select(const Var<T, B>& x, int64_t axis, int64_t index) {
  return Var<T, B>::record(
      "select", x.value().select(axis, index), {x}, [=](const Tensor<T, B>& g) {
        detail::scatter_view_grad(x, g,
                                  [&](const Tensor<T, B>& t) { return t.select(axis, index); });
      });
}
template <class T, class B>
Var<T, B> unsqueeze(const Var<T, B>& x, int64_t axis) {
  return Var<T, B>::record("unsqueeze", x.value().unsqueeze(axis), {x},
                           detail::view_rule(x, [](const auto& g, const Var<T, B>& in) {
                             return g.reshape(in.shape());
                           }));
}
template <class T, class B>
Var<T, B> squeeze(const Var<T, B>& x, int64_t axis) {
  return Var<T, B>::record("squeeze", x.value().squeeze(axis), {x},
                           detail::view_rule(x, [](const auto& g, const Var<T, B>& in) {
                             return g.reshape(in.shape());
                           }));
}
// Broadcast to a larger shape; the backward sums over the broadcast axes.
template <class T, class B>
Var<T, B> expand(const Var<T, B>& x, const Shape& shape) {
  return Var<T, B>::record("expand", x.value().expand(shape), {x},
                           [x](const Tensor<T, B>& g) { x.accumulate_grad(sum_to(g, x.shape())); });
}

// ---- concat ---------------------------------------------------------------------------------
template <class T, class B>
Tensor<T, B> concat(const std::vector<Tensor<T, B>>& xs, int64_t axis) {
  if (xs.empty()) throw ShapeError("concat: no tensors given");
  const int d = normalize_axis(axis, xs[0].dim(), "concat");
  Shape out_shape = xs[0].shape();
  out_shape[d] = 0;
  for (const auto& x : xs) {
    Shape s = x.shape(), ref = xs[0].shape();
    s[d] = ref[d] = 0;
    if (x.dim() != xs[0].dim() || !(s == ref))
      throw ShapeError(detail::cat("concat: shapes ", xs[0].shape(), " and ", x.shape(),
                                   " differ outside axis ", d));
    out_shape[d] += x.shape()[d];
  }
  auto out = Tensor<T, B>::empty(out_shape);
  int64_t at = 0;
  for (const auto& x : xs) {
    out.narrow(d, at, x.shape()[d]).assign(x);
    at += x.shape()[d];
  }
  return out;
}
template <class T, class B>
Var<T, B> concat(const std::vector<Var<T, B>>& xs, int64_t axis) {
  std::vector<Tensor<T, B>> values;
  for (const auto& x : xs) values.push_back(x.value());
  auto out = concat(values, axis);
  const int d = normalize_axis(axis, xs[0].dim(), "concat");
  return Var<T, B>::record("concat", out, xs, [xs, d](const Tensor<T, B>& g) {
    int64_t at = 0;
    for (const auto& x : xs) {
      if (x.requires_grad()) x.accumulate_grad(g.narrow(d, at, x.shape()[d]));
      at += x.shape()[d];
    }
  });
}

}  // namespace ternary
