// CUDA fused causal GQA attention on tensor cores: the flash-attention algorithm of
// attention.cuh with every product (q.k, p.v, do.v, ds.k, p^T.do, ds^T.q) done by
// `mma.sync.m16n8k16` on bf16 operands with fp32 accumulation. Used instead of the fp32 SIMT
// kernels when reduced-precision matrix math is on (cuda::set_bf16 or cuda::set_tf32); the
// tensors stay fp32 in memory and are rounded to bf16 as tiles are loaded. Softmax
// statistics, accumulators and outputs are fp32.
//
// Layout: a block owns 64 rows (query rows: forward, dq; key rows: dk/dv), 4 warps of 16
// rows. A warp keeps its 16 rows of the fixed operands as mma A fragments in registers and
// streams INNER-row tiles of the other operands through shared memory (bf16, rows padded by
// 16 bytes so fragment loads hit 32 distinct banks). Scores live in mma accumulators; the
// accumulator layout of two adjacent 16x8 tiles is the A-fragment layout of one 16x16 tile, so
// p (or ds) feeds the next product without leaving registers (the FlashAttention-2 trick).
//
// mma.m16n8k16 fragments (PTX ISA; g = lane / 4, t = lane % 4; pairs are bf16x2, low half first):
//   A 16x16: a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B 16x8:  b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C 16x8:  c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
//
// Causal masking: a tile is masked only where it crosses the diagonal; tiles wholly above it
// are skipped per warp. Rows at or past T are zero in shared memory and masked out of every
// sum over them; nothing past T is written.
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <cuda_bf16.h>

#include <cstdint>

#include "ternary/backend/cuda/attention_grid.cuh"
#include "ternary/backend/cuda/cuda.hpp"

namespace ternary::backend::cuda_detail {

template <int DM>
struct MmaAttnCfg {
  static constexpr int ROWS = 64;  // rows owned by a block
  static constexpr int WARPS = 4;  // 16 rows each
  static constexpr int THREADS = WARPS * 32;
  static constexpr int INNER = DM >= 128 ? 32 : 64;  // rows per streamed tile (registers)
  static constexpr int SS = DM + 8;                  // shared row stride in bf16 (16-byte pad)
  static constexpr int KS = DM / 16;                 // 16-wide k steps over the head
  static constexpr int NT = INNER / 8;               // 8-wide score tiles per streamed tile
  static constexpr int DT = DM / 8;                  // 8-wide output tiles over the head
};

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t pack_bf16(__nv_bfloat16 lo, __nv_bfloat16 hi) {
  const uint32_t l = *reinterpret_cast<const unsigned short*>(&lo);
  const uint32_t h = *reinterpret_cast<const unsigned short*>(&hi);
  return l | (h << 16);
}
// Two consecutive bf16 of a shared-memory row (4-byte aligned: even column, even stride).
__device__ __forceinline__ uint32_t ld_pair(const __nv_bfloat16* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// Rows [r0, r0 + n) of one head (base points at row 0, rows st apart, unit inner stride) as
// bf16 into shared memory (row stride SS); rows >= T and columns >= D are zero.
template <int DM>
__device__ void mma_load_tile(__nv_bfloat16* s, const float* base, int64_t st, int r0, int n, int T,
                              int D) {
  using C = MmaAttnCfg<DM>;
  for (int idx = threadIdx.x; idx < n * DM; idx += C::THREADS) {
    const int r = idx / DM, d = idx % DM;
    const float v = (r0 + r < T && d < D) ? base[int64_t(r0 + r) * st + d] : 0.f;
    s[r * C::SS + d] = __float2bfloat16_rn(v);
  }
}

// The A fragments of 16 rows (r, r + 8 for this lane) of one head, read from global memory.
template <int DM>
__device__ void load_a_fragments(uint32_t (&f)[MmaAttnCfg<DM>::KS][4], const float* base,
                                 int64_t st, int r, int T, int D) {
  const int t = threadIdx.x % 4;
  const float* row0 = base + int64_t(r) * st;
  const float* row1 = base + int64_t(r + 8) * st;
  auto at = [&](const float* row, int rr, int d) { return rr < T && d < D ? row[d] : 0.f; };
#pragma unroll
  for (int kk = 0; kk < MmaAttnCfg<DM>::KS; ++kk) {
    const int d0 = kk * 16 + 2 * t, d1 = d0 + 8;
    f[kk][0] = pack_bf16(at(row0, r, d0), at(row0, r, d0 + 1));
    f[kk][1] = pack_bf16(at(row1, r + 8, d0), at(row1, r + 8, d0 + 1));
    f[kk][2] = pack_bf16(at(row0, r, d1), at(row0, r, d1 + 1));
    f[kk][3] = pack_bf16(at(row1, r + 8, d1), at(row1, r + 8, d1 + 1));
  }
}

// acc[nt] (16 x 8 per nt) = A (16 x DM, fragments) . S^T where S is a shared tile of INNER
// rows x DM: the rows of S are the n index (scores of q against keys, dp of do against v).
template <int DM>
__device__ void mma_rows_dot_tile(float (&acc)[MmaAttnCfg<DM>::NT][4],
                                  const uint32_t (&a)[MmaAttnCfg<DM>::KS][4],
                                  const __nv_bfloat16* s) {
  using C = MmaAttnCfg<DM>;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int nt = 0; nt < C::NT; ++nt) {
    acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
    const __nv_bfloat16* row = s + (nt * 8 + g) * C::SS + 2 * t;
#pragma unroll
    for (int kk = 0; kk < C::KS; ++kk)
      mma_bf16_16816(acc[nt], a[kk], ld_pair(row + kk * 16), ld_pair(row + kk * 16 + 8));
  }
}

// out[dt] (16 x 8 per dt) += P (16 x INNER, in accumulator layout, rounded to bf16) . S where
// S is a shared tile of INNER rows x DM: the rows of S are the k index (p.v, ds.k, p^T.do).
template <int DM>
__device__ void mma_acc_times_tile(float (&out)[MmaAttnCfg<DM>::DT][4],
                                   const float (&p)[MmaAttnCfg<DM>::NT][4],
                                   const __nv_bfloat16* s) {
  using C = MmaAttnCfg<DM>;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int kk = 0; kk < C::INNER / 16; ++kk) {
    const uint32_t a[4] = {pack_bf16(p[2 * kk][0], p[2 * kk][1]),
                           pack_bf16(p[2 * kk][2], p[2 * kk][3]),
                           pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                           pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3])};
    const __nv_bfloat16* r0 = s + (kk * 16 + 2 * t) * C::SS + g;  // k rows 2t, 2t+1, 2t+8, 2t+9
#pragma unroll
    for (int dt = 0; dt < C::DT; ++dt) {
      const __nv_bfloat16* c = r0 + dt * 8;
      mma_bf16_16816(out[dt], a, pack_bf16(c[0], c[C::SS]), pack_bf16(c[8 * C::SS], c[9 * C::SS]));
    }
  }
}

// Writes this lane's part of a warp's 16 x DM accumulator tiles as rows r0 and r1 = r0 + 8
// of a contiguous [rows, D] head (base: the head's first row), times mul0 / mul1 per row;
// rows >= T and columns >= D are left alone.
template <int DM>
__device__ void store_rows(float* __restrict__ dst, int64_t base, int r0, int T, int D,
                           const float (&acc)[MmaAttnCfg<DM>::DT][4], float mul0, float mul1) {
  const int t = threadIdx.x % 4, r1 = r0 + 8;
#pragma unroll
  for (int dt = 0; dt < MmaAttnCfg<DM>::DT; ++dt) {
    const int d = dt * 8 + 2 * t;
    if (r0 < T) {
      if (d < D) dst[(base + r0) * D + d] = acc[dt][0] * mul0;
      if (d + 1 < D) dst[(base + r0) * D + d + 1] = acc[dt][1] * mul0;
    }
    if (r1 < T) {
      if (d < D) dst[(base + r1) * D + d] = acc[dt][2] * mul1;
      if (d + 1 < D) dst[(base + r1) * D + d + 1] = acc[dt][3] * mul1;
    }
  }
}

// Sum over the four lanes (t = 0..3) that hold one accumulator row.
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// grid: query tiles * Hq * B; out contiguous [B, Hq, T, D]; lse [B, Hq, T] (natural log) or null.
template <int DM>
__global__ void __launch_bounds__(MmaAttnCfg<DM>::THREADS)
    attn_mma_forward_kernel(const float* __restrict__ q, HeadStrides qs,
                            const float* __restrict__ k, HeadStrides ks,
                            const float* __restrict__ v, HeadStrides vs, float* __restrict__ out,
                            float* __restrict__ lse, int T, int D, int Hq, int group, float scale) {
  using C = MmaAttnCfg<DM>;
  __shared__ __align__(16) __nv_bfloat16 Ks[C::INNER * C::SS];
  __shared__ __align__(16) __nv_bfloat16 Vs[C::INNER * C::SS];
  const TileIndex ti = tile_index<C::ROWS>(T, Hq, true);  // the longest rows first
  const int b = ti.b, h = ti.head, hk = h / group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int w0 = ti.tile * C::ROWS + warp * 16;  // the warp's first query row
  const int r0 = w0 + g, r1 = r0 + 8;            // this lane's rows
  uint32_t qf[C::KS][4];
  load_a_fragments<DM>(qf, q + b * qs.b + h * qs.h, qs.t, r0, T, D);
  float o[C::DT][4];
#pragma unroll
  for (int dt = 0; dt < C::DT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
  // Running max (log2 domain, scores times scale * log2 e) and this lane's part of the sum.
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
  const float sl2 = scale * kLog2e;
  const int block_last = min(T, (ti.tile + 1) * C::ROWS) - 1;
  const float* kb = k + b * ks.b + hk * ks.h;
  const float* vb = v + b * vs.b + hk * vs.h;
  for (int j0 = 0; j0 <= block_last; j0 += C::INNER) {
    __syncthreads();
    mma_load_tile<DM>(Ks, kb, ks.t, j0, C::INNER, T, D);
    mma_load_tile<DM>(Vs, vb, vs.t, j0, C::INNER, T, D);
    __syncthreads();
    if (j0 > w0 + 15) continue;  // every key of the tile is after the warp's rows
    float s[C::NT][4];
    mma_rows_dot_tile<DM>(s, qf, Ks);
    const bool diagonal = j0 + C::INNER - 1 > w0;
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < C::NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = j0 + nt * 8 + 2 * t + (e & 1), row = e < 2 ? r0 : r1;
        float x = s[nt][e] * sl2;
        if (diagonal && key > row) x = -INFINITY;  // keys >= T are all past rows < T
        s[nt][e] = x;
        if (e < 2)
          mx0 = fmaxf(mx0, x);
        else
          mx1 = fmaxf(mx1, x);
      }
    // Key 0 is in the first tile and unmasked for every row, so the max is finite from then on.
    const float mn0 = fmaxf(m0, quad_max(mx0)), mn1 = fmaxf(m1, quad_max(mx1));
    const float a0 = exp2f(m0 - mn0), a1 = exp2f(m1 - mn1);
    m0 = mn0;
    m1 = mn1;
    float ps0 = 0.f, ps1 = 0.f;
#pragma unroll
    for (int nt = 0; nt < C::NT; ++nt) {
      s[nt][0] = exp2f(s[nt][0] - mn0);
      s[nt][1] = exp2f(s[nt][1] - mn0);
      s[nt][2] = exp2f(s[nt][2] - mn1);
      s[nt][3] = exp2f(s[nt][3] - mn1);
      ps0 += s[nt][0] + s[nt][1];
      ps1 += s[nt][2] + s[nt][3];
    }
    l0 = l0 * a0 + ps0;
    l1 = l1 * a1 + ps1;
#pragma unroll
    for (int dt = 0; dt < C::DT; ++dt) {
      o[dt][0] *= a0;
      o[dt][1] *= a0;
      o[dt][2] *= a1;
      o[dt][3] *= a1;
    }
    mma_acc_times_tile<DM>(o, s, Vs);
  }
  l0 = quad_sum(l0);
  l1 = quad_sum(l1);
  const int64_t base = (int64_t(b) * Hq + h) * T;
  store_rows<DM>(out, base, r0, T, D, o, 1.f / l0, 1.f / l1);
  if (lse && t == 0) {
    if (r0 < T) lse[base + r0] = (m0 + log2f(l0)) * kLn2;
    if (r1 < T) lse[base + r1] = (m1 + log2f(l1)) * kLn2;
  }
}

// grid: query tiles * Hq * B; dq contiguous [B, Hq, T, D]. di = rowsum(dout * out).
//   p = exp(scale q.k - lse), dp = do.v, ds = p (dp - di), dq = scale sum_j ds k_j
template <int DM>
__global__ void __launch_bounds__(MmaAttnCfg<DM>::THREADS)
    attn_mma_backward_dq_kernel(const float* __restrict__ q, HeadStrides qs,
                                const float* __restrict__ k, HeadStrides ks,
                                const float* __restrict__ v, HeadStrides vs,
                                const float* __restrict__ dout, HeadStrides dos,
                                const float* __restrict__ lse, const float* __restrict__ di,
                                float* __restrict__ dq, int T, int D, int Hq, int group,
                                float scale) {
  using C = MmaAttnCfg<DM>;
  __shared__ __align__(16) __nv_bfloat16 Ks[C::INNER * C::SS];
  __shared__ __align__(16) __nv_bfloat16 Vs[C::INNER * C::SS];
  const TileIndex ti = tile_index<C::ROWS>(T, Hq, true);
  const int b = ti.b, h = ti.head, hk = h / group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int w0 = ti.tile * C::ROWS + warp * 16;
  const int r0 = w0 + g, r1 = r0 + 8;
  uint32_t qf[C::KS][4], df[C::KS][4];
  load_a_fragments<DM>(qf, q + b * qs.b + h * qs.h, qs.t, r0, T, D);
  load_a_fragments<DM>(df, dout + b * dos.b + h * dos.h, dos.t, r0, T, D);
  const int64_t base = (int64_t(b) * Hq + h) * T;
  const float sl2 = scale * kLog2e;
  const float lse0 = r0 < T ? lse[base + r0] * kLog2e : 0.f;
  const float lse1 = r1 < T ? lse[base + r1] * kLog2e : 0.f;
  const float di0 = r0 < T ? di[base + r0] : 0.f, di1 = r1 < T ? di[base + r1] : 0.f;
  float acc[C::DT][4];
#pragma unroll
  for (int dt = 0; dt < C::DT; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.f;
  const int block_last = min(T, (ti.tile + 1) * C::ROWS) - 1;
  const float* kb = k + b * ks.b + hk * ks.h;
  const float* vb = v + b * vs.b + hk * vs.h;
  for (int j0 = 0; j0 <= block_last; j0 += C::INNER) {
    __syncthreads();
    mma_load_tile<DM>(Ks, kb, ks.t, j0, C::INNER, T, D);
    mma_load_tile<DM>(Vs, vb, vs.t, j0, C::INNER, T, D);
    __syncthreads();
    if (j0 > w0 + 15) continue;
    float s[C::NT][4], dp[C::NT][4];
    mma_rows_dot_tile<DM>(s, qf, Ks);
    mma_rows_dot_tile<DM>(dp, df, Vs);
    const bool diagonal = j0 + C::INNER - 1 > w0;
#pragma unroll
    for (int nt = 0; nt < C::NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = j0 + nt * 8 + 2 * t + (e & 1), row = e < 2 ? r0 : r1;
        const float p = diagonal && key > row ? 0.f : exp2f(s[nt][e] * sl2 - (e < 2 ? lse0 : lse1));
        s[nt][e] = p * (dp[nt][e] - (e < 2 ? di0 : di1));  // ds
      }
    mma_acc_times_tile<DM>(acc, s, Ks);
  }
  store_rows<DM>(dq, base, r0, T, D, acc, scale, scale);
}

// grid: key tiles * Hkv * B; dk, dv contiguous [B, Hkv, T, D]. A block's 64 keys of one kv
// head, over every query head of its group and every query tile at or after the keys:
//   p^T = exp(scale k.q - lse), dv = sum_i p^T do_i, dp^T = v.do, ds^T = p^T (dp^T - di),
//   dk = scale sum_i ds^T q_i
template <int DM>
__global__ void __launch_bounds__(MmaAttnCfg<DM>::THREADS)
    attn_mma_backward_dkdv_kernel(const float* __restrict__ q, HeadStrides qs,
                                  const float* __restrict__ k, HeadStrides ks,
                                  const float* __restrict__ v, HeadStrides vs,
                                  const float* __restrict__ dout, HeadStrides dos,
                                  const float* __restrict__ lse, const float* __restrict__ di,
                                  float* __restrict__ dk, float* __restrict__ dv, int T, int D,
                                  int Hq, int Hkv, int group, float scale) {
  using C = MmaAttnCfg<DM>;
  __shared__ __align__(16) __nv_bfloat16 Qs[C::INNER * C::SS];
  __shared__ __align__(16) __nv_bfloat16 Ds[C::INNER * C::SS];
  __shared__ float Ls[C::INNER], Dis[C::INNER];
  const TileIndex ti = tile_index<C::ROWS>(T, Hkv, false);  // the longest columns first
  const int b = ti.b, hk = ti.head;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int w0 = ti.tile * C::ROWS + warp * 16;  // the warp's first key
  const int c0 = w0 + g, c1 = c0 + 8;            // this lane's keys
  uint32_t kf[C::KS][4], vf[C::KS][4];
  load_a_fragments<DM>(kf, k + b * ks.b + hk * ks.h, ks.t, c0, T, D);
  load_a_fragments<DM>(vf, v + b * vs.b + hk * vs.h, vs.t, c0, T, D);
  float dka[C::DT][4], dva[C::DT][4];
#pragma unroll
  for (int dt = 0; dt < C::DT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[dt][e] = dva[dt][e] = 0.f;
  const float sl2 = scale * kLog2e;
  for (int h = hk * group; h < (hk + 1) * group; ++h) {
    const float* qb = q + b * qs.b + h * qs.h;
    const float* db = dout + b * dos.b + h * dos.h;
    const int64_t rb = (int64_t(b) * Hq + h) * T;
    for (int i0 = ti.tile * C::ROWS; i0 < T; i0 += C::INNER) {
      __syncthreads();
      mma_load_tile<DM>(Qs, qb, qs.t, i0, C::INNER, T, D);
      mma_load_tile<DM>(Ds, db, dos.t, i0, C::INNER, T, D);
      for (int r = threadIdx.x; r < C::INNER; r += C::THREADS) {
        Ls[r] = i0 + r < T ? lse[rb + i0 + r] * kLog2e : 0.f;
        Dis[r] = i0 + r < T ? di[rb + i0 + r] : 0.f;
      }
      __syncthreads();
      if (i0 + C::INNER - 1 < w0) continue;  // every query of the tile is before the warp's keys
      float s[C::NT][4], dp[C::NT][4];
      mma_rows_dot_tile<DM>(s, kf, Qs);  // s^T: rows are keys, columns queries
      mma_rows_dot_tile<DM>(dp, vf, Ds);
#pragma unroll
      for (int nt = 0; nt < C::NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = nt * 8 + 2 * t + (e & 1), key = e < 2 ? c0 : c1;
          const bool live = i0 + qi >= key && i0 + qi < T;
          const float p = live ? exp2f(s[nt][e] * sl2 - Ls[qi]) : 0.f;
          s[nt][e] = p;
          dp[nt][e] = p * (dp[nt][e] - Dis[qi]);  // ds^T
        }
      mma_acc_times_tile<DM>(dva, s, Ds);
      mma_acc_times_tile<DM>(dka, dp, Qs);
    }
  }
  const int64_t base = (int64_t(b) * Hkv + hk) * T;
  store_rows<DM>(dk, base, c0, T, D, dka, scale, scale);
  store_rows<DM>(dv, base, c0, T, D, dva, 1.f, 1.f);
}

}  // namespace ternary::backend::cuda_detail
