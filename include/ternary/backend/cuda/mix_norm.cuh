// CUDA kernels of mix_rms_norm_linear (ops/mix_norm_linear.hpp: the GPT block's entry), over
// contiguous rows [rows, D] with per-channel weights a, b [D]:
//   forward:  x = a x_in + b x0 (written: the block's input), rstd = 1 / sqrt(mean(x^2) + eps),
//             h = bf16(x rstd) (the q, k, v GEMMs' operand), in one pass over x_in and x0;
//   backward: G = sum_k dh_k (the GEMMs' bf16 input gradients), x recomputed from x_in and x0,
//             gx = rstd G - x rstd^3 dot(G, x) / D + g_x (x's own gradient), then the mix's
//             backward in registers: dx_in = a gx, dx0 = b gx (each added to its gradient so
//             far) and the block's partial sums of gx x_in and gx x0 (for da, db). gx never
//             reaches memory.
// Same float operations as channel_mix's kernels then the register RMSNorm kernels of norm.cuh
// (rows of 64-512 floats, 16-byte aligned; the sums over rows run in another order).
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <cuda_bf16.h>

#include <array>
#include <cstdint>
#include <type_traits>

#include "ternary/backend/cuda/norm.cuh"
#include "ternary/backend/cuda/reduce.cuh"

namespace ternary::backend::cuda_detail {

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

// One warp per group of 32 / L rows, as norm.cuh's register kernels.
template <int V, int L>
__global__ void mix_rms_norm_forward_kernel(const float* __restrict__ a,
                                            const float* __restrict__ x_in,
                                            const float* __restrict__ b,
                                            const float* __restrict__ x0, float* __restrict__ x,
                                            float* __restrict__ rstd, __nv_bfloat16* __restrict__ h,
                                            int64_t rows, double eps) {
  constexpr int D = 4 * V * L, RPW = 32 / L;
  const int lane = threadIdx.x % 32, li = lane % L, sub = lane / L;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  RowVec<V, L> av, bv;
  av.load(a, li);
  bv.load(b, li);
  for (int64_t base = (int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32) * RPW;
       base < rows; base += warps * RPW) {
    const int64_t r = base + sub;
    const bool valid = r < rows;
    RowVec<V, L> xv = mix_rows(av, load_row_or_zero<V, L>(x_in, r, valid, li), bv,
                               load_row_or_zero<V, L>(x0, r, valid, li));
    if (valid) xv.store(x + r * D, li);
    const float s = row_group_sum<L>(xv.dot(xv));
    const float rs = float(1.0 / ::sqrt(double(s) / double(D) + eps));
    if (valid && li == 0) rstd[r] = rs;
    xv.scale(rs);
    if (valid) xv.store_bf16(h + r * D, li);
  }
}

// dh: K bf16 rows (null: no gradient reached that projection); gx_out, prior_in, prior0 may be
// null (none so far; a prior may be its own output: each lane reads, then writes); dx_in, dx0
// null: not wanted. partial [2, gridDim.x, D]: the block's sums of gx x_in, then of gx x0.
template <int V, int L, int K>
__global__ void mix_rms_norm_backward_kernel(
    const float* __restrict__ a, const float* __restrict__ x_in, const float* __restrict__ b,
    const float* __restrict__ x0, const float* __restrict__ rstd, RowPtrs<K> dh,
    const float* __restrict__ gx_out, float* dx_in, const float* prior_in, float* dx0,
    const float* prior0, float* __restrict__ partial, int64_t rows) {
  constexpr int D = 4 * V * L, RPW = 32 / L;
  extern __shared__ unsigned char shared_bytes[];
  float* acc = reinterpret_cast<float*>(shared_bytes);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  const int li = lane % L, sub = lane / L;
  RowVec<V, L> av, bv, sa, sb;
  av.load(a, li);
  bv.load(b, li);
  sa.zero();
  sb.zero();
  const int64_t warps = int64_t(gridDim.x) * nw;
  for (int64_t base = (int64_t(blockIdx.x) * nw + warp) * RPW; base < rows; base += warps * RPW) {
    const int64_t r = base + sub;
    const bool valid = r < rows;
    const RowVec<V, L> xi = load_row_or_zero<V, L>(x_in, r, valid, li);
    const RowVec<V, L> xz = load_row_or_zero<V, L>(x0, r, valid, li);
    const RowVec<V, L> xv = mix_rows(av, xi, bv, xz);
    RowVec<V, L> G;
    G.zero();
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (!dh.p[k]) continue;
      const RowVec<V, L> gv = load_row_as<V, L, true>(dh.p[k], r, valid, li);
#pragma unroll
      for (int i = 0; i < V; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) G.at(i, e) += gv.at(i, e);
    }
    const float s = valid ? rstd[r] : 0.f;
    const float dot = row_group_sum<L>(G.dot(xv));
    const float c = s * s * s * dot / float(D);
    RowVec<V, L> gx = RowVec<V, L>::combine(s, G, c, xv);
    if (gx_out) {
      const RowVec<V, L> go = load_row_or_zero<V, L>(gx_out, r, valid, li);
#pragma unroll
      for (int i = 0; i < V; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) gx.at(i, e) += go.at(i, e);
    }
    // The mix's backward (channel_mix's rule; past the last row gx is zero)
    RowVec<V, L> pin, pz;  // the gradients so far (zero: none)
    pin.zero();
    pz.zero();
    if (prior_in) pin = load_row_or_zero<V, L>(prior_in, r, valid, li);
    if (prior0) pz = load_row_or_zero<V, L>(prior0, r, valid, li);
#pragma unroll
    for (int i = 0; i < V; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        sa.at(i, e) = fmaf(gx.at(i, e), xi.at(i, e), sa.at(i, e));
        sb.at(i, e) = fmaf(gx.at(i, e), xz.at(i, e), sb.at(i, e));
      }
    if (dx_in && valid) {
      RowVec<V, L> t;
#pragma unroll
      for (int i = 0; i < V; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) t.at(i, e) = av.at(i, e) * gx.at(i, e) + pin.at(i, e);
      t.store(dx_in + r * D, li);
    }
    if (dx0 && valid) {
      RowVec<V, L> t;
#pragma unroll
      for (int i = 0; i < V; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) t.at(i, e) = bv.at(i, e) * gx.at(i, e) + pz.at(i, e);
      t.store(dx0 + r * D, li);
    }
  }
  // The block's row slots summed in a fixed order (deterministic), as norm.cuh's dgain sums.
  const int slots = nw * RPW;
  sa.store(acc + int64_t(warp * RPW + sub) * D, li);
  sb.store(acc + int64_t(slots + warp * RPW + sub) * D, li);
  __syncthreads();
  for (int j = threadIdx.x; j < 2 * D; j += blockDim.x) {
    const int which = j / D, col = j % D;
    float t = 0.f;
    for (int w = 0; w < slots; ++w) t += acc[(int64_t(which) * slots + w) * D + col];
    partial[(int64_t(which) * gridDim.x + blockIdx.x) * D + col] = t;
  }
}

// Its shared memory in bytes (256 threads: 256 / L row slots of D floats, twice).
template <int V, int L>
constexpr size_t mix_rms_norm_backward_shared_bytes() {
  return 2 * size_t(256 / L) * (4 * V * L) * sizeof(float);
}

}  // namespace ternary::backend::cuda_detail

namespace ternary::backend {

// The forward (see the top of this file): x_in, x0, x [rows, D], a, b [D], rstd [rows], h bf16
// [rows, D], all contiguous. Rows of 64-512 floats only: false (nothing written) otherwise, and
// the caller composes the separate ops instead.
template <class T>
bool mix_rms_norm_bf16_forward(cuda, const Tensor<T, cuda>& a, const Tensor<T, cuda>& x_in,
                               const Tensor<T, cuda>& b, const Tensor<T, cuda>& x0,
                               const Tensor<T, cuda>& x, const Tensor<T, cuda>& rstd,
                               const Tensor<ternary::bf16, cuda>& h, double eps) {
  static_assert(std::is_same_v<T, float>, "mix_rms_norm_bf16_forward(cuda): float only");
  using namespace cuda_detail;
  const int64_t rows = x_in.size(0), D = x_in.size(1);
  if (rows == 0) return true;
  auto* hp = reinterpret_cast<__nv_bfloat16*>(h.data());
  bool launched = false;
  const bool fits = with_row_vec(
      D, {a.data(), x_in.data(), b.data(), x0.data(), x.data(), hp}, [&](auto v, auto l) {
        constexpr int V = decltype(v)::value, L = decltype(l)::value;
        if constexpr (mix_rms_norm_backward_shared_bytes<V, L>() <= 48 * 1024) {
          const int blocks = row_warps_blocks((rows + 32 / L - 1) / (32 / L));
          mix_rms_norm_forward_kernel<V, L><<<blocks, 256, 0, cuda::stream()>>>(
              a.data(), x_in.data(), b.data(), x0.data(), x.data(), rstd.data(), hp, rows, eps);
          TERNARY_CUDA_CHECK_LAUNCH("mix_rms_norm_forward_kernel");
          launched = true;
        }
      });
  return fits && launched;
}

// The backward (see the top of this file): dh[k] bf16 [rows, D] (undefined: none); gx_out x's own
// gradient (null: none); dx_in, dx0 (null: not wanted) get a gx, b gx plus prior_in, prior0
// (null: nothing so far; either may be its output itself); da, db [D] (each undefined: not
// wanted) are written. Rows of D contiguous floats; the forward must have run the kernels.
template <class T, size_t K>
void mix_rms_norm_backward(cuda, const Tensor<T, cuda>& a, const Tensor<T, cuda>& x_in,
                           const Tensor<T, cuda>& b, const Tensor<T, cuda>& x0,
                           const Tensor<T, cuda>& rstd,
                           const std::array<Tensor<ternary::bf16, cuda>, K>& dh, const T* gx_out,
                           T* dx_in, const T* prior_in, T* dx0, const T* prior0,
                           const Tensor<T, cuda>& da, const Tensor<T, cuda>& db) {
  static_assert(std::is_same_v<T, float>, "mix_rms_norm_backward(cuda): float only");
  using namespace cuda_detail;
  const int64_t rows = x_in.size(0), D = x_in.size(1);
  if (rows == 0) {
    if (da.defined()) Tensor<T, cuda>(da).fill(T(0));
    if (db.defined()) Tensor<T, cuda>(db).fill(T(0));
    return;
  }
  RowPtrs<int(K)> dhp;
  for (size_t k = 0; k < K; ++k)
    dhp.p[k] = dh[k].defined() ? reinterpret_cast<const float*>(dh[k].data()) : nullptr;
  const int blocks =
      int(std::min<int64_t>((rows + 7) / 8, launch_for(int64_t(1) << 40).blocks / 4));
  auto partial = Tensor<T, cuda>::empty(Shape{2 * int64_t(blocks), D});
  bool launched = false;
  with_row_vec(D,
               {a.data(), x_in.data(), b.data(), x0.data(), gx_out, dx_in, prior_in, dx0, prior0,
                partial.data(), dhp.p[0], dhp.p[K - 1]},
               [&](auto v, auto l) {
                 constexpr int V = decltype(v)::value, L = decltype(l)::value;
                 constexpr size_t bytes = mix_rms_norm_backward_shared_bytes<V, L>();
                 if constexpr (bytes <= 48 * 1024) {
                   mix_rms_norm_backward_kernel<V, L, int(K)>
                       <<<blocks, 256, bytes, cuda::stream()>>>(
                           a.data(), x_in.data(), b.data(), x0.data(), rstd.data(), dhp, gx_out,
                           dx_in, prior_in, dx0, prior0, partial.data(), rows);
                   TERNARY_CUDA_CHECK_LAUNCH("mix_rms_norm_backward_kernel");
                   launched = true;
                 }
               });
  if (!launched)
    throw Error(detail::cat("mix_rms_norm_backward(cuda): rows of ", D,
                            " floats (16-byte aligned, 64-512) are the forward's; got others"));
  if (da.defined()) sum_columns(partial.data(), da.data(), int64_t(blocks), D);
  if (db.defined())
    sum_columns(partial.data() + int64_t(blocks) * D, db.data(), int64_t(blocks), D);
}

}  // namespace ternary::backend
