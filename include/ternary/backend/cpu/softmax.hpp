// CPU softmax kernels over the rows of a contiguous [rows, n] matrix, and the row helpers
// (max, exp-sum, dot) that the fused loss kernels (backend/cpu/loss.hpp) reuse. Rows are
// split across OpenMP threads; each row runs in xsimd batches with a scalar tail.
//
// Numerically stable: exp(x - max(x)) never overflows, so logits of 1e4 are fine.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include "ternary/core/simd.hpp"

#include "ternary/backend/cpu/cpu.hpp"
#include "ternary/backend/cpu/elementwise.hpp"
#include "ternary/core/tensor.hpp"

namespace ternary::backend {

namespace cpu_detail {

template <class T>
T row_max(const T* x, int64_t n) {
  using batch = xsimd::batch<T>;
  constexpr int64_t W = batch::size;
  T m = -std::numeric_limits<T>::infinity();
  int64_t i = 0;
  if (n >= W) {
    batch acc = batch::load_unaligned(x);
    for (i = W; i + W <= n; i += W) acc = xsimd::max(acc, batch::load_unaligned(x + i));
    alignas(64) T lanes[W];
    acc.store_aligned(lanes);
    for (int64_t k = 0; k < W; ++k) m = std::max(m, lanes[k]);
  }
  for (; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

// sum_i exp(x_i - shift); also stores each exp(x_i - shift) into out when out is not null.
template <class T>
T row_exp_sum(const T* x, int64_t n, T shift, T* out) {
  using batch = xsimd::batch<T>;
  constexpr int64_t W = batch::size;
  const batch sb(shift);
  batch acc(T(0));
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    batch e = fn::batch_exp(batch::load_unaligned(x + i) - sb);
    if (out) e.store_unaligned(out + i);
    acc += e;
  }
  T s = xsimd::hadd(acc);
  for (; i < n; ++i) {
    T e = std::exp(x[i] - shift);
    if (out) out[i] = e;
    s += e;
  }
  return s;
}

template <class T>
T row_dot(const T* a, const T* b, int64_t n) {
  using batch = xsimd::batch<T>;
  constexpr int64_t W = batch::size;
  batch acc(T(0));
  int64_t i = 0;
  for (; i + W <= n; i += W)
    acc = xsimd::fma(batch::load_unaligned(a + i), batch::load_unaligned(b + i), acc);
  T s = xsimd::hadd(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <class T>
T row_sum(const T* a, int64_t n) {
  using batch = xsimd::batch<T>;
  constexpr int64_t W = batch::size;
  batch acc(T(0));
  int64_t i = 0;
  for (; i + W <= n; i += W) acc += batch::load_unaligned(a + i);
  T s = xsimd::hadd(acc);
  for (; i < n; ++i) s += a[i];
  return s;
}

template <class T>
void check_rows(const char* op, const Tensor<T, cpu>& t, int64_t rows, int64_t n) {
  if (t.dim() != 2 || t.size(0) != rows || t.size(1) != n || !t.is_contiguous())
    throw ShapeError(detail::cat(op, ": kernel expects a contiguous [", rows, ", ", n,
                                 "] tensor, got shape ", t.shape(), " strides ", t.strides()));
}

}  // namespace cpu_detail

// y = softmax(x) (or log_softmax when `log`) along the rows of contiguous [rows, n] x.
//   softmax:     y_j = exp(x_j - m) / s,   m = max_j x_j,  s = sum_j exp(x_j - m)
//   log_softmax: y_j = (x_j - m) - log(s)
template <class T>
void softmax_forward(cpu, const Tensor<T, cpu>& x, const Tensor<T, cpu>& y, bool log) {
  using namespace cpu_detail;
  const int64_t rows = x.size(0), n = x.size(1);
  check_rows("softmax_forward", x, rows, n);
  check_rows("softmax_forward", y, rows, n);
  if (n == 0) return;
  const T* xs = x.data();
  T* ys = y.data();
#pragma omp parallel for schedule(static) if (rows > 1 && rows * n >= kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = xs + r * n;
    T* yr = ys + r * n;
    const T m = row_max(xr, n);
    if (log) {
      // (x - m) - log(s), not x - (m + log(s)): x - m is exact near the max, so large
      // logits keep their small log-probabilities.
      const T ls = std::log(row_exp_sum(xr, n, m, static_cast<T*>(nullptr)));
      for (int64_t j = 0; j < n; ++j) yr[j] = (xr[j] - m) - ls;
    } else {
      const T inv = T(1) / row_exp_sum(xr, n, m, yr);
      for (int64_t j = 0; j < n; ++j) yr[j] *= inv;
    }
  }
}

// dx from the forward output y and the output gradient g (all contiguous [rows, n]):
//   softmax:     dx = y * (g - sum(g * y))
//   log_softmax: dx = g - exp(y) * sum(g)
template <class T>
void softmax_backward(cpu, const Tensor<T, cpu>& y, const Tensor<T, cpu>& g,
                      const Tensor<T, cpu>& dx, bool log) {
  using namespace cpu_detail;
  const int64_t rows = y.size(0), n = y.size(1);
  check_rows("softmax_backward", y, rows, n);
  check_rows("softmax_backward", g, rows, n);
  check_rows("softmax_backward", dx, rows, n);
  if (n == 0) return;
  const T *ys = y.data(), *gs = g.data();
  T* ds = dx.data();
#pragma omp parallel for schedule(static) if (rows > 1 && rows * n >= kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const T *yr = ys + r * n, *gr = gs + r * n;
    T* dr = ds + r * n;
    if (log) {
      using batch = xsimd::batch<T>;
      constexpr int64_t W = batch::size;
      const T sg = row_sum(gr, n);
      int64_t j = 0;
      for (; j + W <= n; j += W)
        (batch::load_unaligned(gr + j) - fn::batch_exp(batch::load_unaligned(yr + j)) * sg)
            .store_unaligned(dr + j);
      for (; j < n; ++j) dr[j] = gr[j] - std::exp(yr[j]) * sg;
    } else {
      const T d = row_dot(gr, yr, n);
      for (int64_t j = 0; j < n; ++j) dr[j] = yr[j] * (gr[j] - d);
    }
  }
}

}  // namespace ternary::backend
