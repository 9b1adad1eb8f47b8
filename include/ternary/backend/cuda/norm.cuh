// CUDA RMSNorm kernels over the rows of a contiguous [rows, D] matrix (the CPU's contract,
// backend/cpu/norm.hpp; the math is in ops/norm.hpp):
//   forward:  one warp per row: rstd = 1 / sqrt(mean(x^2) + eps), y = x * rstd * gain
//   backward: one warp per row: dx = rstd * gg - x * rstd^3 * dot(gg, x) / D, gg = g * gain;
//             dgain = sum over rows of g * x * rstd: blocks of 32 columns x 8 row lanes sum a
//             chunk of rows each into a partial row, and the partial rows are summed by
//             reduce_sum (deterministic: no atomics).
//   Rows of 64, 128, 256, 512 or 1024 floats (the GPT's) take register-resident variants of
//   both: each row is read from memory once, as float4. Those also serve the fused nodes of
//   quant/ and ops/norm_mlp.hpp: K outputs with their own gains, a pre-norm, int8 and bf16
//   outputs, relu^2 inputs, bf16 gradients, a bf16 copy of dx, and the GPT block entry's mix
//   in front (MixRows / MixGrads: x = a x_in + b x0 formed in registers, its gradient passed on).
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <cuda_bf16.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "ternary/backend/cpu/norm.hpp"
#include "ternary/backend/cuda/bf16_vec.cuh"
#include "ternary/backend/cuda/matmul.cuh"
#include "ternary/backend/cuda/reduce.cuh"

namespace ternary::backend::cuda_detail {

template <class T>
__device__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Per-token int8 fake quantization (quant/activation.hpp) of a row whose values one warp
// reads as value(j), j = lane, lane + 32, ...: the scale s = 127 / max|v| (1 for a zero row),
// then each q = clamp(round(v s), -128, 127) and v_q = q / s; NaN for a row holding a NaN or
// inf (the CPU throws instead). `finite` is set for the whole warp.
template <class Value>
__device__ float int8_row_scale(Value value, int64_t D, int lane, bool& finite) {
  float m = 0;
  bool ok = true;
  for (int64_t j = lane; j < D; j += 32) {
    const float a = fabsf(value(j));
    ok = ok && isfinite(a);
    m = fmaxf(m, a);
  }
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  finite = __all_sync(0xffffffffu, ok);
  return m > 0 ? 127.0f / m : 1.0f;
}
template <class T>
__device__ T int8_round_trip(float v, float s, bool finite) {
  const float r = nearbyintf(v * s);
  const int8_t q = int8_t(r > 127.f ? 127.f : (r < -128.f ? -128.f : r));
  return finite ? T(float(q) / s) : T(NAN);
}

// One warp per row. With Int8, y is written int8 fake-quantized (the value above of each
// x * rstd * gain): the same float operations as rms_norm then int8_quantize_kernel, so the
// same bits, without storing and re-reading the normalised rows.
template <class T, bool Int8 = false>
__global__ void rms_norm_forward_kernel(const T* __restrict__ x, const T* __restrict__ gain,
                                        T* __restrict__ y, T* __restrict__ rstd, int64_t rows,
                                        int64_t D, double eps) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; r < rows;
       r += warps) {
    const T* xr = x + r * D;
    T s = T(0);
    for (int64_t j = lane; j < D; j += 32) s += xr[j] * xr[j];
    s = warp_sum(s);
    const double ms = D ? double(s) / double(D) : 0.0;
    const T rs = T(1.0 / ::sqrt(ms + eps));
    if (lane == 0) rstd[r] = rs;
    T* yr = y + r * D;
    if constexpr (Int8) {
      auto normed = [&](int64_t j) { return float(gain ? xr[j] * rs * gain[j] : xr[j] * rs); };
      bool finite;
      const float s = int8_row_scale(normed, D, lane, finite);
      for (int64_t j = lane; j < D; j += 32) yr[j] = int8_round_trip<T>(normed(j), s, finite);
    } else if (gain)
      for (int64_t j = lane; j < D; j += 32) yr[j] = xr[j] * rs * gain[j];
    else
      for (int64_t j = lane; j < D; j += 32) yr[j] = xr[j] * rs;
  }
}

// One warp per row. dx (if not null) = rstd * (gg - x_hat * mean(gg * x_hat)), gg = g * gain
// (plus dx_addend, if not null: the gradient so far, which may be dx itself);
// and, if partial is not null, in the same pass over x and g, the block's share of dgain:
// partial[block, j] = sum over the block's rows r of g[r, j] * x[r, j] * rstd[r]. For that
// each warp accumulates its rows in its own shared-memory row (blockDim.x / 32 rows of D
// values), then the block sums them in a fixed order.
template <class T>
__global__ void rms_norm_backward_kernel(const T* __restrict__ x, const T* __restrict__ gain,
                                         const T* __restrict__ rstd, const T* __restrict__ g, T* dx,
                                         const T* dx_addend, T* __restrict__ partial, int64_t rows,
                                         int64_t D) {
  extern __shared__ unsigned char shared_bytes[];
  T* acc = reinterpret_cast<T*>(shared_bytes);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  T* mine = partial ? acc + int64_t(warp) * D : nullptr;
  if (mine)
    for (int64_t j = lane; j < D; j += 32) mine[j] = T(0);
  const int64_t warps = int64_t(gridDim.x) * nw;
  for (int64_t r = int64_t(blockIdx.x) * nw + warp; r < rows; r += warps) {
    const T *xr = x + r * D, *gr = g + r * D;
    const T s = rstd[r];
    if (dx) {
      T dot = T(0);
      for (int64_t j = lane; j < D; j += 32) dot += (gain ? gr[j] * gain[j] : gr[j]) * xr[j];
      dot = warp_sum(dot);
      const T c = D ? s * s * s * dot / T(D) : T(0);
      T* dr = dx + r * D;
      const T* ar = dx_addend ? dx_addend + r * D : nullptr;  // may be dr itself
      for (int64_t j = lane; j < D; j += 32) {
        dr[j] = (ar ? ar[j] : T(0)) + (s * (gain ? gr[j] * gain[j] : gr[j]) - c * xr[j]);
        if (mine) mine[j] += gr[j] * xr[j] * s;
      }
    } else if (mine) {
      for (int64_t j = lane; j < D; j += 32) mine[j] += gr[j] * xr[j] * s;
    }
  }
  if (!partial) return;  // the same for the whole block: no thread skips the barrier alone
  __syncthreads();
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    T t = T(0);
    for (int k = 0; k < nw; ++k) t += acc[int64_t(k) * D + j];
    partial[int64_t(blockIdx.x) * D + j] = t;
  }
}

// ---- register-resident rows: D = 4 V L floats ----------------------------------------------
// The GPT's rows (D = 64 for the q/k head norms, 512, 1024) take these: L lanes share a row
// (L = 32, or 16 for D = 64: two rows per warp), each lane loads its 4 V values once as float4
// (columns 4 (li + L i) .. + 3, coalesced), keeps them in registers, and every later pass (the
// int8 scan, the writes, the backward's dot product) reads registers, not memory. Same
// formulas as the kernels above; the sums run in another order (float rounding).
template <int V, int L>
struct RowVec {
  float4 v[V];
  __device__ void load(const float* __restrict__ row, int li) {
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = reinterpret_cast<const float4*>(row)[li + L * i];
  }
  // The same columns of a bf16 row, widened: 8 bytes per float4.
  __device__ void load(const __nv_bfloat16* __restrict__ row, int li) {
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = load_bf16x4(row + 4 * (li + L * i));
  }
  __device__ void store(float* __restrict__ row, int li) const {
#pragma unroll
    for (int i = 0; i < V; ++i) reinterpret_cast<float4*>(row)[li + L * i] = v[i];
  }
  // The same columns rounded to bf16 (nearest even) in a bf16 row: 8 bytes per float4.
  __device__ void store_bf16(__nv_bfloat16* __restrict__ row, int li) const {
#pragma unroll
    for (int i = 0; i < V; ++i) store_bf16x4(row + 4 * (li + L * i), v[i]);
  }
  __device__ void zero() {
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  __device__ float& at(int i, int e) {
    return reinterpret_cast<float*>(&v[i])[e];
  }
  __device__ float at(int i, int e) const {
    return reinterpret_cast<const float*>(&v[i])[e];
  }
  // The lane's share of a row's dot product with o (add over the row's lanes after).
  __device__ float dot(const RowVec& o) const {
    float d = 0.f;
#pragma unroll
    for (int i = 0; i < V; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) d += at(i, e) * o.at(i, e);
    return d;
  }
  // a p - c q, element by element
  __device__ static RowVec combine(float a, const RowVec& p, float c, const RowVec& q) {
    RowVec r;
#pragma unroll
    for (int i = 0; i < V; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) r.at(i, e) = a * p.at(i, e) - c * q.at(i, e);
    return r;
  }
  __device__ void scale(float a) {
#pragma unroll
    for (int i = 0; i < V; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) at(i, e) = at(i, e) * a;
  }
  // relu(v)^2, element by element (the MLP's activation, fn::Relu2's formula)
  __device__ void relu2() {
#pragma unroll
    for (int i = 0; i < V; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) at(i, e) = at(i, e) > 0.f ? at(i, e) * at(i, e) : 0.f;
  }
  // Times d relu(h)^2 / dh = 2 relu(h), element by element (the chain rule through relu2()).
  __device__ void times_relu2_slope(const RowVec& h) {
#pragma unroll
    for (int i = 0; i < V; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) at(i, e) = h.at(i, e) > 0.f ? at(i, e) * 2.f * h.at(i, e) : 0.f;
  }
};
// Sum / max / and over the L lanes of a row (xor partners stay inside the row's lanes).
template <int L>
__device__ float row_group_sum(float v) {
#pragma unroll
  for (int o = L / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <int L>
__device__ float row_group_max(float v) {
#pragma unroll
  for (int o = L / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
template <int L>
__device__ bool row_group_all(bool ok) {
  int v = ok;
#pragma unroll
  for (int o = L / 2; o > 0; o >>= 1) v &= __shfl_xor_sync(0xffffffffu, v, o);
  return v != 0;
}

// Warps step over groups of 32 / L rows; every lane runs every step (the shuffles need the
// whole warp), lanes past the last row only skip their loads and stores.
// K row pointers (K outputs or K gains of one input: BitLinear's q, k, v read one x).
template <int K>
struct RowPtrs {
  const float* p[K];
};
template <int K>
struct RowOutPtrs {
  float* p[K];
};

// The GPT block's entry mix in front of a norm (quant::mix_rms_norm_linear): the rows x the
// kernels read are x_in, and the rows normalised are x = a x_in + b x0 (a, b [D]), written to
// x_out by the forward. With y16 instead (a and x0 null): a residual sum, x = x_in + b y16
// rounded as channel_mix rounds it (one FMA), so the rows and their norm are those of
// channel_mix followed by the norm, bit for bit.
struct MixRows {
  const float* a = nullptr;
  const float* b = nullptr;
  const float* x0 = nullptr;
  float* x_out = nullptr;
  const __nv_bfloat16* y16 = nullptr;
};
// Its backward: with gx = x's whole gradient (the norm's dx plus dx_addend, x's own), dx_in =
// a gx + prior_in and dx0 = b gx + prior0 (each if not null; a prior may be its output itself),
// and partial [2, blocks, D] the blocks' sums of gx x_in, then of gx x0 (for da, db). With
// x0_is_x_in (one variable) its one gradient dx_in = (a + b) gx + prior_in.
struct MixGrads {
  const float* a = nullptr;
  const float* b = nullptr;
  const float* x0 = nullptr;
  float* dx_in = nullptr;
  const float* prior_in = nullptr;
  float* dx0 = nullptr;
  const float* prior0 = nullptr;
  float* partial = nullptr;
  __nv_bfloat16* dx_in16 = nullptr;  // dx_in rounded to bf16 as well (if not null)
  bool x0_is_x_in = false;
};
// x = a x_in + b x0 elementwise (channel_mix's formula)
template <int V, int L>
__device__ RowVec<V, L> mix_rows(const RowVec<V, L>& a, const RowVec<V, L>& x_in,
                                 const RowVec<V, L>& b, const RowVec<V, L>& x0) {
  RowVec<V, L> x;
#pragma unroll
  for (int i = 0; i < V; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      x.at(i, e) = fmaf(a.at(i, e), x_in.at(i, e), b.at(i, e) * x0.at(i, e));
  return x;
}
// x = x_in + b y elementwise (channel_mix's formula without a: one FMA)
template <int V, int L>
__device__ RowVec<V, L> residual_rows(const RowVec<V, L>& x_in, const RowVec<V, L>& b,
                                      const RowVec<V, L>& y) {
  RowVec<V, L> x;
#pragma unroll
  for (int i = 0; i < V; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) x.at(i, e) = fmaf(b.at(i, e), y.at(i, e), x_in.at(i, e));
  return x;
}

// A lane's share of K gain rows (null: no gain). Kept in registers when they are few (K V <= 4
// float4 per lane); otherwise read from the cache where used, since more registers per thread
// would cut the warps in flight.
template <int V, int L, int K>
struct RowGains {
  static constexpr bool kInRegisters = K * V <= 4;
  RowVec<V, L> v[kInRegisters ? K : 1];
  RowPtrs<K> p;
  int li;
  __device__ RowGains(RowPtrs<K> gains, int lane_in_row) : p(gains), li(lane_in_row) {
    if constexpr (kInRegisters)
#pragma unroll
      for (int k = 0; k < K; ++k)
        if (p.p[k]) v[k].load(p.p[k], li);
  }
  __device__ float at(int k, int i, int e) const {
    if constexpr (kInRegisters)
      return v[k].at(i, e);
    else
      return __ldg(p.p[k] + 4 * (li + L * i) + e);
  }
};

// A register row that is a lane's share of the row at r (float or bf16 rows), or zeros past
// the last row.
template <int V, int L, class E>
__device__ RowVec<V, L> load_row_or_zero(const E* __restrict__ base, int64_t r, bool valid,
                                         int li) {
  RowVec<V, L> v;
  if (valid)
    v.load(base + r * (4 * V * L), li);
  else
    v.zero();
  return v;
}
// The same for rows stored as bf16 when Bf16 (passed as a float pointer, as the kernels take
// every row), else float.
template <int V, int L, bool Bf16>
__device__ RowVec<V, L> load_row_as(const float* __restrict__ base, int64_t r, bool valid, int li) {
  if constexpr (Bf16)
    return load_row_or_zero<V, L>(reinterpret_cast<const __nv_bfloat16*>(base), r, valid, li);
  else
    return load_row_or_zero<V, L>(base, r, valid, li);
}
// In place: the per-token int8 fake quantization of a register row (int8_row_scale's rule).
template <int V, int L>
__device__ void int8_round_trip_row(RowVec<V, L>& v) {
  float m = 0.f;
  bool ok = true;
#pragma unroll
  for (int i = 0; i < V; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float a = fabsf(v.at(i, e));
      ok = ok && isfinite(a);
      m = fmaxf(m, a);
    }
  m = row_group_max<L>(m);
  const bool finite = row_group_all<L>(ok);
  const float sc = m > 0 ? 127.0f / m : 1.0f;
  if (!finite || !(sc > 1e-30f && sc < 1e30f)) {  // (the row's lanes agree) the scalar rule
#pragma unroll
    for (int i = 0; i < V; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) v.at(i, e) = int8_round_trip<float>(v.at(i, e), sc, finite);
    return;
  }
  // int8_round_trip's values, bit for bit, in a few full-rate instructions (this loop bounded
  // the BitLinear norm kernels): |v sc| <= 127 (plus rounding) so adding and removing 1.5 * 2^23
  // rounds it to the nearest integer, ties to even, as nearbyintf does (and gives +0 where the
  // int8 cast did); the clamp in float is the int8 cast's; and q / sc is exact (correctly
  // rounded) as q rc + one FMA correction with rc = 1 / sc correctly rounded (Markstein's
  // theorem, no overflow or subnormals for sc within 1e+-30; checked against the division
  // for every q and every significand of sc).
  const float rc = __frcp_rn(sc);
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
#pragma unroll
  for (int i = 0; i < V; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float r = __fsub_rn(__fadd_rn(__fmul_rn(v.at(i, e), sc), kRound), kRound);
      const float q = fminf(fmaxf(r, -128.f), 127.f);
      const float q0 = __fmul_rn(q, rc);
      v.at(i, e) = __fmaf_rn(__fmaf_rn(-sc, q0, q), rc, q0);
    }
}

// ys[k] = x * rstd * gain_k (gain_k null: no gain), int8 fake-quantized per row with Int8, for
// k < K; x is read once. K = 1 is plain rms_norm (or its fused int8 form); the K outputs are
// bit for bit K single calls. With rstd_pre (not null) x is first normalised without a gain
// (x <- x * rstd_pre, rstd_pre saved): the GPT block's pre-norm in front of BitLinear's own,
// in registers, bit for bit the two kernels one after the other. With Bf16Out the ys are
// bf16 rows (linear()'s tensor-core operands, rms_norm_linear): the values rounded once. With
// Relu2In the rows normalised are relu(x)^2 (the MLP's activation, in registers: the GPT's
// BitLinear MLP projection reads the fc output itself). With Bf16In the x rows are bf16
// (passed as a float pointer): quant::rms_norm_bitlinear_mlp's hidden activation.
// With Mix the rows read are x_in and the rows normalised x = a x_in + b x0, written to
// mix.x_out (MixRows).
// K > 1: at most 80 registers (three blocks of 256 per SM). Left to itself the compiler took 98
// for the q, k, v entry, hoisting every output's gain loads, and two blocks per SM held a
// quarter of the warps: 86 us per micro-batch of 16 sequences, 47 with the bound (Nsight).
template <int V, int L, int K, bool Int8, bool Bf16Out = false, bool Relu2In = false,
          bool Bf16In = false, bool Mix = false>
__global__ void __launch_bounds__(256, K > 1 ? 3 : 1)
    rms_norm_rows_forward_kernel(const float* __restrict__ x, RowPtrs<K> gains, RowOutPtrs<K> ys,
                                 float* __restrict__ rstd, float* __restrict__ rstd_pre,
                                 int64_t rows, double eps, MixRows mix) {
  constexpr int D = 4 * V * L, RPW = 32 / L;  // row length, rows per warp
  const int lane = threadIdx.x % 32, li = lane % L, sub = lane / L;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const RowGains<V, L, K> gain(gains, li);
  RowVec<V, L> mix_a, mix_b;
  if constexpr (Mix) {
    if (mix.a) mix_a.load(mix.a, li);
    mix_b.load(mix.b, li);
  }
  for (int64_t base = (int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32) * RPW;
       base < rows; base += warps * RPW) {
    const int64_t r = base + sub;
    const bool valid = r < rows;
    RowVec<V, L> xv = load_row_as<V, L, Bf16In>(x, r, valid, li);
    if constexpr (Mix) {
      if (mix.y16)
        xv = residual_rows(xv, mix_b, load_row_or_zero<V, L>(mix.y16, r, valid, li));
      else
        xv = mix_rows(mix_a, xv, mix_b, load_row_or_zero<V, L>(mix.x0, r, valid, li));
      if (valid) xv.store(mix.x_out + r * D, li);
    }
    if constexpr (Relu2In) xv.relu2();
    if (rstd_pre) {  // the same steps as the plain kernel's, so the same bits
      const float s1 = row_group_sum<L>(xv.dot(xv));
      const float r1 = float(1.0 / ::sqrt(double(s1) / double(D) + eps));
      if (valid && li == 0) rstd_pre[r] = r1;
      xv.scale(r1);
    }
    const float s = row_group_sum<L>(xv.dot(xv));
    const float rs = float(1.0 / ::sqrt(double(s) / double(D) + eps));
    if (valid && li == 0) rstd[r] = rs;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      RowVec<V, L> yv;
#pragma unroll
      for (int i = 0; i < V; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          yv.at(i, e) = gains.p[k] ? xv.at(i, e) * rs * gain.at(k, i, e) : xv.at(i, e) * rs;
      if constexpr (Int8) int8_round_trip_row<V, L>(yv);
      if constexpr (Bf16Out) {
        if (valid) yv.store_bf16(reinterpret_cast<__nv_bfloat16*>(ys.p[k]) + r * D, li);
      } else {
        if (valid) yv.store(ys.p[k] + r * D, li);
      }
    }
  }
}

// The backward of K such outputs (K = 1: rms_norm's), with G = sum_k g_k gain_k (g_k null: no
// gradient reached output k; gain_k null: 1):
//   dx = rstd G - x rstd^3 dot(G, x) / D          (one RMSNorm backward for all K; if dx;
//                                                   plus dx_addend if that is not null)
//   partial[k, block, j] = sum over the block's rows of g_k x rstd   (dgain_k; if partial)
// x and every g_k are read once; per-lane sums in registers, then the block's rows of them
// (one per warp and row slot: shared memory of K blockDim / L rows of D floats) in a fixed order.
// With rstd_pre (not null): the forward normalised h = x * rstd_pre first, so the above is
// the gradient for h, and dx = rstd_pre dh - x rstd_pre^3 dot(dh, x) / D follows in registers;
// the dgain sums use h. With Relu2In (the forward's) the same for a = relu(x)^2, and dx = da 2
// relu(x) follows in registers. With Bf16Rows x, the g_k and dx are bf16 rows (passed as float
// pointers; no dx_addend): quant::rms_norm_bitlinear_mlp's hidden activation and its gradient.
// With Bf16Grads only the g_k are bf16 rows (the norm-and-projection nodes' GEMMs write them so).
// dx16 (if not null): dx rounded to bf16, beside dx or (dx null) instead of it.
// With Mix (the forward's MixRows) the rows x are x_in, the rows normalised x = a x_in + b x0
// (recomputed), and x's whole gradient gx (dx plus dx_addend, x's own) goes on through the mix
// (MixGrads) instead of to dx: the mix weights' sums take the shared memory after the dgain rows.
template <int V, int L, int K, bool Relu2In = false, bool Bf16Rows = false, bool Bf16Grads = false,
          bool Mix = false>
__global__ void rms_norm_rows_backward_kernel(const float* __restrict__ x,
                                              const float* __restrict__ rstd,
                                              const float* __restrict__ rstd_pre, RowPtrs<K> gains,
                                              RowPtrs<K> gs, float* dx, const float* dx_addend,
                                              float* __restrict__ partial, int64_t rows,
                                              __nv_bfloat16* __restrict__ dx16, MixGrads mix) {
  constexpr int D = 4 * V * L, RPW = 32 / L;
  constexpr bool kGradsBf16 = Bf16Rows || Bf16Grads;
  extern __shared__ unsigned char shared_bytes[];
  float* acc = reinterpret_cast<float*>(shared_bytes);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  const int li = lane % L, sub = lane / L;
  const RowGains<V, L, K> gain(gains, li);
  RowVec<V, L> dg[K];
#pragma unroll
  for (int k = 0; k < K; ++k) dg[k].zero();
  RowVec<V, L> mix_a, mix_b, sum_a, sum_b;  // (Mix) the weights; the sums of gx x_in, gx x0
  if constexpr (Mix) {
    mix_a.load(mix.a, li);
    mix_b.load(mix.b, li);
    sum_a.zero();
    sum_b.zero();
  }
  const int64_t warps = int64_t(gridDim.x) * nw;
  for (int64_t base = (int64_t(blockIdx.x) * nw + warp) * RPW; base < rows; base += warps * RPW) {
    const int64_t r = base + sub;
    const bool valid = r < rows;
    RowVec<V, L> x_in = load_row_as<V, L, Bf16Rows>(x, r, valid, li);
    RowVec<V, L> mixed_in, mixed_x0;  // (Mix) the mix's inputs; x_in becomes its output
    if constexpr (Mix) {
      mixed_in = x_in;
      mixed_x0 = load_row_or_zero<V, L>(mix.x0, r, valid, li);
      x_in = mix_rows(mix_a, mixed_in, mix_b, mixed_x0);
    }
    RowVec<V, L> xv = x_in, G;  // xv: the normalised input (h with rstd_pre, a, else x)
    if constexpr (Relu2In) xv.relu2();
    G.zero();
    const float s = valid ? rstd[r] : 0.f;
    const float s1 = rstd_pre && valid ? rstd_pre[r] : 0.f;
    if (rstd_pre) xv.scale(s1);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (!gs.p[k]) continue;
      const RowVec<V, L> gv = load_row_as<V, L, kGradsBf16>(gs.p[k], r, valid, li);
#pragma unroll
      for (int i = 0; i < V; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (partial) dg[k].at(i, e) += gv.at(i, e) * xv.at(i, e) * s;
          G.at(i, e) += gains.p[k] ? gv.at(i, e) * gain.at(k, i, e) : gv.at(i, e);
        }
    }
    if (!dx && !dx16 && !Mix) continue;
    const float dot = row_group_sum<L>(G.dot(xv));
    const float c = s * s * s * dot / float(D);
    xv = RowVec<V, L>::combine(s, G, c, xv);
    if (rstd_pre) {  // xv holds dh: through the pre-norm to dx
      const float dot1 = row_group_sum<L>(xv.dot(x_in));
      const float c1 = s1 * s1 * s1 * dot1 / float(D);
      xv = RowVec<V, L>::combine(s1, xv, c1, x_in);
    }
    if constexpr (Relu2In) xv.times_relu2_slope(x_in);  // xv held da
    if constexpr (Bf16Rows) {
      if (valid) xv.store_bf16(reinterpret_cast<__nv_bfloat16*>(dx) + r * D, li);
      continue;
    }
    if (dx_addend) {  // the gradient so far (may be dx itself: each lane reads, then writes)
      const RowVec<V, L> av = load_row_or_zero<V, L>(dx_addend, r, valid, li);
#pragma unroll
      for (int i = 0; i < V; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) xv.at(i, e) += av.at(i, e);
    }
    if (dx && valid) xv.store(dx + r * D, li);
    if (dx16 && valid) xv.store_bf16(dx16 + r * D, li);  // the same values rounded to bf16
    if constexpr (Mix) {              // channel_mix's backward for gx = xv (zero past the last row)
      RowVec<V, L> prior_in, prior0;  // the gradients so far (zero: none)
      prior_in.zero();
      prior0.zero();
      if (mix.prior_in) prior_in = load_row_or_zero<V, L>(mix.prior_in, r, valid, li);
      if (mix.prior0) prior0 = load_row_or_zero<V, L>(mix.prior0, r, valid, li);
      RowVec<V, L> t_in, t0;
#pragma unroll
      for (int i = 0; i < V; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          sum_a.at(i, e) = fmaf(xv.at(i, e), mixed_in.at(i, e), sum_a.at(i, e));
          sum_b.at(i, e) = fmaf(xv.at(i, e), mixed_x0.at(i, e), sum_b.at(i, e));
          const float w_in = mix.x0_is_x_in ? mix_a.at(i, e) + mix_b.at(i, e) : mix_a.at(i, e);
          t_in.at(i, e) = w_in * xv.at(i, e) + prior_in.at(i, e);
          t0.at(i, e) = mix_b.at(i, e) * xv.at(i, e) + prior0.at(i, e);
        }
      if (mix.dx_in && valid) t_in.store(mix.dx_in + r * D, li);
      if (mix.dx_in16 && valid) t_in.store_bf16(mix.dx_in16 + r * D, li);
      if (mix.dx0 && valid) t0.store(mix.dx0 + r * D, li);
    }
  }
  if (!partial && !Mix) return;  // the same for the whole block
  const int slots = nw * RPW;
  if (partial)
#pragma unroll
    for (int k = 0; k < K; ++k) dg[k].store(acc + (int64_t(k) * slots + warp * RPW + sub) * D, li);
  float* mix_acc = acc + int64_t(partial ? K : 0) * slots * D;
  if constexpr (Mix) {
    sum_a.store(mix_acc + int64_t(warp * RPW + sub) * D, li);
    sum_b.store(mix_acc + int64_t(slots + warp * RPW + sub) * D, li);
  }
  __syncthreads();
  if (partial)
    for (int j = threadIdx.x; j < K * D; j += blockDim.x) {
      const int k = j / D, col = j % D;
      float t = 0.f;
      for (int w = 0; w < slots; ++w) t += acc[(int64_t(k) * slots + w) * D + col];
      partial[(int64_t(k) * gridDim.x + blockIdx.x) * D + col] = t;
    }
  if constexpr (Mix)
    for (int j = threadIdx.x; j < 2 * D; j += blockDim.x) {
      const int which = j / D, col = j % D;
      float t = 0.f;
      for (int w = 0; w < slots; ++w) t += mix_acc[(int64_t(which) * slots + w) * D + col];
      mix.partial[(int64_t(which) * gridDim.x + blockIdx.x) * D + col] = t;
    }
}
// Its shared memory in bytes.
template <int V, int L, int K>
constexpr size_t rows_backward_shared_bytes() {
  return size_t(K) * (256 / L) * (4 * V * L) * sizeof(float);
}

// Calls f(std::integral_constant<int, V>, std::integral_constant<int, L>) when rows of D floats
// fit the kernels above (D = 64 with L = 16, or 128 V with V in 1, 2, 4, 8; every pointer
// 16-byte aligned); returns false otherwise.
template <class F>
bool with_row_vec(int64_t D, std::initializer_list<const void*> ptrs, F&& f) {
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  using std::integral_constant;
  switch (D) {
    case 64:
      f(integral_constant<int, 1>{}, integral_constant<int, 16>{});
      return true;
    case 128:
      f(integral_constant<int, 1>{}, integral_constant<int, 32>{});
      return true;
    case 256:
      f(integral_constant<int, 2>{}, integral_constant<int, 32>{});
      return true;
    case 512:
      f(integral_constant<int, 4>{}, integral_constant<int, 32>{});
      return true;
    case 1024:
      f(integral_constant<int, 8>{}, integral_constant<int, 32>{});
      return true;
    default:
      return false;
  }
}

// partial[chunk, j] = sum over rows r of the chunk of g[r, j] * x[r, j] * rstd[r]
template <class T>
__global__ void rms_norm_dgain_kernel(const T* __restrict__ x, const T* __restrict__ rstd,
                                      const T* __restrict__ g, T* __restrict__ partial,
                                      int64_t rows, int64_t D, int64_t chunk_rows) {
  __shared__ T part[8][33];
  const int64_t j = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  T s = T(0);
  if (j < D)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) s += g[r * D + j] * x[r * D + j] * rstd[r];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && j < D) {
    T t = T(0);
    for (int k = 0; k < 8; ++k) t += part[k][threadIdx.x];
    partial[int64_t(blockIdx.y) * D + j] = t;
  }
}

// dst = prior + sum, a gradient accumulated outside the register kernels' one sum launch (sum
// undefined: 0; prior undefined: nothing so far; prior may be dst itself, sum must not be).
template <class T>
void set_sum_plus_prior(Tensor<T, cuda> dst, const Tensor<T, cuda>& sum,
                        const Tensor<T, cuda>& prior) {
  if (sum.defined() && prior.defined())
    dst.assign(prior + sum);
  else if (sum.defined())
    dst.assign(sum);
  else if (prior.defined())
    dst.assign(prior);
  else
    dst.fill(T(0));
}

inline int row_warps_blocks(int64_t rows) {
  return int(std::min<int64_t>((rows + 7) / 8, launch_for(int64_t(1) << 40).blocks * 4));
}

// Launches the register-row kernels when D allows them (64-1024 floats, every pointer 16-byte
// aligned; a null pointer stands for a missing gain, gradient or output); false otherwise.
// bf16_out: ys hold __nv_bfloat16 rows (passed as float pointers).
// relu2_in: the rows normalised are relu(x)^2 (int8 bf16 outputs without rstd_pre only).
// bf16_in: x holds __nv_bfloat16 rows (with relu2_in only).
// mix (x_out not null: MixRows): the block's entry mix first (bf16_out, no relu2_in only).
template <int K>
bool rows_forward(const float* x, RowPtrs<K> gains, RowOutPtrs<K> ys, float* rstd, int64_t rows,
                  int64_t D, double eps, bool int8, float* rstd_pre = nullptr,
                  bool bf16_out = false, bool relu2_in = false, bool bf16_in = false,
                  MixRows mix = {}) {
  if (relu2_in && (!int8 || !bf16_out || rstd_pre)) return false;
  if (bf16_in && !relu2_in) return false;
  if (mix.x_out && (!bf16_out || relu2_in)) return false;
  bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                 reinterpret_cast<uintptr_t>(mix.a) % 16 == 0 &&
                 reinterpret_cast<uintptr_t>(mix.b) % 16 == 0 &&
                 reinterpret_cast<uintptr_t>(mix.x0) % 16 == 0 &&
                 reinterpret_cast<uintptr_t>(mix.x_out) % 16 == 0 &&
                 reinterpret_cast<uintptr_t>(mix.y16) % 16 == 0;
  for (int k = 0; k < K; ++k)
    aligned = aligned && reinterpret_cast<uintptr_t>(gains.p[k]) % 16 == 0 &&
              reinterpret_cast<uintptr_t>(ys.p[k]) % 16 == 0;
  return aligned && with_row_vec(D, {}, [&](auto v, auto l) {
           constexpr int V = decltype(v)::value, L = decltype(l)::value;
           const int blocks = row_warps_blocks((rows + 32 / L - 1) / (32 / L));
           if (mix.x_out && int8)
             rms_norm_rows_forward_kernel<V, L, K, true, true, false, false, true>
                 <<<blocks, 256, 0, cuda::stream()>>>(x, gains, ys, rstd, rstd_pre, rows, eps, mix);
           else if (mix.x_out)
             rms_norm_rows_forward_kernel<V, L, K, false, true, false, false, true>
                 <<<blocks, 256, 0, cuda::stream()>>>(x, gains, ys, rstd, rstd_pre, rows, eps, mix);
           else if (bf16_in)
             rms_norm_rows_forward_kernel<V, L, K, true, true, true, true>
                 <<<blocks, 256, 0, cuda::stream()>>>(x, gains, ys, rstd, rstd_pre, rows, eps,
                                                      MixRows{});
           else if (relu2_in)
             rms_norm_rows_forward_kernel<V, L, K, true, true, true>
                 <<<blocks, 256, 0, cuda::stream()>>>(x, gains, ys, rstd, rstd_pre, rows, eps,
                                                      MixRows{});
           else if (int8 && bf16_out)
             rms_norm_rows_forward_kernel<V, L, K, true, true><<<blocks, 256, 0, cuda::stream()>>>(
                 x, gains, ys, rstd, rstd_pre, rows, eps, MixRows{});
           else if (bf16_out)
             rms_norm_rows_forward_kernel<V, L, K, false, true><<<blocks, 256, 0, cuda::stream()>>>(
                 x, gains, ys, rstd, rstd_pre, rows, eps, MixRows{});
           else if (int8)
             rms_norm_rows_forward_kernel<V, L, K, true><<<blocks, 256, 0, cuda::stream()>>>(
                 x, gains, ys, rstd, rstd_pre, rows, eps, MixRows{});
           else
             rms_norm_rows_forward_kernel<V, L, K, false><<<blocks, 256, 0, cuda::stream()>>>(
                 x, gains, ys, rstd, rstd_pre, rows, eps, MixRows{});
           TERNARY_CUDA_CHECK_LAUNCH("rms_norm_rows_forward_kernel");
         });
}
// partial (if not null): K * blocks rows of D floats, dgain_k's share per block.
// bf16_rows: x, gs and dx hold __nv_bfloat16 rows (with relu2_in, no dx_addend only);
// bf16_grads: only gs do.
template <int K>
bool rows_backward(int blocks, const float* x, const float* rstd, RowPtrs<K> gains, RowPtrs<K> gs,
                   float* dx, float* partial, int64_t rows, int64_t D,
                   const float* dx_addend = nullptr, const float* rstd_pre = nullptr,
                   bool relu2_in = false, bool bf16_rows = false, bool bf16_grads = false,
                   __nv_bfloat16* dx16 = nullptr, MixGrads mix = {}) {
  if (relu2_in && rstd_pre) return false;
  if (bf16_rows && (!relu2_in || dx_addend || bf16_grads || dx16)) return false;
  if (mix.partial && (!bf16_grads || relu2_in || bf16_rows)) return false;
  bool aligned =
      reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(mix.a) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(mix.b) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(mix.x0) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(mix.dx_in) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(mix.prior_in) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(mix.dx0) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(mix.prior0) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(mix.partial) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(mix.dx_in16) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(dx) % 16 == 0 && reinterpret_cast<uintptr_t>(dx16) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(dx_addend) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(partial) % 16 == 0;
  for (int k = 0; k < K; ++k)
    aligned = aligned && reinterpret_cast<uintptr_t>(gains.p[k]) % 16 == 0 &&
              reinterpret_cast<uintptr_t>(gs.p[k]) % 16 == 0;
  bool launched = false;
  if (mix.partial) {  // the block entry's mix behind the norm: its own instantiation
    const bool vec =
        aligned && with_row_vec(D, {}, [&](auto v, auto l) {
          constexpr int V = decltype(v)::value, L = decltype(l)::value;
          constexpr size_t slot_rows = size_t(256 / L) * (4 * V * L) * sizeof(float);
          constexpr size_t most = (K + 2) * slot_rows;  // dgain rows, then the mix's two
          if constexpr (most <= 160 * 1024) {
            auto* kernel = rms_norm_rows_backward_kernel<V, L, K, false, false, true, true>;
            static const bool opted = (allow_dynamic_smem(kernel, most), true);
            (void)opted;
            const size_t bytes = size_t((partial ? K : 0) + 2) * slot_rows;
            kernel<<<blocks, 256, bytes, cuda::stream()>>>(x, rstd, rstd_pre, gains, gs, dx,
                                                           dx_addend, partial, rows, dx16, mix);
            TERNARY_CUDA_CHECK_LAUNCH("rms_norm_rows_backward_kernel");
            launched = true;
          }
        });
    return vec && launched;
  }
  const bool vec =
      aligned && with_row_vec(D, {}, [&](auto v, auto l) {
        constexpr int V = decltype(v)::value, L = decltype(l)::value;
        constexpr size_t bytes = rows_backward_shared_bytes<V, L, K>();
        if constexpr (bytes <= 48 * 1024) {
          if (bf16_rows)
            rms_norm_rows_backward_kernel<V, L, K, true, true>
                <<<blocks, 256, partial ? bytes : 0, cuda::stream()>>>(
                    x, rstd, rstd_pre, gains, gs, dx, dx_addend, partial, rows, dx16, MixGrads{});
          else if (bf16_grads && relu2_in)
            rms_norm_rows_backward_kernel<V, L, K, true, false, true>
                <<<blocks, 256, partial ? bytes : 0, cuda::stream()>>>(
                    x, rstd, rstd_pre, gains, gs, dx, dx_addend, partial, rows, dx16, MixGrads{});
          else if (bf16_grads)
            rms_norm_rows_backward_kernel<V, L, K, false, false, true>
                <<<blocks, 256, partial ? bytes : 0, cuda::stream()>>>(
                    x, rstd, rstd_pre, gains, gs, dx, dx_addend, partial, rows, dx16, MixGrads{});
          else if (relu2_in)
            rms_norm_rows_backward_kernel<V, L, K, true>
                <<<blocks, 256, partial ? bytes : 0, cuda::stream()>>>(
                    x, rstd, rstd_pre, gains, gs, dx, dx_addend, partial, rows, dx16, MixGrads{});
          else
            rms_norm_rows_backward_kernel<V, L, K>
                <<<blocks, 256, partial ? bytes : 0, cuda::stream()>>>(
                    x, rstd, rstd_pre, gains, gs, dx, dx_addend, partial, rows, dx16, MixGrads{});
          TERNARY_CUDA_CHECK_LAUNCH("rms_norm_rows_backward_kernel");
          launched = true;
        }
      });
  return vec && launched;
}
}  // namespace ternary::backend::cuda_detail

namespace ternary::backend {

// int8_output: y holds the per-token int8 fake quantization of the normalised rows
// (quant::rms_norm_quantize_activations), in the same pass.
template <class T>
void rms_norm_forward(cuda, const Tensor<T, cuda>& x, const Tensor<T, cuda>& gain,
                      const Tensor<T, cuda>& y, const Tensor<T, cuda>& rstd, double eps,
                      bool int8_output) {  // default: in cuda.hpp's declaration
  using namespace cuda_detail;
  const int64_t rows = x.size(0), D = x.size(1);
  if (!x.is_contiguous() || !y.is_contiguous() || !(y.shape() == x.shape()) ||
      rstd.numel() != rows || !rstd.is_contiguous() ||
      (gain.defined() && (gain.numel() != D || !gain.is_contiguous())))
    throw ShapeError(detail::cat("rms_norm_forward(cuda): x ", x.shape(), ", y ", y.shape(),
                                 ", rstd ", rstd.shape(), ", gain ",
                                 gain.defined() ? gain.shape() : Shape{}, " (contiguous, ", rows,
                                 " rows of ", D, ")"));
  if (rows == 0) return;
  const T* g = gain.defined() ? gain.data() : nullptr;
  if constexpr (std::is_same_v<T, float>) {
    if (rows_forward<1>(x.data(), {{g}}, {{y.data()}}, rstd.data(), rows, D, eps, int8_output))
      return;
  }
  if (int8_output)
    rms_norm_forward_kernel<T, true><<<row_warps_blocks(rows), 256, 0, cuda::stream()>>>(
        x.data(), g, y.data(), rstd.data(), rows, D, eps);
  else
    rms_norm_forward_kernel<T, false><<<row_warps_blocks(rows), 256, 0, cuda::stream()>>>(
        x.data(), g, y.data(), rstd.data(), rows, D, eps);
  TERNARY_CUDA_CHECK_LAUNCH("rms_norm_forward_kernel");
}

namespace cuda_detail {
// The register-resident backward when D allows it (float rows of 64-1024); false otherwise.
template <class T>
bool backward_vec(int blocks, const Tensor<T, cuda>& x, const T* gain, const Tensor<T, cuda>& rstd,
                  const Tensor<T, cuda>& g, T* dx, T* partial, int64_t rows, const T* dx_addend) {
  if constexpr (!std::is_same_v<T, float>) {
    return false;
  } else {
    return rows_backward<1>(blocks, x.data(), rstd.data(), {{gain}}, {{g.data()}}, dx, partial,
                            rows, x.size(1), dx_addend);
  }
}
}  // namespace cuda_detail

template <class T>
void rms_norm_backward(cuda, const Tensor<T, cuda>& x, const Tensor<T, cuda>& gain,
                       const Tensor<T, cuda>& rstd, const Tensor<T, cuda>& g,
                       const Tensor<T, cuda>& dx, const Tensor<T, cuda>& dgain,
                       const Tensor<T, cuda>& dx_addend) {  // default: in cuda.hpp
  using namespace cuda_detail;
  const int64_t rows = x.size(0), D = x.size(1);
  if (!x.is_contiguous() || !g.is_contiguous() || !(g.shape() == x.shape()) ||
      (dx.defined() && (!dx.is_contiguous() || !(dx.shape() == x.shape()))) ||
      (dx_addend.defined() &&
       (!dx.defined() || !dx_addend.is_contiguous() || dx_addend.numel() != x.numel())) ||
      (dgain.defined() && (dgain.numel() != D || !dgain.is_contiguous())))
    throw ShapeError(detail::cat("rms_norm_backward(cuda): x ", x.shape(), ", g ", g.shape(),
                                 ", dx ", dx.defined() ? dx.shape() : Shape{}, ", dgain ",
                                 dgain.defined() ? dgain.shape() : Shape{}));
  const T* gain_p = gain.defined() ? gain.data() : nullptr;
  T* dx_p = dx.defined() ? dx.data() : nullptr;
  const T* add_p = dx_addend.defined() ? dx_addend.data() : nullptr;
  // With a gain to differentiate and rows short enough for 8 of them in shared memory: dx and
  // dgain in one pass (x and g read once), then a small sum over the blocks' partial rows.
  const size_t fused_shared = size_t(8 * D) * sizeof(T);
  if (dgain.defined() && rows > 0 && D > 0 && fused_shared <= 48 * 1024) {
    const int blocks =
        int(std::min<int64_t>((rows + 7) / 8, launch_for(int64_t(1) << 40).blocks / 4));
    auto partial = Tensor<T, cuda>::empty(Shape{blocks, D});
    if (!backward_vec(blocks, x, gain_p, rstd, g, dx_p, partial.data(), rows, add_p)) {
      rms_norm_backward_kernel<<<blocks, 256, fused_shared, cuda::stream()>>>(
          x.data(), gain_p, rstd.data(), g.data(), dx_p, add_p, partial.data(), rows, D);
      TERNARY_CUDA_CHECK_LAUNCH("rms_norm_backward_kernel");
    }
    sum_columns(partial.data(), dgain.data(), partial.size(0), D);  // straight into dgain
    return;
  }
  if (dx.defined() && rows > 0 &&
      !backward_vec(row_warps_blocks(rows), x, gain_p, rstd, g, dx_p, static_cast<T*>(nullptr),
                    rows, add_p)) {
    rms_norm_backward_kernel<<<row_warps_blocks(rows), 256, 0, cuda::stream()>>>(
        x.data(), gain_p, rstd.data(), g.data(), dx_p, add_p, static_cast<T*>(nullptr), rows, D);
    TERNARY_CUDA_CHECK_LAUNCH("rms_norm_backward_kernel");
  }
  if (dgain.defined()) {
    if (rows == 0 || D == 0) {
      Tensor<T, cuda>(dgain).fill(T(0));
      return;
    }
    // 256 rows per chunk, more when the grid's y extent (65535) would overflow.
    const int64_t chunk = std::max<int64_t>(256, (rows + 65534) / 65535);
    const int64_t chunks = (rows + chunk - 1) / chunk;
    auto partial = Tensor<T, cuda>::empty(Shape{chunks, D});
    rms_norm_dgain_kernel<<<dim3(unsigned((D + 31) / 32), unsigned(chunks)), dim3(32, 8), 0,
                            cuda::stream()>>>(x.data(), rstd.data(), g.data(), partial.data(), rows,
                                              D, chunk);
    TERNARY_CUDA_CHECK_LAUNCH("rms_norm_dgain_kernel");
    sum_columns(partial.data(), dgain.data(), partial.size(0), D);  // straight into dgain
  }
}

// quant::rms_norm_quantize_activations over K gains of one x (the q, k, v BitLinears):
// ys[k] = int8(rms_norm(x, gain_k)) with x [rows, D] contiguous, rstd [rows]; rows of 64-1024
// floats take one kernel that reads x once, others one fused kernel per k. With rstd_pre
// defined ([rows]), x is first normalised without a gain (h = rms_norm(x, pre_eps)) and
// ys[k] = int8(rms_norm(h, gain_k)); h never reaches memory.
template <class T, size_t K>
void rms_norm_int8_shared_forward(cuda, const Tensor<T, cuda>& x,
                                  const std::array<Tensor<T, cuda>, K>& gains,
                                  const std::array<Tensor<T, cuda>, K>& ys,
                                  const Tensor<T, cuda>& rstd, double eps,
                                  const Tensor<T, cuda>& rstd_pre = Tensor<T, cuda>(),
                                  double pre_eps = 0) {
  static_assert(std::is_same_v<T, float>, "rms_norm_int8_shared_forward(cuda): float only");
  using namespace cuda_detail;
  const int64_t rows = x.size(0), D = x.size(1);
  if (rows == 0) return;
  RowPtrs<int(K)> gp;
  RowOutPtrs<int(K)> yp;
  for (size_t k = 0; k < K; ++k) {
    gp.p[k] = gains[k].data();
    yp.p[k] = ys[k].data();
  }
  if (rstd_pre.defined()) {
    // The register kernel normalises twice with one eps: the two must agree to take it.
    if (pre_eps == eps &&
        rows_forward<int(K)>(x.data(), gp, yp, rstd.data(), rows, D, eps, true, rstd_pre.data()))
      return;
    auto h = Tensor<T, cuda>::empty(x.shape());
    rms_norm_forward(cuda{}, x, Tensor<T, cuda>(), h, rstd_pre, pre_eps);
    for (size_t k = 0; k < K; ++k) rms_norm_forward(cuda{}, h, gains[k], ys[k], rstd, eps, true);
    return;
  }
  if (rows_forward<int(K)>(x.data(), gp, yp, rstd.data(), rows, D, eps, true)) return;
  for (size_t k = 0; k < K; ++k) rms_norm_forward(cuda{}, x, gains[k], ys[k], rstd, eps, true);
}

// quant::rms_norm_linear's forward: ys[k] = bf16(q(rms_norm(p(x), gain_k))) with p the plain
// pre-norm when rstd_pre is defined (pre_eps must equal eps), relu(x)^2 with relu2_input (int8
// only), else the identity, and q the int8 fake quantization when int8; gain_k undefined: no
// gain. Rows of 64-1024 floats only: false (nothing written) otherwise, and the caller composes
// the separate ops instead. With mix (NormMix; not with relu2_input) x holds x_in and the rows
// normalised are the block entry's mix, written to mix->x_out.
template <class T, size_t K>
bool rms_norm_bf16_forward(cuda, const Tensor<T, cuda>& x,
                           const std::array<Tensor<T, cuda>, K>& gains,
                           const std::array<Tensor<ternary::bf16, cuda>, K>& ys,
                           const Tensor<T, cuda>& rstd, double eps, bool int8,
                           const Tensor<T, cuda>& rstd_pre, double pre_eps,
                           bool relu2_input = false, const NormMix<T, cuda>* mix = nullptr) {
  static_assert(std::is_same_v<T, float>, "rms_norm_bf16_forward(cuda): float only");
  using namespace cuda_detail;
  const int64_t rows = x.size(0), D = x.size(1);
  if (rstd_pre.defined() && pre_eps != eps) return false;
  if (rows == 0) return true;
  RowPtrs<int(K)> gp;
  RowOutPtrs<int(K)> yp;
  for (size_t k = 0; k < K; ++k) {
    gp.p[k] = gains[k].defined() ? gains[k].data() : nullptr;
    yp.p[k] = reinterpret_cast<float*>(ys[k].data());
  }
  MixRows mr;
  if (mix) {
    if (relu2_input) return false;
    auto data_or_null = [](const auto& t) { return t.defined() ? t.data() : nullptr; };
    mr = MixRows{data_or_null(mix->a), mix->b.data(), data_or_null(mix->x0), mix->x_out.data(),
                 reinterpret_cast<const __nv_bfloat16*>(data_or_null(mix->y16))};
  }
  return rows_forward<int(K)>(x.data(), gp, yp, rstd.data(), rows, D, eps, int8,
                              rstd_pre.defined() ? rstd_pre.data() : nullptr, /*bf16_out=*/true,
                              relu2_input, /*bf16_in=*/false, mr);
}

// Its backward: dx (if defined) = the sum over k of RMSNorm's dx for g_k with gain_k, and
// dgains[k] (each if defined) = sum over rows of g_k x rstd. gs[k] undefined: no gradient.
// With rstd_pre (the forward's pre-norm) that is the gradient for h = x rstd_pre, carried on
// through the pre-norm to dx (and x rstd_pre stands for x in dgain). dx_addend (if defined) is
// added into dx (a gradient so far; it may be dx itself). relu2_input: the forward normalised
// relu(x)^2 (rms_norm_bf16_forward's flag; the register kernels only, which that forward ran).
// The g_k in T, or in bf16 (GradT = ternary::bf16: as the nodes' GEMMs write them; the register
// kernels read them as they are, the other sizes widen them first). dx16 (if defined): dx
// rounded to bf16 by the same pass, beside dx (Var::accumulate_grad_with_bf16) or, with dx
// undefined, instead of it (a gradient born in bf16, Var::grad_bf16_target; no dx_addend then). mix
// (the forward's NormMix, bf16 g_k only): x holds x_in, and x's whole gradient (dx plus dx_addend)
// goes on through the mix instead of to dx (undefined then). dgain_priors[k] (where defined):
// added into dgains[k] (a gradient so far, Var::accumulate_grad_with; may be dgains[k] itself);
// the register kernels' gain and mix-weight sums then run as one launch.
template <class T, size_t K, class GradT>
void rms_norm_shared_backward(
    cuda, const Tensor<T, cuda>& x, const Tensor<T, cuda>& rstd,
    const std::array<Tensor<T, cuda>, K>& gains, const std::array<Tensor<GradT, cuda>, K>& gs_in,
    const Tensor<T, cuda>& dx, const std::array<Tensor<T, cuda>, K>& dgains,
    const Tensor<T, cuda>& rstd_pre = Tensor<T, cuda>(),
    const Tensor<T, cuda>& dx_addend = Tensor<T, cuda>(), bool relu2_input = false,
    const Tensor<ternary::bf16, cuda>& dx16 = Tensor<ternary::bf16, cuda>(),
    const NormMix<T, cuda>* mix = nullptr,
    const std::array<Tensor<T, cuda>, K>& dgain_priors = {}) {
  static_assert(std::is_same_v<T, float>, "rms_norm_shared_backward(cuda): float only");
  static_assert(std::is_same_v<GradT, T> || std::is_same_v<GradT, ternary::bf16>,
                "rms_norm_shared_backward(cuda): gradients in float or bf16");
  using namespace cuda_detail;
  constexpr bool bf16_grads = std::is_same_v<GradT, ternary::bf16>;
  const int64_t rows = x.size(0), D = x.size(1);
  RowPtrs<int(K)> gp, gsp;
  for (size_t k = 0; k < K; ++k) {
    gp.p[k] = gains[k].data();
    gsp.p[k] = gs_in[k].defined() ? reinterpret_cast<const float*>(gs_in[k].data()) : nullptr;
  }
  const int blocks =
      int(std::min<int64_t>((rows + 7) / 8, launch_for(int64_t(1) << 40).blocks / 4));
  bool any_dgain = false;
  for (const auto& d : dgains) any_dgain = any_dgain || d.defined();
  if (rows > 0 && D > 0) {
    auto partial = Tensor<T, cuda>::empty(Shape{any_dgain ? int64_t(K) * blocks : 0, D});
    // With the block entry's mix (the forward's): its weights' partial sums, [2, blocks, D]
    auto mix_partial = Tensor<T, cuda>::empty(Shape{mix ? 2 * int64_t(blocks) : 0, D});
    MixGrads mg;
    if (mix)
      mg = MixGrads{mix->a.data(),
                    mix->b.data(),
                    mix->x0.data(),
                    mix->dx_in,
                    mix->prior_in,
                    mix->x0_is_x_in ? nullptr : mix->dx0,
                    mix->x0_is_x_in ? nullptr : mix->prior0,
                    mix_partial.data(),
                    reinterpret_cast<__nv_bfloat16*>(mix->dx_in16),
                    mix->x0_is_x_in};
    if (rows_backward<int(K)>(
            blocks, x.data(), rstd.data(), gp, gsp, dx.defined() ? dx.data() : nullptr,
            any_dgain ? partial.data() : nullptr, rows, D,
            dx_addend.defined() ? dx_addend.data() : nullptr,
            rstd_pre.defined() ? rstd_pre.data() : nullptr, relu2_input,
            /*bf16_rows=*/false, bf16_grads,
            dx16.defined() ? reinterpret_cast<__nv_bfloat16*>(dx16.data()) : nullptr, mg)) {
      ColumnSumJobs<T> sums;  // every gain's and mix weight's sum (plus prior), one launch
      auto prior_of = [](const Tensor<T, cuda>& p) { return p.defined() ? p.data() : nullptr; };
      if (mix && mix->da.defined())
        sums.add(mix_partial.data(), mix->da.data(), prior_of(mix->da_prior));
      if (mix && mix->db.defined())
        sums.add(mix_partial.data() + int64_t(blocks) * D, mix->db.data(), prior_of(mix->db_prior));
      for (size_t k = 0; k < K; ++k)
        if (dgains[k].defined())  // (no gradient reached output k: its sum is 0)
          sums.add(gs_in[k].defined() ? partial.data() + int64_t(k) * blocks * D : nullptr,
                   dgains[k].data(), prior_of(dgain_priors[k]));
      sum_columns_into(sums, int64_t(blocks), D);
      return;
    }
  }
  if (mix && rows > 0 && D > 0)  // its forward ran the register kernel
    throw Error(
        detail::cat("rms_norm_shared_backward(cuda): the block entry's mix needs the "
                    "register kernels and bf16 gradients (rows of 64-1024 floats, "
                    "16-byte aligned), x ",
                    x.shape()));
  if (mix) {  // no rows: the sums are empty
    if (mix->da.defined()) set_sum_plus_prior(mix->da, Tensor<T, cuda>(), mix->da_prior);
    if (mix->db.defined()) set_sum_plus_prior(mix->db, Tensor<T, cuda>(), mix->db_prior);
    return;
  }
  if (relu2_input && rows > 0 && D > 0)  // its forward ran the register kernel
    throw Error(
        detail::cat("rms_norm_shared_backward(cuda): a relu2 input needs the register "
                    "kernels (rows of 64-1024 floats, 16-byte aligned), x ",
                    x.shape()));
  // Other sizes: G = sum_k g_k gain_k, one RMSNorm backward for dx, and per k a dgain pass;
  // with a pre-norm the same on h = x rstd_pre, then the pre-norm's backward.
  std::array<Tensor<T, cuda>, K> gs;
  for (size_t k = 0; k < K; ++k) {
    if constexpr (bf16_grads) {
      if (gs_in[k].defined()) gs[k] = widen_bf16(cuda{}, gs_in[k]);
    } else {
      gs[k] = gs_in[k];
    }
  }
  const Tensor<T, cuda> h =
      rstd_pre.defined() ? Tensor<T, cuda>(x * rstd_pre.reshape(Shape{rows, 1})) : x;
  // dx16 alone (a gradient born in bf16): dx through a temporary, rounded below
  const Tensor<T, cuda> dx_work =
      dx.defined() || !dx16.defined() ? dx : Tensor<T, cuda>::empty(x.shape());
  if (dx_work.defined()) {
    auto G = Tensor<T, cuda>::zeros(x.shape());
    for (size_t k = 0; k < K; ++k)
      if (gs[k].defined())
        G += gains[k].defined() ? Tensor<T, cuda>(gs[k] * gains[k].reshape(Shape{1, D})) : gs[k];
    if (rstd_pre.defined()) {
      auto dh = Tensor<T, cuda>::empty(x.shape());
      rms_norm_backward(cuda{}, h, Tensor<T, cuda>(), rstd, G, dh, Tensor<T, cuda>());
      rms_norm_backward(cuda{}, x, Tensor<T, cuda>(), rstd_pre, dh, dx_work, Tensor<T, cuda>(),
                        dx_addend);
    } else {
      rms_norm_backward(cuda{}, x, Tensor<T, cuda>(), rstd, G, dx_work, Tensor<T, cuda>(),
                        dx_addend);
    }
  }
  if (dx_work.defined() && dx16.defined()) {  // dx rounded to bf16, by its own pass here
    const auto r = to_bf16(cuda{}, dx_work);
    TERNARY_CUDA_CHECK(cudaMemcpyAsync(dx16.data(), r.data(),
                                       size_t(r.numel()) * sizeof(ternary::bf16),
                                       cudaMemcpyDeviceToDevice, cuda::stream()));
  }
  for (size_t k = 0; k < K; ++k)
    if (dgains[k].defined()) {
      Tensor<T, cuda> sum;  // (through a temporary: the prior may be dgains[k] itself)
      if (gs[k].defined()) {
        sum = Tensor<T, cuda>::empty(dgains[k].shape());
        rms_norm_backward(cuda{}, h, Tensor<T, cuda>(), rstd, gs[k], Tensor<T, cuda>(), sum);
      }
      set_sum_plus_prior(dgains[k], sum, dgain_priors[k]);
    }
}

// The BitLinear MLP projection over a hidden activation h born in bf16
// (quant::rms_norm_bitlinear_mlp): y = bf16(int8(rms_norm(relu(h)^2, gain))) with h, y
// [rows, D] bf16 and rstd [rows]; its backward dh = bf16(that norm's backward of g through
// relu2's slope) with g, dh bf16, and dgain (if defined). Rows of 64-1024 values only: false
// (nothing written) otherwise.
template <class T>
bool rms_norm_relu2_bf16_forward(cuda, const Tensor<ternary::bf16, cuda>& h,
                                 const Tensor<T, cuda>& gain, const Tensor<ternary::bf16, cuda>& y,
                                 const Tensor<T, cuda>& rstd, double eps) {
  static_assert(std::is_same_v<T, float>, "rms_norm_relu2_bf16_forward(cuda): float only");
  using namespace cuda_detail;
  const int64_t rows = h.size(0), D = h.size(1);
  if (rows == 0) return true;
  return rows_forward<1>(reinterpret_cast<const float*>(h.data()), {{gain.data()}},
                         {{reinterpret_cast<float*>(y.data())}}, rstd.data(), rows, D, eps,
                         /*int8=*/true, nullptr, /*bf16_out=*/true, /*relu2_in=*/true,
                         /*bf16_in=*/true);
}
template <class T>
bool rms_norm_relu2_bf16_backward(cuda, const Tensor<ternary::bf16, cuda>& h,
                                  const Tensor<T, cuda>& rstd, const Tensor<T, cuda>& gain,
                                  const Tensor<ternary::bf16, cuda>& g,
                                  const Tensor<ternary::bf16, cuda>& dh,
                                  const Tensor<T, cuda>& dgain,
                                  const Tensor<T, cuda>& dgain_prior = Tensor<T, cuda>()) {
  static_assert(std::is_same_v<T, float>, "rms_norm_relu2_bf16_backward(cuda): float only");
  using namespace cuda_detail;
  const int64_t rows = h.size(0), D = h.size(1);
  if (rows == 0) {
    if (dgain.defined()) set_sum_plus_prior(dgain, Tensor<T, cuda>(), dgain_prior);
    return true;
  }
  const int blocks =
      int(std::min<int64_t>((rows + 7) / 8, launch_for(int64_t(1) << 40).blocks / 4));
  auto partial = Tensor<T, cuda>::empty(Shape{dgain.defined() ? blocks : 0, D});
  if (!rows_backward<1>(blocks, reinterpret_cast<const float*>(h.data()), rstd.data(),
                        {{gain.data()}}, {{reinterpret_cast<const float*>(g.data())}},
                        reinterpret_cast<float*>(dh.data()),
                        dgain.defined() ? partial.data() : nullptr, rows, D, nullptr, nullptr,
                        /*relu2_in=*/true, /*bf16_rows=*/true))
    return false;
  if (dgain.defined()) {  // the sum plus the gradient so far, one launch
    ColumnSumJobs<T> sums;
    sums.add(partial.data(), dgain.data(), dgain_prior.defined() ? dgain_prior.data() : nullptr);
    sum_columns_into(sums, int64_t(blocks), D);
  }
  return true;
}

}  // namespace ternary::backend
