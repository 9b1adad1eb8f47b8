// Var<T, B>: a tensor that takes part in reverse-mode autodiff. It holds a value, a
// gradient (allocated on first accumulation) and, if an op produced it while recording, a
// place on the tape. Copies of a Var share one node (like shared_ptr).
//
//   auto w = Var<float>::parameter(Tensor<float>::randn({3, 3}, rng));
//   auto loss = sum(square(matmul(x, w)));
//   loss.backward();          // w.grad() now holds d loss / d w
//
// Ops are written with record(): compute the output tensor, then give the backward rule
// as a closure of the output gradient; see ops/elementwise.hpp for the pattern.
#pragma once

#include <array>

#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ternary/autograd/tape.hpp"
#include "ternary/core/tensor.hpp"

namespace ternary {

template <class T, class B = cpu>
class Var {
  static_assert(std::is_floating_point_v<T>,
                "ternary::Var<T>: gradients need a floating-point element type (float or double); "
                "keep integer data such as token ids in a plain Tensor");
  struct Node : detail::NodeBase {
    Tensor<T, B> value;
    Tensor<T, B> grad;
    bool requires_grad = false;
    bool is_leaf = true;
    // The gradient buffer belongs to this node alone (allocated for it), so later gradients
    // may be added into it in place; false while it is shared with another node's gradient.
    bool grad_owned = false;
    // Set by straight_through(): gradients added to this node go to that one instead.
    std::shared_ptr<Node> grad_target;
    // A gradient a kernel wrote in bf16 (accumulate_grad_bf16), kept as it is while it is the
    // node's only one: a reader whose products round their operands to bf16 anyway takes it
    // as it is (no fp32 buffer, no rounding pass); any other reader, or a second gradient,
    // widens it into `grad` first (widen_grad16). Or, beside a defined `grad`, that gradient
    // rounded to bf16 by the kernel that wrote it (accumulate_grad_with_bf16), dropped as soon
    // as anything adds to the gradient. Never set on a leaf.
    Tensor<bf16, B> grad16;
    // This node's rule takes (g, g16): a bf16 copy of its gradient has a reader, so
    // accumulate_grad_with_bf16 writes one (else it would be written and never read).
    bool reads_grad16 = false;
    // The value rounded to bf16 by the kernel that wrote it (set_value_bf16), for readers whose
    // products round it so anyway: they take it instead of a rounding pass (and such a node gets
    // its gradient in bf16 from them, as autocast's bf16 activations do). Views carry it along.
    // A value held in bf16 only (record_bf16_only) has no `value` until something reads it in
    // T: the first such read widens value16 into it.
    Tensor<bf16, B> value16;
    const Shape& shape() const { return value.defined() ? value.shape() : value16.shape(); }
    bool has_grad() const override { return grad.defined() || grad16.defined(); }
    void release_graph() override {
      if (!is_leaf) {
        grad = Tensor<T, B>();
        grad16 = Tensor<bf16, B>();
        grad_owned = false;
      }
    }
  };

 public:
  using value_type = T;
  using backend_type = B;

  Var() = default;
  // A constant (requires_grad = false) or a leaf that collects a gradient.
  explicit Var(Tensor<T, B> value, bool requires_grad = false)
      : node_(std::allocate_shared<Node>(detail::PoolAllocator<Node>{})) {  // pooled: no heap
    if (!value.defined()) throw AutogradError("Var: cannot wrap an undefined tensor");
    node_->value = std::move(value);
    node_->requires_grad = requires_grad;
  }
  static Var parameter(Tensor<T, B> value) { return Var(std::move(value), true); }
  static Var constant(Tensor<T, B> value) { return Var(std::move(value), false); }

  bool defined() const { return node_ != nullptr; }
  // Whether both are handles of one node (the same variable).
  bool same_node(const Var& other) const { return node_ == other.node_; }
  const Tensor<T, B>& value() const { return widen_value16(node()); }
  Tensor<T, B>& value() { return widen_value16(node()); }
  // Whether the value is held in bf16 only so far (record_bf16_only; value() would widen it).
  bool value_in_bf16_only() const { return !node().value.defined(); }
  // The value's bf16 copy (undefined where its producer wrote none; see Node::value16).
  const Tensor<bf16, B>& value_bf16() const { return node().value16; }
  // Attaches v16 = the value rounded to bf16 (same shape; written by the value's producer).
  void set_value_bf16(Tensor<bf16, B> v16) const {
    if (!v16.defined()) widen_value16(node());  // (a value held in bf16 only keeps it in T)
    if (v16.defined() && !(v16.shape() == shape()))
      throw AutogradError(detail::cat("set_value_bf16: a copy of shape ", v16.shape(),
                                      " for a value of shape ", shape()));
    node().value16 = std::move(v16);
  }
  // The accumulated gradient; undefined until backward reached this Var.
  const Tensor<T, B>& grad() const {
    widen_grad16(node());
    return node().grad;
  }
  bool requires_grad() const { return node().requires_grad; }
  bool is_leaf() const { return node().is_leaf; }
  void zero_grad() {
    node().grad = Tensor<T, B>();
    node().grad16 = Tensor<bf16, B>();
    node().grad_owned = false;
  }
  // Leaves only: `fn` runs during each backward as soon as this Var's gradient is final
  // (no later op adds to it); an empty function removes the hook. Used by dist/buckets.hpp.
  void set_grad_ready_hook(std::function<void()> fn) const {
    if (!is_leaf())
      throw AutogradError("set_grad_ready_hook: only a leaf Var (a parameter) can have one");
    node().on_grad_ready = std::move(fn);
  }

  // (not value(): a value held in bf16 only keeps its shape without being widened)
  const Shape& shape() const { return node().shape(); }
  int dim() const {
    const Node& n = node();
    return n.value.defined() ? n.value.dim() : n.value16.dim();
  }
  int64_t size(int64_t axis) const {
    const Node& n = node();
    return n.value.defined() ? n.value.size(axis) : n.value16.size(axis);
  }
  int64_t numel() const {
    const Node& n = node();
    return n.value.defined() ? n.value.numel() : n.value16.numel();
  }
  T item() const { return value().item(); }

  // An output whose gradient is `input`'s own (a straight-through estimator's): every gradient
  // added to it goes straight into input's gradient, by the same kernel where the rule uses
  // accumulate_grad_with (a GEMM with beta = 1 adds the weight gradient in place). It has no
  // tape entry, so no gradient buffer of its own, no copy and no addition pass per use; its
  // grad() stays undefined. A constant when recording is off or input needs no gradient.
  static Var straight_through(Tensor<T, B> value, const Var& input) {
    Var result(std::move(value));
    if (!grad_enabled() || !input.requires_grad()) return result;
    if (!(result.shape() == input.shape()))
      throw AutogradError(detail::cat("straight_through: a value of shape ", result.shape(),
                                      " for an input of shape ", input.shape()));
    result.node_->requires_grad = true;
    result.node_->is_leaf = false;
    result.node_->grad_target = input.node_->grad_target ? input.node_->grad_target : input.node_;
    return result;
  }

  // Adds g into this Var's gradient (allocating it on first use). Used by backward rules.
  void accumulate_grad(const Tensor<T, B>& g) const {
    Node& n = node();
    if (n.grad_target) return Var(n.grad_target).accumulate_grad(g);
    if (!n.requires_grad) return;
    check_grad_shape("accumulate_grad", n, g.shape());
    widen_grad16(n);
    // A leaf's gradient is changed in place later (optimizers, clipping, all-reduce), so it
    // gets its own contiguous copy. An inner node's gradient is only read, by the node's own
    // backward rule, so it may share g's buffer, whatever its layout (saving a copy pass per
    // node: e.g. attention's dq, written in the token-major layout of the projection the
    // heads were split from, flows back through the head split as it is); because g may be
    // shared with other nodes, a second gradient is then added out of place, never into the
    // shared buffer. Backward rules read g through its strides (or make it contiguous).
    if (!n.grad.defined()) {
      n.grad_owned = n.is_leaf;
      n.grad = n.is_leaf ? g.clone() : g;
    } else if (n.grad_owned) {
      n.grad += g;
    } else {
      n.grad = Tensor<T, B>(n.grad + g);
      n.grad_owned = true;
    }
  }
  // Adds an expression into the gradient without a temporary tensor.
  template <Expression E>
  void accumulate_grad(const E& e) const {
    Node& n = node();
    if (n.grad_target) return Var(n.grad_target).accumulate_grad(e);
    if (!n.requires_grad) return;
    widen_grad16(n);
    if (!n.grad.defined()) {  // one pass: evaluate e into a fresh buffer
      n.grad = Tensor<T, B>::empty(n.shape());
      n.grad.assign(e);
    } else if (n.grad_owned) {
      n.grad += e;
    } else {  // the buffer may be shared (above): out of place
      n.grad = Tensor<T, B>(n.grad + e);
    }
    n.grad_owned = true;
  }
  // accumulate_grad(g) for a rule that passes its gradient on unchanged (d out / d x = 1, as
  // channel_mix(x, b, y) does for x), with g16, a bf16 copy of g (or undefined): where g becomes
  // this variable's whole gradient and its own rule reads a copy (Node::reads_grad16), g16 stays
  // beside it as that copy, as accumulate_grad_with_bf16 would have written it.
  void accumulate_grad_passing(const Tensor<T, B>& g, const Tensor<bf16, B>& g16) const {
    Node& n = node();
    const bool first = !n.grad_target && n.requires_grad && !n.is_leaf && !n.has_grad();
    accumulate_grad(g);
    if (first && g16.defined() && n.reads_grad16 && n.grad.data() == g.data()) {
      check_grad_shape("accumulate_grad_passing", n, g16.shape());
      n.grad16 = g16;
    }
  }
  // For a backward rule whose kernel can add the gradient so far while it writes its own
  // (a GEMM with beta = 1, a norm's backward): `write(dst, prior)` must store
  // prior + (this rule's gradient) into dst, a contiguous tensor of the value's shape. prior
  // is undefined (nothing so far), dst itself (add in place: each element of prior is read
  // before the same element of dst is written), or another contiguous tensor (a buffer
  // shared with another node, never written). Saves the separate addition pass of
  // accumulate_grad.
  template <class Write>
  void accumulate_grad_with(Write&& write) const {
    Node& n = node();
    if (n.grad_target) return Var(n.grad_target).accumulate_grad_with(std::forward<Write>(write));
    if (!n.requires_grad) return;
    widen_grad16(n);
    if (n.grad.defined() && !n.grad.is_contiguous()) {  // a strided gradient: copy, then in place
      n.grad = n.grad.clone();
      n.grad_owned = true;
    }
    if (n.grad.defined() && n.grad_owned) {
      write(n.grad, n.grad);
      return;
    }
    auto dst = Tensor<T, B>::empty(n.shape());
    write(dst, n.grad);
    n.grad = dst;
    n.grad_owned = true;
  }

  // accumulate_grad_with for a kernel launched after the call, with others gathered first:
  // returns {dst, prior}, where the gradient now is dst, which the caller's kernel must fill with
  // prior + (its gradient) before anything reads it (the handles keep both alive); prior is
  // undefined (nothing so far) or may be dst itself; both undefined if no gradient is wanted.
  std::pair<Tensor<T, B>, Tensor<T, B>> accumulate_grad_target() const {
    std::pair<Tensor<T, B>, Tensor<T, B>> target;
    accumulate_grad_with([&](const Tensor<T, B>& dst, const Tensor<T, B>& prior) {
      target = {dst, prior};
    });
    return target;
  }

  // accumulate_grad_with for a rule whose kernel also writes the new gradient rounded to bf16:
  // write(dst, prior, dst16) stores prior + (this rule's gradient) into dst as there, and the same
  // values rounded to bf16 into dst16 (undefined for a leaf, or where this node's own rule
  // reads its gradient in T alone: write none). The bf16 copy stays
  // beside the gradient until anything else adds to it, so a reader whose products round the
  // gradient to bf16 anyway (the bf16 rules of ops/matmul.hpp and ops/residual_linear.hpp) takes
  // it instead of rounding it again. A leaf's gradient has none (optimizers change it in place).
  template <class Write>
  void accumulate_grad_with_bf16(Write&& write) const {
    Node& n = node();
    if (n.grad_target)
      return Var(n.grad_target).accumulate_grad_with_bf16(std::forward<Write>(write));
    if (!n.requires_grad) return;
    const Tensor<bf16, B> dst16 =
        n.is_leaf || !n.reads_grad16 ? Tensor<bf16, B>() : Tensor<bf16, B>::empty(n.shape());
    accumulate_grad_with(
        [&](const Tensor<T, B>& dst, const Tensor<T, B>& prior) { write(dst, prior, dst16); });
    n.grad16 = dst16;  // (accumulate_grad_with dropped any earlier copy)
  }

  // For a rule whose kernel can write this variable's gradient in bf16 (a value born in bf16,
  // Var::value_bf16, whose readers round their gradient so): while it has none yet and is no
  // leaf, a fresh bf16 tensor that becomes its gradient, as accumulate_grad_bf16's would (the
  // caller's kernel must fill it before anything reads it); otherwise undefined, and the caller
  // adds its gradient in T (accumulate_grad_with).
  Tensor<bf16, B> grad_bf16_target() const {
    Node& n = node();
    if (n.grad_target) return Var(n.grad_target).grad_bf16_target();
    if (!n.requires_grad || n.is_leaf || n.has_grad()) return Tensor<bf16, B>();
    n.grad16 = Tensor<bf16, B>::empty(n.shape());
    return n.grad16;
  }

  // Adds a gradient that a kernel wrote in bf16 (g16 is shared, never written). While it is
  // the only one it stays bf16: a reader that rounds its gradient to bf16 anyway (the
  // tensor-core products of ops/matmul.hpp's bf16 rules) takes it as it is, any other reader
  // sees it widened to T. A leaf's gradient is always T.
  void accumulate_grad_bf16(const Tensor<bf16, B>& g16) const {
    Node& n = node();
    if (n.grad_target) return Var(n.grad_target).accumulate_grad_bf16(g16);
    if (!n.requires_grad) return;
    check_grad_shape("accumulate_grad_bf16", n, g16.shape());
    if (n.is_leaf || n.grad.defined() || n.grad16.defined())
      accumulate_grad(widened(g16));
    else
      n.grad16 = g16;
  }

  // Reverse-mode sweep from this scalar: d this / d every leaf that requires grad.
  void backward() const {
    if (numel() != 1)
      throw AutogradError(
          detail::cat("backward: the output has shape ", shape(),
                      "; call backward(seed) with a gradient of that shape, or reduce it "
                      "to a scalar (e.g. mean) first"));
    backward(Tensor<T, B>::ones(shape()));
  }
  // Backward with an explicit output gradient `seed` of this Var's shape.
  void backward(const Tensor<T, B>& seed) const {
    Node& n = node();
    if (n.graph_freed)
      throw AutogradError(
          "backward: called a second time on the same graph; the tape was freed by the first "
          "call. Run the forward pass again before each backward.");
    if (!n.requires_grad)
      throw AutogradError(
          "backward: this value does not require grad (no parameter contributed to it, or it "
          "was computed under NoGrad)");
    if (!(seed.shape() == shape()))
      throw AutogradError(detail::cat("backward: seed of shape ", seed.shape(),
                                      " for an output of shape ", shape()));
    accumulate_grad(seed);
    if (n.is_leaf || n.grad_target) return;  // (straight-through: seed went to the input)
    if (!n.on_tape)
      throw AutogradError(
          "backward: this value is not on the current thread's tape (recorded on another thread, "
          "or the tape was cleared)");
    Tape::current().run_backward();
  }

  // Records an op's output. `backward_fn(const Tensor& grad_out)` must add the gradient of
  // each input that requires grad (through accumulate_grad). Nothing is recorded when
  // recording is off or no input requires grad.
  template <class F>
  static Var record(const char* op, Tensor<T, B> out, std::initializer_list<Var> inputs,
                    F&& backward_fn) {
    return record_if(op, std::move(out), inputs.begin(), inputs.end(),
                     std::forward<F>(backward_fn));
  }
  // The same for a variable number of inputs (concat, stack).
  template <class F>
  static Var record(const char* op, Tensor<T, B> out, const std::vector<Var>& inputs,
                    F&& backward_fn) {
    return record_if(op, std::move(out), inputs.begin(), inputs.end(),
                     std::forward<F>(backward_fn));
  }

  // An op whose output its kernel wrote in bf16 only, for readers whose products round it so
  // anyway (the attention's output, read by the output projection's bf16 GEMM): no copy in T is
  // stored, value_bf16() is out16, and value() widens it on first use, so a reader in T sees the
  // bf16-rounded values. The tape entry is record()'s.
  template <class F>
  static Var record_bf16_only(const char* op, Tensor<bf16, B> out16,
                              std::initializer_list<Var> inputs, F&& backward_fn) {
    if (!out16.defined()) throw AutogradError(detail::cat(op, ": no bf16 output to record"));
    Var y = record(op, Tensor<T, B>::empty(Shape{0}), inputs, std::forward<F>(backward_fn));
    y.node().value = Tensor<T, B>();
    y.node().value16 = std::move(out16);
    return y;
  }

  // Records an op with K outputs and the inputs [inputs_begin, inputs_end): returns one Var
  // per output. `backward_fn(grads)` gets std::array<Tensor, K> of the outputs' gradients
  // (undefined where none reached an output) and must add the gradient of each input that
  // requires grad; a backward_fn(grads, grads16) also gets the bf16 ones (per output: born in
  // bf16, grads[k] undefined; or a bf16 copy of grads[k], accumulate_grad_with_bf16), others get
  // those widened. It runs once, after every output's gradient is final: a join entry is
  // recorded before the outputs (the tape runs backward in reverse), and each output's
  // backward files its gradient with the join and hands it an empty gradient so that it runs.
  template <size_t K, class F>
  static std::array<Var, K> record_multi(const char* op, std::array<Tensor<T, B>, K> outs,
                                         const Var* inputs_begin, const Var* inputs_end,
                                         F&& backward_fn) {
    std::array<Var, K> result;
    if (!any_requires_grad(inputs_begin, inputs_end)) {
      for (size_t k = 0; k < K; ++k) result[k] = Var(std::move(outs[k]));
      return result;
    }
    struct Grads {
      std::array<Tensor<T, B>, K> g;
      std::array<Tensor<bf16, B>, K> g16;
    };
    auto grads = std::allocate_shared<Grads>(detail::PoolAllocator<Grads>{});  // no heap per step
    constexpr bool reads16 = std::is_invocable_v<F&, const std::array<Tensor<T, B>, K>&,
                                                 const std::array<Tensor<bf16, B>, K>&>;
    const Var join =
        record_if(op, Tensor<T, B>::empty(Shape{0}), inputs_begin, inputs_end,
                  [grads, fn = std::forward<F>(backward_fn)](const Tensor<T, B>&) mutable {
                    if constexpr (reads16) {
                      fn(grads->g, grads->g16);
                    } else {
                      for (size_t k = 0; k < K; ++k)
                        if (!grads->g[k].defined() && grads->g16[k].defined())
                          grads->g[k] = widened(grads->g16[k]);
                      fn(grads->g);
                    }
                    *grads = {};
                  });
    for (size_t k = 0; k < K; ++k) {
      const Var* first = &join;
      result[k] = record_if(op, std::move(outs[k]), first, first + 1,
                            [grads, k, join](const Tensor<T, B>& g, const Tensor<bf16, B>& g16) {
                              grads->g[k] = g;
                              grads->g16[k] = g16;
                              if (!join.grad().defined())
                                join.accumulate_grad(Tensor<T, B>::empty(Shape{0}));
                            });
      // (each output's forwarding rule takes both; whether the copies are read is the rule's)
      if (result[k].requires_grad()) result[k].node_->reads_grad16 = reads16;
    }
    return result;
  }

 private:
  template <class It>
  static bool any_requires_grad(It first, It last) {
    if (!grad_enabled()) return false;
    for (; first != last; ++first)
      if (first->requires_grad()) return true;
    return false;
  }
  template <class It, class F>
  static Var record_if(const char* op, Tensor<T, B> out, It first, It last, F&& backward_fn) {
    Var result(std::move(out));
    if (!any_requires_grad(first, last)) return result;
    result.node_->requires_grad = true;
    result.node_->is_leaf = false;
    result.node_->reads_grad16 =
        std::is_invocable_v<F&, const Tensor<T, B>&, const Tensor<bf16, B>&>;
    Node* raw = result.node_.get();  // the tape entry owns the node, so raw outlives the closure
    Tape::current().record(op, result.node_, [raw, fn = std::forward<F>(backward_fn)]() mutable {
      // A rule that takes (g, g16) reads a bf16-born gradient as it is (g undefined), or a bf16
      // copy beside g; others get it in T.
      if constexpr (std::is_invocable_v<F&, const Tensor<T, B>&, const Tensor<bf16, B>&>) {
        fn(raw->grad, raw->grad16);
      } else {
        widen_grad16(*raw);
        fn(raw->grad);
      }
    });
    for (; first != last; ++first) {
      // (a straight-through input's gradient is its target's: the hook is the target's)
      const auto& in = first->node_->grad_target ? first->node_->grad_target : first->node_;
      if (in->on_grad_ready) Tape::current().note_hooked_input(in);
    }
    return result;
  }

  static void check_grad_shape(const char* op, const Node& n, const Shape& g) {
    if (!(g == n.shape()))
      throw AutogradError(
          detail::cat(op, ": gradient of shape ", g, " for a value of shape ", n.shape()));
  }

 public:
  // g16 widened to T, a new tensor (on the device by a kernel): also for rules handed a gradient
  // born in bf16 that they need in T.
  static Tensor<T, B> widened(const Tensor<bf16, B>& g16) {
    if constexpr (B::on_host && std::is_same_v<T, float>)
      return g16.template to<float>();
    else if constexpr (B::on_host)
      return g16.template to<float>().template to<T>();  // (bf16 converts to float only)
    else if constexpr (std::is_same_v<T, float>)
      return widen_bf16(B{}, g16);  // by argument-dependent lookup: backend/cuda/matmul.cuh
    else
      return widen_bf16(B{}, g16).template to<T>();
  }

 private:
  // A value held in bf16 only becomes `value` (widened) before anything reads it in T.
  static Tensor<T, B>& widen_value16(Node& n) {
    if (!n.value.defined() && n.value16.defined()) n.value = widened(n.value16);
    return n.value;
  }
  // A bf16-born gradient becomes `grad` (a fresh buffer of the node's own) before anything
  // reads or adds to it in T.
  static void widen_grad16(Node& n) {
    if (!n.grad16.defined()) return;
    if (n.grad.defined()) {  // a bf16 copy of grad (accumulate_grad_with_bf16): stale from here
      n.grad16 = Tensor<bf16, B>();
      return;
    }
    n.grad = widened(n.grad16);
    n.grad16 = Tensor<bf16, B>();
    n.grad_owned = true;
  }

  explicit Var(std::shared_ptr<Node> node) : node_(std::move(node)) {}  // a handle of `node`
  Node& node() const {
    if (!node_) throw AutogradError("Var: use of an undefined Var");
    return *node_;
  }
  std::shared_ptr<Node> node_;
};

}  // namespace ternary
