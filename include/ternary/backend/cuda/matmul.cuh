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
// matmul (ops/matmul.hpp) runs a product over one batch axis as one strided-batched call
// (gemm_strided_batched below: Muon's Newton-Schulz iterations over stacked matrices).
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <cuda_bf16.h>

#include <type_traits>
#include <utility>

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

// cuBLAS's data and compute types for T: float exact (CUBLAS_COMPUTE_32F), or on the TF32
// tensor cores under cuda::set_tf32 / set_bf16; double.
template <class T>
std::pair<cudaDataType_t, cublasComputeType_t> blas_types() {
  if constexpr (std::is_same_v<T, float>)
    return {CUDA_R_32F,
            cuda::tf32() || cuda::bf16() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F};
  else
    return {CUDA_R_64F, CUBLAS_COMPUTE_64F};
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
    const auto [dt, ct] = blas_types<T>();
    TERNARY_CUDA_CHECK(cublasGemmEx(cuda::blas(), opB, opA, int(N), int(M), int(K), &alpha, Bo.data,
                                    dt, int(Bo.ld), A.data, dt, int(A.ld), &beta, cv.data, dt,
                                    int(ldc), ct, CUBLAS_GEMM_DEFAULT));
  }
  if (!c_direct) copy_2d<T>(sc.data(), N, 1, c.data, c.row_stride, c.col_stride, M, N);
}

// batch products C_i = alpha A_i B_i + beta C_i, i < batch, in one cublasGemmStridedBatchedEx:
// a, b, c are the first matrices; A_i = a + i * stride_a (0: one matrix for all), likewise B_i,
// C_i. A and B must be row- or column-major (read in place), C row-major and disjoint per i.
// Returns false (nothing done) for other layouts: the caller loops over gemm() instead.
// Precision as gemm() above (TF32 under cuda::set_tf32 / set_bf16).
template <class T>
bool gemm_strided_batched(cuda, const MatView<const T>& a, const MatView<const T>& b,
                          const MatView<T>& c, int64_t batch, int64_t stride_a, int64_t stride_b,
                          int64_t stride_c, T alpha, T beta) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "gemm_strided_batched(cuda): float and double only");
  using namespace cuda_detail;
  if (a.cols != b.rows || c.rows != a.rows || c.cols != b.cols)
    throw ShapeError(detail::cat("gemm_strided_batched: [", a.rows, ", ", a.cols, "] x [", b.rows,
                                 ", ", b.cols, "] -> [", c.rows, ", ", c.cols, "]"));
  const int64_t M = c.rows, N = c.cols, K = a.cols;
  const int64_t lda_r = cpu_detail::row_major_ld(a), lda_c = cpu_detail::col_major_ld(a);
  const int64_t ldb_r = cpu_detail::row_major_ld(b), ldb_c = cpu_detail::col_major_ld(b);
  const int64_t ldc = cpu_detail::row_major_ld(c);
  if (batch < 1 || M == 0 || N == 0 || K == 0 || ldc < 0 || (lda_r < 0 && lda_c < 0) ||
      (ldb_r < 0 && ldb_c < 0) || stride_c < M * ldc)
    return false;
  const bool a_row = lda_r >= 0, b_row = ldb_r >= 0;
  const auto [dt, ct] = blas_types<T>();
  // column-major C^T = B^T A^T, as in gemm() above
  TERNARY_CUDA_CHECK(cublasGemmStridedBatchedEx(
      cuda::blas(), b_row ? CUBLAS_OP_N : CUBLAS_OP_T, a_row ? CUBLAS_OP_N : CUBLAS_OP_T, int(N),
      int(M), int(K), &alpha, b.data, dt, int(b_row ? ldb_r : ldb_c), stride_b, a.data, dt,
      int(a_row ? lda_r : lda_c), stride_a, &beta, c.data, dt, int(ldc), stride_c, int(batch), ct,
      CUBLAS_GEMM_DEFAULT));
  return true;
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
// float(x) as a new contiguous tensor: one pass (a bf16-born gradient read by an op that
// works in fp32: autograd/var.hpp).
namespace cuda_detail {
__global__ void widen_bf16_kernel(const __nv_bfloat16* __restrict__ src, float* __restrict__ dst,
                                  int64_t n) {
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x)
    dst[k] = __bfloat162float(src[k]);
}
}  // namespace cuda_detail
inline Tensor<float, cuda> widen_bf16(cuda, const Tensor<ternary::bf16, cuda>& x) {
  const auto xc = x.contiguous();
  auto out = Tensor<float, cuda>::empty(x.shape());
  const int64_t n = x.numel();
  if (n == 0) return out;
  const cuda_detail::Launch ls = cuda_detail::launch_for(n);
  cuda_detail::widen_bf16_kernel<<<ls.blocks, ls.threads, 0, cuda::stream()>>>(
      reinterpret_cast<const __nv_bfloat16*>(xc.data()), out.data(), n);
  TERNARY_CUDA_CHECK_LAUNCH("widen_bf16_kernel");
  return out;
}
// bf16(relu(x)^2) in the same one pass: the MLP's activation as its projection's operand
// (relu2_linear).
template <class T>
Tensor<ternary::bf16, cuda> relu2_to_bf16(cuda, const Tensor<T, cuda>& x) {
  return cuda_detail::round_to_bf16<cuda_detail::Bf16Map::relu2>(x);
}

namespace cuda_detail {
// C = alpha A B + beta C with bf16 A, B on the tensor cores and fp32 accumulation; C row-major
// of type c_type (fp32, or bf16: the fp32 result rounded to nearest even as cuBLAS stores it).
// Returns false (nothing done) when C is empty or K is 0, which the callers handle.
template <class C>
bool gemm_bf16_operands(const MatView<const ternary::bf16>& a,
                        const MatView<const ternary::bf16>& b, const MatView<C>& c,
                        cudaDataType_t c_type, float alpha, float beta) {
  if (a.cols != b.rows || c.rows != a.rows || c.cols != b.cols)
    throw ShapeError(detail::cat("gemm_bf16: [", a.rows, ", ", a.cols, "] x [", b.rows, ", ",
                                 b.cols, "] -> [", c.rows, ", ", c.cols, "]"));
  const int64_t ldc = cpu_detail::row_major_ld(c);
  if (ldc < 0)
    throw ShapeError(detail::cat("gemm_bf16(cuda): C [", c.rows, ", ", c.cols, "] with strides (",
                                 c.row_stride, ", ", c.col_stride, ") must be row-major"));
  const int64_t M = c.rows, N = c.cols, K = a.cols;
  if (M == 0 || N == 0 || K == 0) return false;
  const auto A = bf16_operand(a, "A"), Bo = bf16_operand(b, "B");
  // Column-major view of the row-major product, as in gemm(cuda) above: C^T = B^T A^T.
  const cublasOperation_t opB = Bo.row_major ? CUBLAS_OP_N : CUBLAS_OP_T;
  const cublasOperation_t opA = A.row_major ? CUBLAS_OP_N : CUBLAS_OP_T;
  TERNARY_CUDA_CHECK(cublasGemmEx(cuda::blas(), opB, opA, int(N), int(M), int(K), &alpha, Bo.data,
                                  CUDA_R_16BF, int(Bo.ld), A.data, CUDA_R_16BF, int(A.ld), &beta,
                                  c.data, c_type, int(ldc), CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
  return true;
}
}  // namespace cuda_detail

// C = alpha A B + beta C: bf16 A, B on the tensor cores, fp32 accumulation, C fp32 row-major.
template <class T>
void gemm_bf16(cuda, const MatView<const ternary::bf16>& a, const MatView<const ternary::bf16>& b,
               const MatView<T>& c, T alpha, T beta) {
  static_assert(std::is_same_v<T, float>, "gemm_bf16(cuda): fp32 output only");
  if (cuda_detail::gemm_bf16_operands(a, b, c, CUDA_R_32F, alpha, beta)) return;
  if (c.rows > 0 && c.cols > 0) {  // K == 0: C = beta C (in place, as cuBLAS's geam allows)
    const float zero = 0.f;
    const int ldc = int(cpu_detail::row_major_ld(c));
    TERNARY_CUDA_CHECK(cublasSgeam(cuda::blas(), CUBLAS_OP_N, CUBLAS_OP_N, int(c.cols), int(c.rows),
                                   &beta, c.data, ldc, &zero, c.data, ldc, c.data, ldc));
  }
}

// C = A B with bf16 A, B and a bf16 C: fp32 accumulation, the result rounded once to bf16 by
// the GEMM (ops/norm_mlp.hpp's hidden activation and its gradient are born this way).
inline void gemm_bf16(cuda, const MatView<const ternary::bf16>& a,
                      const MatView<const ternary::bf16>& b, const MatView<ternary::bf16>& c) {
  if (cuda_detail::gemm_bf16_operands(a, b, c, CUDA_R_16BF, 1.f, 0.f)) return;
  if (c.rows > 0 && c.cols > 0)  // K == 0: the product is zero (bf16 0 is all zero bits)
    TERNARY_CUDA_CHECK(
        cudaMemset2DAsync(c.data, size_t(cpu_detail::row_major_ld(c)) * sizeof(ternary::bf16), 0,
                          size_t(c.cols) * sizeof(ternary::bf16), size_t(c.rows), cuda::stream()));
}

namespace cuda_detail {
__device__ __forceinline__ float relu2f(float x) {
  return x > 0.f ? x * x : 0.f;
}
// Grad: g = bf16(g 2 relu(h)) in place (relu^2's backward); else out = bf16(relu(h)^2); h, g
// and out bf16, n elements, eight at a time (16-byte loads and stores) when `vec`.
template <bool Grad>
__global__ void relu2_bf16_kernel(const __nv_bfloat16* __restrict__ h,
                                  __nv_bfloat16* __restrict__ out, int64_t n, bool vec) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  auto one = [](float hv, float ov) { return Grad ? ov * 2.f * fmaxf(hv, 0.f) : relu2f(hv); };
  const int64_t n8 = vec ? n / 8 : 0;
  for (int64_t k = first; k < n8; k += stride) {
    const uint4 hv = reinterpret_cast<const uint4*>(h)[k];
    uint4 ov = Grad ? reinterpret_cast<const uint4*>(out)[k] : uint4{};
    const auto* hp = reinterpret_cast<const __nv_bfloat162*>(&hv);
    auto* op = reinterpret_cast<__nv_bfloat162*>(&ov);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 hf = __bfloat1622float2(hp[i]), of = __bfloat1622float2(op[i]);
      op[i] = __floats2bfloat162_rn(one(hf.x, of.x), one(hf.y, of.y));
    }
    reinterpret_cast<uint4*>(out)[k] = ov;
  }
  for (int64_t i = n8 * 8 + first; i < n; i += stride)
    out[i] = __float2bfloat16(one(__bfloat162float(h[i]), Grad ? __bfloat162float(out[i]) : 0.f));
}
template <bool Grad>
void relu2_bf16_launch(const Tensor<ternary::bf16, cuda>& h, const Tensor<ternary::bf16, cuda>& out,
                       const char* op) {
  if (!h.is_contiguous() || !out.is_contiguous() || !(h.shape() == out.shape()))
    throw ShapeError(detail::cat(op, "(cuda): contiguous tensors of one shape, got ", h.shape(),
                                 " and ", out.shape()));
  const int64_t n = h.numel();
  if (n == 0) return;
  const bool vec = reinterpret_cast<uintptr_t>(h.data()) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(out.data()) % 16 == 0;
  const Launch g = launch_for(vec ? (n + 7) / 8 : n);
  relu2_bf16_kernel<Grad><<<g.blocks, g.threads, 0, cuda::stream()>>>(
      reinterpret_cast<const __nv_bfloat16*>(h.data()),
      reinterpret_cast<__nv_bfloat16*>(out.data()), n, vec);
  TERNARY_CUDA_CHECK_LAUNCH("relu2_bf16_kernel");
}
}  // namespace cuda_detail

// bf16(relu(h)^2) of a bf16 h, as a new tensor (the MLP activation of a hidden layer born in
// bf16).
inline Tensor<ternary::bf16, cuda> relu2_bf16(cuda, const Tensor<ternary::bf16, cuda>& h) {
  auto out = Tensor<ternary::bf16, cuda>::empty(h.shape());
  cuda_detail::relu2_bf16_launch<false>(h, out, "relu2_bf16");
  return out;
}
// Its backward in place: g = bf16(g 2 relu(h)) (g: the gradient of relu(h)^2, bf16).
inline void relu2_grad_bf16(cuda, const Tensor<ternary::bf16, cuda>& g,
                            const Tensor<ternary::bf16, cuda>& h) {
  cuda_detail::relu2_bf16_launch<true>(h, g, "relu2_grad_bf16");
}

}  // namespace ternary::backend
