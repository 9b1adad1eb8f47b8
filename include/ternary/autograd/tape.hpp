// The tape: a per-thread list of the differentiable ops run so far, in order. Each entry
// holds a backward closure that reads its output's gradient and adds into its inputs'.
// backward() runs the entries once, in reverse, then clears the tape (a training step
// records a fresh tape). NoGrad turns recording off in a scope (evaluation, optimizers).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

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
    std::function<void()> backward;
    // Leaves with on_grad_ready whose oldest reader is this entry: final once it has run.
    std::vector<std::shared_ptr<detail::NodeBase>> ready_after;
  };

  // The calling thread's tape.
  static Tape& current() {
    thread_local Tape tape;
    return tape;
  }

  void record(const char* op, std::shared_ptr<detail::NodeBase> out, std::function<void()> bw) {
    out->on_tape = true;
    entries_.push_back({op, std::move(out), std::move(bw), {}});
  }
  // Called right after record() for each input of that entry that has an on_grad_ready hook:
  // the first entry to read a leaf is the last to add into its gradient during backward.
  void note_hooked_input(const std::shared_ptr<detail::NodeBase>& leaf) {
    if (entries_.empty() || leaf->ready_generation == generation_) return;
    leaf->ready_generation = generation_;
    entries_.back().ready_after.push_back(leaf);
  }
  size_t size() const { return entries_.size(); }
  const std::vector<Entry>& entries() const { return entries_; }

  // Runs every entry whose output received a gradient, newest first, then clears the tape.
  void run_backward() {
    for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
      if (it->output->has_grad()) it->backward();
      for (auto& leaf : it->ready_after) leaf->on_grad_ready();
    }
    clear();
  }
  // Drops the recorded graph (e.g. after a forward pass whose loss is not needed).
  void clear() {
    for (auto& e : entries_) {
      e.output->on_tape = false;
      e.output->graph_freed = true;
      e.output->release_graph();
    }
    entries_.clear();
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
  std::vector<Entry> entries_;
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
