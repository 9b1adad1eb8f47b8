// The CPU backend tag: host memory, 64-byte aligned (one cache line; enough for AVX-512).
// Kernels for this backend are free functions taking `cpu` as their first argument, one
// header per op family under backend/cpu/, so a second backend adds overloads beside them.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>

namespace ternary::backend {

struct cpu {
  static constexpr const char* name = "cpu";
  static constexpr size_t alignment = 64;

  static void* allocate(size_t bytes) {
    if (bytes == 0) bytes = alignment;
    size_t rounded = (bytes + alignment - 1) / alignment * alignment;
    void* p = std::aligned_alloc(alignment, rounded);
    if (!p) throw std::bad_alloc();
    return p;
  }
  static void deallocate(void* p) { std::free(p); }
  static void copy(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
  static void zero(void* dst, size_t bytes) { std::memset(dst, 0, bytes); }
};

}  // namespace ternary::backend

namespace ternary {
using backend::cpu;
}
