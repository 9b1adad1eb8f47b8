// Reductions: sum, mean, max over axes (keepdim optional), and sum_to (the backward of
// broadcasting). Kernels: backend/cpu/reduce.hpp. Tests: tests/test_reduce.cpp.
//
//   y = sum(x, axes)          dy/dx: broadcast the output gradient back over the axes
//   y = mean(x, axes)         dy/dx: the same, divided by the number of elements reduced
//   y = max(x, axes)          dy/dx: the output gradient goes to the first maximum only
#pragma once

#include <algorithm>
#include <vector>

#include "ternary/autograd/var.hpp"
#include "ternary/backend/cpu/reduce.hpp"

namespace ternary {

namespace detail {
// Normalized, sorted, unique axes; an empty list means all axes.
inline std::vector<int> reduction_axes(const std::vector<int64_t>& axes, int rank, const char* op) {
  std::vector<int> r;
  if (axes.empty())
    for (int i = 0; i < rank; ++i) r.push_back(i);
  for (int64_t a : axes) r.push_back(normalize_axis(a, rank, op));
  std::sort(r.begin(), r.end());
  if (std::adjacent_find(r.begin(), r.end()) != r.end())
    throw ShapeError(detail::cat(op, ": an axis is listed twice"));
  return r;
}
inline Shape squeeze_axes(const Shape& keep, const std::vector<int>& axes) {
  Shape s;
  for (int i = 0; i < keep.size(); ++i)
    if (!std::binary_search(axes.begin(), axes.end(), i)) s.push_back(keep[i]);
  return s;
}
}  // namespace detail

// ---- tensor level ---------------------------------------------------------------------------
template <class T, class B>
Tensor<T, B> sum(const Tensor<T, B>& x, const std::vector<int64_t>& axes = {},
                 bool keepdim = false) {
  auto ax = detail::reduction_axes(axes, x.dim(), "sum");
  auto out = backend::reduce_sum(B{}, x, ax);
  return keepdim ? out : out.reshape(detail::squeeze_axes(out.shape(), ax));
}
template <class T, class B>
Tensor<T, B> mean(const Tensor<T, B>& x, const std::vector<int64_t>& axes = {},
                  bool keepdim = false) {
  auto s = sum(x, axes, keepdim);
  const double count = double(x.numel()) / double(std::max<int64_t>(s.numel(), 1));
  s *= T(1.0 / count);
  return s;
}
template <class T, class B>
Tensor<T, B> max(const Tensor<T, B>& x, const std::vector<int64_t>& axes = {},
                 bool keepdim = false) {
  auto ax = detail::reduction_axes(axes, x.dim(), "max");
  auto out = backend::reduce_max(B{}, x, ax, nullptr);
  return keepdim ? out : out.reshape(detail::squeeze_axes(out.shape(), ax));
}

// Sums a gradient of a broadcast shape back to `shape` (the backward of broadcasting).
template <class T, class B>
Tensor<T, B> sum_to(const Tensor<T, B>& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  const int lead = g.dim() - shape.size();
  if (lead < 0)
    throw ShapeError(detail::cat("sum_to: cannot reduce shape ", g.shape(), " to ", shape));
  // Reused by each thread: every broadcast op's backward lands here, and the kernels take a
  // std::vector (a fresh one per call would be a heap allocation per op and step).
  thread_local std::vector<int> axes;
  axes.clear();
  for (int i = 0; i < g.dim(); ++i) {
    if (i < lead)
      axes.push_back(i);
    else if (shape[i - lead] == 1 && g.shape()[i] != 1)
      axes.push_back(i);
    else if (shape[i - lead] != g.shape()[i])
      throw ShapeError(detail::cat("sum_to: cannot reduce shape ", g.shape(), " to ", shape));
  }
  return backend::reduce_sum(B{}, g, axes).reshape(shape);
}

// ---- differentiable -------------------------------------------------------------------------
template <class T, class B>
Var<T, B> sum(const Var<T, B>& x, const std::vector<int64_t>& axes = {}, bool keepdim = false) {
  auto ax = detail::reduction_axes(axes, x.dim(), "sum");
  Shape keep_shape = backend::cpu_detail::plan_reduction(x.shape(), ax).out_keepdim;
  return Var<T, B>::record("sum", sum(x.value(), axes, keepdim), {x},
                           [x, keep_shape](const Tensor<T, B>& g) {
                             x.accumulate_grad(g.reshape(keep_shape).expand(x.shape()));
                           });
}
template <class T, class B>
Var<T, B> mean(const Var<T, B>& x, const std::vector<int64_t>& axes = {}, bool keepdim = false) {
  auto ax = detail::reduction_axes(axes, x.dim(), "mean");
  Shape keep_shape = backend::cpu_detail::plan_reduction(x.shape(), ax).out_keepdim;
  const T scale = T(double(numel(keep_shape)) / double(std::max<int64_t>(x.numel(), 1)));
  return Var<T, B>::record("mean", mean(x.value(), axes, keepdim), {x},
                           [x, keep_shape, scale](const Tensor<T, B>& g) {
                             x.accumulate_grad(g.reshape(keep_shape).expand(x.shape()) * scale);
                           });
}
template <class T, class B>
Var<T, B> max(const Var<T, B>& x, const std::vector<int64_t>& axes = {}, bool keepdim = false) {
  auto ax = detail::reduction_axes(axes, x.dim(), "max");
  std::vector<int64_t> argmax;
  auto out = backend::reduce_max(B{}, x.value(), ax, &argmax);
  Shape keep_shape = out.shape();
  if (!keepdim) out = out.reshape(detail::squeeze_axes(keep_shape, ax));
  return Var<T, B>::record(
      "max", out, {x}, [x, ax, argmax = std::move(argmax)](const Tensor<T, B>& g) {
        // Scatter into the [kept..., reduced...] layout, then permute back to x's axes.
        auto p = backend::cpu_detail::plan_reduction(x.shape(), ax);
        std::vector<int64_t> order;
        Shape permuted;
        for (int i = 0; i < x.dim(); ++i)
          if (!p.reduced[i]) order.push_back(i);
        for (int i = 0; i < x.dim(); ++i)
          if (p.reduced[i]) order.push_back(i);
        for (int64_t a : order) permuted.push_back(x.shape()[int(a)]);
        auto dx_perm = Tensor<T, B>::zeros(permuted);
        auto gc = g.contiguous();
        const int64_t inner = argmax.empty() ? 0 : x.numel() / int64_t(argmax.size());
        if constexpr (B::on_host) {
          for (size_t r = 0; r < argmax.size(); ++r)
            dx_perm.data()[r * inner + argmax[r]] = gc.data()[r];
        } else {  // device memory: the backend scatters (found by the tag, e.g. backend/cuda)
          max_backward_scatter(B{}, gc, argmax, inner, dx_perm);
        }
        std::vector<int64_t> inverse(order.size());
        for (size_t i = 0; i < order.size(); ++i) inverse[order[i]] = int64_t(i);
        x.accumulate_grad(dx_perm.permute(inverse));
      });
}

}  // namespace ternary
