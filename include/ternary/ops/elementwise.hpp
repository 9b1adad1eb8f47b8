// Differentiable elementwise ops on Var, with numpy broadcasting. Each op is its forward
// (an expression, evaluated in one fused pass) and its backward rule side by side; the
// kernel is the expression evaluator (backend/cpu/elementwise.hpp). Tests:
// tests/test_elementwise.cpp.
//
// The pattern for a new op (copy it):
//   auto out = Tensor<T, B>(forward expression of x.value());
//   return Var<T, B>::record("name", out, {x}, [x, out](const Tensor<T, B>& g) {
//     x.accumulate_grad(g * (d out / d x as an expression));
//   });
#pragma once

#include "ternary/autograd/var.hpp"
#include "ternary/ops/reduce.hpp"

namespace ternary {

// ---- binary: a (op) b, broadcasting ------------------------------------------------------------
// d(a+b) = g, g          d(a-b) = g, -g
// d(a*b) = g*b, g*a      d(a/b) = g/b, -g*a/b^2
// Broadcast inputs receive sum_to(gradient, their shape).
template <class T, class B>
Var<T, B> operator+(const Var<T, B>& a, const Var<T, B>& b) {
  return Var<T, B>::record("add", Tensor<T, B>(a.value() + b.value()), {a, b},
                           [a, b](const Tensor<T, B>& g) {
                             if (a.requires_grad()) a.accumulate_grad(sum_to(g, a.shape()));
                             if (b.requires_grad()) b.accumulate_grad(sum_to(g, b.shape()));
                           });
}
template <class T, class B>
Var<T, B> operator-(const Var<T, B>& a, const Var<T, B>& b) {
  return Var<T, B>::record("sub", Tensor<T, B>(a.value() - b.value()), {a, b},
                           [a, b](const Tensor<T, B>& g) {
                             if (a.requires_grad()) a.accumulate_grad(sum_to(g, a.shape()));
                             if (b.requires_grad())
                               b.accumulate_grad(sum_to(Tensor<T, B>(-g), b.shape()));
                           });
}
template <class T, class B>
Var<T, B> operator*(const Var<T, B>& a, const Var<T, B>& b) {
  return Var<T, B>::record("mul", Tensor<T, B>(a.value() * b.value()), {a, b},
                           [a, b](const Tensor<T, B>& g) {
                             if (a.requires_grad())
                               a.accumulate_grad(sum_to(Tensor<T, B>(g * b.value()), a.shape()));
                             if (b.requires_grad())
                               b.accumulate_grad(sum_to(Tensor<T, B>(g * a.value()), b.shape()));
                           });
}
template <class T, class B>
Var<T, B> operator/(const Var<T, B>& a, const Var<T, B>& b) {
  return Var<T, B>::record(
      "div", Tensor<T, B>(a.value() / b.value()), {a, b}, [a, b](const Tensor<T, B>& g) {
        if (a.requires_grad()) a.accumulate_grad(sum_to(Tensor<T, B>(g / b.value()), a.shape()));
        if (b.requires_grad())
          b.accumulate_grad(sum_to(Tensor<T, B>(-g * a.value() / square(b.value())), b.shape()));
      });
}

// ---- with a constant scalar ------------------------------------------------------------------
template <class T, class B, Arithmetic S>
Var<T, B> operator+(const Var<T, B>& a, S s) {
  return Var<T, B>::record("add_scalar", Tensor<T, B>(a.value() + T(s)), {a},
                           [a](const Tensor<T, B>& g) { a.accumulate_grad(g); });
}
template <class T, class B, Arithmetic S>
Var<T, B> operator+(S s, const Var<T, B>& a) {
  return a + s;
}
template <class T, class B, Arithmetic S>
Var<T, B> operator-(const Var<T, B>& a, S s) {
  return a + (-T(s));
}
template <class T, class B, Arithmetic S>
Var<T, B> operator-(S s, const Var<T, B>& a) {
  return -a + s;
}
template <class T, class B, Arithmetic S>
Var<T, B> operator*(const Var<T, B>& a, S s) {
  const T c = T(s);
  return Var<T, B>::record("mul_scalar", Tensor<T, B>(a.value() * c), {a},
                           [a, c](const Tensor<T, B>& g) { a.accumulate_grad(g * c); });
}
template <class T, class B, Arithmetic S>
Var<T, B> operator*(S s, const Var<T, B>& a) {
  return a * s;
}
template <class T, class B, Arithmetic S>
Var<T, B> operator/(const Var<T, B>& a, S s) {
  return a * (T(1) / T(s));
}
template <class T, class B, Arithmetic S>
Var<T, B> operator/(S s, const Var<T, B>& a) {
  const T c = T(s);
  Tensor<T, B> out = c / a.value();
  return Var<T, B>::record("rdiv_scalar", out, {a}, [a, out, c](const Tensor<T, B>& g) {
    a.accumulate_grad(-g * square(out) / c);  // d(c/x) = -c/x^2 = -(c/x)^2 / c
  });
}

// ---- unary ----------------------------------------------------------------------------------
template <class T, class B>
Var<T, B> operator-(const Var<T, B>& x) {
  return Var<T, B>::record("neg", Tensor<T, B>(-x.value()), {x},
                           [x](const Tensor<T, B>& g) { x.accumulate_grad(-g); });
}
// exp: d = g * exp(x)
template <class T, class B>
Var<T, B> exp(const Var<T, B>& x) {
  Tensor<T, B> out = exp(x.value());
  return Var<T, B>::record("exp", out, {x},
                           [x, out](const Tensor<T, B>& g) { x.accumulate_grad(g * out); });
}
// log: d = g / x
template <class T, class B>
Var<T, B> log(const Var<T, B>& x) {
  return Var<T, B>::record("log", Tensor<T, B>(log(x.value())), {x},
                           [x](const Tensor<T, B>& g) { x.accumulate_grad(g / x.value()); });
}
// sqrt: d = g / (2 sqrt(x))
template <class T, class B>
Var<T, B> sqrt(const Var<T, B>& x) {
  Tensor<T, B> out = sqrt(x.value());
  return Var<T, B>::record(
      "sqrt", out, {x}, [x, out](const Tensor<T, B>& g) { x.accumulate_grad(g * T(0.5) / out); });
}
// rsqrt: y = x^-1/2, d = -g y^3 / 2
template <class T, class B>
Var<T, B> rsqrt(const Var<T, B>& x) {
  Tensor<T, B> out = rsqrt(x.value());
  return Var<T, B>::record("rsqrt", out, {x}, [x, out](const Tensor<T, B>& g) {
    x.accumulate_grad(g * T(-0.5) * out * out * out);
  });
}
// pow with a constant exponent: d = g p x^(p-1)
template <class T, class B, Arithmetic S>
Var<T, B> pow(const Var<T, B>& x, S p) {
  const T e = T(p);
  return Var<T, B>::record(
      "pow", Tensor<T, B>(pow(x.value(), e)), {x},
      [x, e](const Tensor<T, B>& g) { x.accumulate_grad(g * e * pow(x.value(), e - T(1))); });
}
// square: d = 2 g x
template <class T, class B>
Var<T, B> square(const Var<T, B>& x) {
  return Var<T, B>::record("square", Tensor<T, B>(square(x.value())), {x},
                           [x](const Tensor<T, B>& g) { x.accumulate_grad(g * T(2) * x.value()); });
}
// abs: d = g sign(x) (0 at 0)
template <class T, class B>
Var<T, B> abs(const Var<T, B>& x) {
  return Var<T, B>::record("abs", Tensor<T, B>(abs(x.value())), {x},
                           [x](const Tensor<T, B>& g) { x.accumulate_grad(g * sign(x.value())); });
}
// tanh: d = g (1 - y^2)
template <class T, class B>
Var<T, B> tanh(const Var<T, B>& x) {
  Tensor<T, B> out = tanh(x.value());
  return Var<T, B>::record("tanh", out, {x}, [x, out](const Tensor<T, B>& g) {
    x.accumulate_grad(g * (T(1) - out * out));
  });
}
// sigmoid: d = g y (1 - y)
template <class T, class B>
Var<T, B> sigmoid(const Var<T, B>& x) {
  Tensor<T, B> out = sigmoid(x.value());
  return Var<T, B>::record("sigmoid", out, {x}, [x, out](const Tensor<T, B>& g) {
    x.accumulate_grad(g * out * (T(1) - out));
  });
}
// relu: d = g [x > 0]
template <class T, class B>
Var<T, B> relu(const Var<T, B>& x) {
  return Var<T, B>::record("relu", Tensor<T, B>(relu(x.value())), {x},
                           [x](const Tensor<T, B>& g) { x.accumulate_grad(g * step(x.value())); });
}
// relu^2 (the Parameter Golf MLP activation): y = max(x, 0)^2, d = 2 g max(x, 0)
template <class T, class B>
Var<T, B> relu2(const Var<T, B>& x) {
  return Var<T, B>::record(
      "relu2", Tensor<T, B>(relu2(x.value())), {x},
      [x](const Tensor<T, B>& g) { x.accumulate_grad(g * T(2) * relu(x.value())); });
}
// silu: y = x s(x), d = g s (1 + x (1 - s))
template <class T, class B>
Var<T, B> silu(const Var<T, B>& x) {
  return Var<T, B>::record("silu", Tensor<T, B>(silu(x.value())), {x}, [x](const Tensor<T, B>& g) {
    Tensor<T, B> s = sigmoid(x.value());
    x.accumulate_grad(g * s * (T(1) + x.value() * (T(1) - s)));
  });
}
// softcap: y = c tanh(x / c), d = g (1 - (y/c)^2). Bounds logits to (-c, c).
template <class T, class B, Arithmetic S>
Var<T, B> softcap(const Var<T, B>& x, S cap) {
  const T c = T(cap);
  if (!(c > T(0))) throw Error(detail::cat("softcap: the cap must be positive, got ", cap));
  Tensor<T, B> t = tanh(x.value() / c);
  return Var<T, B>::record("softcap", Tensor<T, B>(t * c), {x}, [x, t](const Tensor<T, B>& g) {
    x.accumulate_grad(g * (T(1) - t * t));
  });
}

}  // namespace ternary
