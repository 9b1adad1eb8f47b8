// Forward declaration of Tensor, so expressions and kernels can name it before its definition.
#pragma once

#include <type_traits>

#include "ternary/backend/cpu/cpu.hpp"

namespace ternary {

template <class T, class B = cpu>
class Tensor;

template <class X>
struct is_tensor : std::false_type {};
template <class T, class B>
struct is_tensor<Tensor<T, B>> : std::true_type {};
template <class X>
inline constexpr bool is_tensor_v = is_tensor<std::remove_cvref_t<X>>::value;

}  // namespace ternary
