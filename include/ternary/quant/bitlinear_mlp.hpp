// The GPT's ternary MLP branch (BitLinear fc and projection, each with its extra norm and int8
// activations), the block's pre-norm and the residual sum included, as one op:
//
//   a1 = int8(rms_norm(rms_norm(x, pre_eps), fc_gain, fc_eps))         h = a1 w_fc^T
//   a2 = int8(rms_norm(relu(h)^2, proj_gain, proj_eps))                y = a2 w_proj^T
//   rms_norm_bitlinear_mlp(...) = y, or r.x + r.scale * y with a residual r
//
// (w_fc, w_proj: the BitLinears' quantized weights.) Elsewhere than the tensor-core path this is
// exactly the composition of two quant::rms_norm_linear calls (the fc's with the pre-norm, the
// projection's with relu2_input and the residual), values and tape alike. On CUDA with
// cuda::set_bf16, for sizes of 64-1024 values, one node whose hidden activation lives in bf16,
// as ops/norm_mlp.hpp's full-precision one:
//
//   forward   the fc norm kernel writes a1 (bf16); the fc GEMM writes h in bf16; the projection's
//             norm kernel reads h (bf16), squares, normalises and quantizes in registers and
//             writes a2 (bf16); the projection GEMM (+ the residual's rule)
//   backward  da2 = bf16(g16 bf16(w_proj)) from the GEMM; the projection norm's backward kernel
//             reads h and da2 (bf16) and writes dh in bf16 (relu2's slope applied); dw_fc = dh^T
//             a1, dxn = bf16(dh bf16(w_fc)), then the fc norm's backward adds dx into x's
//             gradient so far
//
// So h is kept in 2 bytes instead of 4, and its gradient is never written in fp32 nor rounded by
// a pass of its own. Against the composition h and da2 are rounded to bf16 once more. Tests:
// tests/cuda/test_cuda_ops.cu (against the CPU composing the same roundings).
#pragma once

#include <optional>
#include <vector>

#include "ternary/ops/norm.hpp"
#include "ternary/ops/residual_linear.hpp"
#include "ternary/quant/norm_linear.hpp"

namespace ternary::quant {

namespace detail {

// The row sizes the register norm kernels take.
inline bool register_row_size(int64_t n) {
  return n == 64 || n == 128 || n == 256 || n == 512 || n == 1024;
}

// The one-node path; nullopt where its kernels do not apply (the caller composes).
template <class T, class B>
std::optional<Var<T, B>> rms_norm_bitlinear_mlp_bf16(const Var<T, B>& x, double pre_eps,
                                                     const Var<T, B>& fc_gain,
                                                     const Var<T, B>& w_fc, double fc_eps,
                                                     const Var<T, B>& proj_gain,
                                                     const Var<T, B>& w_proj, double proj_eps,
                                                     const Residual<T, B>* residual) {
  const Tensor<T, B> x_c = x.value().contiguous();
  const int64_t D = x_c.size(-1), rows = D ? x_c.numel() / D : 0;
  const int64_t hidden = w_fc.size(0);
  if (!register_row_size(D) || !register_row_size(hidden) || pre_eps != fc_eps) return std::nullopt;
  const auto x2d = x_c.reshape(Shape{rows, D});
  const Tensor<T, B> fc_gain_c = fc_gain.value().contiguous();
  const Tensor<T, B> proj_gain_c = proj_gain.value().contiguous();
  const auto a1 = Tensor<bf16, B>::empty(Shape{rows, D});
  const auto rstd1 = Tensor<T, B>::empty(Shape{rows}), rstd_pre = Tensor<T, B>::empty(Shape{rows});
  // (the bf16-only backend functions by argument-dependent lookup on the tag: CUDA has them)
  if (!rms_norm_bf16_forward(B{}, x2d, std::array<Tensor<T, B>, 1>{fc_gain_c},
                             std::array<Tensor<bf16, B>, 1>{a1}, rstd1, fc_eps, true, rstd_pre,
                             pre_eps))
    return std::nullopt;
  const auto wfc16 = ternary::detail::weight_to_bf16(w_fc.value());
  const auto wproj16 = ternary::detail::weight_to_bf16(w_proj.value());
  const auto h16 = Tensor<bf16, B>::empty(Shape{rows, hidden});
  gemm_bf16(B{}, ternary::detail::const_view(a1), ternary::detail::const_view(wfc16.t()),
            backend::mat_view(h16));
  const auto a2 = Tensor<bf16, B>::empty(Shape{rows, hidden});
  const auto rstd2 = Tensor<T, B>::empty(Shape{rows});
  if (!rms_norm_relu2_bf16_forward(B{}, h16, proj_gain_c, a2, rstd2, proj_eps))
    throw Error(
        ternary::detail::cat("rms_norm_bitlinear_mlp: the projection norm's kernel did "
                             "not run for hidden rows ",
                             h16.shape()));
  const Tensor<T, B> y = ternary::detail::product_bf16(residual, a2, wproj16, x.shape());
  const std::optional<Residual<T, B>> res =
      residual ? std::optional<Residual<T, B>>(*residual) : std::nullopt;
  return Var<T, B>::record(
      "rms_norm_bitlinear_mlp", y,
      ternary::detail::with_residual_inputs<T, B>({x, fc_gain, w_fc, proj_gain, w_proj}, residual),
      [x, fc_gain, w_fc, proj_gain, w_proj, x2d, fc_gain_c, proj_gain_c, a1, rstd1, rstd_pre, wfc16,
       wproj16, h16, a2, rstd2, res, rows,
       hidden](const Tensor<T, B>& g, const Tensor<bf16, B>& g_bf16) {
        // (g_bf16: a bf16 copy beside g, as the next block's entry writes it, used as it is)
        // (not a structured binding: clang before 16 cannot capture those in lambdas)
        const auto operands =
            ternary::detail::product_backward_bf16(res, a2, w_proj, wproj16, g, g_bf16);
        const Tensor<bf16, B>& g16 = operands.first;  // da2 = g16 wd16
        const Tensor<bf16, B>& wd16 = operands.second;
        const bool want_fc_side =
            x.requires_grad() || fc_gain.requires_grad() || w_fc.requires_grad();
        if (!want_fc_side && !proj_gain.requires_grad()) return;
        const auto da2 = Tensor<bf16, B>::empty(Shape{rows, hidden});
        gemm_bf16(B{}, ternary::detail::const_view(g16), ternary::detail::const_view(wd16),
                  backend::mat_view(da2));
        const auto dh16 = Tensor<bf16, B>::empty(Shape{rows, hidden});
        // the projection gain's gradient so far plus this one, written by the kernels
        const auto [dgain2, dgain2_prior] = proj_gain.accumulate_grad_target();
        if (!rms_norm_relu2_bf16_backward(B{}, h16, rstd2, proj_gain_c, da2, dh16, dgain2,
                                          dgain2_prior))
          throw Error(
              ternary::detail::cat("rms_norm_bitlinear_mlp: the projection norm's "
                                   "backward kernel did not run for hidden rows ",
                                   h16.shape()));
        if (w_fc.requires_grad())
          w_fc.accumulate_grad_with([&](const Tensor<T, B>& dst, const Tensor<T, B>& prior) {
            ternary::detail::gemm_accumulate(dh16.t(), a1, dst, prior);
          });
        if (!x.requires_grad() && !fc_gain.requires_grad()) return;
        auto dxn = Tensor<bf16, B>::empty(x2d.shape());  // bf16, as autocast's
        gemm_bf16(B{}, ternary::detail::const_view(dh16), ternary::detail::const_view(wfc16),
                  backend::mat_view(dxn));
        // x's gradient also in bf16: the attention's output projection that produced x rounds
        // it so for its GEMMs (Var::accumulate_grad_with_bf16)
        ternary::detail::norm_shared_backward<1>(x, x2d, rstd1, std::array<Var<T, B>, 1>{fc_gain},
                                                 std::array<Tensor<T, B>, 1>{fc_gain_c},
                                                 std::array<Tensor<bf16, B>, 1>{dxn},
                                                 std::array<bool, 1>{fc_gain.requires_grad()},
                                                 rstd_pre, false, ternary::detail::DxBf16::copy);
      });
}

}  // namespace detail

template <class T, class B>
Var<T, B> rms_norm_bitlinear_mlp(const Var<T, B>& x, double pre_eps, const Var<T, B>& fc_gain,
                                 const Var<T, B>& w_fc, double fc_eps, const Var<T, B>& proj_gain,
                                 const Var<T, B>& w_proj, double proj_eps,
                                 const Residual<T, B>* residual = nullptr) {
  const char* op = "rms_norm_bitlinear_mlp";
  if (w_fc.dim() != 2 || w_proj.dim() != 2 || x.dim() == 0 || x.size(-1) != w_fc.size(1) ||
      w_proj.size(1) != w_fc.size(0))
    throw ShapeError(ternary::detail::cat(
        op, ": input ", x.shape(), ", fc weight ", w_fc.shape(), " and projection weight ",
        w_proj.shape(), " do not chain (x [..., D], w_fc [hidden, D], w_proj [out, hidden])"));
  if (!fc_gain.defined() || !proj_gain.defined())
    throw Error(ternary::detail::cat(op, ": BitLinear's norms need their gains"));
  if (residual)
    ternary::detail::check_residual_shapes(op, residual->x.shape(), residual->scale.shape(),
                                           x.shape(), w_proj.size(0));
  if constexpr (!B::on_host && std::is_same_v<T, float>) {
    if (backend::bf16_products(B{}))
      if (auto y = detail::rms_norm_bitlinear_mlp_bf16(x, pre_eps, fc_gain, w_fc, fc_eps, proj_gain,
                                                       w_proj, proj_eps, residual))
        return *y;
  }
  const Var<T, B> h = rms_norm_linear<1>(x, {fc_gain}, {w_fc}, fc_eps, pre_eps, true)[0];
  return rms_norm_linear<1>(h, {proj_gain}, {w_proj}, proj_eps, std::nullopt, true, true,
                            residual)[0];
}

}  // namespace ternary::quant
