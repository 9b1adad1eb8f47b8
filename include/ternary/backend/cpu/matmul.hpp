// CPU GEMM: C = alpha * A B + beta * C on strided 2-d views.
//
// gemm(cpu, ...) runs our packed, register-blocked kernel (gemm_kernel.hpp) for float and
// double: on the 2-core AVX2 dev VM it beats Eigen's GEMM by 1.3-1.5x on one core at the
// GPT's shapes (docs/benchmarks.md, "own GEMM"), and GEMM is over half of a training step.
// Products with a single row or column of C (GEMV) still go to Eigen.
// Building with -DTERNARY_GEMM_EIGEN selects the Eigen path instead (for A/B measurements).
//
// gemm_eigen is the previous path, kept as the reference the tests and benchmarks compare
// against: Eigen's blocked, vectorised GEMM. Each operand may be row-major (unit column
// stride) or column-major (unit row stride, e.g. a transposed view): both map onto Eigen
// without a copy; anything else is copied to a contiguous block first.
//
// Threads (both paths): we split C into row (or column) blocks ourselves, one block per
// thread, and turn Eigen's own OpenMP parallelism off. Eigen's parallel GEMM made a small GPT
// training step 15x slower on 2 threads than on 1 (measured: 1.9k vs 28.8k tokens/s in the
// tutorial model); with our split, 2 threads are faster than 1.
#pragma once

#ifndef EIGEN_DONT_PARALLELIZE
#define EIGEN_DONT_PARALLELIZE
#endif
#include <omp.h>

// before Eigen: this one includes <immintrin.h> first (see there)
#include "ternary/core/simd.hpp"

#include <Eigen/Core>
#include <cstdint>

#include "ternary/backend/cpu/cpu.hpp"
#include "ternary/backend/cpu/gemm_kernel.hpp"
#include "ternary/core/tensor.hpp"

namespace ternary::backend {

template <class T, class B>
MatView<T> mat_view(const Tensor<T, B>& t) {
  return {t.data(), t.size(-2), t.size(-1), t.strides()[t.dim() - 2], t.strides()[t.dim() - 1]};
}

namespace cpu_detail {
template <class T>
using RowMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0,
                          Eigen::OuterStride<>>;
template <class T>
using ColMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>, 0,
                          Eigen::OuterStride<>>;

// Leading dimension if v can be read as a row-major (or column-major) matrix, else -1.
// Axes of extent 1 may have any stride.
template <class T>
int64_t row_major_ld(const MatView<T>& v) {
  if (v.col_stride != 1 && v.cols > 1) return -1;
  return v.rows <= 1 ? std::max<int64_t>(v.cols, 1) : v.row_stride;
}
template <class T>
int64_t col_major_ld(const MatView<T>& v) {
  if (v.row_stride != 1 && v.rows > 1) return -1;
  return v.cols <= 1 ? std::max<int64_t>(v.rows, 1) : v.col_stride;
}

// Calls f with an Eigen map of v (row- or column-major), copying v if it is neither.
template <class T, class F>
void with_eigen(const MatView<T>& v, Tensor<std::remove_const_t<T>, cpu>& scratch, F&& f) {
  using U = std::remove_const_t<T>;
  U* p = const_cast<U*>(v.data);
  if (int64_t ld = row_major_ld(v); ld >= 0) {
    f(RowMap<U>(p, v.rows, v.cols, Eigen::OuterStride<>(ld)));
  } else if (int64_t ldc = col_major_ld(v); ldc >= 0) {
    f(ColMap<U>(p, v.rows, v.cols, Eigen::OuterStride<>(ldc)));
  } else {
    scratch = Tensor<U, cpu>::empty(Shape{v.rows, v.cols});
    for (int64_t i = 0; i < v.rows; ++i)
      for (int64_t j = 0; j < v.cols; ++j)
        scratch.data()[i * v.cols + j] = v.data[i * v.row_stride + j * v.col_stride];
    f(RowMap<U>(scratch.data(), v.rows, v.cols,
                Eigen::OuterStride<>(std::max<int64_t>(v.cols, 1))));
  }
}
}  // namespace cpu_detail

template <class T>
void gemm_eigen(cpu, const MatView<const T>& a, const MatView<const T>& b, const MatView<T>& c,
                T alpha, T beta) {
  using namespace cpu_detail;
  check_gemm_shapes(a, b, c);
  if (c.rows == 0 || c.cols == 0) return;
  Tensor<T, cpu> sa, sb, sc;
  MatView<T> cv = c;
  const bool c_direct = row_major_ld(c) >= 0;
  if (!c_direct) {  // compute into a contiguous temporary, then scatter
    sc = Tensor<T, cpu>::empty(Shape{c.rows, c.cols});
    for (int64_t i = 0; i < c.rows; ++i)
      for (int64_t j = 0; j < c.cols; ++j)
        sc.data()[i * c.cols + j] = c.data[i * c.row_stride + j * c.col_stride];
    cv = {sc.data(), c.rows, c.cols, c.cols, 1};
  }
  RowMap<T> cm(cv.data, cv.rows, cv.cols, Eigen::OuterStride<>(row_major_ld(cv)));
  // Below this many multiply-adds one thread is faster: measured on the 2-core dev VM, two
  // threads lost to one up to 256^3 and won from 512^3 (60 vs 52 GFLOP/s at 512^3).
  constexpr int64_t kParallelMacs = int64_t(1) << 26;
  const int64_t macs = a.rows * a.cols * b.cols;
  const int threads = omp_in_parallel() || macs < kParallelMacs ? 1 : omp_get_max_threads();
  with_eigen(a, sa, [&](const auto& am) {
    with_eigen(b, sb, [&](const auto& bm) {
      // C[r0:r1, c0:c1] (op)= alpha * A[r0:r1, :] B[:, c0:c1]
      auto block = [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
        auto cb = cm.block(r0, c0, r1 - r0, c1 - c0);
        if (a.cols == 0) {
          if (beta == T(0))
            cb.setZero();
          else
            cb *= beta;
        } else if (beta == T(0)) {
          cb.noalias() = alpha * (am.middleRows(r0, r1 - r0) * bm.middleCols(c0, c1 - c0));
        } else {
          if (beta != T(1)) cb *= beta;
          cb.noalias() += alpha * (am.middleRows(r0, r1 - r0) * bm.middleCols(c0, c1 - c0));
        }
      };
      if (threads == 1) {
        block(0, c.rows, 0, c.cols);
        return;
      }
      // Split the larger side of C into one block per thread (aligned to 8 for SIMD).
      const bool by_rows = c.rows >= c.cols;
      const int64_t n = by_rows ? c.rows : c.cols;
      const int64_t chunk = ((n + threads - 1) / threads + 7) / 8 * 8;
#pragma omp parallel for num_threads(threads) schedule(static)
      for (int t = 0; t < threads; ++t) {
        const int64_t s0 = std::min(n, t * chunk), s1 = std::min(n, s0 + chunk);
        if (s0 >= s1) continue;
        if (by_rows)
          block(s0, s1, 0, c.cols);
        else
          block(0, c.rows, s0, s1);
      }
    });
  });
  if (!c_direct)
    for (int64_t i = 0; i < c.rows; ++i)
      for (int64_t j = 0; j < c.cols; ++j)
        c.data[i * c.row_stride + j * c.col_stride] = sc.data()[i * c.cols + j];
}

template <class T>
void gemm(cpu, const MatView<const T>& a, const MatView<const T>& b, const MatView<T>& c, T alpha,
          T beta) {
#ifndef TERNARY_GEMM_EIGEN
  // A single row or column of C is a GEMV: packing B (or A) would cost as much as the product
  // and most of each register tile would be padding, so Eigen's GEMV kernels take it.
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    if (c.rows != 1 && c.cols != 1) {
      gemm_packed(cpu{}, a, b, c, alpha, beta);
      return;
    }
  }
#endif
  gemm_eigen(cpu{}, a, b, c, alpha, beta);
}

// ---- bf16 operands (the tensor-core path of the CUDA backend, backend/cuda/matmul.cuh) ------
// linear() multiplies bf16 copies of its operands when bf16_products(B{}) says so: on the CPU
// never (there is no bf16 arithmetic to gain from); these are the reference the op's tests run:
// round to bf16 (nearest even), then multiply the values widened back to T exactly.
inline bool bf16_products(cpu) {
  return false;
}

namespace cpu_detail {
// bf16(map(x)) elementwise, as a new contiguous tensor.
template <class T, class Map>
Tensor<bf16, cpu> round_to_bf16(const Tensor<T, cpu>& x, Map map) {
  const auto xc = x.contiguous();
  auto out = Tensor<bf16, cpu>::empty(x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) out.data()[i] = bf16(map(float(xc.data()[i])));
  return out;
}
}  // namespace cpu_detail

template <class T>
Tensor<bf16, cpu> to_bf16(cpu, const Tensor<T, cpu>& x) {
  return cpu_detail::round_to_bf16(x, [](float v) { return v; });
}
// float(x) as a new contiguous tensor (a bf16-born gradient read in fp32: autograd/var.hpp)
inline Tensor<float, cpu> widen_bf16(cpu, const Tensor<bf16, cpu>& x) {
  return x.to<float>();
}
// bf16(relu(x)^2) (relu2_linear's operand)
template <class T>
Tensor<bf16, cpu> relu2_to_bf16(cpu, const Tensor<T, cpu>& x) {
  return cpu_detail::round_to_bf16(x, [](float v) { return v > 0.f ? v * v : 0.f; });
}

// C = alpha A B + beta C with A, B bf16 (any strides), fp32 (T) accumulation and output.
template <class T>
void gemm_bf16(cpu, const MatView<const bf16>& a, const MatView<const bf16>& b, const MatView<T>& c,
               T alpha, T beta) {
  auto widen = [](const MatView<const bf16>& v) {
    auto t = Tensor<T, cpu>::empty(Shape{v.rows, v.cols});
    for (int64_t i = 0; i < v.rows; ++i)
      for (int64_t j = 0; j < v.cols; ++j)
        t.data()[i * v.cols + j] = T(float(v.data[i * v.row_stride + j * v.col_stride]));
    return t;
  };
  const auto wa = widen(a), wb = widen(b);
  gemm(cpu{}, MatView<const T>{wa.data(), a.rows, a.cols, a.cols, 1},
       MatView<const T>{wb.data(), b.rows, b.cols, b.cols, 1}, c, alpha, beta);
}

}  // namespace ternary::backend
