// CUDA GEMM through cuBLAS: C = alpha * A B + beta * C on strided 2-d views (MatView, as in
// backend/cpu/matmul.hpp). cuBLAS is column-major; a row-major C = A B is the column-major
// C^T = B^T A^T, so we pass B first. Each operand may be row-major (unit column stride) or
// column-major (unit row stride, e.g. a transposed view): both are read in place through the
// transpose flags; anything else is copied once into a contiguous block. A C that is not
// row-major is computed into a temporary and scattered back.
//
// float: exact fp32 by default (CUBLAS_COMPUTE_32F); with cuda::set_tf32(true) or
// cuda::set_bf16(true) the product runs on tensor cores in TF32 (CUBLAS_COMPUTE_32F_FAST_TF32,
// ~1e-3 relative error). Under set_bf16 the model's products are linear()'s, which round their
// operands to bf16 once per pass and call gemm_bf16 below (CUDA_R_16BF inputs, fp32
// accumulation and output); what still comes here (Muon's Newton-Schulz iterations on small
// matrices) would only pay a rounding pass per product for no gain.
// double: CUBLAS_COMPUTE_64F.
//
// matmul (ops/matmul.hpp) calls this once per batch element; a strided-batched entry point
// (cublasGemmStridedBatchedEx) is the next step for attention-sized batches.
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <cuda_bf16.h>

#include <type_traits>

#include "ternary/backend/cpu/matmul.hpp"  // MatView and the layout helpers
#include "ternary/backend/cuda/elementwise.cuh"

namespace ternary::backend::cuda_detail {

// dst[i * cols + j] = src[i * rs + j * cs]  (or the reverse with scatter = true)
template <class T>
__global__ void copy_2d_kernel(const T* src, int64_t rs, int64_t cs, T* dst, int64_t drs,
                               int64_t dcs, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = k / cols, j = k % cols;
    dst[i * drs + j * dcs] = src[i * rs + j * cs];
  }
}
template <class T>
void copy_2d(const T* src, int64_t rs, int64_t cs, T* dst, int64_t drs, int64_t dcs, int64_t rows,
             int64_t cols) {
  if (rows * cols == 0) return;
  const Launch g = launch_for(rows * cols);
  copy_2d_kernel<<<g.blocks, g.threads, 0, cuda::stream()>>>(src, rs, cs, dst, drs, dcs, rows,
                                                             cols);
  TERNARY_CUDA_CHECK_LAUNCH("copy_2d_kernel");
}

// A operand as cuBLAS sees it: pointer, leading dimension and whether it is row-major.
template <class T>
struct BlasOperand {
  const T* data;
  int64_t ld;
  bool row_major;
  Tensor<T, cuda> scratch;  // owns a contiguous copy when the view had no usable layout
};
template <class T>
BlasOperand<T> blas_operand(const MatView<const T>& v) {
  if (int64_t ld = cpu_detail::row_major_ld(v); ld >= 0) return {v.data, ld, true, {}};
  if (int64_t ld = cpu_detail::col_major_ld(v); ld >= 0) return {v.data, ld, false, {}};
  auto s = Tensor<T, cuda>::empty(Shape{v.rows, v.cols});
  copy_2d(v.data, v.row_stride, v.col_stride, s.data(), v.cols, int64_t(1), v.rows, v.cols);
  return {s.data(), std::max<int64_t>(v.cols, 1), true, s};
}

}  // namespace ternary::backend::cuda_detail

namespace ternary::backend {

template <class T>
void gemm(cuda, const MatView<const T>& a, const MatView<const T>& b, const MatView<T>& c, T alpha,
          T beta) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "gemm(cuda): float and double only for now");
  using namespace cuda_detail;
  if (a.cols != b.rows || c.rows != a.rows || c.cols != b.cols)
    throw ShapeError(detail::cat("gemm: [", a.rows, ", ", a.cols, "] x [", b.rows, ", ", b.cols,
                                 "] -> [", c.rows, ", ", c.cols, "]"));
  if (c.rows == 0 || c.cols == 0) return;
  const int64_t M = c.rows, N = c.cols, K = a.cols;
  Tensor<T, cuda> sc;
  MatView<T> cv = c;
  const bool c_direct = cpu_detail::row_major_ld(c) >= 0;
  if (!c_direct) {
    sc = Tensor<T, cuda>::empty(Shape{M, N});
    if (beta != T(0)) copy_2d<T>(c.data, c.row_stride, c.col_stride, sc.data(), N, 1, M, N);
    cv = {sc.data(), M, N, N, 1};
  }
  {
    auto A = blas_operand(a);
    auto Bo = blas_operand(b);
    if (K == 0) {  // nothing is read (C = beta C), but cuBLAS still checks the leading dims
      A = {a.data, 1, true, {}};
      Bo = {b.data, std::max<int64_t>(N, 1), true, {}};
    }
    // Column-major view: C^T (N x M, ldc) = op(B)^T... B row-major in memory is B^T
    // column-major (N x K): no transpose; column-major B is K x N: transpose. Same for A.
    const cublasOperation_t opB = Bo.row_major ? CUBLAS_OP_N : CUBLAS_OP_T;
    const cublasOperation_t opA = A.row_major ? CUBLAS_OP_N : CUBLAS_OP_T;
    const int64_t ldc = cpu_detail::row_major_ld(cv);
    cudaDataType_t dt;
    cublasComputeType_t ct;
    if constexpr (std::is_same_v<T, float>) {
      dt = CUDA_R_32F;
      ct = cuda::tf32() || cuda::bf16() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    } else {
      dt = CUDA_R_64F;
      ct = CUBLAS_COMPUTE_64F;
    }
    TERNARY_CUDA_CHECK(cublasGemmEx(cuda::blas(), opB, opA, int(N), int(M), int(K), &alpha, Bo.data,
                                    dt, int(Bo.ld), A.data, dt, int(A.ld), &beta, cv.data, dt,
                                    int(ldc), ct, CUBLAS_GEMM_DEFAULT));
  }
  if (!c_direct) copy_2d<T>(sc.data(), N, 1, c.data, c.row_stride, c.col_stride, M, N);
}

}  // namespace ternary::backend

// ---- bf16 operands: linear()'s tensor-core products (cuda::set_bf16) --------------------------
namespace ternary::backend::cuda_detail {

// What the rounding kernels apply before rounding: nothing, or relu(x)^2 (relu2_to_bf16).
enum class Bf16Map { identity, relu2 };
template <Bf16Map M>
__device__ __forceinline__ float bf16_map(float x) {
  if constexpr (M == Bf16Map::relu2)
    return x > 0.f ? x * x : 0.f;
  else
    return x;
}
// dst[i] = bf16(map(src[i])) over n contiguous floats, four at a time (16-byte loads, 8-byte
// stores)
template <Bf16Map M = Bf16Map::identity>
__global__ void round_bf16_x4_kernel(const float4* __restrict__ src,
                                     __nv_bfloat162* __restrict__ dst, int64_t n4) {
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n4;
       k += int64_t(gridDim.x) * blockDim.x) {
    const float4 v = src[k];
    dst[2 * k] = __floats2bfloat162_rn(bf16_map<M>(v.x), bf16_map<M>(v.y));
    dst[2 * k + 1] = __floats2bfloat162_rn(bf16_map<M>(v.z), bf16_map<M>(v.w));
  }
}
template <Bf16Map M = Bf16Map::identity>
__global__ void round_bf16_kernel(const float* __restrict__ src, __nv_bfloat16* __restrict__ dst,
                                  int64_t n) {
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x)
    dst[k] = __float2bfloat16(bf16_map<M>(src[k]));
}

// A bf16 operand as cuBLAS reads it (row- or column-major in place; nothing else is accepted:
// linear() passes contiguous copies and their transposes).
struct Bf16Operand {
  const __nv_bfloat16* data;
  int64_t ld;
  bool row_major;
};
inline Bf16Operand bf16_operand(const MatView<const ternary::bf16>& v, const char* name) {
  const auto* p = reinterpret_cast<const __nv_bfloat16*>(v.data);
  if (int64_t ld = cpu_detail::row_major_ld(v); ld >= 0) return {p, ld, true};
  if (int64_t ld = cpu_detail::col_major_ld(v); ld >= 0) return {p, ld, false};
  throw ShapeError(detail::cat("gemm_bf16(cuda): operand ", name, " [", v.rows, ", ", v.cols,
                               "] with strides (", v.row_stride, ", ", v.col_stride,
                               ") is neither row- nor column-major"));
}

}  // namespace ternary::backend::cuda_detail

namespace ternary::backend {

namespace cuda_detail {
// bf16(map(x)) as a new contiguous tensor: one pass.
template <Bf16Map M, class T>
Tensor<ternary::bf16, cuda> round_to_bf16(const Tensor<T, cuda>& x) {
  static_assert(std::is_same_v<T, float>, "to_bf16(cuda): float input only");
  const auto xc = x.contiguous();
  auto out = Tensor<ternary::bf16, cuda>::empty(x.shape());
  const int64_t n = x.numel();
  if (n == 0) return out;
  auto* dst = reinterpret_cast<__nv_bfloat16*>(out.data());
  if (n % 4 == 0 && reinterpret_cast<uintptr_t>(xc.data()) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(dst) % 8 == 0) {
    const Launch g = launch_for(n / 4);
    round_bf16_x4_kernel<M><<<g.blocks, g.threads, 0, cuda::stream()>>>(
        reinterpret_cast<const float4*>(xc.data()), reinterpret_cast<__nv_bfloat162*>(dst), n / 4);
    TERNARY_CUDA_CHECK_LAUNCH("round_bf16_x4_kernel");
  } else {
    const Launch g = launch_for(n);
    round_bf16_kernel<M><<<g.blocks, g.threads, 0, cuda::stream()>>>(xc.data(), dst, n);
    TERNARY_CUDA_CHECK_LAUNCH("round_bf16_kernel");
  }
  return out;
}
}  // namespace cuda_detail

// x rounded to bf16 (nearest even, as core/dtype.hpp's bf16), as a new contiguous tensor.
template <class T>
Tensor<ternary::bf16, cuda> to_bf16(cuda, const Tensor<T, cuda>& x) {
  return cuda_detail::round_to_bf16<cuda_detail::Bf16Map::identity>(x);
}
// bf16(relu(x)^2) in the same one pass: the MLP's activation as its projection's operand
// (relu2_linear).
template <class T>
Tensor<ternary::bf16, cuda> relu2_to_bf16(cuda, const Tensor<T, cuda>& x) {
  return cuda_detail::round_to_bf16<cuda_detail::Bf16Map::relu2>(x);
}

// C = alpha A B + beta C: bf16 A, B on the tensor cores, fp32 accumulation, C fp32 row-major.
template <class T>
void gemm_bf16(cuda, const MatView<const ternary::bf16>& a, const MatView<const ternary::bf16>& b,
               const MatView<T>& c, T alpha, T beta) {
  static_assert(std::is_same_v<T, float>, "gemm_bf16(cuda): fp32 output only");
  using namespace cuda_detail;
  if (a.cols != b.rows || c.rows != a.rows || c.cols != b.cols)
    throw ShapeError(detail::cat("gemm_bf16: [", a.rows, ", ", a.cols, "] x [", b.rows, ", ",
                                 b.cols, "] -> [", c.rows, ", ", c.cols, "]"));
  const int64_t ldc = cpu_detail::row_major_ld(c);
  if (ldc < 0)
    throw ShapeError(detail::cat("gemm_bf16(cuda): C [", c.rows, ", ", c.cols, "] with strides (",
                                 c.row_stride, ", ", c.col_stride, ") must be row-major"));
  const int64_t M = c.rows, N = c.cols, K = a.cols;
  if (M == 0 || N == 0) return;
  if (K == 0) {  // nothing to multiply: C = beta C (in place, as cuBLAS's geam allows)
    const float zero = 0.f;
    TERNARY_CUDA_CHECK(cublasSgeam(cuda::blas(), CUBLAS_OP_N, CUBLAS_OP_N, int(N), int(M), &beta,
                                   c.data, int(ldc), &zero, c.data, int(ldc), c.data, int(ldc)));
    return;
  }
  const auto A = bf16_operand(a, "A"), Bo = bf16_operand(b, "B");
  // Column-major view of the row-major product, as in gemm(cuda) above: C^T = B^T A^T.
  const cublasOperation_t opB = Bo.row_major ? CUBLAS_OP_N : CUBLAS_OP_T;
  const cublasOperation_t opA = A.row_major ? CUBLAS_OP_N : CUBLAS_OP_T;
  TERNARY_CUDA_CHECK(cublasGemmEx(cuda::blas(), opB, opA, int(N), int(M), int(K), &alpha, Bo.data,
                                  CUDA_R_16BF, int(Bo.ld), A.data, CUDA_R_16BF, int(A.ld), &beta,
                                  c.data, CUDA_R_32F, int(ldc), CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
}

}  // namespace ternary::backend
