// Communicator: the collectives data-parallel training needs (all-reduce, broadcast, barrier)
// among `world_size` ranks, each holding a contiguous buffer of float or double.
//
// Two implementations: NcclCommunicator (dist/nccl_communicator.hpp, one process per GPU,
// device buffers) and InProcessCommunicator below (N ranks as N threads of one process, host
// buffers), which is how everything above it is tested without GPUs.
//
// Ordering contract (what NCCL gives, and what callers must assume): all_reduce may return
// before it is complete; its result is visible to work issued after wait(). broadcast and
// barrier are complete (for later work) when they return. Every rank must call the same
// collectives, with the same sizes, in the same order.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "ternary/core/error.hpp"

namespace ternary::dist {

enum class ReduceOp { sum, average };

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  bool is_main() const { return rank() == 0; }

  // In place: every rank's buffer becomes the element-wise sum (or mean) over ranks.
  virtual void all_reduce(float* data, size_t n, ReduceOp op) = 0;
  virtual void all_reduce(double* data, size_t n, ReduceOp op) = 0;
  // In place: every rank's buffer becomes rank `root`'s.
  virtual void broadcast(float* data, size_t n, int root) = 0;
  virtual void broadcast(double* data, size_t n, int root) = 0;
  virtual void barrier() = 0;
  // Orders later work (and host reads) after every collective issued so far.
  virtual void wait() {}
  // Whether buffers live in device memory (NCCL) or host memory (in-process).
  virtual bool device_buffers() const = 0;

  template <class T>
  void all_reduce_sum(std::span<T> data) {
    all_reduce(data.data(), data.size(), ReduceOp::sum);
  }
  template <class T>
  void all_reduce_average(std::span<T> data) {
    all_reduce(data.data(), data.size(), ReduceOp::average);
  }
  template <class T>
  void broadcast_from_main(std::span<T> data) {
    broadcast(data.data(), data.size(), 0);
  }
};

// ---- in-process ranks (threads) ---------------------------------------------------------

// The shared state of N in-process ranks: a rendezvous per collective. The last rank to
// arrive does the whole collective on every rank's buffer (the others are blocked, so their
// buffers are quiet), summing in rank order 0, 1, ..., N-1: the result is bit-identical on
// every rank and from run to run. A mismatch between ranks (different collective or size),
// a rank that fails (abort) or a timeout throws on every rank instead of hanging.
class InProcessGroup {
 public:
  explicit InProcessGroup(int world_size,
                          std::chrono::milliseconds timeout = std::chrono::seconds(120))
      : world_(world_size), timeout_(timeout), slots_(world_size) {
    if (world_size < 1)
      throw Error(detail::cat("InProcessGroup: world size must be >= 1, got ", world_size));
  }
  int world_size() const { return world_; }

  // Wakes every rank waiting in (or later entering) a collective with an error naming `why`.
  void abort(const std::string& why) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (aborted_.empty()) aborted_ = why.empty() ? "aborted" : why;
    cv_.notify_all();
  }

  // One collective call from `rank`. `kind` names it ("all_reduce<float> sum"), `n` and
  // `root` must agree across ranks; `work(buffers)` runs once, on the last rank to arrive,
  // with every rank's buffer pointer in rank order.
  void collective(int rank, const std::string& kind, size_t n, int root, void* buffer,
                  const std::function<void(const std::vector<void*>&)>& work) {
    std::unique_lock<std::mutex> lock(mutex_);
    throw_if_aborted(rank, kind);
    if (arrived_ == 0) {
      kind_ = kind, n_ = n, root_ = root;
    } else if (kind != kind_ || n != n_ || root != root_) {
      const std::string why = detail::cat("rank ", rank, " called ", kind, " of ", n,
                                          " elements (root ", root, ") while other ranks are in ",
                                          kind_, " of ", n_, " elements (root ", root_, ")");
      aborted_ = "mismatched collectives: " + why;
      cv_.notify_all();
      throw Error("InProcessCommunicator: mismatched collectives: " + why);
    }
    slots_[rank] = buffer;
    if (++arrived_ == world_) {
      std::exception_ptr failure;
      try {
        work(slots_);
      } catch (...) {
        failure = std::current_exception();
      }
      arrived_ = 0;
      ++generation_;
      if (failure) aborted_ = "the collective " + kind + " failed";
      cv_.notify_all();
      if (failure) std::rethrow_exception(failure);
      return;
    }
    const uint64_t gen = generation_;
    const bool done =
        cv_.wait_for(lock, timeout_, [&] { return generation_ != gen || !aborted_.empty(); });
    if (generation_ != gen) return;  // completed (even if an abort came just after)
    if (!done)
      aborted_ = detail::cat("rank ", rank, " timed out after ", timeout_.count(), " ms in ", kind,
                             " (", arrived_, " of ", world_, " ranks arrived)");
    cv_.notify_all();
    throw_if_aborted(rank, kind);
  }

 private:
  void throw_if_aborted(int rank, const std::string& kind) const {
    if (!aborted_.empty())
      throw Error(detail::cat("InProcessCommunicator: rank ", rank, " in ", kind,
                              ": the group was aborted: ", aborted_));
  }

  const int world_;
  const std::chrono::milliseconds timeout_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<void*> slots_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  std::string kind_;
  size_t n_ = 0;
  int root_ = 0;
  std::string aborted_;
};

// One rank of an InProcessGroup; host buffers only.
class InProcessCommunicator final : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<InProcessGroup> group, int rank)
      : group_(std::move(group)), rank_(rank) {
    if (!group_) throw Error("InProcessCommunicator: null group");
    if (rank < 0 || rank >= group_->world_size())
      throw Error(detail::cat("InProcessCommunicator: rank ", rank, " is outside [0, ",
                              group_->world_size(), ")"));
  }

  int rank() const override { return rank_; }
  int world_size() const override { return group_->world_size(); }
  bool device_buffers() const override { return false; }

  void all_reduce(float* data, size_t n, ReduceOp op) override { reduce(data, n, op, "float"); }
  void all_reduce(double* data, size_t n, ReduceOp op) override { reduce(data, n, op, "double"); }
  void broadcast(float* data, size_t n, int root) override { bcast(data, n, root, "float"); }
  void broadcast(double* data, size_t n, int root) override { bcast(data, n, root, "double"); }
  void barrier() override {
    group_->collective(rank_, "barrier", 0, 0, nullptr, [](const std::vector<void*>&) {});
  }

 private:
  template <class T>
  void reduce(T* data, size_t n, ReduceOp op, const char* type) {
    if (n > 0 && !data) throw Error("InProcessCommunicator::all_reduce: null buffer");
    const std::string kind = detail::cat("all_reduce<", type, ">(", op_name(op), ")");
    group_->collective(rank_, kind, n, 0, data, [n, op](const std::vector<void*>& bufs) {
      const int w = static_cast<int>(bufs.size());
      std::vector<T*> b(w);
      for (int r = 0; r < w; ++r) b[r] = static_cast<T*>(bufs[r]);
      for (size_t i = 0; i < n; ++i) {
        T s = b[0][i];
        for (int r = 1; r < w; ++r) s += b[r][i];  // fixed order: identical on every rank
        if (op == ReduceOp::average) s /= T(w);
        for (int r = 0; r < w; ++r) b[r][i] = s;
      }
    });
  }
  template <class T>
  void bcast(T* data, size_t n, int root, const char* type) {
    if (root < 0 || root >= world_size())
      throw Error(detail::cat("InProcessCommunicator::broadcast: root ", root, " is outside [0, ",
                              world_size(), ")"));
    if (n > 0 && !data) throw Error("InProcessCommunicator::broadcast: null buffer");
    const std::string kind = detail::cat("broadcast<", type, ">");
    group_->collective(rank_, kind, n, root, data, [n, root](const std::vector<void*>& bufs) {
      const T* src = static_cast<const T*>(bufs[root]);
      for (size_t r = 0; r < bufs.size(); ++r)
        if (static_cast<int>(r) != root) std::copy(src, src + n, static_cast<T*>(bufs[r]));
    });
  }
  static const char* op_name(ReduceOp op) { return op == ReduceOp::sum ? "sum" : "average"; }

  std::shared_ptr<InProcessGroup> group_;
  int rank_;
};

// Runs fn(comm) on `world_size` threads, one per rank, and joins them. If a rank throws, the
// group is aborted (so no other rank hangs in a collective) and the first error is rethrown
// here, prefixed with its rank.
inline void run_in_process(int world_size, const std::function<void(Communicator&)>& fn,
                           std::chrono::milliseconds timeout = std::chrono::seconds(120)) {
  auto group = std::make_shared<InProcessGroup>(world_size, timeout);
  std::vector<std::exception_ptr> errors(world_size);
  std::vector<std::thread> threads;
  for (int r = 0; r < world_size; ++r)
    threads.emplace_back([&, r] {
      try {
        InProcessCommunicator comm(group, r);
        fn(comm);
      } catch (const std::exception& e) {
        errors[r] = std::current_exception();
        group->abort(detail::cat("rank ", r, " failed: ", e.what()));
      } catch (...) {
        errors[r] = std::current_exception();
        group->abort(detail::cat("rank ", r, " failed"));
      }
    });
  for (auto& t : threads) t.join();
  // The root cause first: a rank whose error is not "the group was aborted".
  std::exception_ptr first;
  int first_rank = -1;
  for (int pass = 0; pass < 2 && !first; ++pass)
    for (int r = 0; r < world_size && !first; ++r) {
      if (!errors[r]) continue;
      bool secondary = false;
      try {
        std::rethrow_exception(errors[r]);
      } catch (const std::exception& e) {
        secondary = std::string(e.what()).find("the group was aborted") != std::string::npos;
      } catch (...) {
      }
      if (pass == 1 || !secondary) first = errors[r], first_rank = r;
    }
  if (!first) return;
  try {
    std::rethrow_exception(first);
  } catch (const std::exception& e) {
    throw Error(detail::cat("run_in_process: rank ", first_rank, ": ", e.what()));
  }
}

}  // namespace ternary::dist
