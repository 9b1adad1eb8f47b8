// A projection added into a residual stream with a per-channel scale, as one op:
//
//   residual_linear(r, a, w)        = r.x + r.scale * linear(a, w)
//   residual_relu2_linear(r, h, w)  = r.x + r.scale * relu2_linear(h, w)
//
// (r.x [..., out], r.scale [out]: channel_mix(r.x, r.scale, y) of the product y.) The GPT's
// attention and MLP branches end this way. Elsewhere than the tensor-core path these are
// exactly that composition. With bf16 products (CUDA, cuda::set_bf16) one node whose backward
// never forms the branch's gradient scale * dout: with dout rounded once to bf16 and
// G = bf16(dout)^T a (the weight gradient's GEMM, unscaled),
//   d r.x = dout (the gradient itself, no copy)      dw = scale * G (row j times scale_j)
//   d scale_j = sum_k w_jk G_jk                      da = bf16(dout) bf16(scale * w)
// so channel_mix's backward pass (reading dout and y, writing scale * dout) and the rounding of
// scale * dout are gone; dw, d scale and bf16(scale * w) come from one small pass over [out, in]
// (backend::scaled_weight_backward), each gradient added to its gradient so far there.
// The forward sums r.x + r.scale * bf16(y): the product is written in bf16 (autocast's linear
// output) and not kept for the backward. quant::rms_norm_linear takes the same residual
// (BitLinear projections). Tests: tests/test_matmul.cpp, tests/cuda/test_cuda_ops.cu.
#pragma once

#include <array>
#include <optional>
#include <utility>
#include <vector>

#include "ternary/backend/cpu/norm.hpp"  // NormMix
#include "ternary/ops/channel_mix.hpp"
#include "ternary/ops/matmul.hpp"

namespace ternary {

// out = x + scale * (a branch's output), scale one weight per channel.
template <class T, class B>
struct Residual {
  Var<T, B> x, scale;
};

// The next norm of a residual sum, taken by the sum's own kernel: residual_linear fills it
// (CUDA, bf16 products, rows the register norm kernels take; else it stays empty) with
// xn16 = bf16(rms_norm(out, eps)) and rstd per row, and rms_norm_mlp (ops/norm_mlp.hpp) takes
// them instead of reading out again for its norm. `of` is out's storage, which the taker
// checks; the values are those the taker's own norm kernel would write, bit for bit.
template <class T, class B>
struct NormedRows {
  double eps = 1e-6;
  Tensor<bf16, B> xn16;  // [rows, D]
  Tensor<T, B> rstd;     // [rows]
  const T* of = nullptr;
};

namespace detail {

// The residual must be shaped like the product (the input's shape with `out` last), its
// scale [out].
inline void check_residual_shapes(const char* op, const Shape& x, const Shape& scale,
                                  const Shape& input, int64_t out) {
  Shape want = input;
  if (!want.empty()) want[want.size() - 1] = out;
  if (!(x == want) || scale.size() != 1 || scale[0] != out)
    throw ShapeError(cat(op, ": the residual ", x, " and its scale ", scale, " must be ", want,
                         " and [", out, "] for an input ", input));
}

// The forward of the bf16 path: r.x + r.scale * bf16(a16 w16^T), a16 [rows, in], w16 [out, in]:
// the product rounded to bf16 (as autocast's linear output; on CUDA the GEMM writes it so, and
// the sum reads half the bytes), the sum in T.
// With `normed` (CUDA), the sum's kernel also normalises the sum's rows (NormedRows).
template <class T, class B>
Tensor<T, B> residual_product_bf16(const Residual<T, B>& r, const Tensor<bf16, B>& a16,
                                   const Tensor<bf16, B>& w16, NormedRows<T, B>* normed = nullptr) {
  Tensor<bf16, B> y16;
  if constexpr (B::on_host) {  // the reference backend: the same rounding of the fp32 product
    y16 = backend::to_bf16(B{}, bf16_product<T>(a16, w16, r.x.shape()));
  } else {
    y16 = Tensor<bf16, B>::empty(Shape{a16.size(0), w16.size(0)});
    gemm_bf16(B{}, const_view(a16), const_view(w16.t()), backend::mat_view(y16));
    if (normed) {  // the sum and the next norm in one pass (the register norm kernel)
      const Tensor<T, B> x_c = r.x.value().contiguous();
      const int64_t D = x_c.size(-1), rows = D ? x_c.numel() / D : 0;
      const Shape rows_d{rows, D};
      auto out = Tensor<T, B>::empty(x_c.shape());
      backend::NormMix<T, B> sum;
      sum.b = r.scale.value().contiguous(), sum.y16 = y16, sum.x_out = out.reshape(rows_d);
      auto xn16 = Tensor<bf16, B>::empty(rows_d);
      auto rstd = Tensor<T, B>::empty(Shape{rows});
      // (the device-only backend function by argument-dependent lookup on the tag)
      if (rms_norm_bf16_forward(B{}, x_c.reshape(rows_d), std::array<Tensor<T, B>, 1>{},
                                std::array<Tensor<bf16, B>, 1>{xn16}, rstd, normed->eps, false,
                                Tensor<T, B>(), 0.0, false, &sum)) {
        normed->xn16 = xn16, normed->rstd = rstd, normed->of = out.data();
        return out;
      }
    }
  }
  return channel_mix_forward(static_cast<const Tensor<T, B>*>(nullptr), r.x.value(),
                             r.scale.value(), y16.reshape(r.x.shape()));
}

// Its backward for the residual and the weights (see the top of this file), given dout = g
// (or g_bf16: a gradient born in bf16, widened for r.x, whose gradient is fp32; or beside g, its
// bf16 copy: the GEMMs' operand as it is, no rounding pass). Returns
// bf16(g) [rows, out] and bf16(scale * w) [out, in]: the operands of the branch input's
// gradient, da = bf16(g) bf16(scale * w).
template <class T, class B>
std::pair<Tensor<bf16, B>, Tensor<bf16, B>> residual_product_backward_bf16(
    const Residual<T, B>& r, const Tensor<bf16, B>& a16, const Var<T, B>& w,
    const Tensor<T, B>& g_in, const Tensor<bf16, B>& g_bf16 = Tensor<bf16, B>()) {
  const int64_t out = w.size(0), in = w.size(1);
  const Tensor<T, B> g = g_in.defined() ? g_in : widen_bf16(B{}, g_bf16);
  if (r.x.requires_grad()) r.x.accumulate_grad(g);
  const auto g16 = grad_operand_bf16(g, g_bf16, out);
  Tensor<T, B> G;
  if (w.requires_grad() || r.scale.requires_grad()) {
    G = Tensor<T, B>::empty(Shape{out, in});
    backend::gemm_bf16(B{}, const_view(g16.t()), const_view(a16), backend::mat_view(G), T(1), T(0));
  }
  // dw, d scale (each added to its gradient so far) and bf16(scale * w) in one pass over
  // [out, in], not five small passes and a rounding
  const auto w_c = w.value().contiguous();
  const auto scale_c = r.scale.value().contiguous();
  const auto [dw, dw_prior] =
      w.requires_grad() ? w.accumulate_grad_target() : std::pair<Tensor<T, B>, Tensor<T, B>>();
  const auto [ds, ds_prior] = r.scale.requires_grad() ? r.scale.accumulate_grad_target()
                                                      : std::pair<Tensor<T, B>, Tensor<T, B>>();
  auto wb16 = Tensor<bf16, B>::empty(Shape{out, in});
  auto ptr = [](const auto& t) { return t.defined() ? t.data() : nullptr; };
  backend::scaled_weight_backward(B{}, ptr(G), w_c.data(), scale_c.data(), ptr(dw), ptr(dw_prior),
                                  ptr(ds), ptr(ds_prior), wb16.data(), out, in);
  return {g16, wb16};
}

// The bf16 nodes' output product with an optional residual r: r.x + r.scale * (a16 w16^T), or
// a16 w16^T shaped like the input (in_shape with w16's rows last).
template <class T, class B>
Tensor<T, B> product_bf16(const Residual<T, B>* r, const Tensor<bf16, B>& a16,
                          const Tensor<bf16, B>& w16, const Shape& in_shape) {
  return r ? residual_product_bf16(*r, a16, w16) : bf16_product<T>(a16, w16, in_shape);
}
// Its backward for the weight w (w16: its bf16 copy) and the residual, given dout = g (or
// g_bf16, a gradient born in bf16: used as it is). Returns the operands of the input's gradient
// da = g16 wd16: bf16(g) and bf16(scale * w) with a residual, else w16.
template <class T, class B>
std::pair<Tensor<bf16, B>, Tensor<bf16, B>> product_backward_bf16(
    const std::optional<Residual<T, B>>& r, const Tensor<bf16, B>& a16, const Var<T, B>& w,
    const Tensor<bf16, B>& w16, const Tensor<T, B>& g,
    const Tensor<bf16, B>& g_bf16 = Tensor<bf16, B>()) {
  if (r) return residual_product_backward_bf16(*r, a16, w, g, g_bf16);
  return {weight_grad_bf16(w, a16, g, g_bf16), w16};
}
// A node's inputs: `first`, then the residual's x and scale (if any).
template <class T, class B>
std::vector<Var<T, B>> with_residual_inputs(std::vector<Var<T, B>> first, const Residual<T, B>* r) {
  if (r) {
    first.push_back(r->x);
    first.push_back(r->scale);
  }
  return first;
}

// residual_linear (relu2_input: residual_relu2_linear) on the tensor cores. With relu2_input
// relu(a)^2 is rounded by the pass computing it, and da 2 relu(a) is added in one pass (as
// relu2_linear_bf16).
// Where a's producer kept a bf16 copy of it (Var::value_bf16: the attention's output) the
// product reads that instead of rounding a, and a's gradient is written in bf16 by its GEMM
// (a gradient born in bf16, Var::accumulate_grad_bf16), as autocast's bf16 activations get
// theirs: its producer reads it so.
template <class T, class B>
Var<T, B> residual_linear_bf16(const Residual<T, B>& r, const Var<T, B>& a, const Var<T, B>& w,
                               bool relu2_input = false, NormedRows<T, B>* normed = nullptr) {
  const int64_t in = w.size(1);
  const bool a_in_bf16 = !relu2_input && a.value_bf16().defined();
  const auto a16 = (relu2_input ? backend::relu2_to_bf16(B{}, a.value())
                    : a_in_bf16 ? a.value_bf16().contiguous()
                                : backend::to_bf16(B{}, a.value()))
                       .reshape(Shape{-1, in});
  auto out = residual_product_bf16(r, a16, weight_to_bf16(w.value()), normed);
  return Var<T, B>::record(
      relu2_input ? "residual_relu2_linear" : "residual_linear", out, {r.x, r.scale, a, w},
      [r, a, w, a16, in, relu2_input, a_in_bf16](const Tensor<T, B>& g,
                                                 const Tensor<bf16, B>& g_bf16) {
        // (g_bf16: born in bf16, or a bf16 copy beside g, used as it is)
        // (not a structured binding: clang before 16 cannot capture those in the lambda below)
        const auto operands = residual_product_backward_bf16(r, a16, w, g, g_bf16);
        const Tensor<bf16, B>& g16 = operands.first;
        const Tensor<bf16, B>& wb16 = operands.second;
        if (!a.requires_grad()) return;
        if (relu2_input) {
          relu2_input_grad(a, g16, wb16);
          return;
        }
        (void)a_in_bf16;  // (set on CUDA only)
        if constexpr (!B::on_host) {
          if (a_in_bf16) {  // da = bf16(g16 wb16), written so by the GEMM
            auto da16 = Tensor<bf16, B>::empty(Shape{a16.size(0), in});
            gemm_bf16(B{}, const_view(g16), const_view(wb16), backend::mat_view(da16));
            a.accumulate_grad_bf16(da16.reshape(a.shape()));
            return;
          }
        }
        a.accumulate_grad_with([&](const Tensor<T, B>& dst, const Tensor<T, B>& prior) {
          gemm_accumulate(g16, wb16, dst.reshape(Shape{-1, in}), prior);
        });
      });
}

// Both public forms: checks, then the tensor-core path or the composition.
template <class T, class B>
Var<T, B> residual_branch(const char* op, const Residual<T, B>& r, const Var<T, B>& a,
                          const Var<T, B>& w, bool relu2_input, NormedRows<T, B>* normed) {
  if (w.dim() != 2 || a.size(-1) != w.size(1))
    throw ShapeError(
        cat(op, ": input ", a.shape(), " does not match weight [out, in] = ", w.shape()));
  check_residual_shapes(op, r.x.shape(), r.scale.shape(), a.shape(), w.size(0));
  if constexpr (std::is_same_v<T, float>)
    if (backend::bf16_products(B{})) return residual_linear_bf16(r, a, w, relu2_input, normed);
  return channel_mix(r.x, r.scale, relu2_input ? relu2_linear(a, w) : linear(a, w));
}

}  // namespace detail

// r.x + r.scale * linear(a, w). With `normed`, also the next norm of the result where the sum's
// kernel can take it (NormedRows; left empty elsewhere).
template <class T, class B>
Var<T, B> residual_linear(const Residual<T, B>& r, const Var<T, B>& a, const Var<T, B>& w,
                          NormedRows<T, B>* normed = nullptr) {
  return detail::residual_branch("residual_linear", r, a, w, false, normed);
}

// r.x + r.scale * relu2_linear(h, w)
template <class T, class B>
Var<T, B> residual_relu2_linear(const Residual<T, B>& r, const Var<T, B>& h, const Var<T, B>& w) {
  return detail::residual_branch("residual_relu2_linear", r, h, w, true,
                                 static_cast<NormedRows<T, B>*>(nullptr));
}

}  // namespace ternary
