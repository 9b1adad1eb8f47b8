// CPU evaluator for expression templates (core/expr.hpp): runs a whole expression tree in
// one pass over the destination, with xsimd batches and OpenMP threads.
//
// Each expression node gets a *cursor* here (Eigen calls them evaluators): the expression
// says what to compute, the cursor knows where its operands live in memory for this
// destination shape. Two loops:
//  - flat: destination and every tensor operand contiguous with the destination's shape
//    (the common case): one SIMD loop over all elements;
//  - rows: anything else (broadcasting, transposed or sliced views): for each row of the
//    destination's last axis, cursors seek their row; the row runs in SIMD when every
//    operand steps by 1 or 0 (broadcast) along it, else element by element.
#pragma once

#include <omp.h>

#include <cstdint>
#include "ternary/core/simd.hpp"

#include "ternary/backend/cpu/cpu.hpp"
#include "ternary/core/expr.hpp"
#include "ternary/core/shape.hpp"
#include "ternary/core/tensor_fwd.hpp"

namespace ternary::backend::cpu_detail {

// Elementwise work below this many elements stays on one thread (threads cost ~µs to wake).
inline constexpr int64_t kParallelThreshold = 1 << 15;

template <class T>
concept Vectorizable =
    std::is_arithmetic_v<T> && !std::is_same_v<T, bool> && !std::is_same_v<T, long double>;

template <class T>
using batch_t = xsimd::batch<T>;

template <class T>
struct TensorCursor {
  const T* base;
  Strides strides;  // broadcast to the destination's rank
  const T* row = nullptr;
  int64_t inner = 0;
  bool flat_ok;

  TensorCursor(const T* b, const Shape& shape, const Strides& st, const Shape& out, bool contiguous)
      : base(b), strides(broadcast_strides(shape, st, out)), flat_ok(contiguous && shape == out) {
    inner = out.size() ? strides[out.size() - 1] : 0;
  }
  void seek(const int64_t* idx, int n_outer) {
    int64_t o = 0;
    for (int d = 0; d < n_outer; ++d) o += idx[d] * strides[d];
    row = base + o;
  }
  bool row_simd() const { return inner == 0 || inner == 1; }
  bool flat() const { return flat_ok; }
  T at(int64_t j) const { return row[j * inner]; }
  batch_t<T> load(int64_t j) const {
    return inner == 1 ? batch_t<T>::load_unaligned(row + j) : batch_t<T>(row[0]);
  }
  T flat_at(int64_t i) const { return base[i]; }
  batch_t<T> flat_load(int64_t i) const { return batch_t<T>::load_unaligned(base + i); }
};

template <class T>
struct ScalarCursor {
  T value;
  void seek(const int64_t*, int) {}
  bool row_simd() const { return true; }
  bool flat() const { return true; }
  T at(int64_t) const { return value; }
  batch_t<T> load(int64_t) const { return batch_t<T>(value); }
  T flat_at(int64_t) const { return value; }
  batch_t<T> flat_load(int64_t) const { return batch_t<T>(value); }
};

template <class Op, class A>
struct UnaryCursor {
  Op op;
  A a;
  void seek(const int64_t* idx, int n) { a.seek(idx, n); }
  bool row_simd() const { return a.row_simd(); }
  bool flat() const { return a.flat(); }
  auto at(int64_t j) const { return op(a.at(j)); }
  auto load(int64_t j) const { return op(a.load(j)); }
  auto flat_at(int64_t i) const { return op(a.flat_at(i)); }
  auto flat_load(int64_t i) const { return op(a.flat_load(i)); }
};

template <class Op, class A, class C>
struct BinaryCursor {
  Op op;
  A a;
  C c;
  void seek(const int64_t* idx, int n) {
    a.seek(idx, n);
    c.seek(idx, n);
  }
  bool row_simd() const { return a.row_simd() && c.row_simd(); }
  bool flat() const { return a.flat() && c.flat(); }
  auto at(int64_t j) const { return op(a.at(j), c.at(j)); }
  auto load(int64_t j) const { return op(a.load(j), c.load(j)); }
  auto flat_at(int64_t i) const { return op(a.flat_at(i), c.flat_at(i)); }
  auto flat_load(int64_t i) const { return op(a.flat_load(i), c.flat_load(i)); }
};

// CursorFor<Expr>::make builds the cursor tree of an expression tree (class templates, so
// nested Unary/Binary nodes resolve in any order).
template <class E>
struct CursorFor;
template <class T, class B>
struct CursorFor<TensorLeaf<T, B>> {
  static TensorCursor<T> make(const TensorLeaf<T, B>& e, const Shape& out) {
    const auto& t = e.tensor;
    return TensorCursor<T>(t.data(), t.shape(), t.strides(), out, t.is_contiguous());
  }
};
template <class T>
struct CursorFor<ScalarLeaf<T>> {
  static ScalarCursor<T> make(const ScalarLeaf<T>& e, const Shape&) { return {e.value}; }
};
template <class Op, class A>
struct CursorFor<UnaryExpr<Op, A>> {
  static auto make(const UnaryExpr<Op, A>& e, const Shape& out) {
    auto a = CursorFor<A>::make(e.a, out);
    return UnaryCursor<Op, decltype(a)>{e.op, a};
  }
};
template <class Op, class A, class C>
struct CursorFor<BinaryExpr<Op, A, C>> {
  static auto make(const BinaryExpr<Op, A, C>& e, const Shape& out) {
    auto a = CursorFor<A>::make(e.a, out);
    auto c = CursorFor<C>::make(e.c, out);
    return BinaryCursor<Op, decltype(a), decltype(c)>{e.op, a, c};
  }
};
template <class E>
auto make_cursor(const E& e, const Shape& out) {
  return CursorFor<E>::make(e, out);
}

// dst[i] = cursor(i) over a contiguous destination of n elements.
template <class T, class Cur>
void run_flat(T* dst, int64_t n, const Cur& cur) {
  if constexpr (Vectorizable<T>) {
    constexpr int64_t W = batch_t<T>::size;
    const int64_t chunks = n / W;
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
    for (int64_t k = 0; k < chunks; ++k) cur.flat_load(k * W).store_unaligned(dst + k * W);
    for (int64_t i = chunks * W; i < n; ++i) dst[i] = cur.flat_at(i);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = cur.flat_at(i);
  }
}

// Row-wise evaluation for broadcasts and strided views.
template <class T, class Cur>
void run_rows(T* dst, const Shape& shape, const Strides& dst_strides, const Cur& cursor) {
  const int rank = shape.size();
  if (rank == 0) {
    Cur cur = cursor;
    cur.seek(nullptr, 0);
    dst[0] = cur.at(0);
    return;
  }
  const int n_outer = rank - 1;
  const int64_t row_len = shape[rank - 1];
  const int64_t rows = numel(shape) / std::max<int64_t>(row_len, 1);
  const int64_t dst_inner = dst_strides[rank - 1];
  if (row_len == 0 || rows == 0) return;
#pragma omp parallel if (rows * row_len >= kParallelThreshold && rows > 1)
  {
    Cur cur = cursor;
    int64_t idx[kMaxDims];
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      int64_t rem = r, dst_off = 0;
      for (int d = n_outer - 1; d >= 0; --d) {
        idx[d] = rem % shape[d];
        rem /= shape[d];
        dst_off += idx[d] * dst_strides[d];
      }
      cur.seek(idx, n_outer);
      T* out = dst + dst_off;
      int64_t j = 0;
      if constexpr (Vectorizable<T>) {
        constexpr int64_t W = batch_t<T>::size;
        if (dst_inner == 1 && cur.row_simd())
          for (; j + W <= row_len; j += W) cur.load(j).store_unaligned(out + j);
      }
      for (; j < row_len; ++j) out[j * dst_inner] = cur.at(j);
    }
  }
}

}  // namespace ternary::backend::cpu_detail

namespace ternary::backend {

// Evaluates `expr` into `dst`, broadcasting the expression to dst's shape. dst may be any
// view; if an operand overlaps dst with a different layout, the expression is evaluated
// into a temporary first, so `x.assign(x.transpose(0, 1))` is safe.
template <class T, class E>
void assign_expr(cpu, Tensor<T, cpu>& dst, const E& expr) {
  using namespace cpu_detail;
  const Shape& shape = dst.shape();
  if (detail::prepare_assign(dst, expr)) {
    Tensor<T, cpu> tmp = Tensor<T, cpu>::empty(shape);
    assign_expr(cpu{}, tmp, expr);
    assign_expr(cpu{}, dst, to_expr(tmp));
    return;
  }
  auto cur = make_cursor(expr, shape);
  if (dst.is_contiguous() && cur.flat())
    run_flat(dst.data(), dst.numel(), cur);
  else
    run_rows(dst.data(), shape, dst.strides(), cur);
}

}  // namespace ternary::backend
