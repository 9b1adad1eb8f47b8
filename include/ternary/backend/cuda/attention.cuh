// CUDA fused causal attention with grouped-query heads, flash-attention style (the op and its
// math: ops/attention.hpp; the CPU kernel: backend/cpu/attention.hpp). fp32, no T x T matrix
// anywhere: tiles of keys/values (forward, dq) or queries/output gradients (dk, dv) are
// staged in shared memory and every score is recomputed where it is needed.
//
// Thread layout: one query row (forward, dq) or one key row (dk/dv) per group of SPLIT
// consecutive lanes; each lane holds DC = DM / SPLIT elements of the row's vectors in
// registers (DM = the head size rounded up to 16, 32, 64 or 128; padding is zero), and dot
// products are completed with SPLIT-lane shuffles. Rows in shared memory are stored in SPLIT
// chunks of DC floats padded to DC + 4, so the lanes of a row read their chunks of one
// broadcast row with 16-byte loads and no bank conflicts.
//
//   forward (block: 64 query rows of one (b, h)): online softmax over key tiles 0..diagonal,
//     8 keys at a time (one rescale of the accumulator per 8 keys at most);
//     out = acc / l, lse = m + log l.
//   backward: Di = rowsum(dout * out) (one warp per row); then
//     dq kernel  (block: 64 query rows): p = exp(scale q.k - lse), dp = do.v,
//                ds = p (dp - Di), dq = scale sum_j ds k_j
//     dkdv kernel (block: 64 key rows of one kv head, over every query head of its group and
//                every query row at or after the key): dv = sum_i p do_i, dk = scale sum_i ds q_i
//   Both write their outputs once (no atomics): the backward is deterministic.
// Operands may be strided views whose last axis has unit stride (the GPT's v is a permuted
// view); others are copied once. Head sizes above 128 throw. With reduced-precision matrix
// math on (cuda::set_bf16 / set_tf32) the tensor-core kernels of attention_mma.cuh run instead;
// they also write out, dq, dk and dv through their strides (these kernels write contiguous
// buffers, copied into strided outputs).
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <cstdint>
#include <type_traits>

#include "ternary/backend/cpu/attention.hpp"
#include "ternary/backend/cuda/attention_grid.cuh"
#include "ternary/backend/cuda/attention_mma.cuh"
#include "ternary/backend/cuda/elementwise.cuh"

namespace ternary::backend::cuda_detail {

// Elements of a row per lane (16 or 32): fewer means more lanes per row, fewer registers per
// thread and more warps in flight, at the cost of one more shuffle per dot product.
#ifndef TERNARY_CUDA_ATTN_LANE
#define TERNARY_CUDA_ATTN_LANE 32
#endif
static_assert(TERNARY_CUDA_ATTN_LANE == 16 || TERNARY_CUDA_ATTN_LANE == 32,
              "TERNARY_CUDA_ATTN_LANE must be 16 or 32");

template <int DM>
struct AttnCfg {
  static constexpr int DC = DM < TERNARY_CUDA_ATTN_LANE ? DM : TERNARY_CUDA_ATTN_LANE;
  static constexpr int SPLIT = DM / DC;  // lanes per row
  static constexpr int ROWS = 64;        // rows owned by a block
  static constexpr int THREADS = ROWS * SPLIT;
  static constexpr int INNER = DM >= 128 ? 32 : 64;  // rows per shared-memory tile
  static constexpr int CS = DC + 4;                  // chunk stride (floats)
  static constexpr int RS = SPLIT * CS;              // row stride (floats)
};

// Inner rows per step of the backward kernels (the forward takes 8): fewer live registers.
#ifndef TERNARY_CUDA_ATTN_DQ_ROWS
#define TERNARY_CUDA_ATTN_DQ_ROWS 4
#endif
#ifndef TERNARY_CUDA_ATTN_DKDV_ROWS
#define TERNARY_CUDA_ATTN_DKDV_ROWS 2
#endif
inline constexpr int kBwdRows = TERNARY_CUDA_ATTN_DQ_ROWS;
inline constexpr int kDkdvRows = TERNARY_CUDA_ATTN_DKDV_ROWS;  // it holds four row vectors
static_assert(64 % kBwdRows == 0 && 32 % kBwdRows == 0 && 32 % kDkdvRows == 0,
              "attention: rows per step must divide the tiles");

// Mask of the lanes that share this lane's row (SPLIT consecutive lanes).
template <int SPLIT>
__device__ unsigned row_mask() {
  if constexpr (SPLIT >= 32) return 0xffffffffu;
  const unsigned lane = threadIdx.x % 32;
  return ((1u << SPLIT) - 1u) << (lane & ~unsigned(SPLIT - 1));
}
template <int SPLIT>
__device__ float row_sum(float v, unsigned mask) {
#pragma unroll
  for (int o = 1; o < SPLIT; o <<= 1) v += __shfl_xor_sync(mask, v, o);
  return v;
}

// Rows [r0, r0 + INNER) of one head (base points at row 0 of it, rows st apart) into shared
// memory in the chunked layout; rows >= T and columns >= D are zero.
template <int DM>
__device__ void load_tile(float* s, const float* base, int64_t st, int r0, int T, int D) {
  using C = AttnCfg<DM>;
  for (int idx = threadIdx.x; idx < C::INNER * DM; idx += C::THREADS) {
    const int r = idx / DM, d = idx % DM;
    const float v = (r0 + r < T && d < D) ? base[int64_t(r0 + r) * st + d] : 0.f;
    s[r * C::RS + (d / C::DC) * C::CS + d % C::DC] = v;
  }
}
// This lane's chunk of a row (zero-padded).
template <int DM>
__device__ void load_chunk(float (&dst)[AttnCfg<DM>::DC], const float* row, int c, int D,
                           float mul = 1.f) {
  using C = AttnCfg<DM>;
#pragma unroll
  for (int e = 0; e < C::DC; ++e) {
    const int d = c * C::DC + e;
    dst[e] = d < D ? row[d] * mul : 0.f;
  }
}
template <int DM>
__device__ float dot_chunk(const float (&a)[AttnCfg<DM>::DC], const float* s) {
  using C = AttnCfg<DM>;
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;  // four chains: more independent FMAs
#pragma unroll
  for (int e = 0; e < C::DC; e += 4) {
    const float4 b = *reinterpret_cast<const float4*>(s + e);
    a0 = fmaf(a[e], b.x, a0);
    a1 = fmaf(a[e + 1], b.y, a1);
    a2 = fmaf(a[e + 2], b.z, a2);
    a3 = fmaf(a[e + 3], b.w, a3);
  }
  return (a0 + a1) + (a2 + a3);
}
template <int DM>
__device__ void axpy_chunk(float (&y)[AttnCfg<DM>::DC], float alpha, const float* s) {
  using C = AttnCfg<DM>;
#pragma unroll
  for (int e = 0; e < C::DC; e += 4) {
    const float4 b = *reinterpret_cast<const float4*>(s + e);
    y[e] = fmaf(alpha, b.x, y[e]);
    y[e + 1] = fmaf(alpha, b.y, y[e + 1]);
    y[e + 2] = fmaf(alpha, b.z, y[e + 2]);
    y[e + 3] = fmaf(alpha, b.w, y[e + 3]);
  }
}

// grid: query tiles * Hq * B; out contiguous [B, Hq, T, D]; lse [B, Hq, T] or null.
template <int DM>
__global__ void __launch_bounds__(AttnCfg<DM>::THREADS)
    attn_forward_kernel(const float* __restrict__ q, HeadStrides qs, const float* __restrict__ k,
                        HeadStrides ks, const float* __restrict__ v, HeadStrides vs,
                        float* __restrict__ out, float* __restrict__ lse, int T, int D, int Hq,
                        int group, float scale) {
  using C = AttnCfg<DM>;
  __shared__ __align__(16) float Ks[C::INNER * C::RS];
  __shared__ __align__(16) float Vs[C::INNER * C::RS];
  const TileIndex ti = tile_index<C::ROWS>(T, Hq, true);  // the longest rows first
  const int b = ti.b, h = ti.head, hk = h / group, qt = ti.tile;
  const int row = threadIdx.x / C::SPLIT, c = threadIdx.x % C::SPLIT;
  const int i = qt * C::ROWS + row, ie = i < T ? i : T - 1;
  const unsigned mask = row_mask<C::SPLIT>();
  float qr[C::DC], acc[C::DC];
  load_chunk<DM>(qr, q + b * qs.b + h * qs.h + int64_t(ie) * qs.t, c, D, scale);
#pragma unroll
  for (int e = 0; e < C::DC; ++e) acc[e] = 0.f;
  float m = -INFINITY, l = 0.f;
  const int last = min(T, (qt + 1) * C::ROWS) - 1;
  const float* kb = k + b * ks.b + hk * ks.h;
  const float* vb = v + b * vs.b + hk * vs.h;
  for (int j0 = 0; j0 <= last; j0 += C::INNER) {
    __syncthreads();
    load_tile<DM>(Ks, kb, ks.t, j0, T, D);
    load_tile<DM>(Vs, vb, vs.t, j0, T, D);
    __syncthreads();
    const int jn = min(C::INNER, ie - j0 + 1);
#pragma unroll 1
    for (int jc = 0; jc < jn; jc += 8) {
      float s[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) s[u] = dot_chunk<DM>(qr, Ks + (jc + u) * C::RS + c * C::CS);
      float mc = m;
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        s[u] = row_sum<C::SPLIT>(s[u], mask);
        if (jc + u >= jn) s[u] = -INFINITY;
        mc = fmaxf(mc, s[u]);
      }
      if (mc > m) {
        const float corr = expf(m - mc);
        l *= corr;
#pragma unroll
        for (int e = 0; e < C::DC; ++e) acc[e] *= corr;
        m = mc;
      }
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const float p = expf(s[u] - m);
        l += p;
        axpy_chunk<DM>(acc, p, Vs + (jc + u) * C::RS + c * C::CS);
      }
    }
  }
  if (i < T) {
    const int64_t o = ((int64_t(b) * Hq + h) * T + i);
    const float inv = 1.f / l;
#pragma unroll
    for (int e = 0; e < C::DC; ++e) {
      const int d = c * C::DC + e;
      if (d < D) out[o * D + d] = acc[e] * inv;
    }
    if (lse && c == 0) lse[o] = m + logf(l);
  }
}

// di[row] = sum_d dout[row, d] * out[row, d]; one warp per row of [B, Hq, T] (both strided).
template <int = 0>
__global__ void attn_rowdot_kernel(const float* __restrict__ dout, HeadStrides ds,
                                   const float* __restrict__ out, HeadStrides os,
                                   float* __restrict__ di, int B, int Hq, int T, int D) {
  const int lane = threadIdx.x % 32;
  const int64_t rows = int64_t(B) * Hq * T, warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; r < rows;
       r += warps) {
    const int64_t t = r % T, h = (r / T) % Hq, b = r / (int64_t(T) * Hq);
    const float* dr = dout + b * ds.b + h * ds.h + t * ds.t;
    const float* orow = out + b * os.b + h * os.h + t * os.t;
    float s = 0.f;
    for (int d = lane; d < D; d += 32) s += dr[d] * orow[d];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) di[r] = s;
  }
}

// grid: query tiles * Hq * B; dq contiguous [B, Hq, T, D].
template <int DM>
__global__ void __launch_bounds__(AttnCfg<DM>::THREADS)
    attn_backward_dq_kernel(const float* __restrict__ q, HeadStrides qs,
                            const float* __restrict__ k, HeadStrides ks,
                            const float* __restrict__ v, HeadStrides vs,
                            const float* __restrict__ dout, HeadStrides dos,
                            const float* __restrict__ lse, const float* __restrict__ di,
                            float* __restrict__ dq, int T, int D, int Hq, int group, float scale) {
  using C = AttnCfg<DM>;
  __shared__ __align__(16) float Ks[C::INNER * C::RS];
  __shared__ __align__(16) float Vs[C::INNER * C::RS];
  const TileIndex ti = tile_index<C::ROWS>(T, Hq, true);
  const int b = ti.b, h = ti.head, hk = h / group, qt = ti.tile;
  const int row = threadIdx.x / C::SPLIT, c = threadIdx.x % C::SPLIT;
  const int i = qt * C::ROWS + row, ie = i < T ? i : T - 1;
  const unsigned mask = row_mask<C::SPLIT>();
  const int64_t ri = (int64_t(b) * Hq + h) * T + ie;
  float qr[C::DC], dor[C::DC], acc[C::DC];
  load_chunk<DM>(qr, q + b * qs.b + h * qs.h + int64_t(ie) * qs.t, c, D);
  load_chunk<DM>(dor, dout + b * dos.b + h * dos.h + int64_t(ie) * dos.t, c, D);
#pragma unroll
  for (int e = 0; e < C::DC; ++e) acc[e] = 0.f;
  const float lse_i = lse[ri], d_i = di[ri];
  const int last = min(T, (qt + 1) * C::ROWS) - 1;
  const float* kb = k + b * ks.b + hk * ks.h;
  const float* vb = v + b * vs.b + hk * vs.h;
  for (int j0 = 0; j0 <= last; j0 += C::INNER) {
    __syncthreads();
    load_tile<DM>(Ks, kb, ks.t, j0, T, D);
    load_tile<DM>(Vs, vb, vs.t, j0, T, D);
    __syncthreads();
    const int jn = min(C::INNER, ie - j0 + 1);
#pragma unroll 1
    for (int jc = 0; jc < jn; jc += kBwdRows) {
      float s[kBwdRows], dp[kBwdRows];
#pragma unroll
      for (int u = 0; u < kBwdRows; ++u) {
        s[u] = dot_chunk<DM>(qr, Ks + (jc + u) * C::RS + c * C::CS);
        dp[u] = dot_chunk<DM>(dor, Vs + (jc + u) * C::RS + c * C::CS);
      }
#pragma unroll
      for (int u = 0; u < kBwdRows; ++u) {
        s[u] = row_sum<C::SPLIT>(s[u], mask);
        dp[u] = row_sum<C::SPLIT>(dp[u], mask);
        const float p = jc + u < jn ? expf(scale * s[u] - lse_i) : 0.f;
        axpy_chunk<DM>(acc, p * (dp[u] - d_i), Ks + (jc + u) * C::RS + c * C::CS);
      }
    }
  }
  if (i < T) {
    const int64_t o = (int64_t(b) * Hq + h) * T + i;
#pragma unroll
    for (int e = 0; e < C::DC; ++e) {
      const int d = c * C::DC + e;
      if (d < D) dq[o * D + d] = acc[e] * scale;
    }
  }
}

// grid: key tiles * Hkv * B; dk, dv contiguous [B, Hkv, T, D].
template <int DM>
__global__ void __launch_bounds__(AttnCfg<DM>::THREADS)
    attn_backward_dkdv_kernel(const float* __restrict__ q, HeadStrides qs,
                              const float* __restrict__ k, HeadStrides ks,
                              const float* __restrict__ v, HeadStrides vs,
                              const float* __restrict__ dout, HeadStrides dos,
                              const float* __restrict__ lse, const float* __restrict__ di,
                              float* __restrict__ dk, float* __restrict__ dv, int T, int D, int Hq,
                              int Hkv, int group, float scale) {
  using C = AttnCfg<DM>;
  __shared__ __align__(16) float Qs[C::INNER * C::RS];
  __shared__ __align__(16) float Ds[C::INNER * C::RS];
  __shared__ float Ls[C::INNER], Dis[C::INNER];
  const TileIndex ti = tile_index<C::ROWS>(T, Hkv, false);  // the longest columns first
  const int b = ti.b, hk = ti.head, kt = ti.tile;
  const int row = threadIdx.x / C::SPLIT, c = threadIdx.x % C::SPLIT;
  const int j = kt * C::ROWS + row, je = j < T ? j : T - 1;
  const unsigned mask = row_mask<C::SPLIT>();
  float kr[C::DC], vr[C::DC], dka[C::DC], dva[C::DC];
  load_chunk<DM>(kr, k + b * ks.b + hk * ks.h + int64_t(je) * ks.t, c, D);
  load_chunk<DM>(vr, v + b * vs.b + hk * vs.h + int64_t(je) * vs.t, c, D);
#pragma unroll
  for (int e = 0; e < C::DC; ++e) dka[e] = dva[e] = 0.f;
  const int first = kt * C::ROWS;  // no query before the block's first key sees it
  for (int h = hk * group; h < (hk + 1) * group; ++h) {
    const float* qb = q + b * qs.b + h * qs.h;
    const float* db = dout + b * dos.b + h * dos.h;
    const int64_t rb = (int64_t(b) * Hq + h) * T;
    for (int i0 = first / C::INNER * C::INNER; i0 < T; i0 += C::INNER) {
      __syncthreads();
      load_tile<DM>(Qs, qb, qs.t, i0, T, D);
      load_tile<DM>(Ds, db, dos.t, i0, T, D);
      for (int r = threadIdx.x; r < C::INNER; r += C::THREADS) {
        Ls[r] = i0 + r < T ? lse[rb + i0 + r] : 0.f;
        Dis[r] = i0 + r < T ? di[rb + i0 + r] : 0.f;
      }
      __syncthreads();
#pragma unroll 1
      for (int ic = 0; ic < C::INNER; ic += kDkdvRows) {
        if (i0 + ic + kDkdvRows - 1 < je) continue;  // every query of the step precedes the key
        float s[kDkdvRows], dp[kDkdvRows];
#pragma unroll
        for (int u = 0; u < kDkdvRows; ++u) {
          s[u] = dot_chunk<DM>(kr, Qs + (ic + u) * C::RS + c * C::CS);
          dp[u] = dot_chunk<DM>(vr, Ds + (ic + u) * C::RS + c * C::CS);
        }
#pragma unroll
        for (int u = 0; u < kDkdvRows; ++u) {
          s[u] = row_sum<C::SPLIT>(s[u], mask);
          dp[u] = row_sum<C::SPLIT>(dp[u], mask);
          const int ii = i0 + ic + u;
          const float p = (ii >= je && ii < T) ? expf(scale * s[u] - Ls[ic + u]) : 0.f;
          axpy_chunk<DM>(dva, p, Ds + (ic + u) * C::RS + c * C::CS);
          axpy_chunk<DM>(dka, p * (dp[u] - Dis[ic + u]), Qs + (ic + u) * C::RS + c * C::CS);
        }
      }
    }
  }
  if (j < T) {
    const int64_t o = (int64_t(b) * Hkv + hk) * T + j;
#pragma unroll
    for (int e = 0; e < C::DC; ++e) {
      const int d = c * C::DC + e;
      if (d < D) {
        dk[o * D + d] = dka[e] * scale;
        dv[o * D + d] = dva[e];
      }
    }
  }
}

template <class E>
bool has_unit_inner(const Tensor<E, cuda>& x) {
  return x.size(-1) <= 1 || x.strides()[x.dim() - 1] == 1;
}
// x itself if its last axis has unit stride, else a contiguous copy.
inline Tensor<float, cuda> unit_inner(const Tensor<float, cuda>& x) {
  return has_unit_inner(x) ? x : x.clone();
}
inline HeadStrides head_strides(const Tensor<float, cuda>& x) {
  return {x.strides()[0], x.strides()[1], x.strides()[2]};
}

// Calls f(std::integral_constant<int, DM>) for the padded head size of D.
template <class F>
void with_head_dim(int64_t D, const char* op, F&& f) {
  if (D <= 16)
    f(std::integral_constant<int, 16>{});
  else if (D <= 32)
    f(std::integral_constant<int, 32>{});
  else if (D <= 64)
    f(std::integral_constant<int, 64>{});
  else if (D <= 128)
    f(std::integral_constant<int, 128>{});
  else
    throw ShapeError(
        detail::cat(op, "(cuda): head size ", D, " is above the largest supported, 128"));
}

// Reduced-precision matrix math (cuda::set_bf16 or set_tf32) also moves attention onto the
// tensor cores (attention_mma.cuh, bf16 operands); otherwise the exact fp32 kernels here run.
inline bool attention_on_tensor_cores() {
  return cuda::bf16() || cuda::tf32();
}

inline void check_attention_sizes(const char* op, const Tensor<float, cuda>& q,
                                  const Tensor<float, cuda>& k) {
  // One block per 64 rows of every (b, h): the 1-d grid and the int index math must fit.
  if ((q.size(2) + 63) / 64 * q.size(1) * q.size(0) >= (int64_t(1) << 31) ||
      q.numel() >= (int64_t(1) << 62))
    throw ShapeError(detail::cat(op, "(cuda): q ", q.shape(), ", k ", k.shape(),
                                 " exceed the launch grid (64-row tiles * heads * batch < 2^31)"));
}

}  // namespace ternary::backend::cuda_detail

namespace ternary::backend {

template <class T>
void causal_attention_forward(cuda, const Tensor<T, cuda>& q_in, const Tensor<T, cuda>& k_in,
                              const Tensor<T, cuda>& v_in, T scale, Tensor<T, cuda>& out,
                              Tensor<T, cuda>* lse, Tensor<bf16, cuda>* saved_bf16) {
  static_assert(std::is_same_v<T, float>, "causal_attention(cuda): float only");
  using namespace cuda_detail;
  check_attention_sizes("causal_attention_forward", q_in, k_in);
  const int B = int(q_in.size(0)), Hq = int(q_in.size(1)), T_len = int(q_in.size(2)),
            D = int(q_in.size(3)), Hkv = int(k_in.size(1));
  if (!has_unit_inner(out) || (lse && !lse->is_contiguous()))
    throw ShapeError(
        "causal_attention_forward(cuda): out needs a unit-stride head axis and lse must be "
        "contiguous");
  if (q_in.numel() == 0) return;
  const auto q = unit_inner(q_in), k = unit_inner(k_in), v = unit_inner(v_in);
  with_head_dim(D, "causal_attention_forward", [&](auto dm) {
    constexpr int DM = decltype(dm)::value;
    if (attention_on_tensor_cores()) {
      const FlashPacked layout{B, Hq, Hkv, T_len, D, DM};
      const auto packed = flash_pack_qkv<DM>(layout, q, k, v);
      if (saved_bf16) *saved_bf16 = packed;  // kept for the backward: no second packing
      flash_attention_forward<DM>(layout, packed, scale, out, lse);
      return;
    }
    // The fp32 kernels write a contiguous output.
    Tensor<T, cuda> dst = out.is_contiguous() ? out : Tensor<T, cuda>::empty(out.shape());
    using C = AttnCfg<DM>;
    const int64_t tiles = (T_len + C::ROWS - 1) / C::ROWS;
    attn_forward_kernel<DM><<<unsigned(tiles * Hq * B), C::THREADS, 0, cuda::stream()>>>(
        q.data(), head_strides(q), k.data(), head_strides(k), v.data(), head_strides(v), dst.data(),
        lse ? lse->data() : nullptr, T_len, D, Hq, Hq / Hkv, scale);
    TERNARY_CUDA_CHECK_LAUNCH("attn_forward_kernel");
    if (dst.data() != out.data()) out.assign(dst);
  });
}

template <class T>
void causal_attention_backward(cuda, const Tensor<T, cuda>& q_in, const Tensor<T, cuda>& k_in,
                               const Tensor<T, cuda>& v_in, const Tensor<T, cuda>& out_in,
                               const Tensor<T, cuda>& lse, const Tensor<T, cuda>& dout_in, T scale,
                               Tensor<T, cuda>& dq, Tensor<T, cuda>& dk, Tensor<T, cuda>& dv,
                               const Tensor<bf16, cuda>* saved_bf16) {
  static_assert(std::is_same_v<T, float>, "causal_attention(cuda): float only");
  using namespace cuda_detail;
  check_attention_sizes("causal_attention_backward", q_in, k_in);
  const int B = int(q_in.size(0)), Hq = int(q_in.size(1)), T_len = int(q_in.size(2)),
            D = int(q_in.size(3)), Hkv = int(k_in.size(1));
  if (!lse.is_contiguous() || !has_unit_inner(dq) || !has_unit_inner(dk) || !has_unit_inner(dv) ||
      !(dout_in.shape() == q_in.shape()) || !(out_in.shape() == q_in.shape()))
    throw ShapeError(detail::cat(
        "causal_attention_backward(cuda): lse must be contiguous, dq, dk, dv need a "
        "unit-stride head axis, and out ",
        out_in.shape(), " and dout ", dout_in.shape(), " must be shaped like q ", q_in.shape()));
  if (k_in.numel() == 0) return;
  if (q_in.numel() == 0) {
    dk.fill(0.f);
    dv.fill(0.f);
    return;
  }
  const auto q = unit_inner(q_in), k = unit_inner(k_in), v = unit_inner(v_in);
  const auto dout = unit_inner(dout_in), out = unit_inner(out_in);
  if (attention_on_tensor_cores()) {
    with_head_dim(D, "causal_attention_backward", [&](auto dm) {
      constexpr int DM = decltype(dm)::value;
      const FlashPacked layout{B, Hq, Hkv, T_len, D, DM};
      // the forward's packed operands when they were kept for these shapes, else packed now
      const bool reuse =
          saved_bf16 && saved_bf16->defined() && saved_bf16->numel() == layout.total();
      const auto packed = reuse ? *saved_bf16 : flash_pack_qkv<DM>(layout, q, k, v);
      flash_attention_backward<DM>(layout, packed, out, lse, dout, scale, dq, dk, dv);
    });
    return;
  }
  auto di = Tensor<float, cuda>::empty(Shape{B, Hq, T_len});
  {
    const int64_t rows = int64_t(B) * Hq * T_len;
    const int blocks = int(std::min<int64_t>((rows + 7) / 8, 1 << 16));
    attn_rowdot_kernel<><<<blocks, 256, 0, cuda::stream()>>>(
        dout.data(), head_strides(dout), out.data(), head_strides(out), di.data(), B, Hq, T_len, D);
    TERNARY_CUDA_CHECK_LAUNCH("attn_rowdot_kernel");
  }
  // The fp32 kernels write contiguous gradients.
  auto contiguous_target = [](Tensor<T, cuda>& t) {
    return t.is_contiguous() ? t : Tensor<T, cuda>::empty(t.shape());
  };
  Tensor<T, cuda> dq_c = contiguous_target(dq), dk_c = contiguous_target(dk),
                  dv_c = contiguous_target(dv);
  with_head_dim(D, "causal_attention_backward", [&](auto dm) {
    constexpr int DM = decltype(dm)::value;
    using C = AttnCfg<DM>;
    const int64_t tiles = (T_len + C::ROWS - 1) / C::ROWS;
    attn_backward_dq_kernel<DM><<<unsigned(tiles * Hq * B), C::THREADS, 0, cuda::stream()>>>(
        q.data(), head_strides(q), k.data(), head_strides(k), v.data(), head_strides(v),
        dout.data(), head_strides(dout), lse.data(), di.data(), dq_c.data(), T_len, D, Hq, Hq / Hkv,
        scale);
    TERNARY_CUDA_CHECK_LAUNCH("attn_backward_dq_kernel");
    attn_backward_dkdv_kernel<DM><<<unsigned(tiles * Hkv * B), C::THREADS, 0, cuda::stream()>>>(
        q.data(), head_strides(q), k.data(), head_strides(k), v.data(), head_strides(v),
        dout.data(), head_strides(dout), lse.data(), di.data(), dk_c.data(), dv_c.data(), T_len, D,
        Hq, Hkv, Hq / Hkv, scale);
    TERNARY_CUDA_CHECK_LAUNCH("attn_backward_dkdv_kernel");
  });
  if (dq_c.data() != dq.data()) dq.assign(dq_c);
  if (dk_c.data() != dk.data()) dk.assign(dk_c);
  if (dv_c.data() != dv.data()) dv.assign(dv_c);
}

// The tensor-core attention with q and k already in its packed operand buffer (written there by
// their producer: ops/rope_attention.hpp's head_norm_rope_forward_bf16). The buffer's layout:
// q as contiguous bf16 [B, Hq, T, Dh], then k as [B, Hkv, T, Dh], then v (packed here), for
// head sizes that need no padding (16, 32, 64, 128). attention_packed_buffer makes it (undefined
// where this path does not run: the caller composes the separate ops); the forward packs v and
// runs the kernel, the backward reads the same buffer.
inline Tensor<bf16, cuda> attention_packed_buffer(cuda, int64_t B, int64_t Hq, int64_t Hkv,
                                                  int64_t T_len, int64_t D) {
  if (!cuda_detail::attention_on_tensor_cores() || !(D == 16 || D == 32 || D == 64 || D == 128) ||
      B * Hq * T_len == 0 || Hkv == 0 || Hq % Hkv != 0)
    return Tensor<bf16, cuda>();
  const cuda_detail::FlashPacked layout{int(B), int(Hq), int(Hkv), int(T_len), int(D), int(D)};
  return Tensor<bf16, cuda>::empty({layout.total()});
}
// With out16 (shaped and strided as out), the kernel also writes out rounded to bf16 there.
template <class T>
void causal_attention_forward_prepacked(cuda, const Tensor<bf16, cuda>& packed,
                                        const Tensor<T, cuda>& v_in, int64_t Hq, T scale,
                                        Tensor<T, cuda>& out, Tensor<T, cuda>& lse,
                                        Tensor<bf16, cuda>* out16 = nullptr) {
  using namespace cuda_detail;
  const int B = int(v_in.size(0)), Hkv = int(v_in.size(1)), T_len = int(v_in.size(2)),
            D = int(v_in.size(3));
  const FlashPacked layout{B, int(Hq), Hkv, T_len, D, D};
  // out undefined: the bf16 copy alone (ops/rope_attention.hpp's AttentionOutput::bf16_only)
  const bool fp32_out = out.defined();
  if (packed.numel() != layout.total() || !lse.is_contiguous() || (!fp32_out && !out16) ||
      (fp32_out && !has_unit_inner(out)) || (!fp32_out && !has_unit_inner(*out16)) ||
      (fp32_out && out16 &&
       (!(out16->shape() == out.shape()) || !(out16->strides() == out.strides()))))
    throw ShapeError(detail::cat("causal_attention_forward_prepacked(cuda): a buffer of ",
                                 packed.numel(), " values for v ", v_in.shape(), " and ", Hq,
                                 " query heads, out ", fp32_out ? out.shape() : Shape{},
                                 out16 ? " (its bf16 copy strided as out)" : " (no output)"));
  const auto v = unit_inner(v_in);
  with_head_dim(D, "causal_attention_forward_prepacked", [&](auto dm) {
    constexpr int DM = decltype(dm)::value;
    flash_pack<DM>(
        v, reinterpret_cast<__nv_bfloat16*>(packed.data()) + layout.q_elems + layout.kv_elems);
    flash_attention_forward<DM>(layout, packed, scale, out, &lse, out16);
  });
}
// dv in T, or rounded to bf16 by the kernel (DV = bf16: ops/rope_attention.hpp, whose v
// gradient only feeds the v projection's bf16 products). out and dout in T or bf16 (OUT, DO:
// the forward's bf16 copy of out and a gradient born in bf16), with unit-stride head axes where
// bf16.
template <class T, class DV, class OUT, class DO>
void causal_attention_backward_prepacked(cuda, const Tensor<bf16, cuda>& packed,
                                         const Tensor<OUT, cuda>& out_in,
                                         const Tensor<T, cuda>& lse,
                                         const Tensor<DO, cuda>& dout_in, T scale,
                                         Tensor<T, cuda>& dq, Tensor<T, cuda>& dk,
                                         Tensor<DV, cuda>& dv) {
  using namespace cuda_detail;
  const int B = int(dq.size(0)), Hq = int(dq.size(1)), T_len = int(dq.size(2)), D = int(dq.size(3)),
            Hkv = int(dk.size(1));
  constexpr bool bf16_in = !std::is_same_v<OUT, T> || !std::is_same_v<DO, T>;
  if (!lse.is_contiguous() || !has_unit_inner(dq) || !has_unit_inner(dk) || !has_unit_inner(dv) ||
      !(dout_in.shape() == dq.shape()) || !(out_in.shape() == dq.shape()) ||
      (bf16_in && (!has_unit_inner(out_in) || !has_unit_inner(dout_in))))
    throw ShapeError(detail::cat("causal_attention_backward_prepacked(cuda): out ", out_in.shape(),
                                 ", dout ", dout_in.shape(), ", dq ", dq.shape(),
                                 bf16_in ? " (bf16 ones with unit-stride head axes)" : ""));
  auto unit = [](const auto& x) {
    if constexpr (std::is_same_v<std::decay_t<decltype(x)>, Tensor<float, cuda>>)
      return unit_inner(x);
    else
      return x;  // (checked above)
  };
  const auto dout = unit(dout_in);
  const auto out = unit(out_in);
  with_head_dim(D, "causal_attention_backward_prepacked", [&](auto dm) {
    constexpr int DM = decltype(dm)::value;
    flash_attention_backward<DM>(FlashPacked{B, Hq, Hkv, T_len, D, DM}, packed, out, lse, dout,
                                 scale, dq, dk, dv);
  });
}

}  // namespace ternary::backend
