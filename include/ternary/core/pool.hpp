// Small-object pool: the host-side bookkeeping a training step creates and destroys by the
// thousand (the shared_ptr control block + Storage of each tensor, each Var's node, each tape
// entry's backward closure) comes from per-size free lists instead of the heap. A step makes
// the same objects every time, so after the first step every request is served from a list
// and nothing is allocated; the lists hold at most what was live at the peak, so they do not
// grow across steps. Thread-safe (one mutex): tensors are created and freed on any thread.
//
//   std::allocate_shared<Node>(PoolAllocator<Node>{})   // pooled control block + object
//   Callback cb([captures] { ... });                     // pooled move-only closure
//
// SmallObjectPool::trim() frees the cached blocks; stats() says how many are cached.
#pragma once

#include <cstddef>
#include <mutex>
#include <new>
#include <type_traits>
#include <utility>

namespace ternary::detail {

class SmallObjectPool {
 public:
  static constexpr size_t kGranule = 32;     // size classes are multiples of this
  static constexpr size_t kMaxBytes = 4096;  // larger blocks go to operator new directly
  static constexpr size_t kMaxAlign = alignof(std::max_align_t);  // what operator new gives

  static void* allocate(size_t bytes, size_t align) {
    if (!pooled(bytes, align)) return ::operator new(bytes, std::align_val_t(align));
    const size_t c = class_of(bytes);
    Lists& l = lists();
    {
      std::lock_guard<std::mutex> lock(l.m);
      if (FreeBlock* b = l.heads[c]) {
        l.heads[c] = b->next;
        --l.cached;
        return b;
      }
    }
    return ::operator new((c + 1) * kGranule);
  }
  static void deallocate(void* p, size_t bytes, size_t align) noexcept {
    if (!p) return;
    if (!pooled(bytes, align)) return ::operator delete(p, std::align_val_t(align));
    const size_t c = class_of(bytes);
    Lists& l = lists();
    std::lock_guard<std::mutex> lock(l.m);
    l.heads[c] = ::new (p) FreeBlock{l.heads[c]};
    ++l.cached;
  }
  // Blocks cached for reuse now (for tests: it must not grow from one step to the next).
  static size_t cached_blocks() {
    Lists& l = lists();
    std::lock_guard<std::mutex> lock(l.m);
    return l.cached;
  }
  // Gives every cached block back to the heap.
  static void trim() {
    Lists& l = lists();
    std::lock_guard<std::mutex> lock(l.m);
    for (FreeBlock*& head : l.heads)
      while (head) ::operator delete(std::exchange(head, head->next));
    l.cached = 0;
  }

 private:
  struct FreeBlock {
    FreeBlock* next;
  };
  static constexpr size_t kClasses = kMaxBytes / kGranule;
  struct Lists {
    std::mutex m;
    FreeBlock* heads[kClasses] = {};
    size_t cached = 0;
  };
  static bool pooled(size_t bytes, size_t align) {
    return bytes <= kMaxBytes && align <= kMaxAlign;
  }
  static size_t class_of(size_t bytes) { return bytes ? (bytes - 1) / kGranule : 0; }
  // Never destroyed: objects in static storage may be freed after any other static.
  static Lists& lists() {
    static Lists* l = new Lists;
    return *l;
  }
};

// A std allocator over the pool, for std::allocate_shared (it allocates one block holding
// the control block and the object).
template <class T>
struct PoolAllocator {
  using value_type = T;
  PoolAllocator() = default;
  template <class U>
  PoolAllocator(const PoolAllocator<U>&) noexcept {}  // NOLINT: rebinding is implicit
  T* allocate(size_t n) {
    return static_cast<T*>(SmallObjectPool::allocate(n * sizeof(T), alignof(T)));
  }
  void deallocate(T* p, size_t n) noexcept {
    SmallObjectPool::deallocate(p, n * sizeof(T), alignof(T));
  }
  template <class U>
  bool operator==(const PoolAllocator<U>&) const noexcept {
    return true;
  }
};

// A move-only `void()` callable whose closure lives in a pooled block. Tape entries hold
// one each; their closures capture tensors and Vars (hundreds of bytes), far beyond
// std::function's small buffer, so std::function would allocate for every op.
class Callback {
 public:
  Callback() = default;
  template <class F, class Fn = std::decay_t<F>>
  requires(!std::is_same_v<Fn, Callback> && std::is_invocable_v<Fn&>) explicit Callback(F&& f)
      : obj_(::new (SmallObjectPool::allocate(sizeof(Fn), alignof(Fn))) Fn(std::forward<F>(f))),
        call_(&call<Fn>),
        destroy_(&destroy<Fn>) {}
  Callback(Callback&& o) noexcept
      : obj_(std::exchange(o.obj_, nullptr)),
        call_(std::exchange(o.call_, nullptr)),
        destroy_(std::exchange(o.destroy_, nullptr)) {}
  Callback& operator=(Callback&& o) noexcept {
    if (this != &o) {
      reset();
      obj_ = std::exchange(o.obj_, nullptr);
      call_ = std::exchange(o.call_, nullptr);
      destroy_ = std::exchange(o.destroy_, nullptr);
    }
    return *this;
  }
  Callback(const Callback&) = delete;
  Callback& operator=(const Callback&) = delete;
  ~Callback() { reset(); }

  explicit operator bool() const { return obj_ != nullptr; }
  void operator()() { call_(obj_); }
  void reset() {
    if (obj_) destroy_(std::exchange(obj_, nullptr));
  }

 private:
  template <class Fn>
  static void call(void* p) {
    (*static_cast<Fn*>(p))();
  }
  template <class Fn>
  static void destroy(void* p) {
    static_cast<Fn*>(p)->~Fn();
    SmallObjectPool::deallocate(p, sizeof(Fn), alignof(Fn));
  }
  void* obj_ = nullptr;
  void (*call_)(void*) = nullptr;
  void (*destroy_)(void*) = nullptr;
};

}  // namespace ternary::detail
