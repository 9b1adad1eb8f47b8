// QuEST (Panferov et al., 2025) as a ternary estimator: quantize in a Hadamard basis, where
// weights look Gaussian, with a clip fitted to that Gaussian, and trust only the gradient of
// weights the grid represents well.
//
//   per row group x of G weights (G a power of two):  h = H x, H the Walsh-Hadamard matrix / sqrt(G) (orthonormal,
//     symmetric: applying it twice is the identity)
//   alpha = 1.2240 * rms(h)      the MSE-optimal level of a 3-level uniform quantizer for a
//                                normal distribution (thresholds alpha / 2 = 0.6120 sigma: it
//                                is also the Lloyd-Max quantizer; MSE 0.1902 sigma^2)
//   q(h) = alpha * clamp(round(h / alpha), -1, 1)       w_used = H q(h)
//   trust mask m = |h - q(h)| <= trust * alpha / 2   (rounding error above half a step only
//                                                     happens to clipped weights)
//   backward: dL/dx = H (m * H dL/dw_used)   (H orthonormal and symmetric)
// The exported trits are those of q(h) in the Hadamard basis; a QuEST model's inference must
// rotate activations by the same H (not done by the artifact path, which exports STE models).
#pragma once

#include <cmath>

#include "ternary/quant/ternary.hpp"

namespace ternary::quant {

inline constexpr double kGaussianTernaryClip = 1.2240;

// In-place orthonormal fast Walsh-Hadamard transform of n (a power of two) values.
template <class T>
void fwht(T* x, int64_t n) {
  for (int64_t len = 1; len < n; len <<= 1)
    for (int64_t i = 0; i < n; i += len << 1)
      for (int64_t j = i; j < i + len; ++j) {
        const T a = x[j], b = x[j + len];
        x[j] = a + b;
        x[j + len] = a - b;
      }
  const T norm = T(1) / std::sqrt(T(n));
  for (int64_t i = 0; i < n; ++i) x[i] *= norm;
}

struct QuESTConfig {
  int64_t group = 0;    // Hadamard group size along a row; 0 = the whole row
  double trust = 1.0;   // trust bound in half grid steps
};

struct QuEST {
  static constexpr const char* name = "quest";
  inline static QuESTConfig options{};

  static int64_t group_for(const Shape& s) {
    const int64_t cols = s.size() ? s.back() : 1;
    const int64_t g = options.group > 0 ? options.group : cols;
    if (g <= 0 || (g & (g - 1)) != 0 || cols % g != 0)
      throw ShapeError(ternary::detail::cat("QuEST: Hadamard group ", g, " must be a power of two dividing the row length ",
                                   cols, " (weight ", s, ")"));
    return g;
  }

  // Hadamard-domain trits and one scale per group (alpha).
  template <class T, class B>
  static TernaryWeights quantize(const Tensor<T, B>& w, const TernaryConfig&) {
    const int64_t G = group_for(w.shape());
    Tensor<T, B> h = w.clone();
    TernaryWeights q;
    q.shape = w.shape();
    q.group = G;
    const int64_t n = h.numel(), ng = n / G;
    q.trits.resize(n);
    q.scales.resize(ng);
    for (int64_t g = 0; g < ng; ++g) {
      T* x = h.data() + g * G;
      fwht(x, G);
      double ss = 0;
      for (int64_t i = 0; i < G; ++i) ss += double(x[i]) * double(x[i]);
      const float alpha = float(kGaussianTernaryClip * std::sqrt(ss / double(G)) + 1e-12);
      q.scales[g] = alpha;
      for (int64_t i = 0; i < G; ++i) {
        const float r = std::nearbyint(float(x[i]) / alpha);
        q.trits[g * G + i] = int8_t(r > 1.f ? 1.f : (r < -1.f ? -1.f : r));
      }
    }
    return q;
  }

  // The mask of trusted entries (1 or 0) in the Hadamard domain, for tests and analysis.
  template <class T, class B>
  static Tensor<T, B> trust_mask(const Tensor<T, B>& w, const TernaryConfig& c) {
    const int64_t G = group_for(w.shape());
    TernaryWeights q = quantize(w, c);
    Tensor<T, B> h = w.clone();
    auto m = Tensor<T, B>::empty(w.shape());
    for (int64_t g = 0; g < h.numel() / G; ++g) {
      T* x = h.data() + g * G;
      fwht(x, G);
      const double bound = options.trust * q.scales[g] / 2;
      for (int64_t i = 0; i < G; ++i)
        m.data()[g * G + i] = std::abs(double(x[i]) - double(q.scales[g]) * q.trits[g * G + i]) <= bound + 1e-12 ? T(1) : T(0);
    }
    return m;
  }

  template <class T, class B>
  static Var<T, B> apply(const Var<T, B>& w, const TernaryConfig& c, double lambda) {
    if (lambda <= 0) return w;
    const int64_t G = group_for(w.shape());
    TernaryWeights q = quantize(w.value(), c);
    Tensor<T, B> used = q.template dequantize<T>();  // q(h) in the Hadamard basis ...
    for (int64_t g = 0; g < used.numel() / G; ++g) fwht(used.data() + g * G, G);  // ... back to w's basis
    Tensor<T, B> mask = trust_mask(w.value(), c);
    return Var<T, B>::record("ternary_quest", detail::blend(w.value(), used, lambda), {w},
                             [w, mask, G](const Tensor<T, B>& g) {
                               Tensor<T, B> d = g.clone();
                               for (int64_t k = 0; k < d.numel() / G; ++k) fwht(d.data() + k * G, G);
                               d *= mask;
                               for (int64_t k = 0; k < d.numel() / G; ++k) fwht(d.data() + k * G, G);
                               w.accumulate_grad(d);
                             });
  }
};

}  // namespace ternary::quant
