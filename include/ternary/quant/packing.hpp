// Packing trits {-1, 0, 1} into bytes, for export and for the inference kernels.
//   base-3:  5 trits per byte (3^5 = 243 <= 256), 1.6 bits per weight. Byte b holds trits
//            5b .. 5b+4 as sum_i (t_i + 1) 3^i; a short last byte pads with trit 0.
//   2-bit:   4 trits per byte, code t + 1 in bits 2i..2i+1 (code 3 is invalid); 2 bits per
//            weight, but decodable with shifts and masks (what SIMD kernels want).
// PackedTernary carries a weight's packed trits with their float scales (one per `group`
// consecutive trits: per tensor, per row or per group) and its shape.
// pack and unpack are exact inverses; bad input (a value outside {-1, 0, 1}, a byte that is
// not a valid code, a buffer or scale list of the wrong size) throws naming the position.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "ternary/core/error.hpp"
#include "ternary/core/shape.hpp"

namespace ternary {

namespace detail {
inline void check_trit(int8_t t, size_t i, const char* op) {
  if (t < -1 || t > 1)
    throw Error(cat(op, ": value ", int(t), " at position ", i, " is not a trit (-1, 0, 1)"));
}
}  // namespace detail

inline std::vector<uint8_t> pack_trits_base3(std::span<const int8_t> trits) {
  std::vector<uint8_t> out((trits.size() + 4) / 5, 0);
  for (size_t b = 0; b < out.size(); ++b) {
    unsigned v = 0, p = 1;
    for (size_t i = 5 * b; i < std::min(trits.size(), 5 * b + 5); ++i, p *= 3) {
      detail::check_trit(trits[i], i, "pack_trits_base3");
      v += unsigned(trits[i] + 1) * p;
    }
    for (size_t i = trits.size(); i < 5 * b + 5; ++i, p *= 3) v += 1 * p;  // pad with trit 0
    out[b] = uint8_t(v);
  }
  return out;
}

inline std::vector<int8_t> unpack_trits_base3(std::span<const uint8_t> bytes, int64_t n) {
  if (n < 0 || bytes.size() != size_t((n + 4) / 5))
    throw Error(detail::cat("unpack_trits_base3: ", bytes.size(), " bytes for ", n,
                            " trits (needs ", (n + 4) / 5, ")"));
  std::vector<int8_t> out(n);
  for (size_t b = 0; b < bytes.size(); ++b) {
    unsigned v = bytes[b];
    if (v >= 243)
      throw Error(
          detail::cat("unpack_trits_base3: byte ", b, " is ", v, ", not a base-3 code (< 243)"));
    for (size_t i = 5 * b; i < 5 * b + 5; ++i, v /= 3)
      if (i < size_t(n)) out[i] = int8_t(int(v % 3) - 1);
  }
  return out;
}

inline std::vector<uint8_t> pack_trits_2bit(std::span<const int8_t> trits) {
  std::vector<uint8_t> out((trits.size() + 3) / 4, 0);
  for (size_t i = 0; i < trits.size(); ++i) {
    detail::check_trit(trits[i], i, "pack_trits_2bit");
    out[i / 4] |= uint8_t((trits[i] + 1) << (2 * (i % 4)));
  }
  for (size_t i = trits.size(); i < out.size() * 4; ++i)
    out[i / 4] |= uint8_t(1 << (2 * (i % 4)));  // pad: 0
  return out;
}

inline std::vector<int8_t> unpack_trits_2bit(std::span<const uint8_t> bytes, int64_t n) {
  if (n < 0 || bytes.size() != size_t((n + 3) / 4))
    throw Error(detail::cat("unpack_trits_2bit: ", bytes.size(), " bytes for ", n, " trits (needs ",
                            (n + 3) / 4, ")"));
  std::vector<int8_t> out(n);
  for (int64_t i = 0; i < n; ++i) {
    const int code = (bytes[i / 4] >> (2 * (i % 4))) & 3;
    if (code == 3)
      throw Error(
          detail::cat("unpack_trits_2bit: invalid code 3 for trit ", i, " (byte ", i / 4, ")"));
    out[i] = int8_t(code - 1);
  }
  return out;
}

enum class TritEncoding { two_bit, base3 };

// A ternary weight in packed form: value[i] = scales[i / group] * trit[i] (then the inverse
// Hadamard rotation of blocks of `hadamard` values when hadamard > 0, see quant/ternary.hpp).
struct PackedTernary {
  Shape shape;
  TritEncoding encoding = TritEncoding::base3;
  std::vector<uint8_t> data;  // the packed trits, row-major over shape
  std::vector<float> scales;
  int64_t group = 0;
  int64_t hadamard = 0;

  int64_t numel() const { return ternary::numel(shape); }
  // Bytes of trits plus scales: what the weight costs in an artifact before compression.
  int64_t bytes() const { return int64_t(data.size() + scales.size() * sizeof(float)); }
};

namespace detail {
inline void check_scales(const Shape& shape, size_t n_scales, int64_t group, const char* op) {
  const int64_t n = numel(shape);
  if (group <= 0 || n % group != 0 || int64_t(n_scales) != n / group)
    throw ShapeError(cat(op, ": ", n_scales, " scales of group ", group, " for shape ", shape, " (",
                         n, " values: the group must divide it, one scale per group)"));
}
}  // namespace detail

inline PackedTernary pack_ternary(std::span<const int8_t> trits, const Shape& shape,
                                  std::vector<float> scales, int64_t group,
                                  TritEncoding encoding = TritEncoding::base3) {
  if (int64_t(trits.size()) != numel(shape))
    throw ShapeError(detail::cat("pack_ternary: ", trits.size(), " trits for shape ", shape));
  detail::check_scales(shape, scales.size(), group, "pack_ternary");
  PackedTernary p;
  p.shape = shape;
  p.encoding = encoding;
  p.data = encoding == TritEncoding::base3 ? pack_trits_base3(trits) : pack_trits_2bit(trits);
  p.scales = std::move(scales);
  p.group = group;
  return p;
}

inline std::vector<int8_t> unpack_trits(const PackedTernary& p) {
  detail::check_scales(p.shape, p.scales.size(), p.group, "unpack_trits");
  return p.encoding == TritEncoding::base3 ? unpack_trits_base3(p.data, p.numel())
                                           : unpack_trits_2bit(p.data, p.numel());
}

}  // namespace ternary
