// Gradient averaging across data-parallel ranks.
//
// all_reduce_gradients(params, comm): the plain reference, one all-reduce per parameter after
// backward. GradBuckets: what training uses. Parameters are grouped, in reverse registration
// order (roughly the order backward finishes their gradients), into buckets of about
// `bucket_mib` MiB, each with one flat buffer. A hook on every parameter (the tape's
// grad-ready callback, autograd/tape.hpp) marks its gradient final during backward; when
// all of a bucket's gradients are final, they are copied into the buffer and its average
// all-reduce is issued right away, while backward goes on computing the gradients of earlier
// layers. finish() issues what is left, waits, and copies the averages back.
//
// Buckets are issued strictly in index order (a ready bucket waits for the ones before it),
// so every rank issues the same collectives in the same order even if readiness order
// differed. Each buffer ends with one flag per parameter (1 if this rank has a gradient):
// after the all-reduce a parameter gets a gradient exactly when some rank had one, so a
// parameter unused everywhere keeps an undefined gradient, as in a single-process run.
//
// Gradient accumulation over micro-batches: set_sync(false) for all but the last backward of
// a step (hooks then do nothing), set_sync(true) before the last; finish() after it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "ternary/autograd/var.hpp"
#include "ternary/dist/communicator.hpp"

namespace ternary::dist {

namespace buckets_detail {
// Each distinct parameter that requires grad once (tied weights appear once), in order.
template <class T, class B>
std::vector<Var<T, B>> distinct_params(const std::vector<Var<T, B>>& params) {
  std::vector<Var<T, B>> out;
  std::set<const T*> seen;
  for (const auto& p : params)
    if (p.defined() && p.requires_grad() && seen.insert(p.value().data()).second) out.push_back(p);
  return out;
}
template <class B>
void check_backend(const Communicator& comm, const char* who) {
  if (comm.device_buffers() == B::on_host)
    throw Error(detail::cat(who, ": the communicator works on ",
                            comm.device_buffers() ? "device" : "host",
                            " buffers but the parameters live on ", B::name,
                            comm.device_buffers() ? " (NCCL needs Tensor<T, cuda> parameters)"
                                                  : " (use NcclCommunicator for device tensors)"));
}
}  // namespace buckets_detail

// The reference: after backward, every gradient becomes its mean over ranks, one all-reduce
// per parameter (and one for the has-gradient flags), in registration order.
template <class T, class B>
void all_reduce_gradients(const std::vector<Var<T, B>>& params, Communicator& comm) {
  buckets_detail::check_backend<B>(comm, "all_reduce_gradients");
  const auto ps = buckets_detail::distinct_params(params);
  std::vector<T> has(ps.size());
  for (size_t i = 0; i < ps.size(); ++i) has[i] = ps[i].grad().defined() ? T(1) : T(0);
  auto flags = Tensor<T, B>::from(Shape{int64_t(ps.size())}, has);
  comm.all_reduce(flags.data(), ps.size(), ReduceOp::sum);
  comm.wait();
  has = flags.to_vector();
  for (size_t i = 0; i < ps.size(); ++i) {
    if (has[i] == T(0)) continue;  // no rank has a gradient: stays undefined
    if (!ps[i].grad().defined()) ps[i].accumulate_grad(Tensor<T, B>::zeros(ps[i].shape()));
    Tensor<T, B> g = ps[i].grad();
    Tensor<T, B> c = g.contiguous();
    comm.all_reduce(c.data(), size_t(c.numel()), ReduceOp::average);
    comm.wait();
    if (!c.shares_storage_with(g)) g.assign(c);
  }
}

template <class T = float, class B = cpu>
class GradBuckets {
 public:
  struct Bucket {
    std::vector<size_t> params;  // indices into parameters(), in buffer order
    int64_t numel = 0;           // gradient elements (the buffer holds numel + params.size())
    Tensor<T, B> buffer;
    size_t pending = 0;  // gradients not final yet in this step
    bool launched = false;
  };

  // `params` in registration order (Module::parameters()); bucket_mib > 0.
  GradBuckets(const std::vector<Var<T, B>>& params, Communicator& comm, double bucket_mib = 25.0)
      : params_(buckets_detail::distinct_params(params)), comm_(comm) {
    buckets_detail::check_backend<B>(comm, "GradBuckets");
    if (!(bucket_mib > 0))
      throw Error(
          detail::cat("GradBuckets: bucket size must be positive, got ", bucket_mib, " MiB"));
    const double cap_bytes = bucket_mib * 1024.0 * 1024.0;
    slot_.resize(params_.size());
    offset_.resize(params_.size());
    for (size_t k = params_.size(); k-- > 0;) {
      if (buckets_.empty() || double(buckets_.back().numel * int64_t(sizeof(T))) >= cap_bytes)
        buckets_.emplace_back();
      Bucket& b = buckets_.back();
      slot_[k] = buckets_.size() - 1;
      offset_[k] = b.numel;
      b.params.push_back(k);
      b.numel += params_[k].numel();
    }
    for (auto& b : buckets_)
      b.buffer = Tensor<T, B>::zeros(Shape{b.numel + int64_t(b.params.size())});
    reset();
    for (size_t k = 0; k < params_.size(); ++k)
      params_[k].set_grad_ready_hook([this, k] { on_ready(k); });
  }
  ~GradBuckets() {
    for (auto& p : params_) p.set_grad_ready_hook({});
  }
  GradBuckets(const GradBuckets&) = delete;
  GradBuckets& operator=(const GradBuckets&) = delete;

  // Off: backward's hooks do nothing (micro-batches whose gradients keep accumulating).
  void set_sync(bool on) { sync_ = on; }
  bool sync() const { return sync_; }

  // After the step's last backward: issues the buckets not issued yet (all of them if no hook
  // fired), waits, and leaves every gradient equal to its mean over ranks.
  void finish() {
    while (next_ < buckets_.size()) launch(next_++);
    comm_.wait();
    for (auto& b : buckets_) copy_back(b);
    reset();
  }
  // Forgets a step that will not be finished (every rank must do the same, e.g. all skip a
  // step whose loss, averaged over ranks, is not finite). Issued buckets still complete.
  void reset() {
    comm_.wait();
    for (auto& b : buckets_) b.pending = b.params.size(), b.launched = false;
    ready_.assign(params_.size(), false);
    next_ = 0;
    launched_by_hooks_ = 0;
  }

  const std::vector<Var<T, B>>& parameters() const { return params_; }
  const std::vector<Bucket>& buckets() const { return buckets_; }
  // Buckets issued from inside backward in the current step (before finish()), i.e. whose
  // communication overlapped the rest of backward. Read it before finish().
  size_t launched_during_backward() const { return launched_by_hooks_; }

 private:
  void on_ready(size_t k) {
    if (!sync_) return;
    if (ready_[k])
      throw Error(detail::cat(
          "GradBuckets: a second backward reached parameter ", k, " (shape ", params_[k].shape(),
          ") before finish(); for gradient accumulation call set_sync(false) before all but "
          "the last micro-batch's backward"));
    ready_[k] = true;
    Bucket& b = buckets_[slot_[k]];
    if (--b.pending > 0) return;
    while (next_ < buckets_.size() && buckets_[next_].pending == 0) {
      launch(next_++);
      ++launched_by_hooks_;
    }
  }
  void launch(size_t i) {
    Bucket& b = buckets_[i];
    for (size_t j = 0; j < b.params.size(); ++j) {
      const size_t k = b.params[j];
      const auto& g = params_[k].grad();
      Tensor<T, B> dst = b.buffer.narrow(0, offset_[k], params_[k].numel());
      if (g.defined())
        dst.view(g.shape()).assign(g);
      else
        dst.fill(T(0));
      b.buffer.narrow(0, b.numel + int64_t(j), 1).fill(g.defined() ? T(1) : T(0));
    }
    comm_.all_reduce(b.buffer.data(), size_t(b.buffer.numel()), ReduceOp::average);
    b.launched = true;
  }
  void copy_back(Bucket& b) {
    const std::vector<T> flags = b.buffer.narrow(0, b.numel, int64_t(b.params.size())).to_vector();
    for (size_t j = 0; j < b.params.size(); ++j) {
      const size_t k = b.params[j];
      if (flags[j] == T(0)) continue;  // no rank has this gradient
      Tensor<T, B> avg =
          b.buffer.narrow(0, offset_[k], params_[k].numel()).view(params_[k].shape());
      if (params_[k].grad().defined()) {
        Tensor<T, B> g = params_[k].grad();
        g.assign(avg);
      } else {
        params_[k].accumulate_grad(avg);  // takes a copy
      }
    }
  }

  std::vector<Var<T, B>> params_;
  Communicator& comm_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> slot_;     // parameter -> bucket
  std::vector<int64_t> offset_;  // parameter -> offset in its bucket's buffer
  std::vector<bool> ready_;
  size_t next_ = 0;  // the next bucket to issue
  size_t launched_by_hooks_ = 0;
  bool sync_ = true;
};

}  // namespace ternary::dist
