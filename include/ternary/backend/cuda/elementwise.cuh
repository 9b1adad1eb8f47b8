// CUDA evaluator for expression templates (core/expr.hpp): a whole expression tree runs as
// ONE kernel over the destination, reading every operand in place (no temporaries). The same
// expression objects and functors as on the CPU (their scalar path is TERNARY_HD), with
// device cursors instead of the CPU's xsimd ones:
//  - flat: destination and every tensor operand contiguous with the destination's shape:
//    element i of each operand is base[i];
//  - strided: anything else (broadcasting, transposed or sliced views, a strided
//    destination): each thread turns its flat index into a multi-index once, and every
//    operand and the destination find their element through their own (broadcast) strides.
// A grid-stride loop covers any size with a grid of a few blocks per multiprocessor.
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "ternary/backend/cuda/cuda.hpp"
#include "ternary/core/expr.hpp"
#include "ternary/core/shape.hpp"
#include "ternary/core/tensor.hpp"

namespace ternary::backend::cuda_detail {

// A launch that covers n items with a grid-stride loop: enough blocks to fill the GPU
// several times over, no more (each thread then handles several items).
struct Launch {
  int blocks, threads;
};
inline Launch launch_for(int64_t n, int threads = 256) {
  static const int sms = [] {
    int dev = 0, count = 0;
    TERNARY_CUDA_CHECK(cudaGetDevice(&dev));
    TERNARY_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev));
    return count;
  }();
  const int64_t want = (n + threads - 1) / threads;
  return {int(std::max<int64_t>(1, std::min<int64_t>(want, int64_t(sms) * 16))), threads};
}

// The destination's shape and strides, passed by value to the kernel.
struct Layout {
  int64_t shape[kMaxDims];
  int64_t strides[kMaxDims];
  int rank;
};
inline Layout make_layout(const Shape& shape, const Strides& strides) {
  Layout l{};
  l.rank = shape.size();
  for (int d = 0; d < l.rank; ++d) {
    l.shape[d] = shape[d];
    l.strides[d] = strides[d];
  }
  return l;
}

template <class T>
struct DTensorCursor {
  const T* base;
  int64_t strides[kMaxDims];  // broadcast to the destination's rank (0 on repeated axes)
  int rank;
  bool flat_ok;
  __device__ T flat(int64_t i) const { return base[i]; }
  __device__ T at(const int64_t* idx) const {
    int64_t o = 0;
    for (int d = 0; d < rank; ++d) o += idx[d] * strides[d];
    return base[o];
  }
  bool is_flat() const { return flat_ok; }
};
template <class T>
struct DScalarCursor {
  T value;
  __device__ T flat(int64_t) const { return value; }
  __device__ T at(const int64_t*) const { return value; }
  bool is_flat() const { return true; }
};
template <class Op, class A>
struct DUnaryCursor {
  Op op;
  A a;
  __device__ auto flat(int64_t i) const { return op(a.flat(i)); }
  __device__ auto at(const int64_t* idx) const { return op(a.at(idx)); }
  bool is_flat() const { return a.is_flat(); }
};
template <class Op, class A, class C>
struct DBinaryCursor {
  Op op;
  A a;
  C c;
  __device__ auto flat(int64_t i) const { return op(a.flat(i), c.flat(i)); }
  __device__ auto at(const int64_t* idx) const { return op(a.at(idx), c.at(idx)); }
  bool is_flat() const { return a.is_flat() && c.is_flat(); }
};

template <class E>
struct DCursorFor;
template <class T, class B>
struct DCursorFor<TensorLeaf<T, B>> {
  static_assert(std::is_same_v<B, cuda>,
                "ternary: a CUDA expression reads a tensor of another backend; move it with "
                "to_device() first");
  static DTensorCursor<T> make(const TensorLeaf<T, B>& e, const Shape& out) {
    const auto& t = e.tensor;
    DTensorCursor<T> c{};
    c.base = t.data();
    Strides st = broadcast_strides(t.shape(), t.strides(), out);
    c.rank = out.size();
    for (int d = 0; d < c.rank; ++d) c.strides[d] = st[d];
    c.flat_ok = t.is_contiguous() && t.shape() == out;
    return c;
  }
};
template <class T>
struct DCursorFor<ScalarLeaf<T>> {
  static DScalarCursor<T> make(const ScalarLeaf<T>& e, const Shape&) { return {e.value}; }
};
template <class Op, class A>
struct DCursorFor<UnaryExpr<Op, A>> {
  static auto make(const UnaryExpr<Op, A>& e, const Shape& out) {
    auto a = DCursorFor<A>::make(e.a, out);
    return DUnaryCursor<Op, decltype(a)>{e.op, a};
  }
};
template <class Op, class A, class C>
struct DCursorFor<BinaryExpr<Op, A, C>> {
  static auto make(const BinaryExpr<Op, A, C>& e, const Shape& out) {
    auto a = DCursorFor<A>::make(e.a, out);
    auto c = DCursorFor<C>::make(e.c, out);
    return DBinaryCursor<Op, decltype(a), decltype(c)>{e.op, a, c};
  }
};

template <class T, class Cur>
__global__ void assign_flat_kernel(T* __restrict__ dst, int64_t n, Cur cur) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = static_cast<T>(cur.flat(i));
}

template <class T, class Cur>
__global__ void assign_strided_kernel(T* dst, int64_t n, Layout l, Cur cur) {
  int64_t idx[kMaxDims];
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rem = i, off = 0;
    for (int d = l.rank - 1; d >= 0; --d) {
      idx[d] = rem % l.shape[d];
      rem /= l.shape[d];
      off += idx[d] * l.strides[d];
    }
    dst[off] = static_cast<T>(cur.at(idx));
  }
}

}  // namespace ternary::backend::cuda_detail

namespace ternary::backend {

// Evaluates `expr` into `dst` (any view), broadcasting the expression to dst's shape, as one
// kernel on the backend's stream. If an operand overlaps dst with a different layout
// (x.assign(x.t())), the expression goes through a temporary first, as on the CPU.
template <class T, class E>
void assign_expr(cuda, Tensor<T, cuda>& dst, const E& expr) {
  using namespace cuda_detail;
  const Shape& shape = dst.shape();
  if (detail::prepare_assign(dst, expr)) {
    Tensor<T, cuda> tmp = Tensor<T, cuda>::empty(shape);
    assign_expr(cuda{}, tmp, expr);
    assign_expr(cuda{}, dst, to_expr(tmp));
    return;
  }
  const int64_t n = dst.numel();
  if (n == 0) return;
  auto cur = DCursorFor<E>::make(expr, shape);
  const Launch g = launch_for(n);
  if (dst.is_contiguous() && cur.is_flat()) {
    assign_flat_kernel<<<g.blocks, g.threads, 0, cuda::stream()>>>(dst.data(), n, cur);
    TERNARY_CUDA_CHECK_LAUNCH("assign_flat_kernel");
  } else {
    assign_strided_kernel<<<g.blocks, g.threads, 0, cuda::stream()>>>(
        dst.data(), n, make_layout(shape, dst.strides()), cur);
    TERNARY_CUDA_CHECK_LAUNCH("assign_strided_kernel");
  }
}

}  // namespace ternary::backend
