// Exceptions thrown by the library. Every message names the operation and the values at
// fault (shapes, indices, files), so a user can act on it without a debugger.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace ternary {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Incompatible shapes (the message names the op and both shapes).
struct ShapeError : Error {
  using Error::Error;
};
// An index (token id, target, axis, slice bound) outside its valid range.
struct IndexError : Error {
  using Error::Error;
};
// Misuse of the autograd tape (backward twice, backward on a value without gradient, ...).
struct AutogradError : Error {
  using Error::Error;
};
// A file that cannot be read or is malformed (the message names the file, field and offset).
struct IOError : Error {
  using Error::Error;
};

namespace detail {
// Builds a message from any streamable parts: cat("matmul: ", a, " vs ", b).
template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}
}  // namespace detail

}  // namespace ternary
