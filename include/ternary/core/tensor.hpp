// Tensor<T, B>: an n-d array of T on backend B (cpu by default): a shape, strides (in
// elements), an offset and a shared storage. Copying a tensor shares the storage; clone()
// copies the data. Views (reshape, transpose, permute, slice, narrow, select, expand) share
// storage too. Elementwise arithmetic builds expressions (core/expr.hpp):
//   Tensor<float> c = a * b + 1;     // evaluated here, in one fused pass, into a new tensor
//   c.assign(exp(a));                // evaluated into c's existing memory (c may be a view)
//   c += b;                          // in place, broadcasting b to c's shape
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <iomanip>
#include <memory>
#include <ostream>
#include <sstream>
#include <vector>

#include "ternary/backend/cpu/cpu.hpp"
#include "ternary/backend/cpu/elementwise.hpp"
#include "ternary/core/dtype.hpp"
#include "ternary/core/error.hpp"
#include "ternary/core/expr.hpp"
#include "ternary/core/pool.hpp"
#include "ternary/core/random.hpp"
#include "ternary/core/shape.hpp"
#include "ternary/core/storage.hpp"
#include "ternary/core/tensor_fwd.hpp"

namespace ternary {

template <class T, class B>
class Tensor {
  static_assert(is_element_type_v<T>,
                "ternary::Tensor<T>: T must be float, double, bf16, f16, int8_t, uint8_t, int32_t, "
                "int64_t or uint16_t");

 public:
  using value_type = T;
  using backend_type = B;

  // An undefined tensor (no storage). defined() is false.
  Tensor() = default;

  // A new zero-filled tensor.
  explicit Tensor(const Shape& shape) : Tensor(empty(shape)) { fill(T(0)); }

  // Evaluates an expression into a new contiguous tensor.
  template <Expression E>
  Tensor(const E& e) : Tensor(empty(e.shape())) {  // NOLINT: implicit on purpose
    backend::assign_expr(B{}, *this, e);
  }
  // Rebinds to a new tensor holding the expression's value (never writes into shared memory).
  template <Expression E>
  Tensor& operator=(const E& e) {
    Tensor result(e);
    *this = std::move(result);
    return *this;
  }

  // ---- factories ----
  static Tensor empty(const Shape& shape) {
    for (int64_t e : shape)
      if (e < 0) throw ShapeError(detail::cat("Tensor: negative extent in shape ", shape));
    Tensor t;
    // Pooled control block + Storage (core/pool.hpp); the elements come from B::allocate.
    t.storage_ = std::allocate_shared<Storage<T, B>>(detail::PoolAllocator<Storage<T, B>>{},
                                                     std::max<int64_t>(ternary::numel(shape), 1));
    t.shape_ = shape;
    t.strides_ = contiguous_strides(shape);
    return t;
  }
  static Tensor zeros(const Shape& shape) { return Tensor(shape); }
  static Tensor ones(const Shape& shape) { return full(shape, T(1)); }
  static Tensor full(const Shape& shape, T value) {
    Tensor t = empty(shape);
    t.fill(value);
    return t;
  }
  static Tensor scalar(T value) { return full(Shape{}, value); }
  static Tensor from(const Shape& shape, const std::vector<T>& values) {
    if (static_cast<int64_t>(values.size()) != ternary::numel(shape))
      throw ShapeError(detail::cat("Tensor::from: ", values.size(), " values for shape ", shape,
                                   " (needs ", ternary::numel(shape), ")"));
    if constexpr (!B::on_host) return upload(Tensor<T, cpu>::from(shape, values));
    Tensor t = empty(shape);
    std::copy(values.begin(), values.end(), t.data());
    return t;
  }
  static Tensor arange(int64_t n) {
    if constexpr (!B::on_host) return upload(Tensor<T, cpu>::arange(n));
    Tensor t = empty(Shape{n});
    for (int64_t i = 0; i < n; ++i) t.data()[i] = T(i);
    return t;
  }
  static Tensor randn(const Shape& shape, Rng& rng, double mean = 0, double stddev = 1) {
    if constexpr (!B::on_host) return upload(Tensor<T, cpu>::randn(shape, rng, mean, stddev));
    Tensor t = empty(shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = T(rng.normal(mean, stddev));
    return t;
  }
  static Tensor rand(const Shape& shape, Rng& rng, double lo = 0, double hi = 1) {
    if constexpr (!B::on_host) return upload(Tensor<T, cpu>::rand(shape, rng, lo, hi));
    Tensor t = empty(shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = T(rng.uniform(lo, hi));
    return t;
  }

  // ---- shape and memory ----
  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Strides& strides() const { return strides_; }
  int64_t offset() const { return offset_; }
  int dim() const { return shape_.size(); }
  int64_t size(int64_t axis) const { return shape_[normalize_axis(axis, dim(), "size")]; }
  int64_t numel() const { return ternary::numel(shape_); }
  T* data() const { return storage_ ? storage_->data() + offset_ : nullptr; }
  bool shares_storage_with(const Tensor& o) const { return storage_ && storage_ == o.storage_; }
  bool is_contiguous() const {
    int64_t expected = 1;
    for (int i = dim() - 1; i >= 0; --i) {
      if (shape_[i] != 1 && strides_[i] != expected) return false;
      expected *= shape_[i];
    }
    return true;
  }

  // ---- element access (host) ----
  // On a device backend (B::on_host false) element references throw; item() and
  // to_vector() copy through the host.
  template <class... I>
  T& operator()(I... idx) const {
    static_assert((std::is_integral_v<I> && ...), "Tensor(): indices must be integers");
    const int64_t ix[] = {static_cast<int64_t>(idx)..., 0};
    return at_index(ix, sizeof...(I));
  }
  T& at(std::initializer_list<int64_t> idx) const { return at_index(idx.begin(), idx.size()); }
  T& at(const std::vector<int64_t>& idx) const { return at_index(idx.data(), idx.size()); }
  T item() const {
    if (numel() != 1)
      throw ShapeError(
          detail::cat("item: tensor of shape ", shape_, " has ", numel(), " elements, not 1"));
    if constexpr (!B::on_host) {
      T v;
      B::copy_to_host(&v, data(), sizeof(T));
      return v;
    } else {
      return *data();
    }
  }
  std::vector<T> to_vector() const {
    Tensor c = contiguous();
    if constexpr (!B::on_host) {
      std::vector<T> v(c.numel());
      B::copy_to_host(v.data(), c.data(), sizeof(T) * v.size());
      return v;
    } else {
      return std::vector<T>(c.data(), c.data() + c.numel());
    }
  }

  // ---- writing ----
  Tensor& fill(T value) {
    backend::assign_expr(B{}, *this, ScalarLeaf<T>(value));
    return *this;
  }
  template <Operand E>
  Tensor& assign(const E& e) {
    backend::assign_expr(B{}, *this, to_expr(e));
    return *this;
  }
  template <Operand E>
  Tensor& operator+=(const E& e) {
    return assign(*this + e);
  }
  template <Operand E>
  Tensor& operator-=(const E& e) {
    return assign(*this - e);
  }
  template <Operand E>
  Tensor& operator*=(const E& e) {
    return assign(*this * e);
  }
  template <Operand E>
  Tensor& operator/=(const E& e) {
    return assign(*this / e);
  }
  Tensor& operator+=(T s) { return assign(*this + s); }
  Tensor& operator-=(T s) { return assign(*this - s); }
  Tensor& operator*=(T s) { return assign(*this * s); }
  Tensor& operator/=(T s) { return assign(*this / s); }

  // ---- copies ----
  Tensor clone() const {
    Tensor c = empty(shape_);
    c.assign(*this);
    return c;
  }
  Tensor contiguous() const { return is_contiguous() ? *this : clone(); }
  // Element type conversion (always a new contiguous tensor).
  template <class U>
  Tensor<U, B> to() const {
    if constexpr (!B::on_host) {  // through the host (a device cast kernel is future work)
      auto v = to_vector();
      return Tensor<U, B>::from(shape_, std::vector<U>(v.begin(), v.end()));
    }
    Tensor c = contiguous();
    auto r = Tensor<U, B>::empty(shape_);
    for (int64_t i = 0; i < r.numel(); ++i) r.data()[i] = static_cast<U>(c.data()[i]);
    return r;
  }

  // ---- views ----
  // Same data, new shape; one extent may be -1 (inferred). Copies only if not contiguous.
  Tensor reshape(Shape new_shape) const {
    new_shape = infer_shape(new_shape, "reshape");
    if (!is_contiguous()) return clone().reshape(new_shape);
    Tensor v = *this;
    v.shape_ = new_shape;
    v.strides_ = contiguous_strides(new_shape);
    return v;
  }
  // Like reshape, but never copies: throws if the tensor is not contiguous.
  Tensor view(Shape new_shape) const {
    if (!is_contiguous())
      throw ShapeError(detail::cat("view: tensor of shape ", shape_, " with strides ", strides_,
                                   " is not contiguous; use reshape() or contiguous()"));
    return reshape(new_shape);
  }
  Tensor flatten() const { return reshape(Shape{numel()}); }
  Tensor transpose(int64_t a0, int64_t a1) const {
    int d0 = normalize_axis(a0, dim(), "transpose"), d1 = normalize_axis(a1, dim(), "transpose");
    Tensor v = *this;
    std::swap(v.shape_[d0], v.shape_[d1]);
    std::swap(v.strides_[d0], v.strides_[d1]);
    return v;
  }
  // 2-d transpose.
  Tensor t() const {
    if (dim() != 2) throw ShapeError(detail::cat("t: expects a 2-d tensor, got shape ", shape_));
    return transpose(0, 1);
  }
  Tensor permute(const Dims& order) const {
    if (order.size() != dim())
      throw ShapeError(
          detail::cat("permute: ", order.size(), " axes given for a tensor of shape ", shape_));
    Tensor v = *this;
    std::array<bool, kMaxDims> seen{};
    for (int i = 0; i < dim(); ++i) {
      int a = normalize_axis(order[i], dim(), "permute");
      if (seen[a]) throw ShapeError(detail::cat("permute: axis ", order[i], " appears twice"));
      seen[a] = true;
      v.shape_[i] = shape_[a];
      v.strides_[i] = strides_[a];
    }
    return v;
  }
  // Braced lists and std::vector orders (a braced list would be ambiguous between the two).
  Tensor permute(std::initializer_list<int64_t> order) const { return permute(Dims(order)); }
  Tensor permute(const std::vector<int64_t>& order) const { return permute(Dims(order)); }
  // Python-style slice along one axis: [start, end) with step > 0; negative bounds count from
  // the end and bounds are clamped to the axis, as in numpy.
  Tensor slice(int64_t axis, int64_t start, int64_t end, int64_t step = 1) const {
    int d = normalize_axis(axis, dim(), "slice");
    if (step <= 0) throw IndexError(detail::cat("slice: step must be positive, got ", step));
    const int64_t n = shape_[d];
    auto clampi = [n](int64_t i) { return std::clamp<int64_t>(i < 0 ? i + n : i, 0, n); };
    start = clampi(start);
    end = std::max(clampi(end), start);
    Tensor v = *this;
    v.offset_ += start * strides_[d];
    v.shape_[d] = (end - start + step - 1) / step;
    v.strides_[d] *= step;
    return v;
  }
  // `length` elements from `start` along an axis; throws if they do not fit.
  Tensor narrow(int64_t axis, int64_t start, int64_t length) const {
    int d = normalize_axis(axis, dim(), "narrow");
    if (start < 0 || length < 0 || start + length > shape_[d])
      throw IndexError(detail::cat("narrow: [", start, ", ", start + length, ") is outside axis ",
                                   d, " of shape ", shape_));
    return slice(d, start, start + length);
  }
  // Index one position along an axis, removing that axis.
  Tensor select(int64_t axis, int64_t index) const {
    int d = normalize_axis(axis, dim(), "select");
    int64_t i = index < 0 ? index + shape_[d] : index;
    if (i < 0 || i >= shape_[d])
      throw IndexError(detail::cat("select: index ", index, " is out of range for axis ", d,
                                   " of shape ", shape_));
    Tensor v = *this;
    v.offset_ += i * strides_[d];
    v.shape_.erase(d);
    v.strides_.erase(d);
    return v;
  }
  Tensor operator[](int64_t i) const { return select(0, i); }
  Tensor unsqueeze(int64_t axis) const {
    int d = normalize_axis(axis, dim() + 1, "unsqueeze");
    Tensor v = *this;
    int64_t st = d < dim() ? strides_[d] * shape_[d] : 1;
    v.shape_.insert(d, 1);
    v.strides_.insert(d, st);
    return v;
  }
  Tensor squeeze(int64_t axis) const {
    int d = normalize_axis(axis, dim(), "squeeze");
    if (shape_[d] != 1)
      throw ShapeError(detail::cat("squeeze: axis ", d, " of shape ", shape_, " has extent ",
                                   shape_[d], ", not 1"));
    Tensor v = *this;
    v.shape_.erase(d);
    v.strides_.erase(d);
    return v;
  }
  // Broadcast view to a larger shape (stride 0 on repeated axes). Read-only in spirit:
  // writing through it writes the same element many times.
  Tensor expand(const Shape& to) const {
    if (broadcast_shapes(shape_, to, "expand") != to)
      throw ShapeError(detail::cat("expand: cannot expand shape ", shape_, " to ", to));
    Tensor v = *this;
    v.strides_ = broadcast_strides(shape_, strides_, to);
    v.shape_ = to;
    return v;
  }

 private:
  template <class, class>
  friend class Tensor;
  // A device tensor holding a contiguous host tensor's values.
  static Tensor upload(const Tensor<T, cpu>& h) {
    Tensor t = empty(h.shape());
    B::copy_from_host(t.data(), h.data(), sizeof(T) * h.numel());
    return t;
  }
  T& at_index(const int64_t* idx, size_t n) const {
    if constexpr (!B::on_host)
      throw Error(detail::cat("Tensor element access: this tensor of shape ", shape_, " lives on ",
                              B::name, " (device memory); copy it to the host first (to_vector(), ",
                              "item(), or to_host() from ternary/backend/cuda/cuda.hpp)"));
    if (static_cast<int>(n) != dim())
      throw IndexError(detail::cat("index: ", n, " indices for a tensor of shape ", shape_));
    int64_t o = 0;
    for (int d = 0; d < dim(); ++d) {
      int64_t i = idx[d] < 0 ? idx[d] + shape_[d] : idx[d];
      if (i < 0 || i >= shape_[d])
        throw IndexError(
            detail::cat("index: ", idx[d], " is out of range for axis ", d, " of shape ", shape_));
      o += i * strides_[d];
    }
    return data()[o];
  }
  Shape infer_shape(Shape s, const char* op) const {
    int infer = -1;
    int64_t known = 1;
    for (int i = 0; i < s.size(); ++i) {
      if (s[i] == -1) {
        if (infer >= 0) throw ShapeError(detail::cat(op, ": more than one -1 in ", s));
        infer = i;
      } else if (s[i] < 0) {
        throw ShapeError(detail::cat(op, ": negative extent in ", s));
      } else {
        known *= s[i];
      }
    }
    if (infer >= 0) {
      if (known == 0 || numel() % known != 0)
        throw ShapeError(detail::cat(op, ": cannot infer -1 in ", s, " for ", numel(),
                                     " elements (shape ", shape_, ")"));
      s[infer] = numel() / known;
    }
    if (ternary::numel(s) != numel())
      throw ShapeError(
          detail::cat(op, ": shape ", shape_, " (", numel(), " elements) cannot become ", s));
    return s;
  }

  std::shared_ptr<Storage<T, B>> storage_;
  Shape shape_;
  Strides strides_;
  int64_t offset_ = 0;
};

// ---- printing ---------------------------------------------------------------------------------
namespace detail {
template <class T, class B>
void print_rec(std::ostream& os, const Tensor<T, B>& t, int depth) {
  constexpr int64_t kEdge = 3;  // elements shown at each end of a long axis
  if (t.dim() == 0) {
    if constexpr (sizeof(T) == 1)
      os << int(*t.data());
    else
      os << *t.data();
    return;
  }
  const int64_t n = t.size(0);
  os << "[";
  for (int64_t i = 0; i < n; ++i) {
    if (n > 2 * kEdge && i == kEdge) {
      os << (t.dim() > 1 ? "...,\n" + std::string(depth + 1, ' ') : "..., ");
      i = n - kEdge;
    }
    print_rec(os, t.select(0, i), depth + 1);
    if (i + 1 < n) os << (t.dim() > 1 ? ",\n" + std::string(depth + 1, ' ') : ", ");
  }
  os << "]";
}
}  // namespace detail

template <class T, class B>
std::ostream& operator<<(std::ostream& os, const Tensor<T, B>& t) {
  if (!t.defined()) return os << "Tensor(undefined)";
  if constexpr (!B::on_host) {  // print a host copy
    os << "(on " << B::name << ") ";
    return os << Tensor<T, cpu>::from(t.shape(), t.to_vector());
  }
  os << "Tensor<" << dtype_name(dtype_of<T>()) << ">" << t.shape() << "\n";
  std::ios::fmtflags f(os.flags());
  os << std::setprecision(4);
  detail::print_rec(os, t, 0);
  os.flags(f);
  return os;
}

// `t` on backend B2: the same handle when it is already there, else a contiguous copy moved
// through host memory (batches, parameters and optimizer state crossing host <-> device).
template <class B2, class T, class B1>
Tensor<T, B2> to_backend(const Tensor<T, B1>& t) {
  if constexpr (std::is_same_v<B1, B2>)
    return t;
  else
    return Tensor<T, B2>::from(t.shape(), t.to_vector());
}

// Largest absolute difference between two tensors of the same shape (for tests and checks).
template <class T, class B>
double max_abs_diff(const Tensor<T, B>& a, const Tensor<T, B>& b) {
  if (!(a.shape() == b.shape()))
    throw ShapeError(
        detail::cat("max_abs_diff: shapes ", a.shape(), " and ", b.shape(), " differ"));
  auto va = a.to_vector(), vb = b.to_vector();
  double m = 0;
  for (size_t i = 0; i < va.size(); ++i) m = std::max(m, std::abs(double(va[i]) - double(vb[i])));
  return m;
}

}  // namespace ternary
