// QuantizedWeightCache: within one such scope, the STE quantizer (quant/ternary.hpp) quantizes
// each latent weight once and hands the same tensor to every later forward pass, and the bf16
// products (ops/matmul.hpp's weight_to_bf16) round each weight to bf16 once.
//
//   {
//     quant::QuantizedWeightCache cache;          // weights must not change in here
//     for (micro-batch) { forward; backward; }    // each weight quantized once, not A times
//   }
//   opt.step();                                   // after the scope: the next one re-quantizes
//
// Gradient accumulation runs A forward passes with the same weights, and quantizing 54
// matrices costs two kernel launches each on the GPU. The cache is explicit rather than keyed
// on a version counter of the weights: nothing tracks in-place writes to a tensor, so only a
// caller that knows the weights are fixed (train_loop around a step's micro-batches, the
// scoring loop) opens a scope. A scope is per thread; a nested scope uses the outer one.
#pragma once

#include <any>
#include <array>
#include <typeindex>
#include <vector>

#include "ternary/core/tensor.hpp"

namespace ternary::quant {

class QuantizedWeightCache {
 public:
  using Key = std::array<double, 3>;  // the quantizer's settings, e.g. group, eps, lambda

  QuantizedWeightCache() {
    if (!active_) active_ = this;
  }
  ~QuantizedWeightCache() {
    if (active_ == this) active_ = nullptr;
  }
  QuantizedWeightCache(const QuantizedWeightCache&) = delete;
  QuantizedWeightCache& operator=(const QuantizedWeightCache&) = delete;

  // The scope open on this thread, or nullptr.
  static QuantizedWeightCache* active() { return active_; }

  // The quantized value stored for latent weight `w` under `key` (the quantizer's settings,
  // e.g. group size, eps and lambda), or nullptr. find_as: a value of another element type V
  // (the bf16 copies of ops/matmul.hpp's weight_to_bf16).
  template <class T, class B>
  const Tensor<T, B>* find(const Tensor<T, B>& w, const Key& key) const {
    return find_as<T>(w, key);
  }
  template <class V, class T, class B>
  const Tensor<V, B>* find_as(const Tensor<T, B>& w, const Key& key) const {
    for (const Entry& e : entries_)
      if (e.data == w.data() && e.type == typeid(Tensor<V, B>) && e.shape == w.shape() &&
          e.strides == w.strides() && e.key == key)
        return std::any_cast<Tensor<V, B>>(&e.value);
    return nullptr;
  }
  // The entry holds w too: its memory is not reused by another tensor while the scope lasts
  // (a weight computed in the scope, such as a view or a product, gets a new address each time).
  template <class T, class B, class V>
  void insert(const Tensor<T, B>& w, const Key& key, const Tensor<V, B>& q) {
    entries_.push_back({w.data(), typeid(Tensor<V, B>), w.shape(), w.strides(), key, q, w});
  }
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    const void* data;  // the weight's memory (kept by `source` while the scope lasts)
    std::type_index type;
    Shape shape;
    Strides strides;  // a transposed view of a square weight has the same data and shape
    Key key;
    std::any value;   // Tensor<V, B>: keeps the quantized tensor alive
    std::any source;  // Tensor<T, B>: the weight itself (its address stays its own)
  };
  std::vector<Entry> entries_;
  static inline thread_local QuantizedWeightCache* active_ = nullptr;
};

}  // namespace ternary::quant
