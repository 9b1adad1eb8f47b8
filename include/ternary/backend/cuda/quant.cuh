// CUDA kernels for the quantizers, so that a training step reads
// no device memory from the host:
//  - absmean_fake_quantize: the ternary weight BitLinear multiplies by (quant/ternary.hpp):
//    one block per scale group (or, for a few large groups, a split of one: two passes) sums
//    |w| in double (as the CPU does), s = float(sum / n + eps),
//    w_q = T(s) * clamp(round_half_even(float(w) / s), -1, 1): the CPU's numbers exactly,
//    up to the order of a double sum.
//  - int8_fake_quantize: per-row int8 activations (quant/activation.hpp): one warp per row,
//    s = 127 / max|x| (1 for a zero row), x_q = float(clamp(round(x s), -128, 127)) / s:
//    bit-identical to the CPU.
//    Non-finite inputs: the CPU throws; here a group or row holding a NaN or inf comes out
//    NaN (checking would cost a host synchronisation per call), so the loss turns NaN.
// (The optimizers' norms and updates: optim.cuh.)
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <cmath>
#include <cstdint>
#include <vector>

#include "ternary/backend/cuda/norm.cuh"

namespace ternary::backend::cuda_detail {

// One weight quantized with scale sc: sc * clamp(round_half_even(w / sc), -1, 1); 0/0 (a zero
// scale: an all-zero group with eps = 0) is a zero trit, as on the CPU; a non-finite scale
// gives NaN.
template <class T>
__device__ T absmean_trit_times_scale(T w, float sc) {
  const float r = nearbyintf(float(w) / sc);
  const float t = r != r ? 0.f : (r > 1.f ? 1.f : (r < -1.f ? -1.f : r));
  return isfinite(sc) ? T(sc) * T(t) : T(NAN);
}

template <class T>
__global__ void absmean_quantize_kernel(const T* __restrict__ w, T* __restrict__ out, int64_t group,
                                        double eps) {
  __shared__ float scale;
  const T* wg = w + int64_t(blockIdx.x) * group;
  T* og = out + int64_t(blockIdx.x) * group;
  double s = 0;
  for (int64_t i = threadIdx.x; i < group; i += blockDim.x) s += fabs(double(wg[i]));
  s = block_sum(s);
  if (threadIdx.x == 0) scale = float(s / double(group) + eps);  // NaN/inf propagate
  __syncthreads();
  const float sc = scale;
  for (int64_t i = threadIdx.x; i < group; i += blockDim.x)
    og[i] = absmean_trit_times_scale(wg[i], sc);
}

// Large groups (a per-tensor scale over a whole weight) are split over many blocks, so one
// block does not stream megabytes alone: pass 1 writes a partial |w| sum per (group, split);
// pass 2 sums a group's partials in a fixed order (deterministic) and quantizes its split.
template <class T>
__global__ void absmean_partial_kernel(const T* __restrict__ w, int64_t group, int splits,
                                       double* __restrict__ partial) {
  const int64_t g = blockIdx.x / splits, sp = blockIdx.x % splits;
  const int64_t chunk = (group + splits - 1) / splits, i0 = sp * chunk;
  const int64_t i1 = i0 + chunk < group ? i0 + chunk : group;
  const T* wg = w + g * group;
  double s = 0;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) s += fabs(double(wg[i]));
  s = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
template <class T>
__global__ void absmean_apply_kernel(const T* __restrict__ w, T* __restrict__ out, int64_t group,
                                     int splits, const double* __restrict__ partial, double eps) {
  __shared__ float scale;
  const int64_t g = blockIdx.x / splits, sp = blockIdx.x % splits;
  if (threadIdx.x < 32) {  // one warp sums the partials, in a fixed order: deterministic
    double s = 0;
    for (int k = int(threadIdx.x); k < splits; k += 32) s += partial[g * splits + k];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x == 0) scale = float(s / double(group) + eps);  // NaN/inf propagate
  }
  __syncthreads();
  const float sc = scale;
  const int64_t chunk = (group + splits - 1) / splits, i0 = sp * chunk;
  const int64_t i1 = i0 + chunk < group ? i0 + chunk : group;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x)
    out[g * group + i] = absmean_trit_times_scale(w[g * group + i], sc);
}

template <class T>
__global__ void int8_quantize_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t rows,
                                     int64_t D) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; r < rows;
       r += warps) {
    const T* xr = x + r * D;
    bool finite;
    const float s = int8_row_scale([xr](int64_t j) { return float(xr[j]); }, D, lane, finite);
    T* orow = out + r * D;
    for (int64_t j = lane; j < D; j += 32) orow[j] = int8_round_trip<T>(float(xr[j]), s, finite);
  }
}

}  // namespace ternary::backend::cuda_detail

namespace ternary::backend {

template <class T>
Tensor<T, cuda> absmean_fake_quantize(cuda, const Tensor<T, cuda>& w, int64_t group, double eps) {
  using namespace cuda_detail;
  const Tensor<T, cuda> wc = w.contiguous();
  const int64_t n = wc.numel();
  if (group <= 0 || n % group != 0)
    throw ShapeError(detail::cat("absmean_fake_quantize(cuda): group ", group,
                                 " does not divide a weight of shape ", w.shape()));
  auto out = Tensor<T, cuda>::empty(w.shape());
  if (n == 0) return out;
  const int64_t groups = n / group;
  if (group >= 65536 && groups < 64) {  // few large groups: split each over many blocks
    // 2048 weights a block (8 per thread): a 512 x 512 weight fills 128 blocks, not 32, and
    // the pass over it no longer waits on a few blocks' memory latency.
    const int splits = int(std::min<int64_t>((group + 2047) / 2048, 1024));
    auto partial = Tensor<double, cuda>::empty(Shape{groups * splits});
    absmean_partial_kernel<<<unsigned(groups * splits), 256, 0, cuda::stream()>>>(
        wc.data(), group, splits, partial.data());
    TERNARY_CUDA_CHECK_LAUNCH("absmean_partial_kernel");
    absmean_apply_kernel<<<unsigned(groups * splits), 256, 0, cuda::stream()>>>(
        wc.data(), out.data(), group, splits, partial.data(), eps);
    TERNARY_CUDA_CHECK_LAUNCH("absmean_apply_kernel");
    return out;
  }
  const int threads = group >= 4096 ? 1024 : (group >= 256 ? 256 : 32);
  absmean_quantize_kernel<<<unsigned(n / group), threads, 0, cuda::stream()>>>(
      wc.data(), out.data(), group, eps);
  TERNARY_CUDA_CHECK_LAUNCH("absmean_quantize_kernel");
  return out;
}

template <class T>
Tensor<T, cuda> int8_fake_quantize(cuda, const Tensor<T, cuda>& x) {
  using namespace cuda_detail;
  const Tensor<T, cuda> xc = x.contiguous();
  const int64_t D = x.dim() ? x.size(-1) : 1, rows = D ? xc.numel() / D : 0;
  auto out = Tensor<T, cuda>::empty(x.shape());
  if (rows == 0) return out;
  int8_quantize_kernel<<<row_warps_blocks(rows), 256, 0, cuda::stream()>>>(xc.data(), out.data(),
                                                                           rows, D);
  TERNARY_CUDA_CHECK_LAUNCH("int8_quantize_kernel");
  return out;
}

}  // namespace ternary::backend
