// CUDA kernels of channel_mix (the op and its math: ops/channel_mix.hpp; the CPU kernels:
// backend/cpu/channel_mix.hpp), over contiguous rows [rows, D], weights a (may be null: 1)
// and b of D values:
//   forward:   one pass, float4 when D % 4 == 0 (and 16-byte aligned), else one float per thread
//              (y may be bf16: the bf16 nodes' residual sums read the product as the GEMM wrote
//              it).
//   backward:  a block takes a slice of rows and its threads W-wide column groups (W = 4 or 1):
//              each thread writes dx = a g and dy = b g of its columns and sums g x and g y
//              over the slice's rows in registers into the block's partial row; the partial
//              rows are then summed column by column in a fixed order (deterministic).
// And the weight side of a residual branch with its scale folded into the weight's rows
// (scaled_weight_backward, ops/residual_linear.hpp): one block per weight row.
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <cuda_bf16.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "ternary/backend/cuda/cuda.hpp"
#include "ternary/backend/cuda/elementwise.cuh"
#include "ternary/backend/cuda/reduce.cuh"

namespace ternary::backend::cuda_detail {

// W consecutive floats (W = 4: one float4).
template <int W>
struct Lanes {
  float v[W];
  __device__ void load(const float* p) {
    if constexpr (W == 4) {
      const float4 t = *reinterpret_cast<const float4*>(p);
      v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
    } else {
#pragma unroll
      for (int e = 0; e < W; ++e) v[e] = p[e];
    }
  }
  __device__ void store(float* p) const {
    if constexpr (W == 4)
      *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    else
#pragma unroll
      for (int e = 0; e < W; ++e) p[e] = v[e];
  }
};

// W consecutive bf16 values as floats (W = 4: one 8-byte load).
template <int W>
__device__ void load_lanes(Lanes<W>& t, const __nv_bfloat16* p) {
  if constexpr (W == 4) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
    const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
    t.v[0] = lo.x, t.v[1] = lo.y, t.v[2] = hi.x, t.v[3] = hi.y;
  } else {
#pragma unroll
    for (int e = 0; e < W; ++e) t.v[e] = __bfloat162float(p[e]);
  }
}
template <int W>
__device__ void load_lanes(Lanes<W>& t, const float* p) {
  t.load(p);
}

// out = a x + b y over n = rows * D elements, W at a time (D % W == 0); y in fp32 or bf16 (Y).
template <int W, class Y>
__global__ void channel_mix_forward_kernel(const float* __restrict__ a, const float* __restrict__ x,
                                           const float* __restrict__ b, const Y* __restrict__ y,
                                           float* __restrict__ out, int64_t n, int64_t D) {
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * W; i < n;
       i += int64_t(gridDim.x) * blockDim.x * W) {
    const int64_t j = i % D;
    Lanes<W> xv, yv, bv, av;
    xv.load(x + i);
    load_lanes(yv, y + i);
    bv.load(b + j);
    if (a) av.load(a + j);
#pragma unroll
    for (int e = 0; e < W; ++e)
      xv.v[e] = a ? fmaf(av.v[e], xv.v[e], bv.v[e] * yv.v[e]) : fmaf(bv.v[e], yv.v[e], xv.v[e]);
    xv.store(out + i);
  }
}

// t += p[0 .. W) (a gradient so far; p may be where t is stored next, read first)
template <int W>
__device__ void add_lanes(Lanes<W>& t, const float* p) {
  Lanes<W> prior;
  prior.load(p);
#pragma unroll
  for (int e = 0; e < W; ++e) t.v[e] += prior.v[e];
}

// Block k takes rows [k rows_per_block, +rows_per_block); pa / pb [blocks, D] get its sums;
// dx, dy get a g, b g plus dx_prior, dy_prior where those are not null.
template <int W>
__global__ void channel_mix_backward_kernel(
    const float* __restrict__ g, const float* __restrict__ a, const float* __restrict__ x,
    const float* __restrict__ b, const float* __restrict__ y, float* dx, float* dy,
    const float* dx_prior, const float* dy_prior, float* __restrict__ pa, float* __restrict__ pb,
    int64_t rows, int64_t D, int64_t rows_per_block) {
  const int64_t r0 = int64_t(blockIdx.x) * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
  for (int64_t j = int64_t(threadIdx.x) * W; j < D; j += int64_t(blockDim.x) * W) {
    Lanes<W> av, bv, sa, sb;
    if (dx) av.load(a + j);
    if (dy) bv.load(b + j);
#pragma unroll
    for (int e = 0; e < W; ++e) sa.v[e] = sb.v[e] = 0.f;
#pragma unroll 4
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = r * D + j;
      Lanes<W> gv, t;
      gv.load(g + i);
      if (dx) {
#pragma unroll
        for (int e = 0; e < W; ++e) t.v[e] = av.v[e] * gv.v[e];
        if (dx_prior) add_lanes(t, dx_prior + i);
        t.store(dx + i);
      }
      if (dy) {
#pragma unroll
        for (int e = 0; e < W; ++e) t.v[e] = bv.v[e] * gv.v[e];
        if (dy_prior) add_lanes(t, dy_prior + i);
        t.store(dy + i);
      }
      if (pa) {
        t.load(x + i);
#pragma unroll
        for (int e = 0; e < W; ++e) sa.v[e] = fmaf(gv.v[e], t.v[e], sa.v[e]);
      }
      if (pb) {
        t.load(y + i);
#pragma unroll
        for (int e = 0; e < W; ++e) sb.v[e] = fmaf(gv.v[e], t.v[e], sb.v[e]);
      }
    }
    if (pa) sa.store(pa + int64_t(blockIdx.x) * D + j);
    if (pb) sb.store(pb + int64_t(blockIdx.x) * D + j);
  }
}

// Row j of scaled_weight_backward (the math: backend/cpu/channel_mix.hpp) per block: each
// thread W-wide column groups of the row, then one block sum for dscale[j].
template <int W>
__global__ void scaled_weight_backward_kernel(const float* __restrict__ G,
                                              const float* __restrict__ w,
                                              const float* __restrict__ scale, float* dw,
                                              const float* dw_prior, float* dscale,
                                              const float* dscale_prior,
                                              __nv_bfloat16* __restrict__ wb16, int64_t in) {
  const int64_t row = int64_t(blockIdx.x) * in;
  const float s = scale[blockIdx.x];
  float dot = 0.f;
  for (int64_t k = int64_t(threadIdx.x) * W; k < in; k += int64_t(blockDim.x) * W) {
    const int64_t i = row + k;
    Lanes<W> wv, gv{}, t;
    wv.load(w + i);
    if (G) gv.load(G + i);
    if (dw) {
#pragma unroll
      for (int e = 0; e < W; ++e) t.v[e] = gv.v[e] * s;
      if (dw_prior) add_lanes(t, dw_prior + i);
      t.store(dw + i);
    }
    if (dscale)
#pragma unroll
      for (int e = 0; e < W; ++e) dot = fmaf(wv.v[e], gv.v[e], dot);
    if constexpr (W == 4) {
      const __nv_bfloat162 lo = __floats2bfloat162_rn(wv.v[0] * s, wv.v[1] * s);
      const __nv_bfloat162 hi = __floats2bfloat162_rn(wv.v[2] * s, wv.v[3] * s);
      uint2 raw;
      raw.x = *reinterpret_cast<const uint32_t*>(&lo);
      raw.y = *reinterpret_cast<const uint32_t*>(&hi);
      *reinterpret_cast<uint2*>(wb16 + i) = raw;
    } else {
#pragma unroll
      for (int e = 0; e < W; ++e) wb16[i + e] = __float2bfloat16_rn(wv.v[e] * s);
    }
  }
  if (dscale) {
    dot = block_sum(dot);
    if (threadIdx.x == 0) dscale[blockIdx.x] = dscale_prior ? dscale_prior[blockIdx.x] + dot : dot;
  }
}

// Calls f(std::integral_constant<int, W>): W = 4 when D % 4 == 0 and every pointer is
// 16-byte aligned, else 1.
template <class F>
void with_channel_width(int64_t D, std::initializer_list<const void*> ptrs, F&& f) {
  bool wide = D % 4 == 0;
  for (const void* p : ptrs) wide = wide && reinterpret_cast<uintptr_t>(p) % 16 == 0;
  if (wide)
    f(std::integral_constant<int, 4>{});
  else
    f(std::integral_constant<int, 1>{});
}

}  // namespace ternary::backend::cuda_detail

namespace ternary::backend {

namespace cuda_detail {
template <class Y>
void channel_mix_forward_any(const float* a, const float* x, const float* b, const Y* y, float* out,
                             int64_t rows, int64_t D) {
  const int64_t n = rows * D;
  if (n == 0) return;
  with_channel_width(D, {a, x, b, y, out}, [&](auto w) {
    constexpr int W = decltype(w)::value;
    const Launch ls = launch_for((n + W - 1) / W);
    channel_mix_forward_kernel<W, Y>
        <<<ls.blocks, ls.threads, 0, cuda::stream()>>>(a, x, b, y, out, n, D);
    TERNARY_CUDA_CHECK_LAUNCH("channel_mix_forward_kernel");
  });
}
}  // namespace cuda_detail

template <class T>
void channel_mix_forward(cuda, const T* a, const T* x, const T* b, const T* y, T* out, int64_t rows,
                         int64_t D) {
  static_assert(std::is_same_v<T, float>, "channel_mix(cuda): float only");
  cuda_detail::channel_mix_forward_any(a, x, b, y, out, rows, D);
}
// y in bf16 (the bf16 nodes' residual sums: the product as the GEMM wrote it)
template <class T>
void channel_mix_forward(cuda, const T* a, const T* x, const T* b, const ternary::bf16* y, T* out,
                         int64_t rows, int64_t D) {
  static_assert(std::is_same_v<T, float>, "channel_mix(cuda): float only");
  cuda_detail::channel_mix_forward_any(a, x, b, reinterpret_cast<const __nv_bfloat16*>(y), out,
                                       rows, D);
}

template <class T>
void channel_mix_backward(cuda, const T* g, const T* a, const T* x, const T* b, const T* y, T* dx,
                          T* dy, T* da, T* db, int64_t rows, int64_t D, const T* dx_prior,
                          const T* dy_prior) {  // defaults: in cuda.hpp
  static_assert(std::is_same_v<T, float>, "channel_mix(cuda): float only");
  using namespace cuda_detail;
  if (rows == 0 || D == 0) return;
  // About four blocks per multiprocessor, each over a slice of rows.
  const int64_t target = int64_t(launch_for(int64_t(1) << 40).blocks / 4);
  const int64_t rows_per_block = std::max<int64_t>(1, (rows + target - 1) / target);
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  auto pa = Tensor<T, cuda>::empty(Shape{da ? blocks : 0, D});
  auto pb = Tensor<T, cuda>::empty(Shape{db ? blocks : 0, D});
  float* pa_p = da ? pa.data() : nullptr;
  float* pb_p = db ? pb.data() : nullptr;
  with_channel_width(D, {g, a, x, b, y, dx, dy, dx_prior, dy_prior, pa_p, pb_p}, [&](auto w) {
    constexpr int W = decltype(w)::value;
    const int threads = int(std::min<int64_t>(256, std::max<int64_t>(32, (D / W + 31) / 32 * 32)));
    channel_mix_backward_kernel<W><<<unsigned(blocks), threads, 0, cuda::stream()>>>(
        g, a, x, b, y, dx, dy, dx_prior, dy_prior, pa_p, pb_p, rows, D, rows_per_block);
    TERNARY_CUDA_CHECK_LAUNCH("channel_mix_backward_kernel");
  });
  // The blocks' partial rows, summed in a fixed order (deterministic) straight into da, db.
  if (da) sum_columns(pa.data(), da, blocks, D);
  if (db) sum_columns(pb.data(), db, blocks, D);
}

template <class T>
void scaled_weight_backward(cuda, const T* G, const T* w, const T* scale, T* dw, const T* dw_prior,
                            T* dscale, const T* dscale_prior, bf16* wb16, int64_t out, int64_t in) {
  static_assert(std::is_same_v<T, float>, "scaled_weight_backward(cuda): float only");
  using namespace cuda_detail;
  if (out == 0 || in == 0) return;
  auto* wb = reinterpret_cast<__nv_bfloat16*>(wb16);
  with_channel_width(in, {G, w, dw, dw_prior, wb16}, [&](auto width) {
    constexpr int W = decltype(width)::value;
    const int threads = int(std::min<int64_t>(256, std::max<int64_t>(32, (in / W + 31) / 32 * 32)));
    scaled_weight_backward_kernel<W><<<unsigned(out), threads, 0, cuda::stream()>>>(
        G, w, scale, dw, dw_prior, dscale, dscale_prior, wb, in);
    TERNARY_CUDA_CHECK_LAUNCH("scaled_weight_backward_kernel");
  });
}

}  // namespace ternary::backend
