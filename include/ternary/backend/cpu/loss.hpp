// CPU cross-entropy kernels over the rows of contiguous [rows, V] logits, fused with
// log-softmax (and optionally with a softcap z = c tanh(x / c) of the logits): the forward
// makes each row's logsumexp and loss in one pass over the row's data; the backward makes
// the logits' gradient in one pass from the saved per-row logsumexp, recomputing exp (and tanh)
// rather than storing a [rows, V] softmax. Targets are validated by ops/loss.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>
#include "ternary/core/simd.hpp"

#include "ternary/backend/cpu/cpu.hpp"
#include "ternary/backend/cpu/elementwise.hpp"
#include "ternary/backend/cpu/softmax.hpp"
#include "ternary/core/tensor.hpp"

namespace ternary::backend {

struct CrossEntropySums {
  double loss_sum = 0;  // sum over non-ignored rows of (logsumexp(z) - z[target])
  int64_t count = 0;    // non-ignored rows
};

namespace cpu_detail {
// z = c * tanh(x / c), written in the same operation order as the softcap expression
// (ops/elementwise.hpp: tanh(x / c) * c), so both round alike.
template <class T>
void softcap_row(const T* x, T* z, int64_t n, T cap) {
  using batch = xsimd::batch<T>;
  constexpr int64_t W = batch::size;
  const batch cb(cap);
  int64_t j = 0;
  for (; j + W <= n; j += W)
    (xsimd::tanh(batch::load_unaligned(x + j) / cb) * cb).store_unaligned(z + j);
  for (; j < n; ++j) z[j] = std::tanh(x[j] / cap) * cap;
}
}  // namespace cpu_detail

// Per row r with target t = targets[r] != ignore_index (z = softcap(x) when cap > 0, else x):
//   zmax[r] = max_j z_j,  logsum[r] = log(sum_j exp(z_j - zmax[r])),  loss_r = logsum[r] - (z_t -
//   zmax[r])
// (logsumexp = zmax + logsum, kept in two parts: at logits of 1e4 a float logsumexp has lost
// the low bits that exp(z - logsumexp) needs.) Both are 0 on ignored rows. Returns the loss
// sum and the number of non-ignored rows.
template <class T>
CrossEntropySums cross_entropy_forward(cpu, const Tensor<T, cpu>& logits,
                                       const Tensor<int32_t, cpu>& targets, int32_t ignore_index,
                                       T cap, const Tensor<T, cpu>& zmax,
                                       const Tensor<T, cpu>& logsum) {
  using namespace cpu_detail;
  const int64_t rows = logits.size(0), V = logits.size(1);
  check_rows("cross_entropy_forward", logits, rows, V);
  if (targets.numel() != rows || zmax.numel() != rows || logsum.numel() != rows ||
      !targets.is_contiguous() || !zmax.is_contiguous() || !logsum.is_contiguous())
    throw ShapeError(detail::cat("cross_entropy_forward: targets ", targets.shape(), ", zmax ",
                                 zmax.shape(), ", logsum ", logsum.shape(), " for ", rows,
                                 " contiguous rows"));
  const T* xs = logits.data();
  const int32_t* ts = targets.data();
  T *ms = zmax.data(), *ls = logsum.data();
  double loss_sum = 0;
  int64_t count = 0;
  const bool big = rows > 1 && rows * V >= kParallelThreshold;
#pragma omp parallel if (big) reduction(+ : loss_sum, count)
  {
    const auto buf = Tensor<T, cpu>::empty({cap > T(0) ? V : 0});  // block cache: no heap
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t t = ts[r];
      if (t == ignore_index) {
        ms[r] = ls[r] = T(0);
        continue;
      }
      const T* z = xs + r * V;
      if (cap > T(0)) {
        softcap_row(z, buf.data(), V, cap);
        z = buf.data();
      }
      const T m = row_max(z, V);
      const T l = std::log(row_exp_sum(z, V, m, static_cast<T*>(nullptr)));
      ms[r] = m;
      ls[r] = l;
      loss_sum += double(l) - double(z[t] - m);
      count += 1;
    }
  }
  return {loss_sum, count};
}

// dx[r, j] = scale * (exp((z_j - zmax[r]) - logsum[r]) - [j == t]) * dz_j/dx_j, and 0 on
// ignored rows, where dz/dx = 1 - (z / c)^2 with a softcap (1 without). scale = g / count.
template <class T>
void cross_entropy_backward(cpu, const Tensor<T, cpu>& logits, const Tensor<int32_t, cpu>& targets,
                            int32_t ignore_index, T cap, const Tensor<T, cpu>& zmax,
                            const Tensor<T, cpu>& logsum, T scale, const Tensor<T, cpu>& dx) {
  using namespace cpu_detail;
  using batch = xsimd::batch<T>;
  constexpr int64_t W = batch::size;
  const int64_t rows = logits.size(0), V = logits.size(1);
  check_rows("cross_entropy_backward", logits, rows, V);
  check_rows("cross_entropy_backward", dx, rows, V);
  const T* xs = logits.data();
  const int32_t* ts = targets.data();
  const T *ms = zmax.data(), *ls = logsum.data();
  T* ds = dx.data();
  const batch sb(scale), one(T(1)), cb(cap > T(0) ? cap : T(1));
#pragma omp parallel for schedule(static) if (rows > 1 && rows * V >= kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t t = ts[r];
    const T* x = xs + r * V;
    T* d = ds + r * V;
    if (t == ignore_index) {
      std::fill(d, d + V, T(0));
      continue;
    }
    const T m = ms[r], l = ls[r];
    const batch mb(m), lb(l);
    int64_t j = 0;
    if (cap > T(0)) {
      for (; j + W <= V; j += W) {
        batch th = xsimd::tanh(batch::load_unaligned(x + j) / cb);
        (fn::batch_exp((th * cb - mb) - lb) * sb * (one - th * th)).store_unaligned(d + j);
      }
      for (; j < V; ++j) {
        T th = std::tanh(x[j] / cap);
        d[j] = std::exp((th * cap - m) - l) * scale * (T(1) - th * th);
      }
      const T tt = std::tanh(x[t] / cap);
      d[t] -= scale * (T(1) - tt * tt);
    } else {
      for (; j + W <= V; j += W)
        (fn::batch_exp((batch::load_unaligned(x + j) - mb) - lb) * sb).store_unaligned(d + j);
      for (; j < V; ++j) d[j] = std::exp((x[j] - m) - l) * scale;
      d[t] -= scale;
    }
  }
}

}  // namespace ternary::backend
