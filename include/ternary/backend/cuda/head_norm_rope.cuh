// CUDA kernels of head_norm_rope (the op and its math: ops/head_norm_rope.hpp; the CPU kernels
// in backend/cpu/head_norm_rope.hpp). One warp per row of Dh elements, addressed through
// HeadRows strides (the GPT's q and k are [B, H, T, Dh] views of token-major projections).
// float rows of Dh = 64, 128, 256 take the vector kernels (a row per Dh / 8 lanes, float4
// loads); otherwise one warp per row: for Dh = 64 P (P = 1, 2, 4) lane l holds elements
// l + 32 p and l + 32 p + Dh/2, exactly the pairs RoPE rotates, so the row is read once into
// registers; other even sizes loop over the row (re-reads hit L1). The gain's gradient is one
// dot product per row, summed per head by the caller.
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <cuda_bf16.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "ternary/backend/cpu/head_norm_rope.hpp"
#include "ternary/backend/cuda/bf16_vec.cuh"
#include "ternary/backend/cuda/reduce.cuh"
#include "ternary/backend/cuda/rope.cuh"

namespace ternary::backend::cuda_detail {

template <class T>
__device__ T head_warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

constexpr int kHeadRowsPerBlock = 8;  // warps (rows) per block of 256 threads

// P > 0: Dh = 64 P, pairs in registers; P == 0: any even Dh.
template <class T, int P>
__global__ void head_norm_rope_forward_kernel(const T* __restrict__ x, HeadRows xl,
                                              const T* __restrict__ gain, T* __restrict__ y,
                                              HeadRows yl, const T* __restrict__ cos_t,
                                              const T* __restrict__ sin_t, T eps) {
  const int lane = threadIdx.x % 32;
  const int64_t r = int64_t(blockIdx.x) * kHeadRowsPerBlock + threadIdx.x / 32;
  if (r >= xl.rows()) return;
  const int64_t half = xl.dh / 2, pos = xl.position(r);
  const T* xr = x + xl.offset(r);
  T* yr = y + yl.offset(r);
  const T* c = cos_t + pos * half;
  const T* s = sin_t + pos * half;
  if constexpr (P > 0) {
    T a[P], b[P];
    T ss = 0;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      a[p] = xr[lane + 32 * p];
      b[p] = xr[lane + 32 * p + half];
      ss += a[p] * a[p] + b[p] * b[p];
    }
    ss = head_warp_sum(ss);
    const T rstd = T(1) / ::sqrt(ss / T(xl.dh) + eps);
    const T scale = gain ? gain[xl.head(r)] * rstd : rstd;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int i = lane + 32 * p;
      const T u = a[p] * scale, v = b[p] * scale;
      yr[i] = u * c[i] + v * s[i];
      yr[i + half] = v * c[i] - u * s[i];
    }
  } else {
    T ss = 0;
    for (int64_t j = lane; j < xl.dh; j += 32) ss += xr[j] * xr[j];
    ss = head_warp_sum(ss);
    const T rstd = T(1) / ::sqrt(ss / T(xl.dh) + eps);
    const T scale = gain ? gain[xl.head(r)] * rstd : rstd;
    for (int64_t i = lane; i < half; i += 32) {
      const T u = xr[i] * scale, v = xr[i + half] * scale;
      yr[i] = u * c[i] + v * s[i];
      yr[i + half] = v * c[i] - u * s[i];
    }
  }
}

template <class T, int P>
__global__ void head_norm_rope_backward_kernel(const T* __restrict__ x, HeadRows xl,
                                               const T* __restrict__ gain, const T* __restrict__ g,
                                               HeadRows gl, T* __restrict__ dx, HeadRows dxl,
                                               T* __restrict__ row_dot, const T* __restrict__ cos_t,
                                               const T* __restrict__ sin_t, T eps) {
  const int lane = threadIdx.x % 32;
  const int64_t r = int64_t(blockIdx.x) * kHeadRowsPerBlock + threadIdx.x / 32;
  if (r >= xl.rows()) return;
  const int64_t half = xl.dh / 2, pos = xl.position(r);
  const T* xr = x + xl.offset(r);
  const T* gr = g + gl.offset(r);
  const T* c = cos_t + pos * half;
  const T* s = sin_t + pos * half;
  if constexpr (P > 0) {
    T a[P], b[P], u1[P], u2[P];  // x's pair and the rotated-back gradient u = R^T g
    T ss = 0, dot = 0;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int i = lane + 32 * p;
      a[p] = xr[i];
      b[p] = xr[i + half];
      const T ga = gr[i], gb = gr[i + half];
      u1[p] = ga * c[i] - gb * s[i];
      u2[p] = ga * s[i] + gb * c[i];
      ss += a[p] * a[p] + b[p] * b[p];
      dot += u1[p] * a[p] + u2[p] * b[p];
    }
    ss = head_warp_sum(ss);
    dot = head_warp_sum(dot);
    const T rstd = T(1) / ::sqrt(ss / T(xl.dh) + eps);
    dot *= rstd;  // sum(u * n)
    if (row_dot && lane == 0) row_dot[r] = dot;
    if (!dx) return;
    T* dr = dx + dxl.offset(r);
    const T scale = gain ? gain[xl.head(r)] * rstd : rstd;
    const T m = dot / T(xl.dh) * rstd;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int i = lane + 32 * p;
      dr[i] = scale * (u1[p] - a[p] * m);
      dr[i + half] = scale * (u2[p] - b[p] * m);
    }
  } else {
    T ss = 0, dot = 0;
    for (int64_t i = lane; i < half; i += 32) {
      const T a = xr[i], b = xr[i + half], ga = gr[i], gb = gr[i + half];
      ss += a * a + b * b;
      dot += (ga * c[i] - gb * s[i]) * a + (ga * s[i] + gb * c[i]) * b;
    }
    ss = head_warp_sum(ss);
    dot = head_warp_sum(dot);
    const T rstd = T(1) / ::sqrt(ss / T(xl.dh) + eps);
    dot *= rstd;
    if (row_dot && lane == 0) row_dot[r] = dot;
    if (!dx) return;
    T* dr = dx + dxl.offset(r);
    const T scale = gain ? gain[xl.head(r)] * rstd : rstd;
    const T m = dot / T(xl.dh) * rstd;
    for (int64_t i = lane; i < half; i += 32) {
      const T a = xr[i], b = xr[i + half], ga = gr[i], gb = gr[i + half];
      dr[i] = scale * ((ga * c[i] - gb * s[i]) - a * m);
      dr[i + half] = scale * ((ga * s[i] + gb * c[i]) - b * m);
    }
  }
}

// ---- float rows of Dh = 64, 128, 256: L = Dh / 8 lanes per row, 32 / L rows per warp -------
// Lane li holds columns 4 li .. 4 li + 3 of each half (two float4 loads: the RoPE pairs stay in
// the lane); the grid is (position tiles, B * H), so a block's rows are one head's consecutive
// positions and the index arithmetic is one 32-bit division per thread.
struct HeadGrid {
  int heads, seq, half;
};
template <int L>
__device__ float head_group_sum(float v) {
#pragma unroll
  for (int o = L / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float4 ld4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ inline void st4(float* p, float4 v) {
  *reinterpret_cast<float4*>(p) = v;
}
__device__ inline void st4(__nv_bfloat16* p, float4 v) {
  store_bf16x4(p, v);
}
__device__ inline float dot4(float4 a, float4 b) {
  return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

// The row a lane of the vector kernels works on (position t of head h in batch b) and its
// first column: 4 li of each half.
template <int L>
struct HeadLane {
  int t, b, h, col;
  bool valid;
  __device__ explicit HeadLane(const HeadGrid& hg) {
    const int lane = threadIdx.x % 32;
    t = (int(blockIdx.x) * kHeadRowsPerBlock + int(threadIdx.x) / 32) * (32 / L) + lane / L;
    b = int(blockIdx.y) / hg.heads;
    h = int(blockIdx.y) % hg.heads;
    valid = t < hg.seq;
    col = 4 * (lane % L);
  }
  __device__ int64_t offset(const HeadRows& l) const {
    return b * l.sb + h * l.sh + int64_t(t) * l.st;
  }
};

// Out: float, or __nv_bfloat16 (the values rounded once: the tensor-core attention's packed
// operands, ops/rope_attention.hpp).
template <int L, class Out = float>
__global__ void head_norm_rope_forward_vec_kernel(const float* __restrict__ x, HeadRows xl,
                                                  const float* __restrict__ gain,
                                                  Out* __restrict__ y, HeadRows yl, HeadGrid hg,
                                                  const float* __restrict__ cos_t,
                                                  const float* __restrict__ sin_t, float eps) {
  const HeadLane<L> at(hg);
  const int t = at.t, h = at.h, half = hg.half, col = at.col;
  const bool valid = at.valid;
  const float* xr = x + at.offset(xl);
  const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
  const float4 a = valid ? ld4(xr + col) : zero, c = valid ? ld4(xr + half + col) : zero;
  const float ss = head_group_sum<L>(dot4(a, a) + dot4(c, c));  // every lane takes part
  if (!valid) return;
  const float rstd = 1.f / ::sqrtf(ss / float(2 * half) + eps);
  const float k = gain ? gain[h] * rstd : rstd;
  const float4 cs = ld4(cos_t + int64_t(t) * half + col), sn = ld4(sin_t + int64_t(t) * half + col);
  Out* yr = y + at.offset(yl);
  // y1 = u cos + v sin, y2 = v cos - u sin with (u, v) = k (x1, x2)
  st4(yr + col, make_float4(k * (a.x * cs.x + c.x * sn.x), k * (a.y * cs.y + c.y * sn.y),
                            k * (a.z * cs.z + c.z * sn.z), k * (a.w * cs.w + c.w * sn.w)));
  st4(yr + half + col, make_float4(k * (c.x * cs.x - a.x * sn.x), k * (c.y * cs.y - a.y * sn.y),
                                   k * (c.z * cs.z - a.z * sn.z), k * (c.w * cs.w - a.w * sn.w)));
}

// Out: float, or __nv_bfloat16 (dx rounded once: the gradient of a projection whose backward
// products take bf16 operands, ops/rope_attention.hpp).
template <int L, class Out = float>
__global__ void head_norm_rope_backward_vec_kernel(const float* __restrict__ x, HeadRows xl,
                                                   const float* __restrict__ gain,
                                                   const float* __restrict__ g, HeadRows gl,
                                                   Out* __restrict__ dx, HeadRows dxl,
                                                   float* __restrict__ row_dot, HeadGrid hg,
                                                   const float* __restrict__ cos_t,
                                                   const float* __restrict__ sin_t, float eps) {
  const HeadLane<L> at(hg);
  const int t = at.t, h = at.h, half = hg.half, col = at.col;
  const bool valid = at.valid;
  const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
  const float* xr = x + at.offset(xl);
  const float* gr = g + at.offset(gl);
  const float4 a = valid ? ld4(xr + col) : zero, c = valid ? ld4(xr + half + col) : zero;
  const float4 ga = valid ? ld4(gr + col) : zero, gb = valid ? ld4(gr + half + col) : zero;
  const float4 cs = valid ? ld4(cos_t + int64_t(t) * half + col) : zero;
  const float4 sn = valid ? ld4(sin_t + int64_t(t) * half + col) : zero;
  // u = R^T g: u1 = g1 cos - g2 sin, u2 = g1 sin + g2 cos
  const float4 u1 = make_float4(ga.x * cs.x - gb.x * sn.x, ga.y * cs.y - gb.y * sn.y,
                                ga.z * cs.z - gb.z * sn.z, ga.w * cs.w - gb.w * sn.w);
  const float4 u2 = make_float4(ga.x * sn.x + gb.x * cs.x, ga.y * sn.y + gb.y * cs.y,
                                ga.z * sn.z + gb.z * cs.z, ga.w * sn.w + gb.w * cs.w);
  const float ss = head_group_sum<L>(dot4(a, a) + dot4(c, c));
  float dot = head_group_sum<L>(dot4(u1, a) + dot4(u2, c));
  if (!valid) return;
  const float rstd = 1.f / ::sqrtf(ss / float(2 * half) + eps);
  dot *= rstd;                                           // sum(u * n)
  const int64_t r = (int64_t(blockIdx.y) * hg.seq) + t;  // (b, h, t) order
  if (row_dot && col == 0) row_dot[r] = dot;
  if (!dx) return;
  const float k = gain ? gain[h] * rstd : rstd, m = dot / float(2 * half) * rstd;
  Out* dr = dx + at.offset(dxl);
  st4(dr + col, make_float4(k * (u1.x - a.x * m), k * (u1.y - a.y * m), k * (u1.z - a.z * m),
                            k * (u1.w - a.w * m)));
  st4(dr + half + col, make_float4(k * (u2.x - c.x * m), k * (u2.y - c.y * m), k * (u2.z - c.z * m),
                                   k * (u2.w - c.w * m)));
}

// Calls f(std::integral_constant<int, L>) and returns true when float rows of Dh = 8 L
// (L = 8, 16, 32) fit the vector kernels: 16-byte aligned rows and a grid of B * H <= 65535.
template <class T, class F>
bool with_head_lanes(const HeadRows& xl, std::initializer_list<std::pair<const T*, HeadRows>> ts,
                     F&& f) {
  if constexpr (!std::is_same_v<T, float>) {
    return false;
  } else {
    if (xl.batch * xl.heads > 65535 || xl.seq > (int64_t(1) << 30)) return false;
    for (const auto& [p, l] : ts)
      if (p && (reinterpret_cast<uintptr_t>(p) % 16 != 0 || l.sb % 4 || l.sh % 4 || l.st % 4))
        return false;
    if (xl.dh == 64)
      f(std::integral_constant<int, 8>{});
    else if (xl.dh == 128)
      f(std::integral_constant<int, 16>{});
    else if (xl.dh == 256)
      f(std::integral_constant<int, 32>{});
    else
      return false;
    return true;
  }
}
// bf16 rows the vector kernels can write (four values, 8 bytes, per store): a 16-byte aligned
// start and strides of whole 8-element groups.
inline bool bf16_rows_aligned(const void* p, const HeadRows& l) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && l.sb % 8 == 0 && l.sh % 8 == 0 &&
         l.st % 8 == 0;
}
inline dim3 head_grid(const HeadRows& xl, int lanes) {
  const int64_t rows_per_block = int64_t(kHeadRowsPerBlock) * (32 / lanes);
  return dim3(unsigned((xl.seq + rows_per_block - 1) / rows_per_block),
              unsigned(xl.batch * xl.heads));
}

// Calls f(std::integral_constant<int, P>) with P = Dh / 64 when that is 1, 2 or 4, else 0.
template <class F>
void with_head_pairs(int64_t dh, F&& f) {
  if (dh == 64)
    f(std::integral_constant<int, 1>{});
  else if (dh == 128)
    f(std::integral_constant<int, 2>{});
  else if (dh == 256)
    f(std::integral_constant<int, 4>{});
  else
    f(std::integral_constant<int, 0>{});
}

template <class T>
void check_head_rope_table(const HeadRows& xl, const RopeTable<T>& table, const char* what) {
  if (xl.seq > table.positions || 2 * table.half != xl.dh)
    throw ShapeError(detail::cat(what, ": a RoPE table of ", table.positions, " positions and ",
                                 2 * table.half, " columns for rows of ", xl.dh, " at ", xl.seq,
                                 " positions"));
}

// out[h] = prior[h] (if not null) + the sum over b and t of row_dot[b, h, t] ([B, H, T]
// contiguous): one block per head, in a fixed order (the gain's gradient in one launch). Each
// thread walks the batch down one column t with four independent sums, so that many loads are
// in flight (summed one after another, the loop waited on each: 53 us a call at the golf shape).
template <class T>
__global__ void head_row_sums_kernel(const T* __restrict__ row_dot, int64_t batch, int64_t heads,
                                     int64_t seq, T* out, const T* prior) {
  const int64_t h = blockIdx.x, stride = heads * seq;
  T s = T(0);
  for (int64_t t = threadIdx.x; t < seq; t += blockDim.x) {
    const T* col = row_dot + h * seq + t;
    T a0 = T(0), a1 = T(0), a2 = T(0), a3 = T(0);
    int64_t b = 0;
#pragma unroll 4
    for (; b + 4 <= batch; b += 4) {
      a0 += col[b * stride];
      a1 += col[(b + 1) * stride];
      a2 += col[(b + 2) * stride];
      a3 += col[(b + 3) * stride];
    }
    for (; b < batch; ++b) a0 += col[b * stride];
    s += (a0 + a1) + (a2 + a3);
  }
  s = block_sum(s);
  if (threadIdx.x == 0) out[h] = prior ? prior[h] + s : s;
}

}  // namespace ternary::backend::cuda_detail

namespace ternary::backend {

template <class T>
void head_row_sums(cuda, const T* row_dot, int64_t batch, int64_t heads, int64_t seq, T* out,
                   const T* prior) {
  if (heads == 0) return;
  cuda_detail::head_row_sums_kernel<<<unsigned(heads), 1024, 0, cuda::stream()>>>(
      row_dot, batch, heads, seq, out, prior);
  TERNARY_CUDA_CHECK_LAUNCH("head_row_sums_kernel");
}

template <class T>
void head_norm_rope_forward(cuda, const T* x, const HeadRows& xl, const T* gain, T* y,
                            const HeadRows& yl, const RopeTable<T>& table, double eps) {
  using namespace cuda_detail;
  check_head_rope_table(xl, table, "head_norm_rope_forward(cuda)");
  const int64_t rows = xl.rows();
  if (rows == 0) return;
  const auto dev = device_rope_table(table);
  const HeadGrid hg{int(xl.heads), int(xl.seq), int(xl.dh / 2)};
  if (with_head_lanes<T>(xl, {{x, xl}, {y, yl}}, [&](auto l) {
        constexpr int L = decltype(l)::value;
        head_norm_rope_forward_vec_kernel<L>
            <<<head_grid(xl, L), 32 * kHeadRowsPerBlock, 0, cuda::stream()>>>(
                x, xl, gain, y, yl, hg, dev.cos.data(), dev.sin.data(), float(eps));
        TERNARY_CUDA_CHECK_LAUNCH("head_norm_rope_forward_vec_kernel");
      }))
    return;
  const auto blocks = static_cast<unsigned>((rows + kHeadRowsPerBlock - 1) / kHeadRowsPerBlock);
  with_head_pairs(xl.dh, [&](auto p) {
    head_norm_rope_forward_kernel<T, decltype(p)::value>
        <<<blocks, 32 * kHeadRowsPerBlock, 0, cuda::stream()>>>(x, xl, gain, y, yl, dev.cos.data(),
                                                                dev.sin.data(), T(eps));
  });
  TERNARY_CUDA_CHECK_LAUNCH("head_norm_rope_forward_kernel");
}

// The forward with y rounded to bf16 (y rows through yl's strides, in bf16 elements): the
// vector kernels only (float x, Dh 64, 128 or 256, 16-byte aligned rows); false (nothing
// written) otherwise.
template <class T>
bool head_norm_rope_forward_bf16(cuda, const T* x, const HeadRows& xl, const T* gain,
                                 ternary::bf16* y, const HeadRows& yl, const RopeTable<T>& table,
                                 double eps) {
  using namespace cuda_detail;
  check_head_rope_table(xl, table, "head_norm_rope_forward_bf16(cuda)");
  if (xl.rows() == 0) return true;
  if (!bf16_rows_aligned(y, yl)) return false;
  const auto dev = device_rope_table(table);
  const HeadGrid hg{int(xl.heads), int(xl.seq), int(xl.dh / 2)};
  return with_head_lanes<T>(xl, {{x, xl}}, [&](auto l) {
    constexpr int L = decltype(l)::value;
    head_norm_rope_forward_vec_kernel<L, __nv_bfloat16>
        <<<head_grid(xl, L), 32 * kHeadRowsPerBlock, 0, cuda::stream()>>>(
            x, xl, gain, reinterpret_cast<__nv_bfloat16*>(y), yl, hg, dev.cos.data(),
            dev.sin.data(), float(eps));
    TERNARY_CUDA_CHECK_LAUNCH("head_norm_rope_forward_vec_kernel (bf16)");
  });
}

template <class T>
void head_norm_rope_backward(cuda, const T* x, const HeadRows& xl, const T* gain, const T* g,
                             const HeadRows& gl, T* dx, const HeadRows& dxl, T* row_dot,
                             const RopeTable<T>& table, double eps) {
  using namespace cuda_detail;
  check_head_rope_table(xl, table, "head_norm_rope_backward(cuda)");
  const int64_t rows = xl.rows();
  if (rows == 0) return;
  const auto dev = device_rope_table(table);
  const HeadGrid hg{int(xl.heads), int(xl.seq), int(xl.dh / 2)};
  if (with_head_lanes<T>(xl, {{x, xl}, {g, gl}, {dx, dxl}}, [&](auto l) {
        constexpr int L = decltype(l)::value;
        head_norm_rope_backward_vec_kernel<L>
            <<<head_grid(xl, L), 32 * kHeadRowsPerBlock, 0, cuda::stream()>>>(
                x, xl, gain, g, gl, dx, dxl, row_dot, hg, dev.cos.data(), dev.sin.data(),
                float(eps));
        TERNARY_CUDA_CHECK_LAUNCH("head_norm_rope_backward_vec_kernel");
      }))
    return;
  const auto blocks = static_cast<unsigned>((rows + kHeadRowsPerBlock - 1) / kHeadRowsPerBlock);
  with_head_pairs(xl.dh, [&](auto p) {
    head_norm_rope_backward_kernel<T, decltype(p)::value>
        <<<blocks, 32 * kHeadRowsPerBlock, 0, cuda::stream()>>>(
            x, xl, gain, g, gl, dx, dxl, row_dot, dev.cos.data(), dev.sin.data(), T(eps));
  });
  TERNARY_CUDA_CHECK_LAUNCH("head_norm_rope_backward_kernel");
}

// The backward with dx rounded to bf16 (dx rows through dxl's strides, in bf16 elements): the
// vector kernels only, as head_norm_rope_forward_bf16; false (nothing written) otherwise.
template <class T>
bool head_norm_rope_backward_bf16(cuda, const T* x, const HeadRows& xl, const T* gain, const T* g,
                                  const HeadRows& gl, ternary::bf16* dx, const HeadRows& dxl,
                                  T* row_dot, const RopeTable<T>& table, double eps) {
  using namespace cuda_detail;
  check_head_rope_table(xl, table, "head_norm_rope_backward_bf16(cuda)");
  if (xl.rows() == 0) return true;
  if (!bf16_rows_aligned(dx, dxl)) return false;
  const auto dev = device_rope_table(table);
  const HeadGrid hg{int(xl.heads), int(xl.seq), int(xl.dh / 2)};
  return with_head_lanes<T>(xl, {{x, xl}, {g, gl}}, [&](auto l) {
    constexpr int L = decltype(l)::value;
    head_norm_rope_backward_vec_kernel<L, __nv_bfloat16>
        <<<head_grid(xl, L), 32 * kHeadRowsPerBlock, 0, cuda::stream()>>>(
            x, xl, gain, g, gl, reinterpret_cast<__nv_bfloat16*>(dx), dxl, row_dot, hg,
            dev.cos.data(), dev.sin.data(), float(eps));
    TERNARY_CUDA_CHECK_LAUNCH("head_norm_rope_backward_vec_kernel (bf16)");
  });
}

}  // namespace ternary::backend
