// The tape: a per-thread list of the differentiable ops run so far, in order. Each entry
// holds a backward closure that reads its output's gradient and adds into its inputs'.
// backward() runs the entries once, in reverse, then clears the tape (a training step
// records a fresh tape). NoGrad turns recording off in a scope (evaluation, optimizers).
#pragma once

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
};
}  // namespace detail

class Tape {
 public:
  struct Entry {
    const char* op;
    std::shared_ptr<detail::NodeBase> output;
    std::function<void()> backward;
  };

  // The calling thread's tape.
  static Tape& current() {
    thread_local Tape tape;
    return tape;
  }

  void record(const char* op, std::shared_ptr<detail::NodeBase> out, std::function<void()> bw) {
    out->on_tape = true;
    entries_.push_back({op, std::move(out), std::move(bw)});
  }
  size_t size() const { return entries_.size(); }
  const std::vector<Entry>& entries() const { return entries_; }

  // Runs every entry whose output received a gradient, newest first, then clears the tape.
  void run_backward() {
    for (auto it = entries_.rbegin(); it != entries_.rend(); ++it)
      if (it->output->has_grad()) it->backward();
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
  }

  bool enabled() const { return enabled_; }
  void set_enabled(bool on) { enabled_ = on; }

 private:
  std::vector<Entry> entries_;
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
