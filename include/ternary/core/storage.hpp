// Storage: one owned, aligned buffer of elements on a backend. Tensors share it through a
// shared_ptr, so views are free and the buffer lives as long as any view of it.
#pragma once

#include <cstdint>
#include <memory>

namespace ternary {

template <class T, class B>
class Storage {
 public:
  explicit Storage(int64_t n) : n_(n), data_(static_cast<T*>(B::allocate(sizeof(T) * n))) {}
  ~Storage() { B::deallocate(data_); }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  T* data() { return data_; }
  const T* data() const { return data_; }
  int64_t size() const { return n_; }

 private:
  int64_t n_;
  T* data_;
};

}  // namespace ternary
