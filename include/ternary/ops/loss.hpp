// Cross-entropy losses on logits [..., V] and int32 targets [...], fused with log-softmax
// (and, for softcap_cross_entropy, with the softcap z = c tanh(x / c) of the GPT's output
// layer). Kernels: backend/cpu/loss.hpp. Tests: tests/test_loss.cpp.
//
//   loss = (1 / n) sum over rows r with targets[r] != ignore_index of (logsumexp(z_r) - z_r[t_r])
//   dz_r = g / n * (softmax(z_r) - onehot(t_r)),  0 on ignored rows
//   with a softcap: dx = dz * (1 - (z / c)^2)
//
// n is the number of non-ignored targets. If every target is ignored (n = 0) the loss is 0
// and the logits' gradient is 0 (PyTorch returns NaN there; a batch of padding should not
// poison a training run). A target outside [0, V) that is not ignore_index throws
// IndexError naming its value and position (on CUDA the kernel finds it, and the error is
// thrown at the next synchronisation with the device: the loss stays on the device).
#pragma once

#include <cmath>
#include <cstdint>

#include "ternary/autograd/var.hpp"
#include "ternary/backend/cpu/loss.hpp"
#include "ternary/backend/cpu/matmul.hpp"  // bf16_products

namespace ternary {

namespace detail {

// Logits and targets as [rows, V] and [rows], contiguous, validated.
template <class T, class B>
struct CrossEntropyRows {
  Tensor<T, B> logits;         // [rows, V]
  Tensor<int32_t, B> targets;  // [rows]
};

template <class T, class B>
CrossEntropyRows<T, B> cross_entropy_rows(const char* op, const Tensor<T, B>& logits,
                                          const Tensor<int32_t, B>& targets, int32_t ignore_index) {
  if (logits.dim() == 0)
    throw ShapeError(detail::cat(op, ": logits must have a class axis [..., V], got a 0-d tensor"));
  Shape expect(std::span<const int64_t>(logits.shape().begin(), logits.dim() - 1));
  if (!(targets.shape() == expect))
    throw ShapeError(detail::cat(op, ": targets of shape ", targets.shape(),
                                 " for logits of shape ", logits.shape(), " (targets need shape ",
                                 expect, ")"));
  const int64_t V = logits.size(-1), rows = numel(expect);
  CrossEntropyRows<T, B> r{logits.contiguous().reshape(Shape{rows, V}),
                           targets.contiguous().reshape(Shape{rows})};
  // (device targets are checked by the kernel instead: no host copy, no wait; the error is
  // thrown at the next synchronisation, backend/cuda/loss.cuh)
  if constexpr (B::on_host) {
    const int32_t* t = r.targets.data();
    for (int64_t i = 0; i < rows; ++i) {
      if (t[i] == ignore_index || (t[i] >= 0 && t[i] < V)) continue;
      throw IndexError(detail::cat(op, ": target ", t[i], " at position ", unravel_index(i, expect),
                                   " of targets ", expect, " is out of range for ", V,
                                   " classes (ignore_index is ", ignore_index, ")"));
    }
  }
  return r;
}

template <class T>
T check_cap(double cap) {
  if (!(cap > 0) || !std::isfinite(cap) || !(T(cap) > T(0)))
    throw Error(
        detail::cat("softcap_cross_entropy: the cap must be positive and finite, got ", cap));
  return T(cap);
}

template <class T, class B>
Tensor<T, B> cross_entropy_value(const char* op, const Tensor<T, B>& logits,
                                 const Tensor<int32_t, B>& targets, int32_t ignore_index, T cap) {
  auto r = cross_entropy_rows(op, logits, targets, ignore_index);
  auto zmax = Tensor<T, B>::empty(Shape{r.targets.numel()}), logsum = zmax.clone();
  if constexpr (!B::on_host) {  // the mean and the count stay on the device
    auto loss = Tensor<T, B>::empty(Shape{});
    auto count = Tensor<double, B>::empty(Shape{});
    cross_entropy_forward(B{}, r.logits, r.targets, ignore_index, cap, zmax, logsum, loss, count,
                          op, targets.shape());
    return loss;
  } else {
    auto s =
        backend::cross_entropy_forward(B{}, r.logits, r.targets, ignore_index, cap, zmax, logsum);
    return Tensor<T, B>::scalar(s.count ? T(s.loss_sum / double(s.count)) : T(0));
  }
}

template <class T, class B>
Var<T, B> cross_entropy_var(const char* op, const Var<T, B>& logits,
                            const Tensor<int32_t, B>& targets, int32_t ignore_index, T cap) {
  auto r = cross_entropy_rows(op, logits.value(), targets, ignore_index);
  auto zmax = Tensor<T, B>::empty(Shape{r.targets.numel()}), logsum = zmax.clone();
  // The backward reads targets later; own a copy in case the caller refills its buffer.
  const bool keep = logits.requires_grad() && grad_enabled();
  if constexpr (!B::on_host) {
    // The mean loss and the count stay on the device, and the backward reads its scale g /
    // count there: neither pass waits for the device. With bf16 products dx is written in bf16:
    // the logits' reader (the tied head's linear) rounds its output gradient to bf16 anyway, so
    // this saves the fp32 copy and the rounding pass (autocast's logits are bf16, so its
    // gradient is too). The kernel writes every element (ignored rows get 0).
    auto loss = Tensor<T, B>::empty(Shape{});
    auto count = Tensor<double, B>::empty(Shape{});
    cross_entropy_forward(B{}, r.logits, r.targets, ignore_index, cap, zmax, logsum, loss, count,
                          op, targets.shape());
    if (keep && r.targets.shares_storage_with(targets)) r.targets = r.targets.clone();
    return Var<T, B>::record(
        op, loss, {logits},
        [logits, r, zmax, logsum, ignore_index, cap, count](const Tensor<T, B>& g) {
          if constexpr (std::is_same_v<T, float>) {
            if (backend::bf16_products(B{})) {
              auto dx16 = Tensor<bf16, B>::empty(r.logits.shape());
              cross_entropy_backward(B{}, r.logits, r.targets, ignore_index, cap, zmax, logsum, g,
                                     count, dx16);
              logits.accumulate_grad_bf16(dx16.reshape(logits.shape()));
              return;
            }
          }
          auto dx = Tensor<T, B>::empty(r.logits.shape());
          cross_entropy_backward(B{}, r.logits, r.targets, ignore_index, cap, zmax, logsum, g,
                                 count, dx);
          logits.accumulate_grad(dx.reshape(logits.shape()));
        });
  } else {
    auto s =
        backend::cross_entropy_forward(B{}, r.logits, r.targets, ignore_index, cap, zmax, logsum);
    auto out = Tensor<T, B>::scalar(s.count ? T(s.loss_sum / double(s.count)) : T(0));
    if (keep && r.targets.shares_storage_with(targets)) r.targets = r.targets.clone();
    const int64_t count = s.count;
    return Var<T, B>::record(
        op, out, {logits},
        [logits, r, zmax, logsum, ignore_index, cap, count](const Tensor<T, B>& g) {
          const T scale = count > 0 ? T(double(g.item()) / double(count)) : T(0);
          auto dx = count > 0 ? Tensor<T, B>::empty(r.logits.shape())
                              : Tensor<T, B>::zeros(r.logits.shape());
          if (count > 0)
            backend::cross_entropy_backward(B{}, r.logits, r.targets, ignore_index, cap, zmax,
                                            logsum, scale, dx);
          logits.accumulate_grad(dx.reshape(logits.shape()));
        });
  }
}

}  // namespace detail

// ---- tensor level (evaluation: no tape) -------------------------------------------------------
template <class T, class B>
Tensor<T, B> cross_entropy(const Tensor<T, B>& logits, const Tensor<int32_t, B>& targets,
                           int32_t ignore_index = -100) {
  return detail::cross_entropy_value("cross_entropy", logits, targets, ignore_index, T(0));
}
template <class T, class B>
Tensor<T, B> softcap_cross_entropy(const Tensor<T, B>& logits, const Tensor<int32_t, B>& targets,
                                   double cap, int32_t ignore_index = -100) {
  return detail::cross_entropy_value("softcap_cross_entropy", logits, targets, ignore_index,
                                     detail::check_cap<T>(cap));
}

// ---- differentiable -------------------------------------------------------------------------
// Mean cross-entropy of logits [..., V] against targets [...]; a scalar.
template <class T, class B>
Var<T, B> cross_entropy(const Var<T, B>& logits, const Tensor<int32_t, B>& targets,
                        int32_t ignore_index = -100) {
  return detail::cross_entropy_var("cross_entropy", logits, targets, ignore_index, T(0));
}
// cross_entropy(softcap(logits, cap), targets), fused: softcap is c tanh(x / c), cap > 0.
template <class T, class B>
Var<T, B> softcap_cross_entropy(const Var<T, B>& logits, const Tensor<int32_t, B>& targets,
                                double cap, int32_t ignore_index = -100) {
  return detail::cross_entropy_var("softcap_cross_entropy", logits, targets, ignore_index,
                                   detail::check_cap<T>(cap));
}

}  // namespace ternary
