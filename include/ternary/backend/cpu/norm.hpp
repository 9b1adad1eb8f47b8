// CPU RMSNorm kernels over the rows of a contiguous [rows, D] matrix, fused: the forward
// writes y and the per-row rstd in one pass per row; the backward makes dx and dgain in
// one pass per row from x, gain and the saved rstd (x_hat is recomputed, not stored).
#pragma once

#include <omp.h>

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

// The GPT block's entry mix in front of a norm's rows (quant::mix_rms_norm_linear; the device's
// register kernels take it, backend/cuda/norm.cuh): the rows the norm reads are x_in, and the
// rows it normalises are x = a x_in + b x0 (a, b [D]). Forward: x is written to x_out.
// Backward: x's whole gradient gx (the norm's dx plus x's own) goes on as dx_in = a gx +
// prior_in and dx0 = b gx + prior0 (a null pointer: not wanted, or nothing so far; a prior may
// be its output itself), and da, db [D] (each undefined: not wanted) get the sums over rows of
// gx x_in and gx x0, plus da_prior, db_prior where defined (their gradients so far; may be da,
// db themselves). dx_in16 (if not null): dx_in rounded to bf16 as well, for a reader whose
// products round it so (Var::accumulate_grad_with_bf16). x0_is_x_in: one variable (the GPT's
// first block, whose input is x0): x0 = x_in is read once per row, and its one gradient is
// dx_in = (a + b) gx + prior_in (dx0, prior0 unused).
// Forward with y16 [rows, D] instead of a and x0: a residual sum x = x_in + b y16, rounded as
// channel_mix rounds it (ops/residual_linear.hpp's sum with the MLP's norm, NormedRows).
template <class T, class B>
struct NormMix {
  Tensor<T, B> a, b, x0;  // [D], [D], [rows, D]
  Tensor<T, B> x_out;     // forward: [rows, D]
  Tensor<bf16, B> y16;    // forward, the residual form: [rows, D]
  T* dx_in = nullptr;     // backward
  bf16* dx_in16 = nullptr;
  const T* prior_in = nullptr;
  T* dx0 = nullptr;
  const T* prior0 = nullptr;
  bool x0_is_x_in = false;
  Tensor<T, B> da, db;
  Tensor<T, B> da_prior, db_prior;
};

// y = x * rstd * gain,  rstd = 1 / sqrt(mean(x^2) + eps), per row of contiguous [rows, D] x.
// gain ([D], contiguous) may be undefined: no gain. rstd: contiguous [rows].
template <class T>
void rms_norm_forward(cpu, const Tensor<T, cpu>& x, const Tensor<T, cpu>& gain,
                      const Tensor<T, cpu>& y, const Tensor<T, cpu>& rstd, double eps) {
  using namespace cpu_detail;
  using batch = xsimd::batch<T>;
  constexpr int64_t W = batch::size;
  const int64_t rows = x.size(0), D = x.size(1);
  check_rows("rms_norm_forward", x, rows, D);
  check_rows("rms_norm_forward", y, rows, D);
  if (rstd.numel() != rows || !rstd.is_contiguous())
    throw ShapeError(
        detail::cat("rms_norm_forward: rstd of shape ", rstd.shape(), " for ", rows, " rows"));
  const T* w = gain.defined() ? gain.data() : nullptr;
  const T* xs = x.data();
  T *ys = y.data(), *rs = rstd.data();
#pragma omp parallel for schedule(static) if (rows > 1 && rows * D >= kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = xs + r * D;
    T* yr = ys + r * D;
    const double ms = D ? double(row_dot(xr, xr, D)) / double(D) : 0.0;
    const T s = T(1.0 / std::sqrt(ms + eps));
    rs[r] = s;
    const batch sb(s);
    int64_t j = 0;
    if (w) {
      for (; j + W <= D; j += W)
        (batch::load_unaligned(xr + j) * sb * batch::load_unaligned(w + j)).store_unaligned(yr + j);
      for (; j < D; ++j) yr[j] = xr[j] * s * w[j];
    } else {
      for (; j + W <= D; j += W) (batch::load_unaligned(xr + j) * sb).store_unaligned(yr + j);
      for (; j < D; ++j) yr[j] = xr[j] * s;
    }
  }
}

// From the output gradient g (contiguous [rows, D]), with x_hat = x * rstd and gg = g * gain:
//   dx    = rstd * (gg - x_hat * mean(gg * x_hat))      (written, if dx is defined; plus
//           dx_addend if that is defined: a gradient so far, which may be dx itself)
//   dgain = sum over rows of g * x_hat                   (written, if dgain is defined)
// Threads own disjoint rows; dgain is summed from per-thread partial rows (deterministic
// for a given thread count).
template <class T>
void rms_norm_backward(cpu, const Tensor<T, cpu>& x, const Tensor<T, cpu>& gain,
                       const Tensor<T, cpu>& rstd, const Tensor<T, cpu>& g,
                       const Tensor<T, cpu>& dx, const Tensor<T, cpu>& dgain,
                       const Tensor<T, cpu>& dx_addend = Tensor<T, cpu>()) {
  using namespace cpu_detail;
  using batch = xsimd::batch<T>;
  constexpr int64_t W = batch::size;
  const int64_t rows = x.size(0), D = x.size(1);
  check_rows("rms_norm_backward", x, rows, D);
  check_rows("rms_norm_backward", g, rows, D);
  if (dx.defined()) check_rows("rms_norm_backward", dx, rows, D);
  if (dx_addend.defined()) check_rows("rms_norm_backward", dx_addend, rows, D);
  if (dgain.defined() && (dgain.numel() != D || !dgain.is_contiguous()))
    throw ShapeError(
        detail::cat("rms_norm_backward: dgain of shape ", dgain.shape(), " for D = ", D));
  const T* w = gain.defined() ? gain.data() : nullptr;
  const T *xs = x.data(), *gs = g.data(), *rs = rstd.data();
  T* dxs = dx.defined() ? dx.data() : nullptr;
  const T* adds = dx_addend.defined() ? dx_addend.data() : nullptr;  // may be dxs itself
  const bool big = rows > 1 && rows * D >= kParallelThreshold;
  const int nt = big ? omp_get_max_threads() : 1;
  // Scratch as tensors: their memory comes from the block cache (no heap per call).
  const auto partial = Tensor<T, cpu>::zeros({dgain.defined() ? int64_t(nt) * D : 0});
#pragma omp parallel num_threads(nt) if (big)
  {
    const int tid = big ? omp_get_thread_num() : 0;
    T* dw = dgain.defined() ? partial.data() + size_t(tid) * size_t(D) : nullptr;
    const auto gg_buf = Tensor<T, cpu>::empty({w && dxs ? D : 0});
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T *xr = xs + r * D, *gr = gs + r * D;
      const T s = rs[r];
      const batch sb(s);
      if (dw) {  // dgain += g * x * rstd
        int64_t j = 0;
        for (; j + W <= D; j += W)
          xsimd::fma(batch::load_unaligned(gr + j) * sb, batch::load_unaligned(xr + j),
                     batch::load_unaligned(dw + j))
              .store_unaligned(dw + j);
        for (; j < D; ++j) dw[j] += gr[j] * s * xr[j];
      }
      if (!dxs) continue;
      const T* gg = gr;
      if (w) {
        T* b = gg_buf.data();
        int64_t j = 0;
        for (; j + W <= D; j += W)
          (batch::load_unaligned(gr + j) * batch::load_unaligned(w + j)).store_unaligned(b + j);
        for (; j < D; ++j) b[j] = gr[j] * w[j];
        gg = b;
      }
      // mean(gg * x_hat) = rstd * dot(gg, x) / D;  dx = rstd * gg - x * (rstd^3 dot / D)
      const T c = D ? s * s * s * row_dot(gg, xr, D) / T(D) : T(0);
      const batch cb(c);
      T* dr = dxs + r * D;
      int64_t j = 0;
      if (adds) {
        const T* ar = adds + r * D;
        for (; j + W <= D; j += W)
          (batch::load_unaligned(ar + j) +
           xsimd::fms(sb, batch::load_unaligned(gg + j), cb * batch::load_unaligned(xr + j)))
              .store_unaligned(dr + j);
        for (; j < D; ++j) dr[j] = ar[j] + (s * gg[j] - c * xr[j]);
      } else {
        for (; j + W <= D; j += W)
          xsimd::fms(sb, batch::load_unaligned(gg + j), cb * batch::load_unaligned(xr + j))
              .store_unaligned(dr + j);
        for (; j < D; ++j) dr[j] = s * gg[j] - c * xr[j];
      }
    }
  }
  if (dgain.defined()) {
    T* out = dgain.data();
    for (int64_t j = 0; j < D; ++j) {
      T acc = T(0);
      for (int t = 0; t < nt; ++t) acc += partial.data()[size_t(t) * size_t(D) + size_t(j)];
      out[j] = acc;
    }
  }
}

}  // namespace ternary::backend
