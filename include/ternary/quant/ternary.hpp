// Ternary weights (BitNet b1.58): w -> s * clamp(round(w / s), -1, 1), s = mean(|w|) + eps,
// one scale per tensor, per output row, or per group of k consecutive weights of a row.
//
// Ternary<Estimator> holds the latent full-precision weight (the parameter the optimizer
// updates) and produces the weight the forward pass uses. The estimator decides the
// quantizer and its gradient:
//   STE    absmean quantizer; gradient straight through: w + stop_gradient(q(w) - w)
//   QuEST  Hadamard-domain quantizer with a Gaussian-fit clip and a trust mask (quest.hpp)
// A lambda in [0, 1] blends full precision into ternary for gradual fine-tuning:
//   w_used = w + lambda * stop_gradient(q(w) - w)   (lambda = 0: w exactly; 1: q(w) exactly)
// An estimator is a type with
//   static TernaryWeights quantize(const Tensor<T, B>& w, const TernaryConfig&);
//   static Var<T, B> apply(const Var<T, B>& w, const TernaryConfig&, double lambda);
// and apply(w, c, 1).value() == quantize(w.value(), c).dequantize() exactly, so exported
// trits and scales reproduce the forward pass bit for bit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ternary/autograd/var.hpp"
#include "ternary/quant/hadamard.hpp"
#include "ternary/quant/packing.hpp"
#include "ternary/quant/weight_cache.hpp"

namespace ternary::quant {

enum class Granularity { per_tensor, per_row, per_group };

struct TernaryConfig {
  Granularity granularity = Granularity::per_tensor;
  int64_t group_size = 128;  // per_group: consecutive weights of a row sharing a scale
  double eps = 1e-5;         // added to the scale: an all-zero block gets scale eps, trits 0
  double trust = 1.0;        // QuEST only: trust bound, in half grid steps (quest.hpp)
};

// The exact numbers a ternary forward pass uses: trits in {-1, 0, 1} (row-major) and one
// scale per `group` consecutive elements. value[i] = scales[i / group] * trits[i], rotated
// back by the Walsh-Hadamard transform of blocks of `hadamard` values when hadamard > 0
// (QuEST quantizes in that basis).
struct TernaryWeights {
  Shape shape;
  std::vector<int8_t> trits;
  std::vector<float> scales;
  int64_t group = 0;
  int64_t hadamard = 0;

  // Throws unless the sizes agree with each other and every trit is -1, 0 or 1.
  void validate(const char* op) const {
    const int64_t n = numel(shape);
    if (int64_t(trits.size()) != n || group <= 0 || n % group != 0 ||
        int64_t(scales.size()) != n / group)
      throw ShapeError(ternary::detail::cat(op, ": ", trits.size(), " trits and ", scales.size(),
                                            " scales of group ", group, " for a weight of shape ",
                                            shape, " (", n, " values)"));
    for (size_t i = 0; i < trits.size(); ++i) ternary::detail::check_trit(trits[i], i, op);
    if (hadamard != 0 && (!is_power_of_two(hadamard) || n % hadamard != 0))
      throw ShapeError(ternary::detail::cat(op, ": Hadamard block ", hadamard,
                                            " does not tile a weight of shape ", shape));
  }

  template <class T = float>
  Tensor<T> dequantize() const {
    validate("TernaryWeights::dequantize");
    auto t = Tensor<T>::empty(shape);
    for (size_t i = 0; i < trits.size(); ++i) t.data()[i] = T(scales[i / group]) * T(trits[i]);
    if (hadamard > 0) fwht_blocks(t.data(), t.numel(), hadamard);
    return t;
  }
};

// Elements per scale for a [rows, cols] weight (or any shape: rows = shape[0]).
inline int64_t scale_group(const Shape& shape, const TernaryConfig& c) {
  const int64_t n = numel(shape);
  const int64_t cols = shape.size() ? n / std::max<int64_t>(shape[0], 1) : n;
  switch (c.granularity) {
    case Granularity::per_tensor:
      return std::max<int64_t>(n, 1);
    case Granularity::per_row:
      return std::max<int64_t>(cols, 1);
    case Granularity::per_group:
      if (c.group_size <= 0 || cols % c.group_size != 0)
        throw ShapeError(ternary::detail::cat("ternary: group size ", c.group_size,
                                              " does not divide the row length ", cols,
                                              " of a weight of shape ", shape));
      return c.group_size;
  }
  return n;
}

namespace detail {
// round-half-to-even(v / s) clamped to [-1, 1]; v / s is computed in float, as the scales are.
// A zero scale (an all-zero group) gives 0/0: every trit of such a group is 0. NaN never
// reaches the int8 conversion (undefined behaviour); NaN weights are the training loop's to
// report (its non-finite guard names the parameter).
inline int8_t to_trit(float v, float s) {
  const float r = std::nearbyint(v / s);
  if (r != r) return 0;
  return int8_t(r > 1.f ? 1.f : (r < -1.f ? -1.f : r));
}
// w + lambda * (q - w) with the exact end points the gradual schedule promises.
template <class T, class B>
Tensor<T, B> blend(const Tensor<T, B>& w, const Tensor<T, B>& q, double lambda) {
  if (lambda >= 1) return q;
  if (lambda <= 0) return w.contiguous();
  return Tensor<T, B>(w + (q - w) * T(lambda));
}
}  // namespace detail

namespace detail {
// The absmean quantizer's loop: for each scale group g of the contiguous w, its scale s and
// each element's trit, handed to emit(g, s, i, trit) (i: flat index). Throws on a NaN or inf.
template <class T, class B, class Emit>
void absmean_groups(const Tensor<T, B>& wc, int64_t group, double eps, const Shape& shape,
                    Emit&& emit) {
  const int64_t n = wc.numel(), n_groups = n / group;
  const T* x = wc.data();
  int64_t bad = -1;  // a group with a non-finite value (no throwing inside the parallel loop)
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
  for (int64_t g = 0; g < n_groups; ++g) {
    const T* xg = x + g * group;
    double sum_abs = 0;
    for (int64_t i = 0; i < group; ++i) sum_abs += std::abs(double(xg[i]));
    if (!std::isfinite(sum_abs)) {
#pragma omp critical(ternary_quant_bad)
      bad = g;
      continue;
    }
    const float s = float(sum_abs / double(group) + eps);
    for (int64_t i = 0; i < group; ++i) emit(g, s, g * group + i, to_trit(float(xg[i]), s));
  }
  if (bad >= 0)
    throw Error(ternary::detail::cat("ternary: weight of shape ", shape,
                                     " has a NaN or inf in scale group ", bad));
}
}  // namespace detail

// Absmean ternary quantization. Rounding is half to even (as torch.round), so w / s = +-0.5
// gives 0 and +-1.5 gives +-1. A NaN or inf weight throws (a diverged run, not a trit).
template <class T, class B>
TernaryWeights quantize_absmean(const Tensor<T, B>& w, const TernaryConfig& c = {}) {
  // Device memory (e.g. export from a GPU model): quantize a host copy.
  if constexpr (!B::on_host) return quantize_absmean(Tensor<T>::from(w.shape(), w.to_vector()), c);
  TernaryWeights q;
  q.shape = w.shape();
  q.group = scale_group(w.shape(), c);
  q.trits.resize(w.numel());
  q.scales.resize(w.numel() / q.group);
  detail::absmean_groups(w.contiguous(), q.group, c.eps, w.shape(),
                         [&](int64_t g, float s, int64_t i, int8_t trit) {
                           q.scales[g] = s;
                           q.trits[i] = trit;
                         });
  return q;
}

namespace detail {
// quantize_absmean(w, c).dequantize<T>() (the same numbers), written straight into a tensor:
// the training forward pass needs no trit and scale vectors (no heap allocation per step).
template <class T>
Tensor<T, cpu> absmean_dequantized(const Tensor<T, cpu>& w, const TernaryConfig& c) {
  auto out = Tensor<T, cpu>::empty(w.shape());
  T* o = out.data();
  absmean_groups(w.contiguous(), scale_group(w.shape(), c), c.eps, w.shape(),
                 [o](int64_t, float s, int64_t i, int8_t trit) { o[i] = T(s) * T(trit); });
  return out;
}
}  // namespace detail

// Straight-through estimator with the absmean quantizer.
struct STE {
  static constexpr const char* name = "ste";
  template <class T, class B>
  static TernaryWeights quantize(const Tensor<T, B>& w, const TernaryConfig& c) {
    return quantize_absmean(w, c);
  }
  // Forward: the blended weight; backward: the identity. Inside a QuantizedWeightCache scope
  // (weight_cache.hpp) each weight is quantized once and the result reused.
  template <class T, class B>
  static Var<T, B> apply(const Var<T, B>& w, const TernaryConfig& c, double lambda) {
    if (lambda <= 0) return w;
    const int64_t group = scale_group(w.shape(), c);
    QuantizedWeightCache* cache = QuantizedWeightCache::active();
    const QuantizedWeightCache::Key key{double(group), c.eps, lambda};  // no allocation
    Tensor<T, B> used;
    if (const Tensor<T, B>* hit = cache ? cache->find(w.value(), key) : nullptr) {
      used = *hit;
    } else {
      Tensor<T, B> q;
      if constexpr (B::on_host)
        q = detail::absmean_dequantized(w.value(), c);  // == quantize(w, c).dequantize<T>()
      else  // the same numbers from a device kernel (by the tag, e.g. backend/cuda/quant.cuh)
        q = absmean_fake_quantize(B{}, w.value(), group, c.eps);
      used = detail::blend(w.value(), q, lambda);
      if (cache) cache->insert(w.value(), key, used);
    }
    // backward: the identity, so the users' gradient rules add straight into w's gradient
    return Var<T, B>::straight_through(used, w);
  }
};

// A latent full-precision weight seen through a ternary estimator.
template <class Estimator = STE, class T = float, class B = cpu>
class Ternary {
 public:
  Ternary() = default;
  Ternary(Var<T, B> latent, TernaryConfig config = {})
      : latent_(std::move(latent)), config_(config) {
    scale_group(latent_.shape(), config_);  // validates the group size now, not mid-training
  }
  // The weight the forward pass uses (lambda = 1: fully ternary).
  Var<T, B> forward(double lambda = 1.0) const {
    return Estimator::apply(latent_, config_, lambda);
  }
  // The trits and scales of the current latent weight (what export writes):
  // quantized().dequantize() equals forward(1).value() exactly.
  TernaryWeights quantized() const { return Estimator::quantize(latent_.value(), config_); }
  const Var<T, B>& latent() const { return latent_; }
  const TernaryConfig& config() const { return config_; }

 private:
  Var<T, B> latent_;
  TernaryConfig config_;
};

// Ternary weights with their scales in packed form (2 bits or 1.6 bits per weight), and back.
inline PackedTernary pack(const TernaryWeights& w, TritEncoding encoding = TritEncoding::base3) {
  w.validate("quant::pack");
  PackedTernary p = pack_ternary(w.trits, w.shape, w.scales, w.group, encoding);
  p.hadamard = w.hadamard;
  return p;
}
inline TernaryWeights unpack(const PackedTernary& p) {
  TernaryWeights w{p.shape, unpack_trits(p), p.scales, p.group, p.hadamard};
  w.validate("quant::unpack");
  return w;
}

}  // namespace ternary::quant
