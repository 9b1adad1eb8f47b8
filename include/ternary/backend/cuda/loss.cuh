// CUDA cross-entropy kernels over the rows of contiguous [rows, V] logits, fused with
// log-softmax and an optional softcap z = c tanh(x / c): the same contract and math as the CPU
// kernels (backend/cpu/loss.hpp), one warp per row:
//   forward:  zmax[r] = max_j z_j,  logsum[r] = log(sum_j exp(z_j - zmax[r])),
//             loss_r = logsum[r] - (z_t - zmax[r]);  0 and not counted on ignored rows
//   backward: dx[r, j] = scale * (exp((z_j - zmax[r]) - logsum[r]) - [j == t]) * dz_j/dx_j
// The per-row losses are summed on the device in double, and the mean loss and the count stay
// there (the backward reads them there too): the forward never waits for the device. A target
// outside [0, V) (other than ignore_index) is reported (index_fault.cuh; the host throws
// IndexError at its next synchronisation) and its row counted as ignored.
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <cuda_bf16.h>

#include <cfloat>
#include <cstdint>
#include <type_traits>

#include "ternary/backend/cuda/bf16_vec.cuh"     // store_bf16x4
#include "ternary/backend/cuda/elementwise.cuh"  // launch_for
#include "ternary/backend/cuda/index_fault.cuh"
#include "ternary/backend/cuda/reduce.cuh"

namespace ternary::backend::cuda_detail {

template <class T>
__device__ T softcap_value(T x, T cap) {
  return cap > T(0) ? std::tanh(x / cap) * cap : x;
}

// The row's values in float4 loads where every row allows (V % 4 == 0, 16-byte aligned base).
template <class T>
__device__ __forceinline__ bool rows_vec4(const T* x, int64_t V) {
  if constexpr (std::is_same_v<T, float>)
    return V % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  else
    return false;
}

// Online max and sum of exp over one lane's values: the sum is rescaled when the max grows.
template <class T>
struct MaxSum {
  T m = -INFINITY, s = T(0);
  __device__ void add(const T* z, int n) {  // n values at once (one float4: one rescale)
    T cm = m;
    for (int i = 0; i < n; ++i) cm = max(cm, z[i]);
    if (cm > m) {
      s *= std::exp(m - cm);  // exp(-inf) = 0 on the first values
      m = cm;
    }
    if (m == -INFINITY) return;  // every value so far is -inf: nothing to add
    for (int i = 0; i < n; ++i) s += std::exp(z[i] - m);
  }
};

// One warp per row (rows grid-strided over the warps): each lane reads its share of the row once,
// float4 at a time where the rows allow, then the warp combines the lanes' (max, sum).
// row_loss[r] (double) and row_count[r] (0 or 1) feed the final sum.
template <class T>
__global__ void cross_entropy_forward_kernel(const T* __restrict__ x,
                                             const int32_t* __restrict__ targets, int64_t rows,
                                             int64_t V, int32_t ignore_index, T cap, T* zmax,
                                             T* logsum, double* row_loss, int* row_count,
                                             IndexFaultSlot fault) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const bool vec = rows_vec4(x, V);
  for (int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; r < rows;
       r += warps) {
    const int32_t t = targets[r];
    if (t == ignore_index || t < 0 || t >= V) {  // (an invalid target is reported, then ignored)
      if (lane == 0) {
        zmax[r] = logsum[r] = T(0);
        row_loss[r] = 0;
        row_count[r] = 0;
        if (t != ignore_index) report_index_fault(fault, r, t);
      }
      continue;
    }
    const T* row = x + r * V;
    MaxSum<T> acc;
    if (vec) {
      if constexpr (std::is_same_v<T, float>) {
        const float4* row4 = reinterpret_cast<const float4*>(row);
        for (int64_t j = lane; j < V / 4; j += 32) {
          const float4 v = row4[j];
          const float z[4] = {softcap_value(v.x, cap), softcap_value(v.y, cap),
                              softcap_value(v.z, cap), softcap_value(v.w, cap)};
          acc.add(z, 4);
        }
      }
    } else {
      for (int64_t j = lane; j < V; j += 32) {
        const T z = softcap_value(row[j], cap);
        acc.add(&z, 1);
      }
    }
    T m = acc.m;
    for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
    T s = acc.m == -INFINITY ? T(0) : acc.s * std::exp(acc.m - m);  // a lane with no values: 0
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) {
      const T l = std::log(s);
      zmax[r] = m;
      logsum[r] = l;
      row_loss[r] = double(l) - double(softcap_value(row[t], cap) - m);
      row_count[r] = 1;
    }
  }
}

// loss_out[block] = sum of row_loss, count_out[block] = sum of row_count over the block's
// grid-strided share of the rows: many blocks over the rows, then one block over their partial
// sums (one block over 65,536 rows took 55 us on an H200; the two launches take a few). Fixed
// order: deterministic. With mean_out (one block), also mean_out[0] = the mean loss (0 when
// nothing is counted).
template <class Count, class M = float>
__global__ void sum_losses_kernel(const double* __restrict__ row_loss,
                                  const Count* __restrict__ row_count, int64_t rows,
                                  double* __restrict__ loss_out, double* __restrict__ count_out,
                                  M* __restrict__ mean_out = nullptr) {
  double s = 0, c = 0;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
       r += int64_t(gridDim.x) * blockDim.x) {
    s += row_loss[r];
    c += double(row_count[r]);
  }
  s = block_sum(s);
  c = block_sum(c);
  if (threadIdx.x == 0) {
    loss_out[blockIdx.x] = s;
    count_out[blockIdx.x] = c;
    if (mean_out) mean_out[0] = c > 0 ? M(s / c) : M(0);
  }
}

// dx of one value (see the top of this file).
template <class T>
__device__ __forceinline__ T cross_entropy_grad(T v, bool target, T cap, T m, T l, T scale) {
  if (cap > T(0)) {
    const T th = std::tanh(v / cap);
    return (std::exp((th * cap - m) - l) - (target ? T(1) : T(0))) * scale * (T(1) - th * th);
  }
  return (std::exp((v - m) - l) - (target ? T(1) : T(0))) * scale;
}

// dx's element type: T, or bf16 (Out = __nv_bfloat16: the gradient rounded once as it is
// written, for a reader that rounds it so anyway).
template <class T>
__device__ __forceinline__ void store_grad(T* p, T v) {
  *p = v;
}
__device__ __forceinline__ void store_grad(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}
__device__ __forceinline__ void store_grad4(float* p, float4 v) {
  *reinterpret_cast<float4*>(p) = v;
}
__device__ __forceinline__ void store_grad4(__nv_bfloat16* p, float4 v) {
  store_bf16x4(p, v);
}

// One warp per row, float4 loads and stores where the rows allow.
template <class T, class Out>
__global__ void cross_entropy_backward_kernel(
    const T* __restrict__ x, const int32_t* __restrict__ targets, int64_t rows, int64_t V,
    int32_t ignore_index, T cap, const T* __restrict__ zmax, const T* __restrict__ logsum,
    const T* __restrict__ g, const double* __restrict__ count, Out* __restrict__ dx) {
  // scale = g / count (0 when nothing is counted: every row is then ignored)
  const T scale = *count > 0 ? T(double(*g) / *count) : T(0);
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const bool vec = rows_vec4(x, V) && rows_vec4(dx, V);
  for (int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; r < rows;
       r += warps) {
    const int32_t t = targets[r];
    const T* row = x + r * V;
    Out* d = dx + r * V;
    if (t == ignore_index || t < 0 || t >= V) {
      for (int64_t j = lane; j < V; j += 32) store_grad(d + j, T(0));
      continue;
    }
    const T m = zmax[r], l = logsum[r];
    if (vec) {
      if constexpr (std::is_same_v<T, float>) {
        const float4* row4 = reinterpret_cast<const float4*>(row);
        for (int64_t j = lane; j < V / 4; j += 32) {
          const float4 v = row4[j];
          const int64_t j0 = 4 * j;
          store_grad4(d + j0, make_float4(cross_entropy_grad(v.x, j0 == t, cap, m, l, scale),
                                          cross_entropy_grad(v.y, j0 + 1 == t, cap, m, l, scale),
                                          cross_entropy_grad(v.z, j0 + 2 == t, cap, m, l, scale),
                                          cross_entropy_grad(v.w, j0 + 3 == t, cap, m, l, scale)));
        }
      }
    } else {
      for (int64_t j = lane; j < V; j += 32)
        store_grad(d + j, cross_entropy_grad(row[j], j == t, cap, m, l, scale));
    }
  }
}

// Blocks of 8 warps for one warp per row (grid-strided).
inline int row_warp_blocks(int64_t rows) {
  return launch_for(rows * 32).blocks;
}

}  // namespace ternary::backend::cuda_detail

namespace ternary::backend {

// loss (a scalar) = the mean over the counted rows, count (a double scalar) = their number,
// both left on the device. op and targets_shape name the targets in an index fault.
template <class T>
void cross_entropy_forward(cuda, const Tensor<T, cuda>& logits,
                           const Tensor<int32_t, cuda>& targets, int32_t ignore_index, T cap,
                           const Tensor<T, cuda>& zmax, const Tensor<T, cuda>& logsum,
                           const Tensor<T, cuda>& loss, const Tensor<double, cuda>& count,
                           const char* op, const Shape& targets_shape) {
  using namespace cuda_detail;
  const int64_t rows = logits.size(0), V = logits.size(1);
  if (!logits.is_contiguous() || targets.numel() != rows || zmax.numel() != rows ||
      logsum.numel() != rows || !targets.is_contiguous() || !zmax.is_contiguous() ||
      !logsum.is_contiguous() || loss.numel() != 1 || count.numel() != 1)
    throw ShapeError(detail::cat(
        "cross_entropy_forward(cuda): logits ", logits.shape(), ", targets ", targets.shape(),
        ", zmax ", zmax.shape(), ", logsum ", logsum.shape(), " (all contiguous, ", rows,
        " rows), loss ", loss.shape(), " and count ", count.shape(), " (one value each)"));
  if (rows == 0) {  // (handles sharing the outputs' storage: filled in place)
    Tensor<T, cuda>(loss).fill(T(0));
    Tensor<double, cuda>(count).fill(0.0);
    return;
  }
  const auto fault = index_fault_slot(
      op, "target", targets_shape, detail::cat(V, " classes (ignore_index is ", ignore_index, ")"));
  auto row_loss = Tensor<double, cuda>::empty(Shape{rows});
  auto row_count = Tensor<int, cuda>::empty(Shape{rows});
  const int64_t parts = std::min<int64_t>(128, (rows + 255) / 256);
  auto sums = Tensor<double, cuda>::empty(Shape{1 + 2 * parts});  // the loss sum, the partials
  cross_entropy_forward_kernel<<<row_warp_blocks(rows), 256, 0, cuda::stream()>>>(
      logits.data(), targets.data(), rows, V, ignore_index, cap, zmax.data(), logsum.data(),
      row_loss.data(), row_count.data(), fault);
  TERNARY_CUDA_CHECK_LAUNCH("cross_entropy_forward_kernel");
  double* partial_loss = sums.data() + 1;
  double* partial_count = partial_loss + parts;
  sum_losses_kernel<<<unsigned(parts), 256, 0, cuda::stream()>>>(row_loss.data(), row_count.data(),
                                                                 rows, partial_loss, partial_count);
  TERNARY_CUDA_CHECK_LAUNCH("sum_losses_kernel");
  sum_losses_kernel<<<1, 128, 0, cuda::stream()>>>(partial_loss, partial_count, parts, sums.data(),
                                                   count.data(), loss.data());
  TERNARY_CUDA_CHECK_LAUNCH("sum_losses_kernel");
}

// dx fp32 (DX = T) or bf16 (DX = ternary::bf16: ops/loss.hpp with bf16 products), with the
// scale g / count read on the device (g: the loss's gradient, count: the forward's).
template <class T, class DX>
void cross_entropy_backward(cuda, const Tensor<T, cuda>& logits,
                            const Tensor<int32_t, cuda>& targets, int32_t ignore_index, T cap,
                            const Tensor<T, cuda>& zmax, const Tensor<T, cuda>& logsum,
                            const Tensor<T, cuda>& g, const Tensor<double, cuda>& count,
                            const Tensor<DX, cuda>& dx) {
  using namespace cuda_detail;
  static_assert(
      std::is_same_v<DX, T> || (std::is_same_v<DX, ternary::bf16> && std::is_same_v<T, float>),
      "cross_entropy_backward(cuda): dx is T, or bf16 for float logits");
  using Out = std::conditional_t<std::is_same_v<DX, T>, T, __nv_bfloat16>;
  const int64_t rows = logits.size(0), V = logits.size(1);
  if (!logits.is_contiguous() || !dx.is_contiguous() || !(dx.shape() == logits.shape()) ||
      g.numel() != 1 || count.numel() != 1)
    throw ShapeError(detail::cat("cross_entropy_backward(cuda): logits ", logits.shape(), ", dx ",
                                 dx.shape(), " (both contiguous, same shape), g ", g.shape(),
                                 " and count ", count.shape(), " (one value each)"));
  if (rows == 0) return;
  const Tensor<T, cuda> g_c = g.contiguous();
  cross_entropy_backward_kernel<T, Out><<<row_warp_blocks(rows), 256, 0, cuda::stream()>>>(
      logits.data(), targets.data(), rows, V, ignore_index, cap, zmax.data(), logsum.data(),
      g_c.data(), count.data(), reinterpret_cast<Out*>(dx.data()));
  TERNARY_CUDA_CHECK_LAUNCH("cross_entropy_backward_kernel");
}

}  // namespace ternary::backend
