// softmax and log_softmax along one axis (the last by default), for Tensor and Var.
// Kernels: backend/cpu/softmax.hpp (rows of a contiguous matrix). The last axis of a
// contiguous tensor is the fast path; another axis (or a strided view) is first moved to
// the end and made contiguous. Tests: tests/test_softmax.cpp.
//
//   y = softmax(x):      y_j = exp(x_j) / sum_k exp(x_k)   dx = y * (g - sum(g * y))
//   y = log_softmax(x):  y_j = x_j - log sum_k exp(x_k)     dx = g - softmax(x) * sum(g)
#pragma once

#include "ternary/autograd/var.hpp"
#include "ternary/backend/cpu/softmax.hpp"

namespace ternary {

namespace detail {

// The input laid out as contiguous rows along `axis` (a view when it already is).
template <class T, class B>
struct SoftmaxRows {
  int axis;        // normalized; -1 for a 0-d input
  bool moved;      // axis was swapped with the last one
  Tensor<T, B> x;  // contiguous, axis last
  int64_t rows, n;
};

template <class T, class B>
SoftmaxRows<T, B> softmax_rows(const Tensor<T, B>& x, int64_t axis, const char* op) {
  SoftmaxRows<T, B> r;
  if (x.dim() == 0) {
    if (axis != 0 && axis != -1)
      throw IndexError(detail::cat(op, ": axis ", axis, " is out of range for a tensor of rank 0"));
    r.axis = -1;
    r.moved = false;
    r.x = x.reshape(Shape{1});
  } else {
    r.axis = normalize_axis(axis, x.dim(), op);
    r.moved = r.axis != x.dim() - 1;
    r.x = (r.moved ? x.transpose(r.axis, -1) : x).contiguous();
  }
  r.n = r.x.size(-1);
  r.rows = 1;
  for (int i = 0; i + 1 < r.x.dim(); ++i) r.rows *= r.x.size(i);
  return r;
}

// Undoes softmax_rows' layout on a result `t` shaped like rows.x.
template <class T, class B>
Tensor<T, B> softmax_unrows(const SoftmaxRows<T, B>& r, const Tensor<T, B>& t, const Shape& shape) {
  return r.moved ? t.transpose(r.axis, -1) : t.reshape(shape);
}

template <class T, class B>
Tensor<T, B> softmax_forward_rows(const SoftmaxRows<T, B>& r, bool log) {
  auto y = Tensor<T, B>::empty(r.x.shape());
  backend::softmax_forward(B{}, r.x.reshape(Shape{r.rows, r.n}), y.reshape(Shape{r.rows, r.n}),
                           log);
  return y;
}

// Records softmax / log_softmax; y_rows is the forward output in rows layout.
template <class T, class B>
Var<T, B> softmax_record(const char* op, const Var<T, B>& x, int64_t axis, bool log) {
  auto r = softmax_rows(x.value(), axis, op);
  Tensor<T, B> y_rows = softmax_forward_rows(r, log);
  Tensor<T, B> out = softmax_unrows(r, y_rows, x.shape()).contiguous();
  const Shape shape = x.shape();
  const int ax = r.axis;
  const bool moved = r.moved;
  const int64_t rows = r.rows, n = r.n;
  return Var<T, B>::record(op, out, {x}, [=](const Tensor<T, B>& g) {
    // g in rows layout, contiguous.
    Tensor<T, B> g_rows = (moved ? g.transpose(ax, -1) : g.reshape(y_rows.shape())).contiguous();
    auto dx = Tensor<T, B>::empty(y_rows.shape());
    backend::softmax_backward(B{}, y_rows.reshape(Shape{rows, n}), g_rows.reshape(Shape{rows, n}),
                              dx.reshape(Shape{rows, n}), log);
    x.accumulate_grad(moved ? dx.transpose(ax, -1) : dx.reshape(shape));
  });
}

}  // namespace detail

// ---- tensor level ---------------------------------------------------------------------------
template <class T, class B>
Tensor<T, B> softmax(const Tensor<T, B>& x, int64_t axis = -1) {
  auto r = detail::softmax_rows(x, axis, "softmax");
  return detail::softmax_unrows(r, detail::softmax_forward_rows(r, false), x.shape()).contiguous();
}
template <class T, class B>
Tensor<T, B> log_softmax(const Tensor<T, B>& x, int64_t axis = -1) {
  auto r = detail::softmax_rows(x, axis, "log_softmax");
  return detail::softmax_unrows(r, detail::softmax_forward_rows(r, true), x.shape()).contiguous();
}

// ---- differentiable -------------------------------------------------------------------------
template <class T, class B>
Var<T, B> softmax(const Var<T, B>& x, int64_t axis = -1) {
  return detail::softmax_record("softmax", x, axis, false);
}
template <class T, class B>
Var<T, B> log_softmax(const Var<T, B>& x, int64_t axis = -1) {
  return detail::softmax_record("log_softmax", x, axis, true);
}

}  // namespace ternary
