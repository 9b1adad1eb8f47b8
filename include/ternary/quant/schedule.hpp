// Gradual quantization for fine-tuning a full-precision model to ternary ("An Extra RMSNorm
// is All You Need for Fine Tuning to 1.58 Bits", arXiv 2505.08823): each layer's lambda ramps from
// 0 (full precision) to 1 (ternary) over its own window of steps, layer after layer in a chosen
// order, so the network adapts to one quantized layer at a time.
//
//   layer at position p of the order, window W = ramp_steps / n_layers:
//     lambda(step) = clamp((step - start - p W) / W, 0, 1)
// With n_layers = 1 this is one linear ramp over ramp_steps.
#pragma once

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <numeric>
#include <vector>

#include "ternary/core/error.hpp"

namespace ternary::quant {

class LambdaSchedule {
 public:
  // Layers ramp in `order` (default 0, 1, ..., n_layers - 1) during steps
  // [start, start + ramp_steps).
  LambdaSchedule(int64_t n_layers, int64_t ramp_steps, int64_t start = 0,
                 std::vector<int64_t> order = {})
      : n_(n_layers), ramp_(ramp_steps), start_(start), position_(n_layers) {
    if (n_layers <= 0 || ramp_steps < 0 || start < 0)
      throw Error(ternary::detail::cat(
          "LambdaSchedule: needs n_layers > 0, ramp_steps >= 0, start >= 0; got ", n_layers, ", ",
          ramp_steps, ", ", start));
    if (order.empty()) {
      order.resize(n_layers);
      std::iota(order.begin(), order.end(), 0);
    }
    if (int64_t(order.size()) != n_layers)
      throw Error(ternary::detail::cat("LambdaSchedule: the order lists ", order.size(),
                                       " layers, expected ", n_layers));
    std::vector<bool> seen(n_layers, false);
    for (size_t p = 0; p < order.size(); ++p) {
      if (order[p] < 0 || order[p] >= n_layers || seen[order[p]])
        throw Error(ternary::detail::cat("LambdaSchedule: the order must be a permutation of 0..",
                                         n_layers - 1, "; entry ", p, " is ", order[p]));
      seen[order[p]] = true;
      position_[order[p]] = int64_t(p);
    }
  }
  // Layer order from last to first (the other common choice).
  static std::vector<int64_t> reversed(int64_t n_layers) {
    std::vector<int64_t> o(n_layers);
    std::iota(o.rbegin(), o.rend(), 0);
    return o;
  }

  double lambda(int64_t layer, int64_t step) const {
    if (layer < 0 || layer >= n_)
      throw IndexError(ternary::detail::cat("LambdaSchedule: layer ", layer, " of ", n_));
    if (ramp_ == 0) return step >= start_ ? 1.0 : 0.0;
    const double window = double(ramp_) / double(n_);
    const double t = (double(step - start_) - double(position_[layer]) * window) / window;
    return std::clamp(t, 0.0, 1.0);
  }
  // Sets each layer's lambda for this step: layers[i]->set_lambda(lambda(i, step)). A
  // "layer" is anything with set_lambda (a BitLinear, or a block that forwards it to its
  // projections); layers.size() must be num_layers().
  template <class Layers>
  void apply(const Layers& layers, int64_t step) const {
    if (int64_t(std::size(layers)) != n_)
      throw Error(ternary::detail::cat("LambdaSchedule::apply: ", std::size(layers),
                                       " layers for a schedule of ", n_));
    int64_t i = 0;
    for (const auto& layer : layers) layer->set_lambda(lambda(i++, step));
  }
  // The step from which every layer is fully ternary.
  int64_t end() const { return start_ + ramp_; }
  int64_t num_layers() const { return n_; }

 private:
  int64_t n_, ramp_, start_;
  std::vector<int64_t> position_;  // layer -> its position in the order
};

}  // namespace ternary::quant
