// The CPU backend tag: host memory, 64-byte aligned (one cache line; enough for AVX-512).
// Kernels for this backend are free functions taking `cpu` as their first argument, one
// header per op family under backend/cpu/, so a second backend adds overloads beside them.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

namespace ternary::backend {

struct cpu {
  static constexpr const char* name = "cpu";
  static constexpr size_t alignment = 64;
  // Host memory: Tensor's element access, printing and factories may touch it directly.
  static constexpr bool on_host = true;

  // Blocks are cached by size and reused (a training step asks for the same sizes every
  // step): after the first step no memory comes from the system, and large buffers are not
  // mmap'ed, page-faulted and zeroed by the kernel again each step (measured: ~5% of a GPT
  // training step). A block carries its size in a 64-byte header. The cache holds at most
  // kCacheBytes, or the peak of live block bytes if that is larger (a step whose activations
  // exceed kCacheBytes would otherwise return its overflow to the system and ask for it
  // again next step; keeping what the program already held at once never raises its peak);
  // trim_cache() gives it back.
  static void* allocate(size_t bytes) {
    if (bytes == 0) bytes = alignment;
    const size_t rounded = (bytes + alignment - 1) / alignment * alignment;
    if (void* p = cache().take(rounded)) return p;
    auto* base = static_cast<char*>(std::aligned_alloc(alignment, rounded + alignment));
    if (!base) {
      trim_cache();
      base = static_cast<char*>(std::aligned_alloc(alignment, rounded + alignment));
      if (!base) throw std::bad_alloc();
    }
    cache().note_new(rounded);
    *reinterpret_cast<size_t*>(base) = rounded;
    return base + alignment;
  }
  static void deallocate(void* p) {
    if (!p) return;
    char* base = static_cast<char*>(p) - alignment;
    if (!cache().put(base, *reinterpret_cast<size_t*>(base))) std::free(base);
  }
  static void trim_cache() { cache().clear(); }

 private:
  static constexpr size_t kCacheBytes = size_t(1) << 30;
  // Free blocks of one size form a list threaded through their headers ([size, next]), so
  // taking and returning a block allocates nothing once its size has been seen.
  struct BlockCache {
    std::mutex m;
    std::map<size_t, char*> heads;  // size -> first free block (base), or nullptr
    size_t bytes = 0;               // cached
    size_t live = 0, peak = 0;      // handed out (by allocate, not yet deallocated)
    static char*& next_of(char* base) { return *reinterpret_cast<char**>(base + sizeof(size_t)); }
    void* take(size_t n) {
      std::lock_guard<std::mutex> lock(m);
      auto it = heads.find(n);
      if (it == heads.end() || !it->second) return nullptr;
      char* base = it->second;
      it->second = next_of(base);
      bytes -= n;
      live += n;
      peak = std::max(peak, live);
      return base + alignment;
    }
    void note_new(size_t n) {
      std::lock_guard<std::mutex> lock(m);
      live += n;
      peak = std::max(peak, live);
    }
    bool put(char* base, size_t n) {
      std::lock_guard<std::mutex> lock(m);
      live -= n;
      if (bytes + n > std::max(kCacheBytes, peak)) return false;
      char*& head = heads[n];
      next_of(base) = head;
      head = base;
      bytes += n;
      return true;
    }
    void clear() {
      std::lock_guard<std::mutex> lock(m);
      for (auto& [n, head] : heads)
        while (head) {
          char* nx = next_of(head);
          std::free(head);
          head = nx;
        }
      bytes = 0;
      peak = live;  // the high-water mark so far no longer reserves cache room
    }
  };
  // Never destroyed: tensors in static storage may be freed after any other static.
  static BlockCache& cache() {
    static BlockCache* c = new BlockCache;
    return *c;
  }

 public:
  static void copy(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
  static void zero(void* dst, size_t bytes) { std::memset(dst, 0, bytes); }
};

}  // namespace ternary::backend

namespace ternary {
using backend::cpu;
}
