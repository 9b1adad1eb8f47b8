// CPU reduction kernels: sum and max over a set of axes. Three paths, chosen by layout:
//  - reduce the trailing axes of a contiguous tensor: one SIMD pass per output element;
//  - reduce the leading axes (e.g. a bias gradient summed over batch and time): the kept
//    trailing block is added row by row into the output, in SIMD;
//  - anything else: permute the reduced axes to the end, make it contiguous, trailing path.
#pragma once

#include <array>
#include <limits>
#include <vector>
#include "ternary/core/simd.hpp"

#include "ternary/backend/cpu/cpu.hpp"
#include "ternary/core/tensor.hpp"

namespace ternary::backend {

namespace cpu_detail {

struct ReducePlan {
  std::array<bool, kMaxDims> reduced{};  // per axis of the input (inline: no heap per op)
  Shape out_keepdim;                     // output shape with reduced axes kept as 1
  bool trailing = true, leading = true;
};

inline ReducePlan plan_reduction(const Shape& shape, const std::vector<int>& axes) {
  ReducePlan p;
  for (int a : axes) p.reduced[a] = true;
  p.out_keepdim = shape;
  bool seen_reduced = false, seen_kept = false;
  for (int i = 0; i < shape.size(); ++i) {
    if (p.reduced[i]) {
      p.out_keepdim[i] = 1;
      if (seen_kept) p.leading = false;
      seen_reduced = true;
    } else {
      if (seen_reduced) p.trailing = false;
      seen_kept = true;
    }
  }
  return p;
}

template <class T>
T sum_contiguous(const T* x, int64_t n) {
  if constexpr (std::is_floating_point_v<T>) {
    using batch = xsimd::batch<T>;
    constexpr int64_t W = batch::size;
    batch acc0(T(0)), acc1(T(0));
    int64_t i = 0;
    for (; i + 2 * W <= n; i += 2 * W) {
      acc0 += batch::load_unaligned(x + i);
      acc1 += batch::load_unaligned(x + i + W);
    }
    for (; i + W <= n; i += W) acc0 += batch::load_unaligned(x + i);
    T s = xsimd::hadd(acc0 + acc1);
    for (; i < n; ++i) s += x[i];
    return s;
  } else {
    T s = 0;
    for (int64_t i = 0; i < n; ++i) s += x[i];
    return s;
  }
}

template <class T>
T max_contiguous(const T* x, int64_t n, int64_t* argmax) {
  T m = -std::numeric_limits<T>::infinity();
  int64_t am = 0;
  for (int64_t i = 0; i < n; ++i)
    if (x[i] > m || (i == 0)) {
      m = x[i];
      am = i;
    }
  if (argmax) *argmax = am;
  return m;
}

// The input viewed with reduced axes last and made contiguous: [outer, inner] rows.
template <class T>
Tensor<T, cpu> reduced_last(const Tensor<T, cpu>& x, const ReducePlan& p) {
  Dims order;
  for (int i = 0; i < x.dim(); ++i)
    if (!p.reduced[i]) order.push_back(i);
  for (int i = 0; i < x.dim(); ++i)
    if (p.reduced[i]) order.push_back(i);
  return x.permute(order).contiguous();
}

}  // namespace cpu_detail

// Sum over `axes` (already normalized, unique). Returns the keepdim shape; callers squeeze.
template <class T>
Tensor<T, cpu> reduce_sum(cpu, const Tensor<T, cpu>& x, const std::vector<int>& axes) {
  using namespace cpu_detail;
  ReducePlan p = plan_reduction(x.shape(), axes);
  auto out = Tensor<T, cpu>::empty(p.out_keepdim);
  const int64_t n_out = out.numel();
  const int64_t inner = n_out ? x.numel() / n_out : 0;
  if (x.numel() == 0) return out.fill(T(0));
  if (p.leading && !p.trailing && x.is_contiguous()) {
    // out[j] = sum_i x[i, j]: add rows into the output; split columns across threads.
    const T* src = x.data();
    T* dst = out.data();
    const int64_t rows = inner;
    const int64_t cols = n_out;
#pragma omp parallel for schedule(static) if (x.numel() >= (1 << 16) && cols >= 64)
    for (int64_t c0 = 0; c0 < cols; c0 += 64) {
      const int64_t c1 = std::min(cols, c0 + 64);
      for (int64_t j = c0; j < c1; ++j) dst[j] = T(0);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = c0; j < c1; ++j) dst[j] += src[i * cols + j];
    }
    return out;
  }
  Tensor<T, cpu> rows = p.trailing && x.is_contiguous() ? x : reduced_last(x, p);
  const T* src = rows.data();
  T* dst = out.data();
#pragma omp parallel for schedule(static) if (x.numel() >= (1 << 16) && n_out > 1)
  for (int64_t r = 0; r < n_out; ++r) dst[r] = sum_contiguous(src + r * inner, inner);
  return out;
}

// Max over `axes`; also returns, per output element, the flat index (within the reduced
// block, in reduced_last order) of the first maximum, which the backward pass needs.
template <class T>
Tensor<T, cpu> reduce_max(cpu, const Tensor<T, cpu>& x, const std::vector<int>& axes,
                          std::vector<int64_t>* argmax) {
  using namespace cpu_detail;
  ReducePlan p = plan_reduction(x.shape(), axes);
  auto out = Tensor<T, cpu>::empty(p.out_keepdim);
  const int64_t n_out = out.numel();
  const int64_t inner = n_out ? x.numel() / n_out : 0;
  if (inner == 0 && n_out > 0)
    throw ShapeError(detail::cat("max: cannot reduce over an empty axis (shape ", x.shape(), ")"));
  Tensor<T, cpu> rows = p.trailing && x.is_contiguous() ? x : reduced_last(x, p);
  if (argmax) argmax->resize(n_out);
  const T* src = rows.data();
  T* dst = out.data();
  for (int64_t r = 0; r < n_out; ++r)
    dst[r] = max_contiguous(src + r * inner, inner, argmax ? argmax->data() + r : nullptr);
  return out;
}

}  // namespace ternary::backend
