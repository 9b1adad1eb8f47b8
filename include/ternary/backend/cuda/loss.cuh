// CUDA cross-entropy kernels over the rows of contiguous [rows, V] logits, fused with
// log-softmax and an optional softcap z = c tanh(x / c): the same contract and math as the CPU
// kernels (backend/cpu/loss.hpp), one block per row:
//   forward:  zmax[r] = max_j z_j,  logsum[r] = log(sum_j exp(z_j - zmax[r])),
//             loss_r = logsum[r] - (z_t - zmax[r]);  0 and not counted on ignored rows
//   backward: dx[r, j] = scale * (exp((z_j - zmax[r]) - logsum[r]) - [j == t]) * dz_j/dx_j
// The per-row losses are summed on the device in double; only the sum and the count come
// back to the host (one small synchronous copy, as the op returns a host-side count).
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <cfloat>
#include <cstdint>

#include "ternary/backend/cpu/loss.hpp"  // CrossEntropySums
#include "ternary/backend/cuda/reduce.cuh"

namespace ternary::backend::cuda_detail {

template <class T>
__device__ T block_max(T v) {
  __shared__ T warp_max[32];
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_down_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_max[warp] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / 32 ? warp_max[threadIdx.x] : -INFINITY;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_down_sync(0xffffffffu, v, o));
  __syncthreads();
  return v;
}

template <class T>
__device__ T softcap_value(T x, T cap) {
  return cap > T(0) ? std::tanh(x / cap) * cap : x;
}

// One block per row. row_loss[r] (double) and row_count[r] (0 or 1) feed the final sum.
template <class T>
__global__ void cross_entropy_forward_kernel(const T* __restrict__ x,
                                             const int32_t* __restrict__ targets, int64_t rows,
                                             int64_t V, int32_t ignore_index, T cap, T* zmax,
                                             T* logsum, double* row_loss, int* row_count) {
  __shared__ T bcast;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int32_t t = targets[r];
    if (t == ignore_index) {
      if (threadIdx.x == 0) {
        zmax[r] = logsum[r] = T(0);
        row_loss[r] = 0;
        row_count[r] = 0;
      }
      continue;
    }
    const T* row = x + r * V;
    T m = -INFINITY;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) m = max(m, softcap_value(row[j], cap));
    m = block_max(m);
    if (threadIdx.x == 0) bcast = m;
    __syncthreads();
    m = bcast;
    T s = T(0);
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x)
      s += std::exp(softcap_value(row[j], cap) - m);
    s = block_sum(s);
    if (threadIdx.x == 0) {
      const T l = std::log(s);
      zmax[r] = m;
      logsum[r] = l;
      row_loss[r] = double(l) - double(softcap_value(row[t], cap) - m);
      row_count[r] = 1;
    }
    __syncthreads();  // bcast is rewritten by the next row
  }
}

// out[0] = sum row_loss, out[1] = sum row_count (one block). A template only so that the
// header can be included by several translation units.
template <int = 0>
__global__ void sum_losses_kernel(const double* row_loss, const int* row_count, int64_t rows,
                                  double* out) {
  double s = 0, c = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    s += row_loss[r];
    c += row_count[r];
  }
  s = block_sum(s);
  c = block_sum(c);
  if (threadIdx.x == 0) {
    out[0] = s;
    out[1] = c;
  }
}

template <class T>
__global__ void cross_entropy_backward_kernel(const T* __restrict__ x,
                                              const int32_t* __restrict__ targets, int64_t rows,
                                              int64_t V, int32_t ignore_index, T cap,
                                              const T* __restrict__ zmax,
                                              const T* __restrict__ logsum, T scale,
                                              T* __restrict__ dx) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int32_t t = targets[r];
    const T* row = x + r * V;
    T* d = dx + r * V;
    if (t == ignore_index) {
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x) d[j] = T(0);
      continue;
    }
    const T m = zmax[r], l = logsum[r];
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      T g;
      if (cap > T(0)) {
        const T th = std::tanh(row[j] / cap);
        g = (std::exp((th * cap - m) - l) - (j == t ? T(1) : T(0))) * scale * (T(1) - th * th);
      } else {
        g = (std::exp((row[j] - m) - l) - (j == t ? T(1) : T(0))) * scale;
      }
      d[j] = g;
    }
  }
}

inline int row_threads(int64_t V) {
  return V >= 2048 ? 512 : (V >= 256 ? 256 : 32);
}

}  // namespace ternary::backend::cuda_detail

namespace ternary::backend {

template <class T>
CrossEntropySums cross_entropy_forward(cuda, const Tensor<T, cuda>& logits,
                                       const Tensor<int32_t, cuda>& targets, int32_t ignore_index,
                                       T cap, const Tensor<T, cuda>& zmax,
                                       const Tensor<T, cuda>& logsum) {
  using namespace cuda_detail;
  const int64_t rows = logits.size(0), V = logits.size(1);
  if (!logits.is_contiguous() || targets.numel() != rows || zmax.numel() != rows ||
      logsum.numel() != rows || !targets.is_contiguous() || !zmax.is_contiguous() ||
      !logsum.is_contiguous())
    throw ShapeError(detail::cat("cross_entropy_forward(cuda): logits ", logits.shape(),
                                 ", targets ", targets.shape(), ", zmax ", zmax.shape(),
                                 ", logsum ", logsum.shape(), " (all contiguous, ", rows,
                                 " rows)"));
  if (rows == 0) return {};
  auto row_loss = Tensor<double, cuda>::empty(Shape{rows});
  auto row_count = Tensor<int, cuda>::empty(Shape{rows});
  auto sums = Tensor<double, cuda>::empty(Shape{2});
  const int blocks = int(std::min<int64_t>(rows, int64_t(1) << 30));
  cross_entropy_forward_kernel<<<blocks, row_threads(V), 0, cuda::stream()>>>(
      logits.data(), targets.data(), rows, V, ignore_index, cap, zmax.data(), logsum.data(),
      row_loss.data(), row_count.data());
  TERNARY_CUDA_CHECK_LAUNCH("cross_entropy_forward_kernel");
  sum_losses_kernel<>
      <<<1, 512, 0, cuda::stream()>>>(row_loss.data(), row_count.data(), rows, sums.data());
  TERNARY_CUDA_CHECK_LAUNCH("sum_losses_kernel");
  const auto h = sums.to_vector();
  return {h[0], int64_t(h[1])};
}

template <class T>
void cross_entropy_backward(cuda, const Tensor<T, cuda>& logits,
                            const Tensor<int32_t, cuda>& targets, int32_t ignore_index, T cap,
                            const Tensor<T, cuda>& zmax, const Tensor<T, cuda>& logsum, T scale,
                            const Tensor<T, cuda>& dx) {
  using namespace cuda_detail;
  const int64_t rows = logits.size(0), V = logits.size(1);
  if (!logits.is_contiguous() || !dx.is_contiguous() || !(dx.shape() == logits.shape()))
    throw ShapeError(detail::cat("cross_entropy_backward(cuda): logits ", logits.shape(), ", dx ",
                                 dx.shape(), " (both contiguous, same shape)"));
  if (rows == 0) return;
  const int blocks = int(std::min<int64_t>(rows, int64_t(1) << 30));
  cross_entropy_backward_kernel<<<blocks, row_threads(V), 0, cuda::stream()>>>(
      logits.data(), targets.data(), rows, V, ignore_index, cap, zmax.data(), logsum.data(), scale,
      dx.data());
  TERNARY_CUDA_CHECK_LAUNCH("cross_entropy_backward_kernel");
}

}  // namespace ternary::backend
