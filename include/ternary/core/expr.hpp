// Expression templates for elementwise work. `a * b + exp(c)` builds a small tree of value
// types that only *describe* the computation (with its broadcast shape, checked at once);
// nothing runs until the tree is assigned to a tensor. The backend's evaluator
// (backend/cpu/elementwise.hpp) then runs the whole tree in one fused SIMD pass with no
// temporaries. Every functor below works on a scalar T and on an xsimd batch of T; the
// scalar path is also device code under nvcc (TERNARY_HD), for backend/cuda/elementwise.cuh.
#pragma once

#include <cmath>
#include <concepts>
#include <type_traits>
#include "ternary/core/simd.hpp"

#include "ternary/core/hd.hpp"
#include "ternary/core/shape.hpp"
#include "ternary/core/tensor_fwd.hpp"

namespace ternary {

// ---- node types -------------------------------------------------------------------------------
struct ExprTag {};

template <class E>
concept Expression = std::derived_from<std::remove_cvref_t<E>, ExprTag>;
// Anything that can stand in an expression: an expression node or a tensor.
template <class E>
concept Operand = Expression<E> || is_tensor_v<E>;
template <class S>
concept Arithmetic = std::is_arithmetic_v<std::remove_cvref_t<S>>;

// A tensor read in an expression (holds a shared view, so temporaries stay alive).
template <class T, class B>
struct TensorLeaf : ExprTag {
  using value_type = T;
  Tensor<T, B> tensor;
  explicit TensorLeaf(Tensor<T, B> t) : tensor(std::move(t)) {}
  const Shape& shape() const { return tensor.shape(); }
  template <class F>
  void for_each_leaf(F&& f) const {
    f(tensor);
  }
};

// A constant broadcast to any shape (shape [] = a 0-d scalar).
template <class T>
struct ScalarLeaf : ExprTag {
  using value_type = T;
  T value;
  Shape shape_{};
  explicit ScalarLeaf(T v) : value(v) {}
  const Shape& shape() const { return shape_; }
  template <class F>
  void for_each_leaf(F&&) const {}
};

template <class Op, class A>
struct UnaryExpr : ExprTag {
  using value_type = typename A::value_type;
  Op op;
  A a;
  UnaryExpr(Op o, A x) : op(o), a(std::move(x)) {}
  const Shape& shape() const { return a.shape(); }
  template <class F>
  void for_each_leaf(F&& f) const {
    a.for_each_leaf(f);
  }
};

template <class Op, class A, class C>
struct BinaryExpr : ExprTag {
  using value_type = typename A::value_type;
  static_assert(std::is_same_v<typename A::value_type, typename C::value_type>,
                "ternary: both operands of an elementwise op must have the same element type");
  Op op;
  A a;
  C c;
  Shape shape_;
  BinaryExpr(Op o, A x, C y)
      : op(o),
        a(std::move(x)),
        c(std::move(y)),
        shape_(broadcast_shapes(a.shape(), c.shape(), Op::name)) {}
  const Shape& shape() const { return shape_; }
  template <class F>
  void for_each_leaf(F&& f) const {
    a.for_each_leaf(f);
    c.for_each_leaf(f);
  }
};

template <class T, class B>
TensorLeaf<T, B> to_expr(const Tensor<T, B>& t) {
  return TensorLeaf<T, B>(t);
}
template <Expression E>
const E& to_expr(const E& e) {
  return e;
}

template <class E>
using expr_t = std::remove_cvref_t<decltype(to_expr(std::declval<const E&>()))>;
template <class E>
using value_t = typename expr_t<E>::value_type;

namespace detail {
// What every backend's assign_expr checks first: the expression must broadcast to the
// destination's shape; returns whether an operand overlaps the destination with a different
// layout (then the evaluator goes through a temporary, so `x.assign(x.t())` is safe).
template <class Dst, class E>
bool prepare_assign(const Dst& dst, const E& expr) {
  const Shape& shape = dst.shape();
  if (broadcast_shapes(expr.shape(), shape, "assign") != shape)
    throw ShapeError(cat("assign: cannot write an expression of shape ", expr.shape(),
                         " into a tensor of shape ", shape));
  bool overlaps_differently = false;
  expr.for_each_leaf([&](const auto& t) {
    if (t.shares_storage_with(dst) &&
        !(t.shape() == shape && t.strides() == dst.strides() && t.offset() == dst.offset()))
      overlaps_differently = true;
  });
  return overlaps_differently;
}
}  // namespace detail

// ---- functors (scalar and SIMD batch alike) ---------------------------------------------------
namespace fn {

template <class X>
inline constexpr bool is_scalar_v = std::is_arithmetic_v<X>;

// Two overloads: the scalar one is also device code (TERNARY_HD); the batch one stays
// host-only, so nvcc never compiles an xsimd batch for the device.
// exp of a SIMD batch. xsimd's generic exp (double on AVX2) converts x * log2(e) to int64 in
// scalar code, which is undefined behaviour for inf and NaN (UBSan reports it; x86 happens to
// give the right answer). Clamp to where exp saturates anyway (exp(-1000) == 0, exp(1000) ==
// inf in float and double) and put NaN back afterwards.
template <class X>
X batch_exp(const X& x) {
  using T = typename X::value_type;
  const X lo(T(-1000)), hi(T(1000));
  const auto nan = x != x;
  const X safe =
      xsimd::select(nan, X(T(0)), xsimd::select(x < lo, lo, xsimd::select(x > hi, hi, x)));
  return xsimd::select(nan, x, xsimd::exp(safe));
}

#define TERNARY_UNARY_FN(Name, str, scalar_expr, batch_expr)                                  \
  struct Name {                                                                               \
    static constexpr const char* name = str;                                                  \
    template <class X>                                                                        \
    requires is_scalar_v<X> TERNARY_HD X operator()(const X& x) const { return scalar_expr; } \
    template <class X>                                                                        \
    requires(!is_scalar_v<X>) X operator()(const X& x) const { return batch_expr; }           \
  };

TERNARY_UNARY_FN(Neg, "neg", -x, -x)
TERNARY_UNARY_FN(Exp, "exp", std::exp(x), batch_exp(x))
TERNARY_UNARY_FN(Log, "log", std::log(x), xsimd::log(x))
TERNARY_UNARY_FN(Sqrt, "sqrt", std::sqrt(x), xsimd::sqrt(x))
TERNARY_UNARY_FN(Rsqrt, "rsqrt", X(1) / std::sqrt(x), X(1) / xsimd::sqrt(x))
TERNARY_UNARY_FN(Tanh, "tanh", std::tanh(x), xsimd::tanh(x))
TERNARY_UNARY_FN(Sigmoid, "sigmoid", X(1) / (X(1) + std::exp(-x)), X(1) / (X(1) + batch_exp(-x)))
TERNARY_UNARY_FN(Relu, "relu", x > X(0) ? x : X(0), xsimd::max(x, X(0)))
TERNARY_UNARY_FN(Relu2, "relu2", x > X(0) ? x * x : X(0), xsimd::max(x, X(0)) * xsimd::max(x, X(0)))
TERNARY_UNARY_FN(Silu, "silu", x / (X(1) + std::exp(-x)), x / (X(1) + batch_exp(-x)))
TERNARY_UNARY_FN(Abs, "abs", std::abs(x), xsimd::abs(x))
TERNARY_UNARY_FN(Square, "square", x* x, x* x)
TERNARY_UNARY_FN(Reciprocal, "reciprocal", X(1) / x, X(1) / x)
TERNARY_UNARY_FN(Sign, "sign", X((x > X(0)) - (x < X(0))),
                 xsimd::select(x > X(0), X(1), xsimd::select(x < X(0), X(-1), X(0))))
// Round half to even (the default floating-point rounding mode), as torch.round does.
TERNARY_UNARY_FN(Round, "round", std::nearbyint(x), xsimd::nearbyint(x))
TERNARY_UNARY_FN(Sin, "sin", std::sin(x), xsimd::sin(x))
TERNARY_UNARY_FN(Cos, "cos", std::cos(x), xsimd::cos(x))
// 1 where x > 0, else 0 (the derivative of relu).
TERNARY_UNARY_FN(Step, "step", x > X(0) ? X(1) : X(0), xsimd::select(x > X(0), X(1), X(0)))
#undef TERNARY_UNARY_FN

template <class T>
struct Clamp {
  static constexpr const char* name = "clamp";
  T lo, hi;
  template <class X>
  requires is_scalar_v<X> TERNARY_HD X operator()(const X& x) const {
    return x < lo ? lo : (x > hi ? hi : x);
  }
  template <class X>
  requires(!is_scalar_v<X>) X operator()(const X& x) const {
    return xsimd::min(xsimd::max(x, X(lo)), X(hi));
  }
};

template <class T>
struct PowScalar {
  static constexpr const char* name = "pow";
  T exponent;
  template <class X>
  requires is_scalar_v<X> TERNARY_HD X operator()(const X& x) const {
    return std::pow(x, exponent);
  }
  template <class X>
  requires(!is_scalar_v<X>) X operator()(const X& x) const { return xsimd::pow(x, X(exponent)); }
};

#define TERNARY_BINARY_FN(Name, str, scalar_expr, batch_expr)                                   \
  struct Name {                                                                                 \
    static constexpr const char* name = str;                                                    \
    template <class X>                                                                          \
    requires is_scalar_v<X> TERNARY_HD X operator()(const X& a, const X& b) const {             \
      return scalar_expr;                                                                       \
    }                                                                                           \
    template <class X>                                                                          \
    requires(!is_scalar_v<X>) X operator()(const X& a, const X& b) const { return batch_expr; } \
  };

TERNARY_BINARY_FN(Add, "add", a + b, a + b)
TERNARY_BINARY_FN(Sub, "sub", a - b, a - b)
TERNARY_BINARY_FN(Mul, "mul", a* b, a* b)
TERNARY_BINARY_FN(Div, "div", a / b, a / b)
TERNARY_BINARY_FN(Max, "maximum", a > b ? a : b, xsimd::max(a, b))
TERNARY_BINARY_FN(Min, "minimum", a < b ? a : b, xsimd::min(a, b))
// 1 where a > b, else 0.
TERNARY_BINARY_FN(Greater, "greater", a > b ? X(1) : X(0), xsimd::select(a > b, X(1), X(0)))
#undef TERNARY_BINARY_FN

}  // namespace fn

// ---- building expressions -----------------------------------------------------------------------
template <class Op, Operand A>
auto make_unary(Op op, const A& a) {
  return UnaryExpr<Op, expr_t<A>>(op, to_expr(a));
}
template <class Op, Operand A, Operand C>
auto make_binary(Op op, const A& a, const C& c) {
  return BinaryExpr<Op, expr_t<A>, expr_t<C>>(op, to_expr(a), to_expr(c));
}

#define TERNARY_BINARY_OPERATOR(sym, Op)                                    \
  template <Operand A, Operand C>                                           \
  auto operator sym(const A& a, const C& c) {                               \
    return make_binary(fn::Op{}, a, c);                                     \
  }                                                                         \
  template <Operand A, Arithmetic S>                                        \
  auto operator sym(const A& a, S s) {                                      \
    return make_binary(fn::Op{}, a, ScalarLeaf<value_t<A>>(value_t<A>(s))); \
  }                                                                         \
  template <Arithmetic S, Operand C>                                        \
  auto operator sym(S s, const C& c) {                                      \
    return make_binary(fn::Op{}, ScalarLeaf<value_t<C>>(value_t<C>(s)), c); \
  }
TERNARY_BINARY_OPERATOR(+, Add)
TERNARY_BINARY_OPERATOR(-, Sub)
TERNARY_BINARY_OPERATOR(*, Mul)
TERNARY_BINARY_OPERATOR(/, Div)
#undef TERNARY_BINARY_OPERATOR

template <Operand A>
auto operator-(const A& a) {
  return make_unary(fn::Neg{}, a);
}

#define TERNARY_UNARY_FUNCTION(name, Op) \
  template <Operand A>                   \
  auto name(const A& a) {                \
    return make_unary(fn::Op{}, a);      \
  }
TERNARY_UNARY_FUNCTION(exp, Exp)
TERNARY_UNARY_FUNCTION(log, Log)
TERNARY_UNARY_FUNCTION(sqrt, Sqrt)
TERNARY_UNARY_FUNCTION(rsqrt, Rsqrt)
TERNARY_UNARY_FUNCTION(tanh, Tanh)
TERNARY_UNARY_FUNCTION(sigmoid, Sigmoid)
TERNARY_UNARY_FUNCTION(relu, Relu)
TERNARY_UNARY_FUNCTION(relu2, Relu2)
TERNARY_UNARY_FUNCTION(silu, Silu)
TERNARY_UNARY_FUNCTION(abs, Abs)
TERNARY_UNARY_FUNCTION(square, Square)
TERNARY_UNARY_FUNCTION(reciprocal, Reciprocal)
TERNARY_UNARY_FUNCTION(sign, Sign)
TERNARY_UNARY_FUNCTION(round, Round)
TERNARY_UNARY_FUNCTION(sin, Sin)
TERNARY_UNARY_FUNCTION(cos, Cos)
TERNARY_UNARY_FUNCTION(step, Step)
#undef TERNARY_UNARY_FUNCTION

template <Operand A, Arithmetic S>
auto clamp(const A& a, S lo, S hi) {
  using T = value_t<A>;
  return make_unary(fn::Clamp<T>{T(lo), T(hi)}, a);
}
template <Operand A, Arithmetic S>
auto pow(const A& a, S exponent) {
  using T = value_t<A>;
  return make_unary(fn::PowScalar<T>{T(exponent)}, a);
}
template <Operand A, Operand C>
auto maximum(const A& a, const C& c) {
  return make_binary(fn::Max{}, a, c);
}
template <Operand A, Arithmetic S>
auto maximum(const A& a, S s) {
  return make_binary(fn::Max{}, a, ScalarLeaf<value_t<A>>(value_t<A>(s)));
}
template <Operand A, Operand C>
auto minimum(const A& a, const C& c) {
  return make_binary(fn::Min{}, a, c);
}
template <Operand A, Arithmetic S>
auto minimum(const A& a, S s) {
  return make_binary(fn::Min{}, a, ScalarLeaf<value_t<A>>(value_t<A>(s)));
}
template <Operand A, Operand C>
auto greater(const A& a, const C& c) {
  return make_binary(fn::Greater{}, a, c);
}
template <Operand A, Arithmetic S>
auto greater(const A& a, S s) {
  return make_binary(fn::Greater{}, a, ScalarLeaf<value_t<A>>(value_t<A>(s)));
}

}  // namespace ternary
