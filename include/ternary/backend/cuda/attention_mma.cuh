// CUDA fused causal GQA attention on tensor cores, FlashAttention-2 style: the algorithm of
// attention.cuh (online softmax forward; dq and dk/dv backward kernels that recompute the
// scores from the saved row logsumexp) with every product on `mma.sync.m16n8k16` (bf16
// operands, fp32 accumulation, softmax and outputs in fp32). Runs instead of the fp32 SIMT
// kernels when reduced-precision matrix math is on (cuda::set_bf16 or cuda::set_tf32). For head
// sizes up to 64 the dk/dv kernel also writes the score gradients ds (bf16) to bounded scratch
// and dq is one product over them (flash_backward_dq_from_ds_kernel) instead of a kernel that
// recomputes the scores; cuda::set_attention_scratch bounds it (batch rows in chunks).
//
// Data flow. The fp32 operands (any layout with a unit-stride head axis: the GPT's q, k, v are
// views of [B, T, H, Dh] memory) are first packed by one pass each into contiguous bf16
// [B, H, T, DM] (DM = the head size rounded up to 16, 32, 64 or 128; padding columns are
// zero). Packing dout also computes the backward's Di = rowsum(dout * out). Then the kernels
// stream bf16 tiles straight from global memory into shared memory with `cp.async` (16 bytes
// per copy, two buffers: the next tile lands while the current one is used), and read mma
// fragments out of shared memory with `ldmatrix` (`.trans` where the tile is the k index of the
// product: p.v, ds.k, p^T.do, ds^T.q). Outputs are written in fp32 through their own strides,
// so out, dq, dk and dv may also be views of [B, T, H, Dh] memory.
//
// Layout: a block of 4 warps owns 128 query rows (forward, heads up to 64: 32 rows, two m16
// tiles, per warp) or 64 rows (dq: query rows; dk/dv: key rows; 16 per warp). Each warp keeps its
// rows of the fixed operands (q; q and do; k and v) as mma A fragments in registers and streams
// INNER-row tiles of the others. Shared rows are padded by 16 bytes, so the 8 row addresses of an
// ldmatrix hit distinct banks. Scores live in mma accumulators; two adjacent 16x8 accumulator tiles
// are one 16x16 A fragment, so p (or ds) feeds the next product without leaving registers.
//
// mma.m16n8k16 fragments (PTX ISA; g = lane / 4, t = lane % 4; pairs are bf16x2, low half first):
//   A 16x16: a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B 16x8:  b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C 16x8:  c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
// ldmatrix.x4 loads four 8x8 bf16 matrices; lanes 8i..8i+7 give the row addresses of matrix i,
// and lane l receives row l/4, columns 2(l%4)..+1 of each (with .trans: column l/4, rows
// 2(l%4)..+1), which is exactly the fragment layouts above.
//
// Causal masking: a tile is masked only where it crosses the diagonal; tiles wholly above it
// are skipped per warp. Rows at or past T are zero-filled by cp.async and masked out of every
// sum over them; nothing past T (or past the head size D) is written.
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "ternary/backend/cuda/attention_grid.cuh"
#include "ternary/backend/cuda/cuda.hpp"

namespace ternary::backend::cuda_detail {

using bf16 = __nv_bfloat16;

// A kernel's tiling: 4 warps of MT 16-row mma tiles each own ROWS rows; INNER rows are
// streamed per tile. Two m-tiles per warp (32 rows) read every streamed fragment out of shared
// memory once for two mma's, which halves the ldmatrix traffic per product (the forward kernel
// with heads up to 64); the backward kernels keep one (registers: they hold two score sets).
template <int DM_, int MT_ = 1, int INNER_ = (DM_ >= 128 ? 32 : 64)>
struct FlashCfg {
  static constexpr int DM = DM_;         // head size padded to 16, 32, 64 or 128
  static constexpr int MT = MT_;         // 16-row mma tiles per warp
  static constexpr int WROWS = 16 * MT;  // rows owned by a warp
  static constexpr int WARPS = 4;
  static constexpr int ROWS = WARPS * WROWS;  // rows owned by a block
  static constexpr int THREADS = WARPS * 32;
  static constexpr int INNER = INNER_;     // rows per streamed tile (registers)
  static constexpr int SS = DM + 8;        // shared row stride in bf16 (16-byte pad)
  static constexpr int KS = DM / 16;       // 16-wide k steps over the head
  static constexpr int NT = INNER / 8;     // 8-wide score tiles per streamed tile
  static constexpr int DT = DM / 8;        // 8-wide output tiles over the head
  static constexpr int CHUNKS = DM / 8;    // 16-byte chunks per bf16 row
  static constexpr int FIXED = ROWS * SS;  // a block's own rows in shared memory
  static constexpr int TILE = INNER * SS;  // one streamed tile
  static_assert(NT % 2 == 0 && DT % 2 == 0, "ldmatrix.x4 covers two 8-wide tiles");
};
// The forward kernel's tiling: two m-tiles per warp up to head size 64 (H200, B 64 x 8 heads x
// T 1024, D 64: 0.468 against 0.517 ms with one, bench_cuda_attention). The dq kernel holds two
// score sets per tile, and two m-tiles with 32-row tiles measured slower (1.495 against 1.466
// ms for the backward), so it and dk/dv keep one.
template <int DM>
using FlashFwdCfg = FlashCfg<DM, DM <= 64 ? 2 : 1, DM >= 128 ? 32 : 64>;
template <int DM>
using FlashDqCfg = FlashCfg<DM>;

// Blocks per SM the dk/dv kernel's registers are capped for: 3 (168 a thread) up to head size
// 64. Uncapped it takes 234-250, so 2 blocks (8 warps) per SM, too few to hide its latencies:
// H200, bench_cuda_attention --batch 64 backward 1.240 ms capped for 3 (tiles in parts of 16
// queries), 1.263 in halves, 1.328 whole and uncapped; 4 blocks (128) spill, 1.437.
template <int DM>
constexpr int kDkdvBlocksPerSm = DM <= 64 ? 3 : 1;

// Buffers of flash_backward_dq_from_ds_kernel's pipeline.
constexpr int kDsStages = 3;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---- PTX wrappers ---------------------------------------------------------------------------
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16* p) {
  const unsigned a = unsigned(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* p) {
  const unsigned a = unsigned(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
// 16 bytes global -> shared, asynchronously; zero-filled when !valid (src is then not read).
__device__ __forceinline__ void cp_async_16(bf16* dst, const bf16* src, bool valid) {
  const unsigned s = unsigned(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}
// Until at most N of this thread's cp.async groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// 2^x in one instruction (MUFU.EX2; a subnormal result flushes to zero, -inf gives 0). exp2f
// without fast math wraps it in range handling: four instructions per score instead of one.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Sum / max over the four lanes (t = 0..3) that hold one accumulator row.
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// ---- packing --------------------------------------------------------------------------------
// dst[(b H + h) T + t][0..DM) = bf16(src row (b, h, t)), zero past D; DM / 8 threads per row,
// 8 columns (16 bytes) each. With `other`, also di[row] = sum_d src[d] * other[d] (fp32):
// the backward's Di = rowsum(dout * out), taken from the values as they are stored (src and
// other fp32 or bf16: Src, Other).
__device__ __forceinline__ float pack_load(const float* p) {
  return *p;
}
__device__ __forceinline__ float pack_load(const bf16* p) {
  return __bfloat162float(*p);
}
template <int DM, class Src = float, class Other = float>
__global__ void attn_pack_bf16_kernel(const Src* __restrict__ src, HeadStrides ss,
                                      bf16* __restrict__ dst, int H, int T, int D, int64_t rows,
                                      const Other* __restrict__ other, HeadStrides os,
                                      float* __restrict__ di) {
  constexpr int LANES = DM / 8;  // divides 32: a row's lanes are consecutive in one warp
  const int64_t gid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = gid / LANES;
  const int c = int(gid % LANES);
  float x[8], dot = 0.f;
  if (row < rows) {
    const int t = int(row % T);
    const int64_t bh = row / T;
    const int h = int(bh % H), b = int(bh / H);
    const Src* s = src + b * ss.b + h * ss.h + t * ss.t + c * 8;
    const Other* o = other ? other + b * os.b + h * os.h + t * os.t + c * 8 : nullptr;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      x[e] = c * 8 + e < D ? pack_load(s + e) : 0.f;
      if (o && c * 8 + e < D) dot = fmaf(x[e], pack_load(o + e), dot);
    }
    uint4 packed;
    packed.x = pack_bf16(x[0], x[1]);
    packed.y = pack_bf16(x[2], x[3]);
    packed.z = pack_bf16(x[4], x[5]);
    packed.w = pack_bf16(x[6], x[7]);
    *reinterpret_cast<uint4*>(dst + row * DM + c * 8) = packed;
  }
  if (di) {  // every lane of the warp takes part in the shuffles
#pragma unroll
    for (int off = 1; off < LANES; off <<= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    if (row < rows && c == 0) di[row] = dot;
  }
}

// ---- tiles and fragments --------------------------------------------------------------------
// Rows [r0, r0 + N) of one packed head (row-major [T, DM]) into shared memory (row stride SS),
// asynchronously; rows >= T are zero.
template <class C, int N>
__device__ __forceinline__ void flash_load_tile(bf16* s, const bf16* head, int r0, int T) {
  constexpr int DM = C::DM;
#pragma unroll
  for (int i = threadIdx.x; i < N * C::CHUNKS; i += C::THREADS) {
    const int r = i / C::CHUNKS, c = i % C::CHUNKS;
    const bool valid = r0 + r < T;
    cp_async_16(s + r * C::SS + c * 8, head + int64_t(valid ? r0 + r : 0) * DM + c * 8, valid);
  }
}

// Starts copying key/value tile j + 1 (if there is one) into the buffers tile j - 1 used, as one
// cp.async group (an empty group after the last tile keeps the waits uniform).
template <class C>
__device__ __forceinline__ void flash_prefetch_kv(int j, int tiles, bf16* Ks, bf16* Vs,
                                                  const bf16* kh, const bf16* vh, int T) {
  if (j + 1 < tiles) {
    const int nb = (j + 1) % 2;
    flash_load_tile<C, C::INNER>(Ks + nb * C::TILE, kh, (j + 1) * C::INNER, T);
    flash_load_tile<C, C::INNER>(Vs + nb * C::TILE, vh, (j + 1) * C::INNER, T);
  }
  cp_async_commit();
}

// The A fragments of the warp's MT x 16 rows [w, w + 16 MT) of a shared tile.
template <class C>
__device__ __forceinline__ void flash_a_fragments(uint32_t (&f)[C::MT][C::KS][4], const bf16* s,
                                                  int w) {
  const int lane = threadIdx.x % 32;
  const bf16* p = s + (w + lane % 16) * C::SS + (lane / 16) * 8;
#pragma unroll
  for (int m = 0; m < C::MT; ++m)
#pragma unroll
    for (int kk = 0; kk < C::KS; ++kk) ldmatrix_x4(f[m][kk], p + m * 16 * C::SS + kk * 16);
}

// acc[m][nt] (16 x 8 per m, nt) = A (16 MT x DM) . S^T, S a shared tile of INNER rows x DM
// whose rows are the n index (q.k, do.v, k.q, v.do). Each B fragment serves all MT m-tiles.
template <class C>
__device__ __forceinline__ void flash_rows_dot_tile(float (&acc)[C::MT][C::NT][4],
                                                    const uint32_t (&a)[C::MT][C::KS][4],
                                                    const bf16* s) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int m = 0; m < C::MT; ++m)
#pragma unroll
    for (int nt = 0; nt < C::NT; ++nt)
      acc[m][nt][0] = acc[m][nt][1] = acc[m][nt][2] = acc[m][nt][3] = 0.f;
  // Matrices: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
  const bf16* p = s + ((lane / 16) * 8 + lane % 8) * C::SS + ((lane / 8) % 2) * 8;
#pragma unroll
  for (int np = 0; np < C::NT / 2; ++np)
#pragma unroll
    for (int kk = 0; kk < C::KS; ++kk) {
      uint32_t b[4];
      ldmatrix_x4(b, p + np * 16 * C::SS + kk * 16);
#pragma unroll
      for (int m = 0; m < C::MT; ++m) {
        mma_bf16_16816(acc[m][2 * np], a[m][kk], b[0], b[1]);
        mma_bf16_16816(acc[m][2 * np + 1], a[m][kk], b[2], b[3]);
      }
    }
}

// out[m][dt] (16 x 8 per m, dt) += P (16 MT x INNER, accumulator layout, rounded to bf16) . S,
// S a shared tile of INNER rows x DM whose rows are the k index (p.v, ds.k, p^T.do, ds^T.q).
template <class C>
__device__ __forceinline__ void flash_acc_times_tile(float (&out)[C::MT][C::DT][4],
                                                     const float (&p)[C::MT][C::NT][4],
                                                     const bf16* s) {
  const int lane = threadIdx.x % 32;
  // Matrices (transposed): (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15).
  const bf16* base = s + (((lane / 8) % 2) * 8 + lane % 8) * C::SS + (lane / 16) * 8;
#pragma unroll
  for (int kk = 0; kk < C::INNER / 16; ++kk) {
    uint32_t a[C::MT][4];
#pragma unroll
    for (int m = 0; m < C::MT; ++m) {
      a[m][0] = pack_bf16(p[m][2 * kk][0], p[m][2 * kk][1]);
      a[m][1] = pack_bf16(p[m][2 * kk][2], p[m][2 * kk][3]);
      a[m][2] = pack_bf16(p[m][2 * kk + 1][0], p[m][2 * kk + 1][1]);
      a[m][3] = pack_bf16(p[m][2 * kk + 1][2], p[m][2 * kk + 1][3]);
    }
#pragma unroll
    for (int dp = 0; dp < C::DT / 2; ++dp) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, base + kk * 16 * C::SS + dp * 16);
#pragma unroll
      for (int m = 0; m < C::MT; ++m) {
        mma_bf16_16816(out[m][2 * dp], a[m], b[0], b[1]);
        mma_bf16_16816(out[m][2 * dp + 1], a[m], b[2], b[3]);
      }
    }
  }
}

// Writes this lane's part of one 16 x DM accumulator tile as rows r0 and r0 + 8 of one
// head (head: its row 0; rows rs apart, unit inner stride), times mul0 / mul1 per row, in
// fp32 or rounded to bf16 (Out); rows >= T and columns >= D are left alone. A lane's two
// adjacent values go as one store (float2, bf16x2) where the address is aligned for it (the
// GPT's heads: always), else one at a time.
__device__ __forceinline__ void flash_store(float* p, float v) {
  *p = v;
}
__device__ __forceinline__ void flash_store(bf16* p, float v) {
  *p = __float2bfloat16_rn(v);
}
__device__ __forceinline__ void flash_store_pair(float* p, float v0, float v1) {
  *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
}
__device__ __forceinline__ void flash_store_pair(bf16* p, float v0, float v1) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(v0, v1);
}
template <class Out>
__device__ __forceinline__ void flash_store_two(Out* p, int d, int D, float v0, float v1) {
  if (d + 1 < D && reinterpret_cast<uintptr_t>(p) % (2 * sizeof(Out)) == 0) {
    flash_store_pair(p, v0, v1);
  } else {
    if (d < D) flash_store(p, v0);
    if (d + 1 < D) flash_store(p + 1, v1);
  }
}
template <class C, class Out>
__device__ __forceinline__ void flash_store_rows(Out* __restrict__ head, int64_t rs, int r0, int T,
                                                 int D, const float (&acc)[C::DT][4], float mul0,
                                                 float mul1) {
  const int t = threadIdx.x % 4, r1 = r0 + 8;
#pragma unroll
  for (int dt = 0; dt < C::DT; ++dt) {
    const int d = dt * 8 + 2 * t;
    if (r0 < T) flash_store_two(head + r0 * rs + d, d, D, acc[dt][0] * mul0, acc[dt][1] * mul0);
    if (r1 < T) flash_store_two(head + r1 * rs + d, d, D, acc[dt][2] * mul1, acc[dt][3] * mul1);
  }
}

// ---- kernels --------------------------------------------------------------------------------
// grid: query tiles * Hq * B. q packed [B, Hq, T, DM], k and v packed [B, Hkv, T, DM]; out
// (fp32) and out16 (bf16) through the same strides, each if not null; lse [B, Hq, T] contiguous
// (natural log) or null.
// Shared memory: Q (ROWS rows), then K and V tiles, two buffers each.
template <int DM>
__global__ void __launch_bounds__(FlashFwdCfg<DM>::THREADS)
    flash_forward_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                         const bf16* __restrict__ v, float* __restrict__ out, HeadStrides os,
                         float* __restrict__ lse, int T, int D, int Hq, int group, float scale,
                         bf16* __restrict__ out16) {
  using C = FlashFwdCfg<DM>;
  constexpr int MT = C::MT;
  extern __shared__ __align__(16) unsigned char flash_smem[];
  bf16* Qs = reinterpret_cast<bf16*>(flash_smem);
  bf16* Ks = Qs + C::FIXED;                               // [2][TILE]
  bf16* Vs = Ks + 2 * C::TILE;                            // [2][TILE]
  const TileIndex ti = tile_index<C::ROWS>(T, Hq, true);  // the longest rows first
  const int b = ti.b, h = ti.head, hk = h / group, Hkv = Hq / group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int row0 = ti.tile * C::ROWS, w0 = row0 + warp * C::WROWS;  // block's / warp's first row
  const bf16* qh = q + (int64_t(b) * Hq + h) * T * DM;
  const bf16* kh = k + (int64_t(b) * Hkv + hk) * T * DM;
  const bf16* vh = v + (int64_t(b) * Hkv + hk) * T * DM;
  const int block_last = min(T, row0 + C::ROWS) - 1;
  const int tiles = block_last / C::INNER + 1;

  flash_load_tile<C, C::ROWS>(Qs, qh, row0, T);
  flash_load_tile<C, C::INNER>(Ks, kh, 0, T);
  flash_load_tile<C, C::INNER>(Vs, vh, 0, T);
  cp_async_commit();

  uint32_t qf[MT][C::KS][4];
  float o[MT][C::DT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int dt = 0; dt < C::DT; ++dt) o[m][dt][0] = o[m][dt][1] = o[m][dt][2] = o[m][dt][3] = 0.f;
  // Per m-tile, this lane's rows r = w0 + 16 m + g (+ 8): running max (log2 domain: scores
  // times scale * log2 e) and this lane's part of the sum; index 2 m for r, 2 m + 1 for r + 8.
  float mx[2 * MT], l[2 * MT];
#pragma unroll
  for (int i = 0; i < 2 * MT; ++i) mx[i] = -INFINITY, l[i] = 0.f;
  const float sl2 = scale * kLog2e;
  for (int j = 0; j < tiles; ++j) {
    cp_async_wait_all();
    __syncthreads();  // tile j is in; every warp is done with tile j - 1's buffer
    if (j == 0) flash_a_fragments<C>(qf, Qs, warp * C::WROWS);
    flash_prefetch_kv<C>(j, tiles, Ks, Vs, kh, vh, T);
    const int j0 = j * C::INNER;
    if (j0 > w0 + C::WROWS - 1) continue;  // every key of the tile is after the warp's rows
    const bf16* Kt = Ks + (j % 2) * C::TILE;
    const bf16* Vt = Vs + (j % 2) * C::TILE;
    float s[MT][C::NT][4];
    flash_rows_dot_tile<C>(s, qf, Kt);
    const bool diagonal = j0 + C::INNER - 1 > w0;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const int r0 = w0 + 16 * m + g, r1 = r0 + 8;
      float tm0 = -INFINITY, tm1 = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < C::NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = j0 + nt * 8 + 2 * t + (e & 1), row = e < 2 ? r0 : r1;
          float x = s[m][nt][e];  // raw score: the max commutes with scaling by sl2 > 0
          if (diagonal && key > row) x = -INFINITY;  // keys >= T are all past rows < T
          s[m][nt][e] = x;
          if (e < 2)
            tm0 = fmaxf(tm0, x);
          else
            tm1 = fmaxf(tm1, x);
        }
      // Key 0 is in the first tile and unmasked for every row, so the max is finite from then
      // on (a row's whole m-tile may be masked in a diagonal tile only after tile 0).
      const float mn0 = fmaxf(mx[2 * m], quad_max(tm0) * sl2),
                  mn1 = fmaxf(mx[2 * m + 1], quad_max(tm1) * sl2);
      const float a0 = fast_exp2(mx[2 * m] - mn0), a1 = fast_exp2(mx[2 * m + 1] - mn1);
      mx[2 * m] = mn0;
      mx[2 * m + 1] = mn1;
      float ps0 = 0.f, ps1 = 0.f;
#pragma unroll
      for (int nt = 0; nt < C::NT; ++nt) {
        s[m][nt][0] = fast_exp2(fmaf(s[m][nt][0], sl2, -mn0));  // one FFMA and one MUFU
        s[m][nt][1] = fast_exp2(fmaf(s[m][nt][1], sl2, -mn0));
        s[m][nt][2] = fast_exp2(fmaf(s[m][nt][2], sl2, -mn1));
        s[m][nt][3] = fast_exp2(fmaf(s[m][nt][3], sl2, -mn1));
        ps0 += s[m][nt][0] + s[m][nt][1];
        ps1 += s[m][nt][2] + s[m][nt][3];
      }
      l[2 * m] = l[2 * m] * a0 + ps0;
      l[2 * m + 1] = l[2 * m + 1] * a1 + ps1;
#pragma unroll
      for (int dt = 0; dt < C::DT; ++dt) {
        o[m][dt][0] *= a0;
        o[m][dt][1] *= a0;
        o[m][dt][2] *= a1;
        o[m][dt][3] *= a1;
      }
    }
    flash_acc_times_tile<C>(o, s, Vt);
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    const int r0 = w0 + 16 * m + g, r1 = r0 + 8;
    const float l0 = quad_sum(l[2 * m]), l1 = quad_sum(l[2 * m + 1]);
    if (out)
      flash_store_rows<C>(out + b * os.b + h * os.h, os.t, r0, T, D, o[m], 1.f / l0, 1.f / l1);
    if (out16)  // the same values rounded to bf16 (the output projection's operand)
      flash_store_rows<C>(out16 + b * os.b + h * os.h, os.t, r0, T, D, o[m], 1.f / l0, 1.f / l1);
    if (lse && t == 0) {
      const int64_t base = (int64_t(b) * Hq + h) * T;
      if (r0 < T) lse[base + r0] = (mx[2 * m] + log2f(l0)) * kLn2;
      if (r1 < T) lse[base + r1] = (mx[2 * m + 1] + log2f(l1)) * kLn2;
    }
  }
}

// grid: query tiles * Hq * B; dq through its strides. di = rowsum(dout * out) [B, Hq, T].
//   p = exp(scale q.k - lse), dp = do.v, ds = p (dp - di), dq = scale sum_j ds k_j
// Shared memory: Q and dO (ROWS rows each, read once into fragments), then K and V tiles, two
// buffers each.
template <int DM>
__global__ void __launch_bounds__(FlashDqCfg<DM>::THREADS)
    flash_backward_dq_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                             const bf16* __restrict__ v, const bf16* __restrict__ dout,
                             const float* __restrict__ lse, const float* __restrict__ di,
                             float* __restrict__ dq, HeadStrides dqs, int T, int D, int Hq,
                             int group, float scale) {
  using C = FlashDqCfg<DM>;
  constexpr int MT = C::MT;
  extern __shared__ __align__(16) unsigned char flash_smem[];
  bf16* Qs = reinterpret_cast<bf16*>(flash_smem);
  bf16* Ds = Qs + C::FIXED;
  bf16* Ks = Ds + C::FIXED;     // [2][TILE]
  bf16* Vs = Ks + 2 * C::TILE;  // [2][TILE]
  const TileIndex ti = tile_index<C::ROWS>(T, Hq, true);
  const int b = ti.b, h = ti.head, hk = h / group, Hkv = Hq / group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int row0 = ti.tile * C::ROWS, w0 = row0 + warp * C::WROWS;
  const int64_t qbase = (int64_t(b) * Hq + h) * T;
  const bf16* kh = k + (int64_t(b) * Hkv + hk) * T * DM;
  const bf16* vh = v + (int64_t(b) * Hkv + hk) * T * DM;
  const int block_last = min(T, row0 + C::ROWS) - 1;
  const int tiles = block_last / C::INNER + 1;

  flash_load_tile<C, C::ROWS>(Qs, q + qbase * DM, row0, T);
  flash_load_tile<C, C::ROWS>(Ds, dout + qbase * DM, row0, T);
  flash_load_tile<C, C::INNER>(Ks, kh, 0, T);
  flash_load_tile<C, C::INNER>(Vs, vh, 0, T);
  cp_async_commit();

  const float sl2 = scale * kLog2e;
  // Per m-tile: lse (log2 domain) and di of this lane's rows, index 2 m for r, 2 m + 1 for r + 8.
  float lse_r[2 * MT], di_r[2 * MT];
#pragma unroll
  for (int i = 0; i < 2 * MT; ++i) {
    const int r = w0 + 16 * (i / 2) + g + 8 * (i % 2);
    lse_r[i] = r < T ? lse[qbase + r] * kLog2e : 0.f;
    di_r[i] = r < T ? di[qbase + r] : 0.f;
  }
  uint32_t qf[MT][C::KS][4], df[MT][C::KS][4];
  float acc[MT][C::DT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int dt = 0; dt < C::DT; ++dt)
      acc[m][dt][0] = acc[m][dt][1] = acc[m][dt][2] = acc[m][dt][3] = 0.f;
  for (int j = 0; j < tiles; ++j) {
    cp_async_wait_all();
    __syncthreads();
    if (j == 0) {
      flash_a_fragments<C>(qf, Qs, warp * C::WROWS);
      flash_a_fragments<C>(df, Ds, warp * C::WROWS);
    }
    flash_prefetch_kv<C>(j, tiles, Ks, Vs, kh, vh, T);
    const int j0 = j * C::INNER;
    if (j0 > w0 + C::WROWS - 1) continue;
    const bf16* Kt = Ks + (j % 2) * C::TILE;
    const bf16* Vt = Vs + (j % 2) * C::TILE;
    float s[MT][C::NT][4], dp[MT][C::NT][4];
    flash_rows_dot_tile<C>(s, qf, Kt);
    flash_rows_dot_tile<C>(dp, df, Vt);
    const bool diagonal = j0 + C::INNER - 1 > w0;
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int nt = 0; nt < C::NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = 2 * m + (e >= 2);
          const int key = j0 + nt * 8 + 2 * t + (e & 1), row = w0 + 16 * m + g + 8 * (e >= 2);
          const float p = diagonal && key > row ? 0.f : fast_exp2(s[m][nt][e] * sl2 - lse_r[i]);
          s[m][nt][e] = p * (dp[m][nt][e] - di_r[i]);  // ds
        }
    flash_acc_times_tile<C>(acc, s, Kt);
  }
#pragma unroll
  for (int m = 0; m < MT; ++m)
    flash_store_rows<C>(dq + b * dqs.b + h * dqs.h, dqs.t, w0 + 16 * m + g, T, D, acc[m], scale,
                        scale);
}

// The score gradients between the two backward kernels (flash_backward_dkdv_kernel writes,
// flash_backward_dq_from_ds_kernel reads): per (batch row, query head), a grid of tiles (key tile,
// query tile) of 64 x 64, T rounded up to 64; each tile 8 KB, an 8 x 8 grid of 8 x 8 blocks
// (key block major), each block 128 contiguous bytes, row-major [key % 8][query % 8]. So a warp's
// store of one accumulator tile (16 x 8: lane (g, t) holds key g, queries 2t, 2t + 1) is 128
// contiguous bytes, and a block is one ldmatrix matrix (8 rows of 16 bytes) for the reader.
// Tiles per side (T rounded up to 64, in tiles), and the element offset of tile (key tile kt,
// query tile qt) of head h of batch row b:
__host__ __device__ __forceinline__ int flash_ds_tiles(int T) {
  return (T + 63) / 64;
}
__device__ __forceinline__ int64_t flash_ds_tile(int b, int h, int kt, int qt, int Hq, int T) {
  const int tiles = flash_ds_tiles(T);
  return (((int64_t(b) * Hq + h) * tiles + kt) * tiles + qt) * 4096;
}

// grid: key tiles * Hkv * B; dk and dv through their strides (dv in fp32 or bf16: DvOut). A
// block's 64 keys of one kv head, over every query head of its group and every query tile at
// or after the keys:
//   p^T = exp(scale k.q - lse), dv = sum_i p^T do_i, dp^T = v.do, ds^T = p^T (dp^T - di),
//   dk = scale sum_i ds^T q_i
// Shared memory: K and V (64 rows each, read once into fragments), then Q and dO tiles and
// their lse / di values, two buffers each.
// With ds_t (not null; needs INNER == ROWS, so every warp computes every tile it visits): also
// ds^T in bf16 into ds_t, every causal tile in full (zeros where masked), in the layout of
// flash_ds_tile for flash_backward_dq_from_ds_kernel.
template <int DM, class DvOut>
__global__ void __launch_bounds__(FlashCfg<DM>::THREADS, kDkdvBlocksPerSm<DM>)
    flash_backward_dkdv_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                               const bf16* __restrict__ v, const bf16* __restrict__ dout,
                               const float* __restrict__ lse, const float* __restrict__ di,
                               float* __restrict__ dk, HeadStrides dks, DvOut* __restrict__ dv,
                               HeadStrides dvs, bf16* __restrict__ ds_t, int T, int D, int Hq,
                               int Hkv, int group, float scale) {
  using C = FlashCfg<DM>;
  // A streamed tile's products run in parts of 16 query rows (H: the helpers' tiling of one
  // part), so only one part's scores and score gradients are live at a time (registers: see
  // kDkdvBlocksPerSm).
  using H = FlashCfg<DM, 1, 16>;
  constexpr int PARTS = C::INNER / H::INNER;
  extern __shared__ __align__(16) unsigned char flash_smem[];
  bf16* Kf = reinterpret_cast<bf16*>(flash_smem);
  bf16* Vf = Kf + C::FIXED;
  bf16* Qs = Vf + C::FIXED;                                 // [2][TILE]
  bf16* Ds = Qs + 2 * C::TILE;                              // [2][TILE]
  float* Ls = reinterpret_cast<float*>(Ds + 2 * C::TILE);   // [2][INNER], lse * log2 e
  float* Dis = Ls + 2 * C::INNER;                           // [2][INNER]
  const TileIndex ti = tile_index<C::ROWS>(T, Hkv, false);  // the longest columns first
  const int b = ti.b, hk = ti.head;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int key0 = ti.tile * C::ROWS, w0 = key0 + warp * 16;  // block's / warp's first key
  const int c0 = w0 + g, c1 = c0 + 8;                         // this lane's keys
  const int64_t kbase = (int64_t(b) * Hkv + hk) * T;
  // The (query head, query tile) pairs this block visits, in order: tile it covers query
  // rows [key0 + (it % per_head) INNER, + INNER) of head hk * group + it / per_head.
  const int per_head = (T - key0 + C::INNER - 1) / C::INNER;
  const int steps = per_head * group;
  auto load_step = [&](int it, int buf) {
    const int h = hk * group + it / per_head, i0 = key0 + (it % per_head) * C::INNER;
    const int64_t qbase = (int64_t(b) * Hq + h) * T;
    flash_load_tile<C, C::INNER>(Qs + buf * C::TILE, q + qbase * DM, i0, T);
    flash_load_tile<C, C::INNER>(Ds + buf * C::TILE, dout + qbase * DM, i0, T);
    for (int r = threadIdx.x; r < C::INNER; r += C::THREADS) {
      Ls[buf * C::INNER + r] = i0 + r < T ? lse[qbase + i0 + r] * kLog2e : 0.f;
      Dis[buf * C::INNER + r] = i0 + r < T ? di[qbase + i0 + r] : 0.f;
    }
  };

  flash_load_tile<C, C::ROWS>(Kf, k + kbase * DM, key0, T);
  flash_load_tile<C, C::ROWS>(Vf, v + kbase * DM, key0, T);
  load_step(0, 0);
  cp_async_commit();

  // One m-tile per warp (C::MT == 1): the [1] index is the helpers' m-tile.
  uint32_t kf[1][C::KS][4], vf[1][C::KS][4];
  float dka[1][C::DT][4], dva[1][C::DT][4];
#pragma unroll
  for (int dt = 0; dt < C::DT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[0][dt][e] = dva[0][dt][e] = 0.f;
  const float sl2 = scale * kLog2e;
  for (int it = 0; it < steps; ++it) {
    cp_async_wait_all();
    __syncthreads();
    if (it == 0) {
      flash_a_fragments<C>(kf, Kf, warp * 16);
      flash_a_fragments<C>(vf, Vf, warp * 16);
    }
    if (it + 1 < steps) load_step(it + 1, (it + 1) % 2);
    cp_async_commit();
    const int i0 = key0 + (it % per_head) * C::INNER;
    if (i0 + C::INNER - 1 < w0) continue;  // every query of the tile is before the warp's keys
    const int buf = it % 2;
    const bf16* Qt = Qs + buf * C::TILE;
    const bf16* Dt = Ds + buf * C::TILE;
    const float* Lt = Ls + buf * C::INNER;
    const float* Dit = Dis + buf * C::INNER;
#pragma unroll
    for (int part = 0; part < PARTS; ++part) {
      const int q0 = part * H::INNER, first = i0 + q0;  // the part's first row, first query
      // Every query of the part before the warp's keys: no products, and ds^T is zero.
      const bool dead = first + H::INNER - 1 < w0;
      if (dead && !ds_t) continue;
      // The mask only where the part crosses the warp's diagonal or the sequence's end.
      const bool edge = first < w0 + 16 || first + H::INNER > T;
      float s[1][H::NT][4], dp[1][H::NT][4];
      if (dead) {
#pragma unroll
        for (int nt = 0; nt < H::NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) dp[0][nt][e] = 0.f;
      } else {
        flash_rows_dot_tile<H>(s, kf, Qt + q0 * C::SS);  // s^T: rows are keys, columns queries
        flash_rows_dot_tile<H>(dp, vf, Dt + q0 * C::SS);
#pragma unroll
        for (int nt = 0; nt < H::NT; ++nt) {
          const int qc = q0 + nt * 8 + 2 * t;  // this lane's two query columns: qc, qc + 1
          const float2 lse2 = *reinterpret_cast<const float2*>(Lt + qc);
          const float2 di2 = *reinterpret_cast<const float2*>(Dit + qc);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int query = i0 + qc + (e & 1), key = e < 2 ? c0 : c1;
            const bool live = !edge || (query >= key && query < T);
            const float p = live ? fast_exp2(s[0][nt][e] * sl2 - ((e & 1) ? lse2.y : lse2.x)) : 0.f;
            s[0][nt][e] = p;
            dp[0][nt][e] = p * (dp[0][nt][e] - ((e & 1) ? di2.y : di2.x));  // ds^T
          }
        }
      }
      if (ds_t) {  // this lane's pairs (key c0 or c1, queries 2t, 2t + 1) of the 8 x 8 blocks
        bf16* tile = ds_t + flash_ds_tile(b, hk * group + it / per_head, ti.tile,
                                          (i0 - key0) / C::ROWS + ti.tile, Hq, T);
#pragma unroll
        for (int nt = 0; nt < H::NT; ++nt) {  // key block 2 warp, query block part NT + nt
          bf16* block = tile + (2 * warp * 8 + part * H::NT + nt) * 64 + 2 * lane;
          *reinterpret_cast<uint32_t*>(block) = pack_bf16(dp[0][nt][0], dp[0][nt][1]);
          *reinterpret_cast<uint32_t*>(block + 8 * 64) = pack_bf16(dp[0][nt][2], dp[0][nt][3]);
        }
      }
      if (dead) continue;
      flash_acc_times_tile<H>(dva, s, Dt + q0 * C::SS);
      flash_acc_times_tile<H>(dka, dp, Qt + q0 * C::SS);
    }
  }
  flash_store_rows<C>(dk + b * dks.b + hk * dks.h, dks.t, c0, T, D, dka[0], scale, scale);
  flash_store_rows<C>(dv + b * dvs.b + hk * dvs.h, dvs.t, c0, T, D, dva[0], 1.f, 1.f);
}

// grid: query tiles * Hq * B (64-row tiles). dq = scale sum_j ds_ij k_j, the score gradients
// read as flash_backward_dkdv_kernel wrote them (flash_ds_tile): one product over the causal key
// tiles, nothing recomputed. dq through its strides. Shared memory: STAGES buffers of a ds tile
// (8 KB, unpadded: an ldmatrix reads one 128-byte block) and a K tile, loaded STAGES - 1 ahead
// (this kernel is bound by reading ds; the products are few).
template <int DM>
__global__ void __launch_bounds__(FlashCfg<DM>::THREADS)
    flash_backward_dq_from_ds_kernel(const bf16* __restrict__ ds_t, const bf16* __restrict__ k,
                                     float* __restrict__ dq, HeadStrides dqs, int T, int D, int Hq,
                                     int group, float scale) {
  using C = FlashCfg<DM>;
  static_assert(C::INNER == 64 && C::ROWS == 64, "ds tiles are 64 x 64");
  constexpr int STAGES = kDsStages, DS_TILE = 64 * 64;
  extern __shared__ __align__(16) unsigned char flash_smem[];
  bf16* Ss = reinterpret_cast<bf16*>(flash_smem);  // [STAGES][DS_TILE]
  bf16* Ks = Ss + STAGES * DS_TILE;                // [STAGES][TILE]
  const TileIndex ti = tile_index<64>(T, Hq, true);
  const int b = ti.b, h = ti.head, hk = h / group, Hkv = Hq / group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
  const int tiles = ti.tile + 1;  // key tiles at or before the diagonal
  const bf16* ds_row = ds_t + flash_ds_tile(b, h, 0, ti.tile, Hq, T);
  const int64_t ds_step = int64_t(flash_ds_tiles(T)) * DS_TILE;  // to the next key tile
  const bf16* kh = k + (int64_t(b) * Hkv + hk) * T * DM;
  auto load = [=](int j) {  // ds tile (j, ti.tile) and K tile j, one cp.async group
    if (j < tiles) {
      bf16* st = Ss + (j % STAGES) * DS_TILE;
      const bf16* src = ds_row + j * ds_step;
#pragma unroll
      for (int i = threadIdx.x; i < DS_TILE / 8; i += C::THREADS)
        cp_async_16(st + i * 8, src + i * 8, true);
      flash_load_tile<C, 64>(Ks + (j % STAGES) * C::TILE, kh, j * 64, T);
    }
    cp_async_commit();
  };
#pragma unroll
  for (int j = 0; j < STAGES - 1; ++j) load(j);
  float acc[C::DT][4];
#pragma unroll
  for (int dt = 0; dt < C::DT; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.f;
  // A fragments of ds (m: the warp's 16 queries, k: 16 keys) from ds^T blocks with .trans:
  // matrix i is block (key block 2 kk + i / 2, query block 2 warp + i % 2). K as in
  // flash_acc_times_tile.
  const int a_off = (((lane / 16) * 8 + 2 * warp + (lane / 8) % 2) * 8 + lane % 8) * 8;
  const int b_off = (((lane / 8) % 2) * 8 + lane % 8) * C::SS + (lane / 16) * 8;
  for (int j = 0; j < tiles; ++j) {
    cp_async_wait_group<STAGES - 2>();  // tile j is in
    __syncthreads();                    // and every warp is done with tile j - 1's buffers
    load(j + STAGES - 1);
    const bf16* St = Ss + (j % STAGES) * DS_TILE;
    const bf16* Kt = Ks + (j % STAGES) * C::TILE;
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t a[4];
      ldmatrix_x4_trans(a, St + a_off + kk * 2 * 8 * 64);
#pragma unroll
      for (int dp = 0; dp < C::DT / 2; ++dp) {
        uint32_t bb[4];
        ldmatrix_x4_trans(bb, Kt + b_off + kk * 16 * C::SS + dp * 16);
        mma_bf16_16816(acc[2 * dp], a, bb[0], bb[1]);
        mma_bf16_16816(acc[2 * dp + 1], a, bb[2], bb[3]);
      }
    }
  }
  flash_store_rows<C>(dq + b * dqs.b + h * dqs.h, dqs.t, ti.tile * 64 + warp * 16 + g, T, D, acc,
                      scale, scale);
}

// ---- host side ------------------------------------------------------------------------------
template <int DM>
struct FlashSmem {
  using F = FlashFwdCfg<DM>;
  using Q = FlashDqCfg<DM>;
  using C = FlashCfg<DM>;
  static constexpr size_t forward = (F::FIXED + 4 * F::TILE) * sizeof(bf16);
  static constexpr size_t dq = (2 * Q::FIXED + 4 * Q::TILE) * sizeof(bf16);
  static constexpr size_t dkdv =
      (2 * C::FIXED + 4 * C::TILE) * sizeof(bf16) + 4 * C::INNER * sizeof(float);
  static constexpr size_t dq_from_ds = kDsStages * (64 * 64 + C::TILE) * sizeof(bf16);
};

// x [B, H, T, D] (unit-stride head axis; fp32 or bf16) as bf16 [B, H, T, DM]; with `other`
// (same shape; fp32 or bf16), also di = rowsum(x * other) [B, H, T].
template <int DM, class Src = float, class Other = float>
void flash_pack(const Tensor<Src, cuda>& x, bf16* dst, const Tensor<Other, cuda>* other = nullptr,
                float* di = nullptr) {
  using SrcE = std::conditional_t<std::is_same_v<Src, float>, float, bf16>;
  using OtherE = std::conditional_t<std::is_same_v<Other, float>, float, bf16>;
  const int64_t rows = x.size(0) * x.size(1) * x.size(2);
  const int64_t threads = rows * (DM / 8);
  const unsigned blocks = unsigned((threads + 255) / 256);
  const HeadStrides xs{x.strides()[0], x.strides()[1], x.strides()[2]};
  const HeadStrides os =
      other ? HeadStrides{other->strides()[0], other->strides()[1], other->strides()[2]}
            : HeadStrides{0, 0, 0};
  attn_pack_bf16_kernel<DM, SrcE, OtherE><<<blocks, 256, 0, cuda::stream()>>>(
      reinterpret_cast<const SrcE*>(x.data()), xs, dst, int(x.size(1)), int(x.size(2)),
      int(x.size(3)), rows, other ? reinterpret_cast<const OtherE*>(other->data()) : nullptr, os,
      di);
  TERNARY_CUDA_CHECK_LAUNCH("attn_pack_bf16_kernel");
}

template <class E>
HeadStrides flash_strides(const Tensor<E, cuda>& x) {
  return {x.strides()[0], x.strides()[1], x.strides()[2]};
}

// The packed q, k, v of one call, one buffer: q [B, Hq, T, DM], then k and v [B, Hkv, T, DM].
struct FlashPacked {
  int B, Hq, Hkv, T, D;
  int64_t q_elems, kv_elems;
  FlashPacked(int B_, int Hq_, int Hkv_, int T_, int D_, int DM)
      : B(B_),
        Hq(Hq_),
        Hkv(Hkv_),
        T(T_),
        D(D_),
        q_elems(int64_t(B_) * Hq_ * T_ * DM),
        kv_elems(int64_t(B_) * Hkv_ * T_ * DM) {}
  int64_t total() const { return q_elems + 2 * kv_elems; }
};

// q, k, v (unit-stride head axes, any other layout) packed into one new buffer.
template <int DM>
Tensor<ternary::bf16, cuda> flash_pack_qkv(const FlashPacked& layout, const Tensor<float, cuda>& q,
                                           const Tensor<float, cuda>& k,
                                           const Tensor<float, cuda>& v) {
  Tensor<ternary::bf16, cuda> packed = Tensor<ternary::bf16, cuda>::empty({layout.total()});
  bf16* qp = reinterpret_cast<bf16*>(packed.data());
  flash_pack<DM>(q, qp);
  flash_pack<DM>(k, qp + layout.q_elems);
  flash_pack<DM>(v, qp + layout.q_elems + layout.kv_elems);
  return packed;
}

// out (and lse) from the packed q, k, v; out through its strides (unit-stride head axis);
// with out16, the same values rounded to bf16 there too (out16 strided as out).
template <int DM>
void flash_attention_forward(const FlashPacked& layout, const Tensor<ternary::bf16, cuda>& packed,
                             float scale, Tensor<float, cuda>& out, Tensor<float, cuda>* lse,
                             Tensor<ternary::bf16, cuda>* out16 = nullptr) {
  using C = FlashFwdCfg<DM>;
  const bf16* qp = reinterpret_cast<const bf16*>(packed.data());
  const bf16* kp = qp + layout.q_elems;
  const bf16* vp = kp + layout.kv_elems;
  static const bool smem_ok =
      (allow_dynamic_smem(flash_forward_kernel<DM>, FlashSmem<DM>::forward), true);
  (void)smem_ok;
  const int64_t tiles = (layout.T + C::ROWS - 1) / C::ROWS;
  flash_forward_kernel<DM><<<unsigned(tiles * layout.Hq * layout.B), C::THREADS,
                             FlashSmem<DM>::forward, cuda::stream()>>>(
      qp, kp, vp, out.defined() ? out.data() : nullptr,
      out.defined() ? flash_strides(out) : flash_strides(*out16), lse ? lse->data() : nullptr,
      layout.T, layout.D, layout.Hq, layout.Hq / layout.Hkv, scale,
      out16 ? reinterpret_cast<bf16*>(out16->data()) : nullptr);
  TERNARY_CUDA_CHECK_LAUNCH("flash_forward_kernel");
}

// dq, dk, dv from the packed q, k, v (the forward's), out, lse and dout (unit-stride head axes,
// any other layout); dv fp32 or bf16 (DV: float or ternary::bf16), out and dout fp32 or bf16
// (OUT, DO: the backward's Di = rowsum(dout * out) from them as they are).
template <int DM, class DV, class OUT = float, class DO = float>
void flash_attention_backward(const FlashPacked& layout, const Tensor<ternary::bf16, cuda>& packed,
                              const Tensor<OUT, cuda>& out, const Tensor<float, cuda>& lse,
                              const Tensor<DO, cuda>& dout, float scale, Tensor<float, cuda>& dq,
                              Tensor<float, cuda>& dk, Tensor<DV, cuda>& dv) {
  using DvOut = std::conditional_t<std::is_same_v<DV, float>, float, bf16>;
  using C = FlashCfg<DM>;
  const int B = layout.B, Hq = layout.Hq, Hkv = layout.Hkv, T = layout.T, D = layout.D;
  if (packed.numel() != layout.total())
    throw ShapeError(detail::cat("causal_attention_backward(cuda): the packed operands hold ",
                                 packed.numel(), " values, not the ", layout.total(),
                                 " of these shapes"));
  const bf16* qb = reinterpret_cast<const bf16*>(packed.data());
  const bf16* kb = qb + layout.q_elems;
  const bf16* vb = kb + layout.kv_elems;
  Scratch dop(size_t(layout.q_elems) * sizeof(bf16));
  Scratch di(size_t(B) * Hq * T * sizeof(float));
  flash_pack<DM>(dout, static_cast<bf16*>(dop.p), &out, static_cast<float*>(di.p));
  static const bool smem_ok =
      (allow_dynamic_smem(flash_backward_dq_kernel<DM>, FlashSmem<DM>::dq),
       allow_dynamic_smem(flash_backward_dkdv_kernel<DM, DvOut>, FlashSmem<DM>::dkdv), true);
  (void)smem_ok;
  const int64_t kv_tiles = (T + C::ROWS - 1) / C::ROWS;
  const auto* dob = static_cast<const bf16*>(dop.p);
  const auto* dib = static_cast<const float*>(di.p);
  // ds through memory (cuda::set_attention_scratch) where one batch row's fits, in chunks of
  // batch rows; else dq recomputes the scores.
  if constexpr (C::INNER == C::ROWS) {
    const int64_t Tp = int64_t(flash_ds_tiles(T)) * 64;  // T rounded up to whole tiles
    const size_t row_bytes = size_t(Hq) * size_t(Tp * Tp) * sizeof(bf16);
    const size_t budget = cuda::attention_scratch();
    if (row_bytes <= budget) {
      static const bool ds_smem_ok =
          (allow_dynamic_smem(flash_backward_dq_from_ds_kernel<DM>, FlashSmem<DM>::dq_from_ds),
           true);
      (void)ds_smem_ok;
      const int chunk = int(std::min<size_t>(size_t(B), budget / row_bytes));
      Scratch ds(size_t(chunk) * row_bytes);
      auto* dsb = static_cast<bf16*>(ds.p);
      const int64_t q_rows = int64_t(Hq) * T * DM,
                    kv_rows = int64_t(Hkv) * T * DM;  // per batch row
      for (int b0 = 0; b0 < B; b0 += chunk) {
        const int nb = std::min(chunk, B - b0);
        const float* lse_b = lse.data() + int64_t(b0) * Hq * T;
        const float* di_b = dib + int64_t(b0) * Hq * T;
        const bf16* kb_b = kb + b0 * kv_rows;
        flash_backward_dkdv_kernel<DM, DvOut>
            <<<unsigned(kv_tiles * Hkv * nb), C::THREADS, FlashSmem<DM>::dkdv, cuda::stream()>>>(
                qb + b0 * q_rows, kb_b, vb + b0 * kv_rows, dob + b0 * q_rows, lse_b, di_b,
                dk.data() + b0 * dk.strides()[0], flash_strides(dk),
                reinterpret_cast<DvOut*>(dv.data()) + b0 * dv.strides()[0], flash_strides(dv), dsb,
                T, D, Hq, Hkv, Hq / Hkv, scale);
        TERNARY_CUDA_CHECK_LAUNCH("flash_backward_dkdv_kernel");
        flash_backward_dq_from_ds_kernel<DM>
            <<<unsigned(kv_tiles * Hq * nb), C::THREADS, FlashSmem<DM>::dq_from_ds,
               cuda::stream()>>>(dsb, kb_b, dq.data() + b0 * dq.strides()[0], flash_strides(dq), T,
                                 D, Hq, Hq / Hkv, scale);
        TERNARY_CUDA_CHECK_LAUNCH("flash_backward_dq_from_ds_kernel");
      }
      return;
    }
  }
  const int64_t q_tiles = (T + FlashDqCfg<DM>::ROWS - 1) / FlashDqCfg<DM>::ROWS;
  flash_backward_dq_kernel<DM>
      <<<unsigned(q_tiles * Hq * B), C::THREADS, FlashSmem<DM>::dq, cuda::stream()>>>(
          qb, kb, vb, dob, lse.data(), dib, dq.data(), flash_strides(dq), T, D, Hq, Hq / Hkv,
          scale);
  TERNARY_CUDA_CHECK_LAUNCH("flash_backward_dq_kernel");
  flash_backward_dkdv_kernel<DM, DvOut>
      <<<unsigned(kv_tiles * Hkv * B), C::THREADS, FlashSmem<DM>::dkdv, cuda::stream()>>>(
          qb, kb, vb, dob, lse.data(), dib, dk.data(), flash_strides(dk),
          reinterpret_cast<DvOut*>(dv.data()), flash_strides(dv), nullptr, T, D, Hq, Hkv, Hq / Hkv,
          scale);
  TERNARY_CUDA_CHECK_LAUNCH("flash_backward_dkdv_kernel");
}

}  // namespace ternary::backend::cuda_detail
