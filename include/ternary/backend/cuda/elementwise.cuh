// CUDA evaluator for expression templates (core/expr.hpp): a whole expression tree runs as
// ONE kernel over the destination, reading every operand in place (no temporaries). The same
// expression objects and functors as on the CPU (their scalar path is TERNARY_HD), with
// device cursors instead of the CPU's xsimd ones:
//  - flat: destination and every tensor operand contiguous with the destination's shape:
//    element i of each operand is base[i] (a broadcast operand read as base[(i / a) % b]
//    was measured slower than the strided path below, so broadcasting goes there);
//  - strided: anything else (broadcasting, transposed or sliced views, a strided
//    destination): each thread turns its flat index into a multi-index once, and every
//    operand and the destination find their element through their own (broadcast) strides.
//    The kernel is instantiated per rank, so the multi-index stays in registers (a run-time
//    rank put it in local memory), and uses 32-bit index arithmetic whenever every offset
//    fits (64-bit division costs several times more): together 2.4x faster than a run-time
//    rank with 64-bit indices on the GPT's step (Nsight Compute, H100, bench_cuda_gpt
//    --layers 2 --batch 8: 84 launches, 3.82 -> 1.58 ms).
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

// The largest element offset a view of `shape` with these strides reaches, plus one.
inline int64_t offset_extent(const Shape& shape, const Strides& strides) {
  int64_t e = 1;
  for (int d = 0; d < shape.size(); ++d)
    if (shape[d] > 0) e += (shape[d] - 1) * (strides[d] < 0 ? -strides[d] : strides[d]);
  return e;
}

// Cursors: flat(i) reads element i of a contiguous operand; at<R>(idx) reads the element at
// the destination's multi-index idx (R entries, index type I).
template <class T>
struct DTensorCursor {
  const T* base;
  int64_t strides[kMaxDims];  // broadcast to the destination's rank (0 on repeated axes)
  int64_t extent;             // largest offset reached + 1
  bool flat_ok;
  __device__ T flat(int64_t i) const { return base[i]; }
  template <int R, class I>
  __device__ T at(const I* idx) const {
    I o = 0;
#pragma unroll
    for (int d = 0; d < R; ++d) o += idx[d] * I(strides[d]);
    return base[o];
  }
  bool is_flat() const {
    return flat_ok;
  }
  int64_t max_extent() const {
    return extent;
  }
};
template <class T>
struct DScalarCursor {
  T value;
  __device__ T flat(int64_t) const { return value; }
  template <int R, class I>
  __device__ T at(const I*) const {
    return value;
  }
  bool is_flat() const { return true; }
  int64_t max_extent() const { return 0; }
};
template <class Op, class A>
struct DUnaryCursor {
  Op op;
  A a;
  __device__ auto flat(int64_t i) const { return op(a.flat(i)); }
  template <int R, class I>
  __device__ auto at(const I* idx) const {
    return op(a.template at<R>(idx));
  }
  bool is_flat() const { return a.is_flat(); }
  int64_t max_extent() const { return a.max_extent(); }
};
template <class Op, class A, class C>
struct DBinaryCursor {
  Op op;
  A a;
  C c;
  __device__ auto flat(int64_t i) const { return op(a.flat(i), c.flat(i)); }
  template <int R, class I>
  __device__ auto at(const I* idx) const {
    return op(a.template at<R>(idx), c.template at<R>(idx));
  }
  bool is_flat() const { return a.is_flat() && c.is_flat(); }
  int64_t max_extent() const { return std::max(a.max_extent(), c.max_extent()); }
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
    for (int d = 0; d < out.size(); ++d) c.strides[d] = st[d];
    c.extent = offset_extent(out, st);
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

// R: the destination's rank; I: the index type (int32 when every offset fits).
template <int R, class I, class T, class Cur>
__global__ void assign_strided_kernel(T* dst, I n, Layout l, Cur cur) {
  I shape[R], strides[R];
#pragma unroll
  for (int d = 0; d < R; ++d) shape[d] = I(l.shape[d]), strides[d] = I(l.strides[d]);
  for (I i = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); i < n;
       i += I(gridDim.x) * I(blockDim.x)) {
    I idx[R], rem = i, off = 0;
#pragma unroll
    for (int d = R - 1; d >= 0; --d) {
      idx[d] = rem % shape[d];
      rem /= shape[d];
      off += idx[d] * strides[d];
    }
    dst[off] = static_cast<T>(cur.template at<R>(idx));
  }
}

template <int R, class T, class Cur>
void launch_strided(T* dst, int64_t n, const Layout& l, const Cur& cur, bool small) {
  const Launch g = launch_for(n);
  if (small)
    assign_strided_kernel<R, int32_t>
        <<<g.blocks, g.threads, 0, cuda::stream()>>>(dst, int32_t(n), l, cur);
  else
    assign_strided_kernel<R, int64_t><<<g.blocks, g.threads, 0, cuda::stream()>>>(dst, n, l, cur);
  TERNARY_CUDA_CHECK_LAUNCH("assign_strided_kernel");
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
    Layout l = make_layout(shape, dst.strides());
    if (l.rank == 0) l.rank = 1, l.shape[0] = 1, l.strides[0] = 0;  // a scalar: one element
    constexpr int64_t kInt32 = int64_t(1) << 31;
    const bool small =
        n < kInt32 && cur.max_extent() < kInt32 && offset_extent(shape, dst.strides()) < kInt32;
    T* d = dst.data();
    switch (l.rank) {
      case 1:
        launch_strided<1>(d, n, l, cur, small);
        break;
      case 2:
        launch_strided<2>(d, n, l, cur, small);
        break;
      case 3:
        launch_strided<3>(d, n, l, cur, small);
        break;
      case 4:
        launch_strided<4>(d, n, l, cur, small);
        break;
      case 5:
        launch_strided<5>(d, n, l, cur, small);
        break;
      case 6:
        launch_strided<6>(d, n, l, cur, small);
        break;
      case 7:
        launch_strided<7>(d, n, l, cur, small);
        break;
      default:
        launch_strided<8>(d, n, l, cur, small);
        break;
    }
  }
}

}  // namespace ternary::backend
