// DataParallel: data-parallel training of one model replica per rank, in a few calls.
//
//   dist::DataParallel<float> dp(model, comm);   // rank 0's parameters on every rank
//   for each step:
//     Batch b = sharded.next();                  // this rank's rows (dist/sharding.hpp)
//     auto loss = model.loss(b.inputs, b.targets);
//     double mean_loss = dp.average(loss.item()); // the same on every rank
//     if (!std::isfinite(mean_loss)) { Tape::current().clear(); dp.skip_step(); continue; }
//     loss.backward();                           // buckets all-reduce while backward runs
//     dp.finish_gradients();                     // every grad = its mean over ranks
//     clip, optimizer step, zero_grad            // identical on every rank
//     if (dp.is_main()) write logs, checkpoints, artifacts
//
// Because every rank then applies the same update to the same averaged gradient, the
// replicas stay identical; check_parameters_identical() verifies it (exactly, bit for bit).
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ternary/dist/buckets.hpp"
#include "ternary/dist/communicator.hpp"
#include "ternary/nn/module.hpp"

namespace ternary::dist {

struct DataParallelOptions {
  double bucket_mib = 25.0;        // gradient bucket size
  bool broadcast_at_start = true;  // copy rank 0's parameters to every rank in the constructor
};

template <class T = float, class B = cpu>
class DataParallel {
 public:
  DataParallel(const nn::Module<T, B>& model, Communicator& comm, const DataParallelOptions& o = {})
      : named_(model.named_parameters()), comm_(comm) {
    buckets_detail::check_backend<B>(comm, "DataParallel");
    if (o.broadcast_at_start) broadcast_parameters();
    std::vector<Var<T, B>> params;
    for (auto& [name, p] : named_) params.push_back(p);
    buckets_ = std::make_unique<GradBuckets<T, B>>(params, comm, o.bucket_mib);
  }

  int rank() const { return comm_.rank(); }
  int world_size() const { return comm_.world_size(); }
  // Only rank 0 writes logs, checkpoints and artifacts.
  bool is_main() const { return comm_.rank() == 0; }
  Communicator& communicator() { return comm_; }
  GradBuckets<T, B>& buckets() { return *buckets_; }

  // Every rank's parameters become rank 0's (after init, or after rank 0 loaded a checkpoint).
  void broadcast_parameters() {
    for (auto& [name, p] : named_) {
      Tensor<T, B> v = p.value();
      Tensor<T, B> c = v.contiguous();
      comm_.broadcast(c.data(), size_t(c.numel()), 0);
      if (!c.shares_storage_with(v)) v.assign(c);
    }
  }

  // The mean over ranks of a host value, identical on every rank: log it as the step's loss,
  // and decide on it (a NaN on any rank makes it NaN everywhere, so all ranks skip together).
  double average(double local) {
    auto t = Tensor<double, B>::from(Shape{1}, {local});
    comm_.all_reduce(t.data(), 1, ReduceOp::average);
    comm_.wait();
    return t.item();
  }

  // After loss.backward(): completes the bucketed all-reduce; every gradient is its mean.
  void finish_gradients() { buckets_->finish(); }
  // Instead of finish_gradients() when no rank ran backward this step.
  void skip_step() { buckets_->reset(); }
  // Gradient accumulation: set_sync(false) before all but the last micro-batch's backward.
  void set_sync(bool on) { buckets_->set_sync(on); }

  // FNV-1a of this rank's parameter bits, one per parameter (registration order).
  std::vector<uint64_t> parameter_checksums() const {
    std::vector<uint64_t> out;
    for (auto& [name, p] : named_) {
      uint64_t h = 1469598103934665603ull;
      for (T x : p.value().to_vector()) {
        unsigned char bytes[sizeof(T)];
        std::memcpy(bytes, &x, sizeof(T));
        for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
      }
      out.push_back(h);
    }
    return out;
  }
  // A collective: throws on every rank, naming the first parameter that differs from rank 0's
  // and on how many ranks, unless all replicas are bit-identical.
  void check_parameters_identical() {
    const auto mine = parameter_checksums();
    const size_t n = mine.size();
    std::vector<double> halves(2 * n);  // 32-bit halves: exact in a double
    for (size_t i = 0; i < n; ++i)
      halves[2 * i] = double(mine[i] >> 32), halves[2 * i + 1] = double(mine[i] & 0xffffffffu);
    auto ref = Tensor<double, B>::from(Shape{int64_t(2 * n)}, halves);
    comm_.broadcast(ref.data(), 2 * n, 0);
    const std::vector<double> main = ref.to_vector();
    std::vector<double> differs(n);
    for (size_t i = 0; i < n; ++i)
      differs[i] = (main[2 * i] != halves[2 * i] || main[2 * i + 1] != halves[2 * i + 1]) ? 1 : 0;
    auto count = Tensor<double, B>::from(Shape{int64_t(n)}, differs);
    comm_.all_reduce(count.data(), n, ReduceOp::sum);
    comm_.wait();
    const std::vector<double> total = count.to_vector();
    for (size_t i = 0; i < n; ++i)
      if (total[i] != 0)
        throw Error(detail::cat("DataParallel: parameter '", named_[i].first, "' ",
                                named_[i].second.shape(), " differs from rank 0's on ",
                                int64_t(total[i]), " of ", world_size(),
                                " ranks; the replicas have diverged"));
  }

 private:
  std::vector<std::pair<std::string, Var<T, B>>> named_;
  Communicator& comm_;
  std::unique_ptr<GradBuckets<T, B>> buckets_;
};

}  // namespace ternary::dist
