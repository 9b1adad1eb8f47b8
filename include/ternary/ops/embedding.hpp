// Embedding lookup: rows of a [V, D] table picked by integer ids of any shape -> [ids..., D].
// Kernels: backend/cpu/embedding.hpp. Tests: tests/test_embedding.cpp.
//
//   y[i..., :] = table[ids[i...], :]        dtable[v, :] = sum over i with ids[i] = v of g[i, :]
//
// Every id must lie in [0, V); otherwise IndexError names the id and its position in ids (on
// CUDA the kernel finds it, and the error is thrown at the next synchronisation).
#pragma once

#include <cstdint>

#include "ternary/autograd/var.hpp"
#include "ternary/backend/cpu/embedding.hpp"

namespace ternary {

namespace detail {

// Throws IndexError for the first id outside [0, V), naming its value and position. Device
// ids are checked by the kernel instead (no host copy and no wait; the error is thrown at the
// next synchronisation: backend/cuda/embedding.cuh).
template <class B>
void check_embedding_ids(const Tensor<int32_t, B>& ids_c, const Shape& ids_shape, int64_t V) {
  if constexpr (B::on_host) {
    const int32_t* id = ids_c.data();
    for (int64_t i = 0; i < ids_c.numel(); ++i) {
      if (id[i] >= 0 && id[i] < V) continue;
      throw IndexError(detail::cat("embedding: id ", id[i], " at position ",
                                   unravel_index(i, ids_shape), " of ids ", ids_shape,
                                   " is out of range for a table of ", V, " rows"));
    }
  }
}

template <class T, class B>
void check_embedding_table(const Tensor<T, B>& table) {
  if (table.dim() != 2)
    throw ShapeError(
        detail::cat("embedding: the table must be 2-d [V, D], got shape ", table.shape()));
}

template <class B>
Shape embedding_out_shape(const Tensor<int32_t, B>& ids, int64_t D) {
  Shape s = ids.shape();
  s.push_back(D);
  return s;
}

}  // namespace detail

// ---- tensor level ---------------------------------------------------------------------------
template <class T, class B>
Tensor<T, B> embedding(const Tensor<T, B>& table, const Tensor<int32_t, B>& ids) {
  detail::check_embedding_table(table);
  Tensor<int32_t, B> ids_c = ids.contiguous();
  detail::check_embedding_ids(ids_c, ids.shape(), table.size(0));
  auto out = Tensor<T, B>::empty(detail::embedding_out_shape(ids, table.size(1)));
  backend::embedding_forward(B{}, table.contiguous(), ids_c, out);
  return out;
}

// ---- differentiable -------------------------------------------------------------------------
template <class T, class B>
Var<T, B> embedding(const Var<T, B>& table, const Tensor<int32_t, B>& ids) {
  detail::check_embedding_table(table.value());
  Tensor<int32_t, B> ids_c = ids.contiguous();
  detail::check_embedding_ids(ids_c, ids.shape(), table.size(0));
  auto out = Tensor<T, B>::empty(detail::embedding_out_shape(ids, table.size(1)));
  backend::embedding_forward(B{}, table.value().contiguous(), ids_c, out);
  // The backward reads ids later; own a copy in case the caller refills its ids buffer.
  if (table.requires_grad() && grad_enabled() && ids.shares_storage_with(ids_c))
    ids_c = ids_c.clone();
  return Var<T, B>::record("embedding", out, {table}, [table, ids_c](const Tensor<T, B>& g) {
    const int64_t D = table.size(1);
    auto dtable = Tensor<T, B>::zeros(table.shape());
    backend::embedding_backward(B{}, ids_c, g.contiguous().reshape(Shape{ids_c.numel(), D}),
                                dtable);
    table.accumulate_grad(dtable);
  });
}

}  // namespace ternary
