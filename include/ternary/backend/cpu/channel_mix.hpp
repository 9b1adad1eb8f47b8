// CPU kernels of channel_mix (the op and its math: ops/channel_mix.hpp) over contiguous rows
// [rows, D] with per-channel weights a, b of D values (a may be null: 1):
//   forward:   out = a * x + b * y
//   backward:  dx = a * g (or g), dy = b * g, da = sum over rows of g * x, db = ... g * y
// Threads own disjoint rows; da and db are summed from per-thread partial rows (deterministic
// for a given thread count, as rms_norm's dgain).
#pragma once

#include <omp.h>

#include <cstdint>
#include "ternary/core/simd.hpp"

#include "ternary/backend/cpu/cpu.hpp"
#include "ternary/backend/cpu/elementwise.hpp"
#include "ternary/core/tensor.hpp"

namespace ternary::backend {

template <class T>
void channel_mix_forward(cpu, const T* a, const T* x, const T* b, const T* y, T* out, int64_t rows,
                         int64_t D) {
  using batch = xsimd::batch<T>;
  constexpr int64_t W = batch::size;
#pragma omp parallel for schedule(static) if (rows * D >= cpu_detail::kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const T *xr = x + r * D, *yr = y + r * D;
    T* o = out + r * D;
    int64_t j = 0;
    if (a)
      for (; j + W <= D; j += W)
        xsimd::fma(batch::load_unaligned(a + j), batch::load_unaligned(xr + j),
                   batch::load_unaligned(b + j) * batch::load_unaligned(yr + j))
            .store_unaligned(o + j);
    else
      for (; j + W <= D; j += W)
        xsimd::fma(batch::load_unaligned(b + j), batch::load_unaligned(yr + j),
                   batch::load_unaligned(xr + j))
            .store_unaligned(o + j);
    for (; j < D; ++j) o[j] = a ? a[j] * xr[j] + b[j] * yr[j] : xr[j] + b[j] * yr[j];
  }
}

// y in bf16 (the bf16 nodes' residual sums; the CPU runs them only as the reference)
template <class T>
void channel_mix_forward(cpu, const T* a, const T* x, const T* b, const bf16* y, T* out,
                         int64_t rows, int64_t D) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < D; ++j) {
      const T yv = T(float(y[r * D + j]));
      out[r * D + j] = a ? a[j] * x[r * D + j] + b[j] * yv : x[r * D + j] + b[j] * yv;
    }
}

// Any of dx, dy, da, db may be null (not wanted). dx with a null: the caller uses g itself.
// dx_prior / dy_prior (if not null) are added into dx / dy: the gradients so far, which may
// be dx / dy themselves.
template <class T>
void channel_mix_backward(cpu, const T* g, const T* a, const T* x, const T* b, const T* y, T* dx,
                          T* dy, T* da, T* db, int64_t rows, int64_t D, const T* dx_prior = nullptr,
                          const T* dy_prior = nullptr) {
  using batch = xsimd::batch<T>;
  constexpr int64_t W = batch::size;
  const bool big = rows > 1 && rows * D >= cpu_detail::kParallelThreshold;
  const int nt = big ? omp_get_max_threads() : 1;
  // Scratch as tensors: their memory comes from the block cache (no heap per call).
  const auto pa = Tensor<T, cpu>::zeros({da ? int64_t(nt) * D : 0});
  const auto pb = Tensor<T, cpu>::zeros({db ? int64_t(nt) * D : 0});
  // acc[j] += g[j] * v[j] over one row
  auto accumulate = [&](T* acc, const T* gr, const T* vr) {
    int64_t j = 0;
    for (; j + W <= D; j += W)
      xsimd::fma(batch::load_unaligned(gr + j), batch::load_unaligned(vr + j),
                 batch::load_unaligned(acc + j))
          .store_unaligned(acc + j);
    for (; j < D; ++j) acc[j] += gr[j] * vr[j];
  };
  // out[j] = w[j] * g[j] (+ prior[j]) over one row
  auto scale = [&](T* out, const T* w, const T* gr, const T* prior) {
    int64_t j = 0;
    if (prior) {
      for (; j + W <= D; j += W)
        xsimd::fma(batch::load_unaligned(w + j), batch::load_unaligned(gr + j),
                   batch::load_unaligned(prior + j))
            .store_unaligned(out + j);
      for (; j < D; ++j) out[j] = w[j] * gr[j] + prior[j];
    } else {
      for (; j + W <= D; j += W)
        (batch::load_unaligned(w + j) * batch::load_unaligned(gr + j)).store_unaligned(out + j);
      for (; j < D; ++j) out[j] = w[j] * gr[j];
    }
  };
#pragma omp parallel num_threads(nt) if (big)
  {
    const int tid = big ? omp_get_thread_num() : 0;
    T* acc_a = da ? pa.data() + int64_t(tid) * D : nullptr;
    T* acc_b = db ? pb.data() + int64_t(tid) * D : nullptr;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* gr = g + r * D;
      if (dx && a) scale(dx + r * D, a, gr, dx_prior ? dx_prior + r * D : nullptr);
      if (dy) scale(dy + r * D, b, gr, dy_prior ? dy_prior + r * D : nullptr);
      if (acc_a) accumulate(acc_a, gr, x + r * D);
      if (acc_b) accumulate(acc_b, gr, y + r * D);
    }
  }
  auto finish = [&](T* out, const Tensor<T, cpu>& partial) {
    for (int64_t j = 0; j < D; ++j) {
      T s = T(0);
      for (int t = 0; t < nt; ++t) s += partial.data()[int64_t(t) * D + j];
      out[j] = s;
    }
  };
  if (da) finish(da, pa);
  if (db) finish(db, pb);
}

// The weight side of a residual branch's backward where the branch's scale is folded into its
// weight's rows (ops/residual_linear.hpp: out = x + scale * (a w^T)). Given G = dout^T a
// [out, in] (the unscaled weight gradient's GEMM), w [out, in] and scale [out], one pass:
//   dw[j, k]   = dw_prior[j, k] + scale[j] G[j, k]        (dw null: not wanted)
//   dscale[j]  = dscale_prior[j] + sum_k w[j, k] G[j, k]  (dscale null: not wanted)
//   wb16[j, k] = bf16(scale[j] w[j, k])                   (the input gradient's GEMM operand)
// G may be null when neither gradient is wanted. A prior may be null (nothing so far) or the
// output itself.
template <class T>
void scaled_weight_backward(cpu, const T* G, const T* w, const T* scale, T* dw, const T* dw_prior,
                            T* dscale, const T* dscale_prior, bf16* wb16, int64_t out, int64_t in) {
#pragma omp parallel for schedule(static) if (out * in >= cpu_detail::kParallelThreshold)
  for (int64_t j = 0; j < out; ++j) {
    const T s = scale[j];
    const int64_t row = j * in;
    T dot = T(0);
    for (int64_t k = 0; k < in; ++k) {
      if (dw) dw[row + k] = (dw_prior ? dw_prior[row + k] : T(0)) + G[row + k] * s;
      if (dscale) dot += w[row + k] * G[row + k];
      wb16[row + k] = bf16(float(w[row + k] * s));
    }
    if (dscale) dscale[j] = (dscale_prior ? dscale_prior[j] : T(0)) + dot;
  }
}

}  // namespace ternary::backend
