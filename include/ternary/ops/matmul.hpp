// Matrix products. matmul(a, b): a [..., M, K] times b [..., K, N] -> [..., M, N], batch
// axes broadcast (numpy). Transposed or sliced operands are read in place where the GEMM
// can (backend/cpu/matmul.hpp). linear(x, w) = x w^T with w stored [out, in], as in PyTorch;
// relu2_linear(h, w) = linear(relu2(h), w), the GPT MLP's second half as one op.
// Tests: tests/test_matmul.cpp.
//
//   C = A B        dA = dC B^T        dB = A^T dC     (each summed over broadcast batch axes)
#pragma once

#include <omp.h>

#include "ternary/autograd/var.hpp"
#include "ternary/backend/cpu/matmul.hpp"
#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/reduce.hpp"
#include "ternary/quant/weight_cache.hpp"

namespace ternary {

using backend::MatView;

namespace detail {
template <class T, class B>
MatView<const T> const_view(const Tensor<T, B>& t) {
  auto v = backend::mat_view(t);
  return {v.data, v.rows, v.cols, v.row_stride, v.col_stride};
}
// dst = a b + prior for accumulate_grad_with (dst contiguous 2-d; prior undefined, dst's own
// buffer, or another tensor of dst's size, copied in first). Operands of T, or bf16 copies
// (the tensor-core path: fp32 accumulation into dst).
template <class S, class T, class B>
void gemm_accumulate(const Tensor<S, B>& a, const Tensor<S, B>& b, const Tensor<T, B>& dst,
                     const Tensor<T, B>& prior) {
  const bool in_place = prior.defined() && prior.data() == dst.data();
  if (prior.defined() && !in_place) dst.reshape(prior.shape()).assign(prior);
  const T beta = prior.defined() ? T(1) : T(0);
  if constexpr (std::is_same_v<S, T>)
    backend::gemm(B{}, const_view(a), const_view(b), backend::mat_view(dst), T(1), beta);
  else
    backend::gemm_bf16(B{}, const_view(a), const_view(b), backend::mat_view(dst), T(1), beta);
}

// y = a16 w16^T, shaped like the input (in_shape) with w16's rows last; a16 is the input's
// [rows, in] bf16 copy, w16 [out, in].
template <class T, class B>
Tensor<T, B> bf16_product(const Tensor<bf16, B>& a16, const Tensor<bf16, B>& w16, Shape in_shape) {
  const int64_t out = w16.size(0);
  in_shape[in_shape.size() - 1] = out;
  auto y = Tensor<T, B>::empty(in_shape);
  backend::gemm_bf16(B{}, const_view(a16), const_view(w16.t()),
                     backend::mat_view(y.reshape(Shape{-1, out})), T(1), T(0));
  return y;
}
// A weight as a bf16 GEMM operand: rounded once per quant::QuantizedWeightCache scope (opened
// where the weights are fixed: train_loop around a step's micro-batches), else now. The scope
// holds the weight and its copy until it closes (an operand made anew per micro-batch is rounded
// anew, and kept: bf16 products of activations belong outside such scopes or in linear's x).
template <class T, class B>
Tensor<bf16, B> weight_to_bf16(const Tensor<T, B>& w) {
  constexpr quant::QuantizedWeightCache::Key key{-1.0, 0.0, 0.0};  // (the value type tells too)
  quant::QuantizedWeightCache* cache = quant::QuantizedWeightCache::active();
  if (cache)
    if (const Tensor<bf16, B>* hit = cache->find_as<bf16>(w, key)) return *hit;
  Tensor<bf16, B> w16 = backend::to_bf16(B{}, w);
  if (cache) cache->insert(w, key, w16);
  return w16;
}
// An output gradient as a bf16 GEMM operand [rows, out]: g rounded to bf16 once, or a gradient
// born in bf16 (g_bf16 defined, g not: Var::accumulate_grad_bf16) or g's bf16 copy (both
// defined: Var::accumulate_grad_with_bf16) as it is.
template <class T, class B>
Tensor<bf16, B> grad_operand_bf16(const Tensor<T, B>& g, const Tensor<bf16, B>& g_bf16,
                                  int64_t out) {
  return (g_bf16.defined() ? g_bf16.contiguous() : backend::to_bf16(B{}, g))
      .reshape(Shape{-1, out});
}
// The weight's side of a bf16 product's backward: g as a bf16 operand (grad_operand_bf16,
// returned: the input gradient's operand too) and dw = g16^T a16 added into w's gradient by the
// GEMM (a16: the input's [rows, in] bf16 copy).
template <class T, class B>
Tensor<bf16, B> weight_grad_bf16(const Var<T, B>& w, const Tensor<bf16, B>& a16,
                                 const Tensor<T, B>& g,
                                 const Tensor<bf16, B>& g_bf16 = Tensor<bf16, B>()) {
  const auto g16 = grad_operand_bf16(g, g_bf16, w.size(0));
  if (w.requires_grad())
    w.accumulate_grad_with([&](const Tensor<T, B>& dst, const Tensor<T, B>& prior) {
      gemm_accumulate(g16.t(), a16, dst, prior);
    });
  return g16;
}
// h's gradient for a product of relu(h)^2 and w16: da = g16 w16, then relu2's backward
// (da 2 relu(h), as its op writes it) added into h's gradient in one pass.
template <class T, class B>
void relu2_input_grad(const Var<T, B>& h, const Tensor<bf16, B>& g16, const Tensor<bf16, B>& w16) {
  auto da = Tensor<T, B>::empty(h.shape());  // the gradient of relu(h)^2
  backend::gemm_bf16(B{}, const_view(g16), const_view(w16),
                     backend::mat_view(da.reshape(Shape{-1, w16.size(1)})), T(1), T(0));
  h.accumulate_grad(da * T(2) * relu(h.value()));
}

// linear() with bf16 operands on the tensor cores (when backend::bf16_products(B{}): the CUDA
// backend with cuda::set_bf16(true)); fp32 accumulation and outputs, the fp32 weights
// untouched. x and w are rounded once in the forward pass and x's copy is kept for dw; g is
// rounded once in the backward pass, for both dx and dw (3 GEMMs, 3 roundings of activations
// between them instead of 6), or taken as it is where it was born in bf16.
template <class T, class B>
Var<T, B> linear_bf16(const Var<T, B>& x, const Var<T, B>& w) {
  const int64_t in = w.size(1);
  const auto x16 = backend::to_bf16(B{}, x.value()).reshape(Shape{-1, in});
  const auto w16 = weight_to_bf16(w.value());
  auto y = bf16_product<T>(x16, w16, x.shape());
  return Var<T, B>::record(
      "linear", y, {x, w},
      [x, w, x16, w16](const Tensor<T, B>& g_in, const Tensor<bf16, B>& g_bf16) {
        const auto g16 = weight_grad_bf16(w, x16, g_in, g_bf16);
        if (x.requires_grad())
          x.accumulate_grad_with([&](const Tensor<T, B>& dst, const Tensor<T, B>& prior) {
            gemm_accumulate(g16, w16, dst.reshape(Shape{-1, w.size(1)}), prior);
          });
      });
}

// relu2_linear() on the tensor cores: relu(h)^2 is rounded to bf16 by the pass that computes
// it (the fp32 activation never reaches memory; its bf16 copy is kept for dw), then the same
// three products as linear_bf16; dh = (g w) 2 relu(h) in one pass that adds into h's gradient.
template <class T, class B>
Var<T, B> relu2_linear_bf16(const Var<T, B>& h, const Var<T, B>& w) {
  const auto a16 = backend::relu2_to_bf16(B{}, h.value()).reshape(Shape{-1, w.size(1)});
  const auto w16 = weight_to_bf16(w.value());
  auto y = bf16_product<T>(a16, w16, h.shape());
  return Var<T, B>::record(
      "relu2_linear", y, {h, w},
      [h, w, a16, w16](const Tensor<T, B>& g_in, const Tensor<bf16, B>& g_bf16) {
        const auto g16 = weight_grad_bf16(w, a16, g_in, g_bf16);
        if (h.requires_grad()) relu2_input_grad(h, g16, w16);
      });
}
}  // namespace detail

// ---- tensor level ---------------------------------------------------------------------------
template <class T, class B>
Tensor<T, B> matmul(const Tensor<T, B>& a, const Tensor<T, B>& b) {
  if (a.dim() < 2 || b.dim() < 2)
    throw ShapeError(detail::cat("matmul: both operands need at least 2 axes, got ", a.shape(),
                                 " and ", b.shape()));
  const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  if (b.size(-2) != K)
    throw ShapeError(detail::cat("matmul: inner sizes differ: ", a.shape(), " x ", b.shape()));
  // [..., M, K] x [K, N] with a's leading axes foldable: one large GEMM is fastest.
  if (b.dim() == 2 && a.dim() > 2 && a.is_contiguous()) {
    Shape out_shape = a.shape();
    out_shape[out_shape.size() - 1] = N;
    auto out = Tensor<T, B>::empty(out_shape);
    auto a2 = a.reshape(Shape{-1, K});
    backend::gemm(B{}, detail::const_view(a2), detail::const_view(b),
                  backend::mat_view(out.reshape(Shape{-1, N})), T(1), T(0));
    return out;
  }
  Shape batch_a(std::span<const int64_t>(a.shape().begin(), a.dim() - 2));
  Shape batch_b(std::span<const int64_t>(b.shape().begin(), b.dim() - 2));
  Shape batch = broadcast_shapes(batch_a, batch_b, "matmul");
  Shape out_shape = batch;
  out_shape.push_back(M);
  out_shape.push_back(N);
  auto out = Tensor<T, B>::empty(out_shape);
  // Broadcast views over the batch axes, then one GEMM per batch element.
  Shape a_full = batch, b_full = batch;
  a_full.push_back(M), a_full.push_back(K);
  b_full.push_back(K), b_full.push_back(N);
  auto ae = a.expand(a_full), be = b.expand(b_full);
  const int64_t nb = numel(batch);
  const int nd = batch.size();
  auto offset_of = [&](const Tensor<T, B>& t, int64_t i) {
    int64_t off = 0;
    for (int d = nd - 1; d >= 0; --d) {
      off += (i % batch[d]) * t.strides()[d];
      i /= batch[d];
    }
    return off;
  };
  // One batch axis on the device: one strided-batched GEMM (backend/cuda/matmul.cuh) where the
  // operands' layouts allow, instead of one GEMM launch per matrix.
  if constexpr (!B::on_host) {
    if (nd == 1 && nb > 1) {
      MatView<const T> av{ae.data(), M, K, ae.strides()[1], ae.strides()[2]};
      MatView<const T> bv{be.data(), K, N, be.strides()[1], be.strides()[2]};
      MatView<T> cv{out.data(), M, N, N, 1};
      if (gemm_strided_batched(B{}, av, bv, cv, nb, ae.strides()[0], be.strides()[0], M * N, T(1),
                               T(0)))
        return out;
    }
  }
  auto product = [&](int64_t i) {
    MatView<const T> av{ae.data() + offset_of(ae, i), M, K, ae.strides()[nd], ae.strides()[nd + 1]};
    MatView<const T> bv{be.data() + offset_of(be, i), K, N, be.strides()[nd], be.strides()[nd + 1]};
    MatView<T> cv{out.data() + i * M * N, M, N, N, 1};
    backend::gemm(B{}, av, bv, cv, T(1), T(0));
  };
  // Threads over the batch, or inside each GEMM, never both. A plain loop (not a parallel
  // region with a false `if`) for the second case: the GEMM's own team would otherwise be a
  // nested one, which libgomp creates afresh, threads and all, on every call.
  const bool parallel_batches = nb >= 2 * omp_get_max_threads() || M * N * K < (1 << 18);
  if (parallel_batches && nb > 1) {
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < nb; ++i) product(i);
  } else {
    for (int64_t i = 0; i < nb; ++i) product(i);
  }
  return out;
}

// ---- differentiable -------------------------------------------------------------------------
template <class T, class B>
Var<T, B> matmul(const Var<T, B>& a, const Var<T, B>& b) {
  return Var<T, B>::record(
      "matmul", matmul(a.value(), b.value()), {a, b}, [a, b](const Tensor<T, B>& g) {
        const auto& A = a.value();
        const auto& Bm = b.value();
        if (a.requires_grad())
          a.accumulate_grad(sum_to(matmul(g, Bm.transpose(-1, -2)), a.shape()));
        if (b.requires_grad()) {
          if (Bm.dim() == 2 && A.dim() > 2) {  // fold the batch: one GEMM [K, BT] x [BT, N]
            const int64_t K = A.size(-1), N = g.size(-1);
            b.accumulate_grad(matmul(A.reshape(Shape{-1, K}).t(), g.reshape(Shape{-1, N})));
          } else {
            b.accumulate_grad(sum_to(matmul(A.transpose(-1, -2), g), b.shape()));
          }
        }
      });
}

// y = x w^T for a weight stored [out_features, in_features]. On the CUDA backend with
// cuda::set_bf16(true) the three products run with bf16 operands (detail::linear_bf16).
template <class T, class B>
Var<T, B> linear(const Var<T, B>& x, const Var<T, B>& w) {
  if (w.dim() != 2)
    throw ShapeError(detail::cat("linear: weight must be [out, in], got ", w.shape()));
  if (x.size(-1) != w.size(1))
    throw ShapeError(
        detail::cat("linear: input ", x.shape(), " does not match weight [out, in] = ", w.shape()));
  if constexpr (std::is_same_v<T, float>)
    if (backend::bf16_products(B{})) return detail::linear_bf16(x, w);
  return Var<T, B>::record(
      "linear", matmul(x.value(), w.value().t()), {x, w}, [x, w](const Tensor<T, B>& g_in) {
        const int64_t in = w.size(1), out = w.size(0);
        const auto g = g_in.contiguous().reshape(Shape{-1, out});
        // dx = g w and dw = g^T x, each added by the GEMM (beta = 1) into the gradient so far
        if (x.requires_grad())
          x.accumulate_grad_with([&](const Tensor<T, B>& dst, const Tensor<T, B>& prior) {
            detail::gemm_accumulate(g, w.value(), dst.reshape(Shape{-1, in}), prior);
          });
        if (w.requires_grad())
          w.accumulate_grad_with([&](const Tensor<T, B>& dst, const Tensor<T, B>& prior) {
            detail::gemm_accumulate(g.t(), x.value().reshape(Shape{-1, in}), dst, prior);
          });
      });
}

// linear(relu2(h), w): the MLP's activation and projection. With bf16 products (CUDA,
// cuda::set_bf16) one node whose first pass writes relu(h)^2 as the GEMM's bf16 operand
// (detail::relu2_linear_bf16); elsewhere exactly the composition.
template <class T, class B>
Var<T, B> relu2_linear(const Var<T, B>& h, const Var<T, B>& w) {
  if (w.dim() != 2 || h.size(-1) != w.size(1))
    throw ShapeError(detail::cat("relu2_linear: input ", h.shape(),
                                 " does not match weight [out, in] = ", w.shape()));
  if constexpr (std::is_same_v<T, float>)
    if (backend::bf16_products(B{})) return detail::relu2_linear_bf16(h, w);
  return linear(relu2(h), w);
}

}  // namespace ternary
