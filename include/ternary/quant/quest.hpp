// QuEST (Panferov et al., 2025, arXiv 2502.05003) as a ternary estimator: quantize in a
// Hadamard basis, where weights look Gaussian, with a clip fitted to that Gaussian, and trust
// only the gradient of the weights the grid represents well.
//
//   each block x of G weights along a row (G a power of two: the row, or TernaryConfig's
//   group_size under per_group) is rotated: h = H x, H the orthonormal Walsh-Hadamard matrix
//   alpha = kGaussianTernaryClip * rms(h) + eps    one per scale group (TernaryConfig)
//   q(h) = alpha * clamp(round(h / alpha), -1, 1)  w_used = H q(h)   (H = H^T = H^-1)
//   trust mask m = [|h - q(h)| <= trust * alpha / 2]  (with trust = 1: rounding never errs by
//                                                      more than alpha / 2, so m = 0 exactly
//                                                      on clipped entries, |h| > 1.5 alpha)
//   backward: dL/dx = H (m * H dL/dw_used)
//
// The clip constant: for X ~ N(0, 1) and the grid {-a, 0, a} (round to nearest: thresholds
// +-a/2),
//   MSE(a) = E[(X - q(X))^2] = 1 - 4 a phi(a/2) + 2 a^2 Q(a/2)      (Q = 1 - Phi)
// and dMSE/da = 0 gives the centroid condition a = E[X | X > a/2] = phi(a/2) / Q(a/2). Its
// fixed point is a = 1.2240064 (thresholds 0.6120 sigma, MSE 0.1902 sigma^2): the 3-level
// Lloyd-Max quantizer (Max, 1960) has equally spaced levels, so it is also the MSE-optimal
// uniform ternary grid. tests/test_quant.cpp re-derives it by quadrature.
//
// The exported trits are those of q(h), in the Hadamard basis (TernaryWeights::hadamard = G);
// TernaryWeights::dequantize() rotates back, so it reproduces w_used exactly. A packed
// integer kernel would have to rotate activations by the same H instead (x . H q = Hx . q);
// PackedBitLinear does not, and accepts only STE layers.
#pragma once

#include <cmath>

#include "ternary/quant/hadamard.hpp"
#include "ternary/quant/ternary.hpp"

namespace ternary::quant {

inline constexpr double kGaussianTernaryClip = 1.2240063619;

struct QuEST {
  static constexpr const char* name = "quest";

  // The Hadamard block: the whole row, or the scale group under per_group.
  static int64_t hadamard_block(const Shape& s, const TernaryConfig& c) {
    const int64_t cols = s.size() ? s.back() : 1;
    const int64_t g = c.granularity == Granularity::per_group ? c.group_size : cols;
    if (!is_power_of_two(g) || cols % g != 0)
      throw ShapeError(ternary::detail::cat(
          "QuEST: Hadamard block ", g, " must be a power of two dividing the row length ", cols,
          " (weight ", s, "); use per_group with a power-of-two group_size"));
    return g;
  }

  // Hadamard-domain trits, one alpha per scale group, hadamard = the block size.
  template <class T, class B>
  static TernaryWeights quantize(const Tensor<T, B>& w, const TernaryConfig& c) {
    return quantize_rotated(rotate(w, c), c);
  }

  // The mask of trusted entries (1 or 0), in the Hadamard domain.
  template <class T, class B>
  static Tensor<T, B> trust_mask(const Tensor<T, B>& w, const TernaryConfig& c) {
    const Tensor<T, B> h = rotate(w, c);
    return mask_of(h, quantize_rotated(h, c), c);
  }

  template <class T, class B>
  static Var<T, B> apply(const Var<T, B>& w, const TernaryConfig& c, double lambda) {
    if (lambda <= 0) return w;
    const Tensor<T, B> h = rotate(w.value(), c);
    const TernaryWeights q = quantize_rotated(h, c);
    const Tensor<T, B> mask = mask_of(h, q, c);
    const int64_t G = q.hadamard;
    return Var<T, B>::record("ternary_quest",
                             detail::blend(w.value(), q.template dequantize<T>(), lambda), {w},
                             [w, mask, G](const Tensor<T, B>& g) {
                               Tensor<T, B> d = g.clone();
                               fwht_blocks(d.data(), d.numel(), G);
                               d *= mask;
                               fwht_blocks(d.data(), d.numel(), G);
                               w.accumulate_grad(d);
                             });
  }

 private:
  template <class T, class B>
  static Tensor<T, B> rotate(const Tensor<T, B>& w, const TernaryConfig& c) {
    Tensor<T, B> h = w.clone();
    fwht_blocks(h.data(), h.numel(), hadamard_block(w.shape(), c));
    return h;
  }

  template <class T, class B>
  static TernaryWeights quantize_rotated(const Tensor<T, B>& h, const TernaryConfig& c) {
    TernaryWeights q;
    q.shape = h.shape();
    q.hadamard = hadamard_block(h.shape(), c);
    q.group = scale_group(h.shape(), c);
    const int64_t n = h.numel(), ng = n / q.group;
    q.trits.resize(n);
    q.scales.resize(ng);
    for (int64_t g = 0; g < ng; ++g) {
      const T* x = h.data() + g * q.group;
      double ss = 0;
      for (int64_t i = 0; i < q.group; ++i) ss += double(x[i]) * double(x[i]);
      if (!std::isfinite(ss))
        throw Error(ternary::detail::cat("QuEST: weight of shape ", h.shape(),
                                         " has a NaN or inf in scale group ", g));
      const float alpha = float(kGaussianTernaryClip * std::sqrt(ss / double(q.group)) + c.eps);
      q.scales[g] = alpha;
      for (int64_t i = 0; i < q.group; ++i)
        q.trits[g * q.group + i] = detail::to_trit(float(x[i]), alpha);
    }
    return q;
  }

  template <class T, class B>
  static Tensor<T, B> mask_of(const Tensor<T, B>& h, const TernaryWeights& q,
                              const TernaryConfig& c) {
    auto m = Tensor<T, B>::empty(h.shape());
    for (int64_t i = 0; i < h.numel(); ++i) {
      const double s = q.scales[i / q.group];
      const double err = std::abs(double(h.data()[i]) - s * q.trits[i]);
      m.data()[i] = err <= c.trust * s / 2 ? T(1) : T(0);
    }
    return m;
  }
};

}  // namespace ternary::quant
