// Shape: the extents of a tensor (at most kMaxDims axes), kept inline so that copying a
// shape never allocates. Also numpy broadcasting and contiguous strides.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "ternary/core/error.hpp"

namespace ternary {

inline constexpr int kMaxDims = 8;

// A small fixed-capacity vector of int64 (used for shapes and strides).
class Dims {
 public:
  Dims() = default;
  Dims(std::initializer_list<int64_t> values) { assign(values.begin(), values.end()); }
  explicit Dims(std::span<const int64_t> values) { assign(values.begin(), values.end()); }
  explicit Dims(const std::vector<int64_t>& values) { assign(values.begin(), values.end()); }
  static Dims filled(int n, int64_t value) {
    Dims d;
    for (int i = 0; i < n; ++i) d.push_back(value);
    return d;
  }

  int size() const { return n_; }
  bool empty() const { return n_ == 0; }
  int64_t& operator[](int i) { return v_[i]; }
  int64_t operator[](int i) const { return v_[i]; }
  int64_t back() const { return v_[n_ - 1]; }
  const int64_t* begin() const { return v_.data(); }
  const int64_t* end() const { return v_.data() + n_; }
  int64_t* begin() { return v_.data(); }
  int64_t* end() { return v_.data() + n_; }
  const int64_t* data() const { return v_.data(); }

  void push_back(int64_t x) {
    if (n_ == kMaxDims)
      throw ShapeError(detail::cat("tensor rank exceeds the maximum of ", kMaxDims));
    v_[n_++] = x;
  }
  void insert(int pos, int64_t x) {
    push_back(0);
    for (int i = n_ - 1; i > pos; --i) v_[i] = v_[i - 1];
    v_[pos] = x;
  }
  void erase(int pos) {
    for (int i = pos; i + 1 < n_; ++i) v_[i] = v_[i + 1];
    --n_;
  }
  std::vector<int64_t> vec() const { return {begin(), end()}; }

  friend bool operator==(const Dims& a, const Dims& b) {
    return a.n_ == b.n_ && std::equal(a.begin(), a.end(), b.begin());
  }

 private:
  template <class It>
  void assign(It first, It last) {
    for (; first != last; ++first) push_back(*first);
  }
  std::array<int64_t, kMaxDims> v_{};
  int n_ = 0;
};

using Shape = Dims;
using Strides = Dims;

inline int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t e : s) n *= e;
  return n;
}

// The position in a row-major tensor of shape s of its element at flat index i (error messages
// name positions this way).
inline Dims unravel_index(int64_t i, const Shape& s) {
  Dims pos = Dims::filled(s.size(), 0);
  for (int d = s.size() - 1; d >= 0; --d) {
    pos[d] = s[d] ? i % s[d] : 0;
    i = s[d] ? i / s[d] : 0;
  }
  return pos;
}

inline std::string to_string(const Dims& d) {
  std::string s = "[";
  for (int i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}
inline std::ostream& operator<<(std::ostream& os, const Dims& d) {
  return os << to_string(d);
}

// Row-major (C order) strides, in elements.
inline Strides contiguous_strides(const Shape& s) {
  Strides st = Dims::filled(s.size(), 1);
  for (int i = s.size() - 2; i >= 0; --i) st[i] = st[i + 1] * std::max<int64_t>(s[i + 1], 1);
  return st;
}

// Resolves a possibly negative axis against a rank; throws naming the op.
inline int normalize_axis(int64_t axis, int rank, const char* op) {
  int64_t a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= std::max(rank, 1))
    throw IndexError(
        detail::cat(op, ": axis ", axis, " is out of range for a tensor of rank ", rank));
  return static_cast<int>(a);
}

// numpy broadcasting: align trailing axes; each pair must be equal or contain a 1.
inline Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  int n = std::max(a.size(), b.size());
  Shape out = Dims::filled(n, 1);
  for (int i = 0; i < n; ++i) {
    int ia = a.size() - n + i, ib = b.size() - n + i;
    int64_t ea = ia >= 0 ? a[ia] : 1, eb = ib >= 0 ? b[ib] : 1;
    if (ea != eb && ea != 1 && eb != 1)
      throw ShapeError(
          detail::cat(op, ": shapes ", a, " and ", b, " cannot be broadcast together"));
    out[i] = ea == 1 ? eb : ea;
  }
  return out;
}

// Strides that read a tensor of shape `s` (strides `st`) as if it had shape `out`
// (broadcast axes get stride 0). `out` must be a broadcast of `s`.
inline Strides broadcast_strides(const Shape& s, const Strides& st, const Shape& out) {
  Strides r = Dims::filled(out.size(), 0);
  int off = out.size() - s.size();
  for (int i = 0; i < s.size(); ++i) r[off + i] = (s[i] == 1 && out[off + i] != 1) ? 0 : st[i];
  return r;
}

}  // namespace ternary
