// The tape: a per-thread list of the differentiable ops run so far, in order. Each entry
// holds a backward closure that reads its output's gradient and adds into its inputs'.
// backward() runs the entries once, in reverse, then clears the tape (a training step
// records a fresh tape). NoGrad turns recording off in a scope (evaluation, optimizers).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "ternary/core/pool.hpp"

namespace ternary {

namespace detail {
// What the tape needs to know about an op's output without knowing its element type.
struct NodeBase {
  virtual ~NodeBase() = default;
  virtual bool has_grad() const = 0;
  virtual void release_graph() = 0;  // after backward: free the grad of non-leaf nodes
  bool on_tape = false;              // recorded as an op output and not yet backpropagated
  bool graph_freed = false;          // backward already ran through this node
  // Leaves only: called by backward once this leaf's gradient is final (right after the
  // oldest entry that reads it), so data-parallel training can start sending it while
  // backward goes on (dist/buckets.hpp). Empty for almost every node.
  std::function<void()> on_grad_ready;
  uint64_t ready_generation = 0;  // the tape generation that last noted this leaf as an input
};
}  // namespace detail

class Tape {
 public:
  struct Entry {
    const char* op;
    std::shared_ptr<detail::NodeBase> output;
    detail::Callback backward;  // pooled closure (core/pool.hpp): no heap per op
  };

  // The calling thread's tape.
  static Tape& current() {
    thread_local Tape tape;
    return tape;
  }

  template <class F>
  void record(const char* op, std::shared_ptr<detail::NodeBase> out, F&& bw) {
    out->on_tape = true;
    entries_.push_back({op, std::move(out), detail::Callback(std::forward<F>(bw))});
  }
  // Called right after record() for each input of that entry that has an on_grad_ready hook:
  // the first entry to read a leaf is the last to add into its gradient during backward.
  void note_hooked_input(const std::shared_ptr<detail::NodeBase>& leaf) {
    if (entries_.empty() || leaf->ready_generation == generation_) return;
    leaf->ready_generation = generation_;
    ready_.push_back({entries_.size() - 1, leaf});
  }
  size_t size() const { return entries_.size(); }
  const std::vector<Entry>& entries() const { return entries_; }

  // Runs every entry whose output received a gradient, newest first, then clears the tape.
  void run_backward() {
    for (size_t i = entries_.size(); i-- > 0;) {
      Entry& e = entries_[i];
      if (e.output->has_grad()) e.backward();
      // ready_ is in entry order, so the hooks due after entry i are at its back.
      for (; !ready_.empty() && ready_.back().entry == i; ready_.pop_back())
        ready_.back().leaf->on_grad_ready();
    }
    clear();
  }
  // Drops the recorded graph (e.g. after a forward pass whose loss is not needed). The
  // vectors keep their capacity, so the next step records without allocating.
  void clear() {
    for (auto& e : entries_) {
      e.output->on_tape = false;
      e.output->graph_freed = true;
      e.output->release_graph();
    }
    entries_.clear();
    ready_.clear();
    generation_ = next_generation();
  }

  bool enabled() const { return enabled_; }
  void set_enabled(bool on) { enabled_ = on; }

 private:
  // Distinct across all tapes and clears, so a leaf noted on an old tape is noted afresh.
  static uint64_t next_generation() {
    static std::atomic<uint64_t> counter{0};
    return ++counter;
  }
  // A leaf whose gradient is final once entry `entry` has run (one list for the whole tape
  // rather than one per entry, so that recording allocates nothing after the first step).
  struct ReadyHook {
    size_t entry;
    std::shared_ptr<detail::NodeBase> leaf;
  };
  std::vector<Entry> entries_;
  std::vector<ReadyHook> ready_;
  uint64_t generation_ = next_generation();
  bool enabled_ = true;
};

inline bool grad_enabled() {
  return Tape::current().enabled();
}

// Within its scope no op is recorded and no result requires grad.
class NoGrad {
 public:
  NoGrad() : previous_(Tape::current().enabled()) { Tape::current().set_enabled(false); }
  ~NoGrad() { Tape::current().set_enabled(previous_); }
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;

 private:
  bool previous_;
};

}  // namespace ternary
