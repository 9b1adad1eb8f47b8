// The GPT's full-precision MLP branch, pre-norm and residual sum included, as one op:
//
//   rms_norm_mlp(x, w_fc, w_proj, eps)     = relu(rms_norm(x) w_fc^T)^2 w_proj^T
//   rms_norm_mlp(x, w_fc, w_proj, eps, r)  = r.x + r.scale * that      (ops/residual_linear.hpp)
//
// (x [..., D], w_fc [hidden, D], w_proj [out, hidden].) Elsewhere than the tensor-core path
// this is exactly the composition rms_norm, linear, relu2_linear (residual_relu2_linear), values
// and tape alike. On CUDA with cuda::set_bf16 (backend::bf16_products), for rows of 64-1024
// floats, one node whose hidden activation lives in bf16, as PyTorch's autocast keeps it:
//
//   forward   xn = bf16(rms_norm(x))            the norm kernel writes the fc GEMM's operand
//             h = bf16(xn w_fc^T)               the fc GEMM writes bf16 (fp32 accumulation)
//             a = bf16(relu(h)^2)               one bf16 -> bf16 pass
//             y = a bf16(w_proj)^T  (+ the residual's rule)
//   backward  g16 = bf16(dout); dw_proj = g16^T a (the residual's rule: scaled)
//             da = bf16(g16 bf16(w_proj))       the GEMM writes bf16
//             dh = bf16(da 2 relu(h))           in place, one pass
//             dw_fc = dh^T xn; dxn = bf16(dh bf16(w_fc)), then the norm's backward kernel
//             adds dx into x's gradient so far
//
// Against relu2_linear's bf16 path (h in fp32, its relu^2 rounded once), h and da are rounded
// once more, and the fp32 hidden activation, its gradient and the rounding pass of that
// gradient never reach memory: per GPT layer (64 x 1024 tokens, hidden 1024) that is ~1.1 GB
// less traffic and h kept in 2 bytes instead of 4. Tests: tests/cuda/test_cuda_ops.cu (against
// the CPU composing the same roundings).
#pragma once

#include <optional>

#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/matmul.hpp"
#include "ternary/ops/norm.hpp"
#include "ternary/ops/residual_linear.hpp"

namespace ternary {

namespace detail {

// The one-node path; nullopt where the norm kernels do not apply (the caller composes).
template <class T, class B>
std::optional<Var<T, B>> rms_norm_mlp_bf16(const Var<T, B>& x, const Var<T, B>& w_fc,
                                           const Var<T, B>& w_proj, double eps,
                                           const Residual<T, B>* residual,
                                           const NormedRows<T, B>* normed) {
  const Tensor<T, B> x_c = x.value().contiguous();
  const int64_t D = x_c.size(-1), rows = D ? x_c.numel() / D : 0;
  const int64_t hidden = w_fc.size(0);
  const auto x2d = x_c.reshape(Shape{rows, D});
  // x's norm as x's producer wrote it (NormedRows: the same bits), or by the norm kernel here
  const bool taken = normed && normed->xn16.defined() && normed->of == x_c.data() &&
                     normed->eps == eps && normed->rstd.numel() == rows &&
                     normed->xn16.numel() == x_c.numel();
  const auto xn16 = taken ? normed->xn16 : Tensor<bf16, B>::empty(Shape{rows, D});
  const auto rstd = taken ? normed->rstd : Tensor<T, B>::empty(Shape{rows});
  if (!taken && !rms_norm_bf16_forward(B{}, x2d, std::array<Tensor<T, B>, 1>{},
                                       std::array<Tensor<bf16, B>, 1>{xn16}, rstd, eps, false,
                                       Tensor<T, B>(), 0.0))
    return std::nullopt;
  const auto wfc16 = weight_to_bf16(w_fc.value());
  const auto wproj16 = weight_to_bf16(w_proj.value());
  const auto h16 = Tensor<bf16, B>::empty(Shape{rows, hidden});
  // (the bf16-only backend functions by argument-dependent lookup on the tag: CUDA has them)
  gemm_bf16(B{}, const_view(xn16), const_view(wfc16.t()), backend::mat_view(h16));
  const auto a16 = relu2_bf16(B{}, h16);
  const Tensor<T, B> y = product_bf16(residual, a16, wproj16, x.shape());
  const std::optional<Residual<T, B>> res =
      residual ? std::optional<Residual<T, B>>(*residual) : std::nullopt;
  return Var<T, B>::record(
      "rms_norm_mlp", y, with_residual_inputs<T, B>({x, w_fc, w_proj}, residual),
      [x, w_fc, w_proj, x2d, rstd, xn16, wfc16, wproj16, h16, a16, res, rows, hidden](
          const Tensor<T, B>& g, const Tensor<bf16, B>& g_bf16) {
        // (g_bf16: a bf16 copy beside g, as the next block's entry writes it, used as it is)
        // (not a structured binding: clang before 16 cannot capture those in lambdas)
        const auto operands = product_backward_bf16(res, a16, w_proj, wproj16, g, g_bf16);
        const Tensor<bf16, B>& g16 = operands.first;  // da = g16 wd16
        const Tensor<bf16, B>& wd16 = operands.second;
        if (!x.requires_grad() && !w_fc.requires_grad()) return;
        const auto dh16 = Tensor<bf16, B>::empty(Shape{rows, hidden});
        gemm_bf16(B{}, const_view(g16), const_view(wd16), backend::mat_view(dh16));
        relu2_grad_bf16(B{}, dh16, h16);  // da -> dh
        if (w_fc.requires_grad())
          w_fc.accumulate_grad_with([&](const Tensor<T, B>& dst, const Tensor<T, B>& prior) {
            gemm_accumulate(dh16.t(), xn16, dst, prior);
          });
        if (!x.requires_grad()) return;
        auto dxn = Tensor<bf16, B>::empty(x2d.shape());  // bf16, as autocast's
        gemm_bf16(B{}, const_view(dh16), const_view(wfc16), backend::mat_view(dxn));
        // x's gradient also in bf16: its producer, the attention's output projection, rounds
        // it so for its GEMMs (residual_linear), and need not read it again for that
        norm_shared_backward<1>(x, x2d, rstd, std::array<Var<T, B>, 1>{},
                                std::array<Tensor<T, B>, 1>{}, std::array<Tensor<bf16, B>, 1>{dxn},
                                std::array<bool, 1>{}, Tensor<T, B>(), false, DxBf16::copy);
      });
}

template <class T, class B>
Var<T, B> rms_norm_mlp_any(const Var<T, B>& x, const Var<T, B>& w_fc, const Var<T, B>& w_proj,
                           double eps, const Residual<T, B>* residual,
                           const NormedRows<T, B>* normed = nullptr) {
  const char* op = "rms_norm_mlp";
  if (w_fc.dim() != 2 || w_proj.dim() != 2 || x.dim() == 0 || x.size(-1) != w_fc.size(1) ||
      w_proj.size(1) != w_fc.size(0))
    throw ShapeError(cat(op, ": input ", x.shape(), ", fc weight ", w_fc.shape(),
                         " and projection weight ", w_proj.shape(),
                         " do not chain (x [..., D], w_fc [hidden, D], w_proj [out, hidden])"));
  if (residual)
    check_residual_shapes(op, residual->x.shape(), residual->scale.shape(), x.shape(),
                          w_proj.size(0));
  if constexpr (!B::on_host && std::is_same_v<T, float>) {
    if (backend::bf16_products(B{}))
      if (auto y = rms_norm_mlp_bf16(x, w_fc, w_proj, eps, residual, normed)) return *y;
  }
  const Var<T, B> h = linear(rms_norm(x, eps), w_fc);
  return residual ? residual_relu2_linear(*residual, h, w_proj) : relu2_linear(h, w_proj);
}

}  // namespace detail

// relu(rms_norm(x, eps) w_fc^T)^2 w_proj^T
template <class T, class B>
Var<T, B> rms_norm_mlp(const Var<T, B>& x, const Var<T, B>& w_fc, const Var<T, B>& w_proj,
                       double eps) {
  return detail::rms_norm_mlp_any(x, w_fc, w_proj, eps,
                                  static_cast<const Residual<T, B>*>(nullptr));
}
// r.x + r.scale * rms_norm_mlp(x, w_fc, w_proj, eps). `normed`: x's norm as x's producer
// wrote it (residual_linear's NormedRows), taken where it is x's (else the norm runs here).
template <class T, class B>
Var<T, B> rms_norm_mlp(const Var<T, B>& x, const Var<T, B>& w_fc, const Var<T, B>& w_proj,
                       double eps, const Residual<T, B>& r,
                       const NormedRows<T, B>* normed = nullptr) {
  return detail::rms_norm_mlp_any(x, w_fc, w_proj, eps, &r, normed);
}

}  // namespace ternary
