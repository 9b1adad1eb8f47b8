// CPU kernels of head_norm_rope (the op and its math: ops/head_norm_rope.hpp). Rows of Dh
// contiguous elements are addressed through HeadRows strides, so the [B, H, T, Dh] head view
// of a [B, T, H*Dh] projection is read and written in place. Each row is independent: threads
// take rows; the per-row dot products for the head gain's gradient are summed by the caller.
#pragma once

#include <omp.h>

#include <cmath>
#include <cstdint>

#include "ternary/backend/cpu/cpu.hpp"
#include "ternary/backend/cpu/rope.hpp"
#include "ternary/core/hd.hpp"

namespace ternary::backend {

// Where row (b, h, t) of a [B, H, T, Dh] tensor starts: b * sb + h * sh + t * st (in
// elements); the Dh elements of a row are contiguous. Shared with the CUDA kernels.
struct HeadRows {
  int64_t batch = 0, heads = 0, seq = 0, dh = 0;
  int64_t sb = 0, sh = 0, st = 0;
  TERNARY_HD int64_t rows() const { return batch * heads * seq; }
  // Offset of row r = (b * heads + h) * seq + t.
  TERNARY_HD int64_t offset(int64_t r) const {
    const int64_t t = r % seq, bh = r / seq;
    return (bh / heads) * sb + (bh % heads) * sh + t * st;
  }
  TERNARY_HD int64_t head(int64_t r) const { return (r / seq) % heads; }
  TERNARY_HD int64_t position(int64_t r) const { return r % seq; }
};

// y = gain[h] * R(t) (x * rstd), rstd = 1 / sqrt(mean(x^2) + eps); gain may be null (1).
template <class T>
void head_norm_rope_forward(cpu, const T* x, const HeadRows& xl, const T* gain, T* y,
                            const HeadRows& yl, const RopeTable<T>& table, double eps) {
  const int64_t rows = xl.rows(), dh = xl.dh, half = dh / 2;
#pragma omp parallel for schedule(static) if (rows * dh >= cpu_detail::kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + xl.offset(r);
    T* yr = y + yl.offset(r);
    T ss = 0;
    for (int64_t j = 0; j < dh; ++j) ss += xr[j] * xr[j];
    const T rstd = T(1) / std::sqrt(ss / T(dh) + T(eps));
    const T scale = gain ? gain[xl.head(r)] * rstd : rstd;
    const T *c = table.cos_row(xl.position(r)), *s = table.sin_row(xl.position(r));
    for (int64_t i = 0; i < half; ++i) {
      const T a = xr[i] * scale, b = xr[i + half] * scale;
      yr[i] = a * c[i] + b * s[i];
      yr[i + half] = b * c[i] - a * s[i];
    }
  }
}

// With n = x * rstd and u = R(t)^T g (the gradient rotated back):
//   dx = gain[h] * rstd * (u - n * mean(u * n))      row_dot[r] = sum(u * n) = <g, R(t) n>
// row_dot (one value per row, in row order; null if the gain's gradient is not wanted) sums
// to dgain[h] over the rows of head h. dx may be null (only row_dot wanted).
template <class T>
void head_norm_rope_backward(cpu, const T* x, const HeadRows& xl, const T* gain, const T* g,
                             const HeadRows& gl, T* dx, const HeadRows& dxl, T* row_dot,
                             const RopeTable<T>& table, double eps) {
  const int64_t rows = xl.rows(), dh = xl.dh, half = dh / 2;
#pragma omp parallel for schedule(static) if (rows * dh >= cpu_detail::kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const T *xr = x + xl.offset(r), *gr = g + gl.offset(r);
    T ss = 0;
    for (int64_t j = 0; j < dh; ++j) ss += xr[j] * xr[j];
    const T rstd = T(1) / std::sqrt(ss / T(dh) + T(eps));
    const T *c = table.cos_row(xl.position(r)), *s = table.sin_row(xl.position(r));
    T dot = 0;  // sum(u * n)
    for (int64_t i = 0; i < half; ++i) {
      const T u1 = gr[i] * c[i] - gr[i + half] * s[i];
      const T u2 = gr[i] * s[i] + gr[i + half] * c[i];
      dot += u1 * xr[i] + u2 * xr[i + half];
    }
    dot *= rstd;
    if (row_dot) row_dot[r] = dot;
    if (!dx) continue;
    T* dr = dx + dxl.offset(r);
    const T scale = gain ? gain[xl.head(r)] * rstd : rstd;
    const T m = dot / T(dh);
    for (int64_t i = 0; i < half; ++i) {
      const T u1 = gr[i] * c[i] - gr[i + half] * s[i];
      const T u2 = gr[i] * s[i] + gr[i + half] * c[i];
      dr[i] = scale * (u1 - xr[i] * rstd * m);
      dr[i + half] = scale * (u2 - xr[i + half] * rstd * m);
    }
  }
}

}  // namespace ternary::backend
