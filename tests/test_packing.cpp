// Trit packing: base-3 (5 per byte) and 2-bit (4 per byte) are exact inverses, alone and with
// the scales a ternary weight carries.
#include <catch2/catch.hpp>

#include <set>

#include "ternary/core/random.hpp"
#include "ternary/quant/packing.hpp"
#include "ternary/quant/ternary.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

TEST_CASE("base-3 packing by hand", "[packing]") {
  // trits (1, 0, -1, 1, 1) -> digits (2, 1, 0, 2, 2) -> 2 + 3 + 0 + 54 + 162 = 221
  std::vector<int8_t> t{1, 0, -1, 1, 1, -1};
  auto p = pack_trits_base3(t);
  REQUIRE(p.size() == 2);
  CHECK(int(p[0]) == 221);
  CHECK(int(p[1]) == 0 + 1 * 3 + 1 * 9 + 1 * 27 + 1 * 81);  // -1 then padding zeros
  CHECK(unpack_trits_base3(p, 6) == t);
  // 2-bit: codes t + 1 from the low bits up: (1, 0, -1, 1) -> 2 | 1 << 2 | 0 << 4 | 2 << 6
  auto p2 = pack_trits_2bit(t);
  REQUIRE(p2.size() == 2);
  CHECK(int(p2[0]) == (2 | 1 << 2 | 0 << 4 | 2 << 6));
  CHECK(int(p2[1]) == (2 | 0 << 2 | 1 << 4 | 1 << 6));  // 1, -1, then padding zeros
}

TEST_CASE("every trit pattern of a byte round-trips (exhaustive)", "[packing]") {
  // base-3: all 3^5 = 243 patterns of five trits, and the 243 valid bytes are exactly them
  std::set<int> codes;
  for (int p = 0; p < 243; ++p) {
    std::vector<int8_t> t(5);
    for (int i = 0, v = p; i < 5; ++i, v /= 3) t[i] = int8_t(v % 3 - 1);
    auto b = pack_trits_base3(t);
    REQUIRE(b.size() == 1);
    codes.insert(b[0]);
    CHECK(unpack_trits_base3(b, 5) == t);
  }
  CHECK(codes.size() == 243);
  CHECK(*codes.rbegin() == 242);
  for (int v = 243; v < 256; ++v) {
    std::vector<uint8_t> b{uint8_t(v)};
    CHECK_THROWS_AS(unpack_trits_base3(b, 5), Error);
  }
  // 2-bit: all 3^4 = 81 patterns, and a byte is valid exactly when it has no code 3
  int valid = 0;
  for (int v = 0; v < 256; ++v) {
    std::vector<uint8_t> b{uint8_t(v)};
    bool ok = true;
    for (int i = 0; i < 4; ++i) ok = ok && ((v >> (2 * i)) & 3) != 3;
    if (!ok) {
      CHECK_THROWS_AS(unpack_trits_2bit(b, 4), Error);
      continue;
    }
    ++valid;
    CHECK(pack_trits_2bit(unpack_trits_2bit(b, 4)) == b);
  }
  CHECK(valid == 81);
}

TEST_CASE("pack and unpack are exact inverses on random trits of any length", "[packing]") {
  Rng rng(3);
  for (int64_t n : {0, 1, 3, 4, 5, 6, 7, 63, 64, 65, 999, 1001}) {
    std::vector<int8_t> t(n);
    for (auto& x : t) x = int8_t(int(rng.below(3)) - 1);
    CHECK(unpack_trits_base3(pack_trits_base3(t), n) == t);
    CHECK(unpack_trits_2bit(pack_trits_2bit(t), n) == t);
    CHECK(pack_trits_base3(t).size() == size_t((n + 4) / 5));
    CHECK(pack_trits_2bit(t).size() == size_t((n + 3) / 4));
  }
}

TEST_CASE("bad input is rejected with the position", "[packing]") {
  std::vector<int8_t> bad{0, 1, 2};
  CHECK_THROWS_WITH(pack_trits_base3(bad), Contains("value 2 at position 2"));
  CHECK_THROWS_WITH(pack_trits_2bit(bad), Contains("position 2"));
  std::vector<int8_t> neg{-2};
  CHECK_THROWS_WITH(pack_trits_2bit(neg), Contains("value -2 at position 0"));
  std::vector<uint8_t> code{243};
  CHECK_THROWS_WITH(unpack_trits_base3(code, 5), Contains("byte 0 is 243"));
  CHECK_THROWS_WITH(unpack_trits_base3(code, 6), Contains("needs 2"));
  CHECK_THROWS_WITH(unpack_trits_base3(code, -1), Contains("for -1 trits"));
  std::vector<uint8_t> two{0xff};
  CHECK_THROWS_WITH(unpack_trits_2bit(two, 4), Contains("invalid code 3"));
  CHECK_THROWS_WITH(unpack_trits_2bit(two, 5), Contains("needs 2"));
}

TEST_CASE("packed weights carry per-tensor or per-row scales", "[packing]") {
  Rng rng(4);
  for (auto enc : {TritEncoding::two_bit, TritEncoding::base3}) {
    for (int64_t cols : {1, 7, 13}) {
      const Shape shape{5, cols};
      std::vector<int8_t> t(5 * cols);
      for (auto& x : t) x = int8_t(int(rng.below(3)) - 1);
      std::vector<float> rows{0.5f, 1.f, 2.f, 0.25f, 3.f};
      auto p = pack_ternary(t, shape, rows, cols, enc);  // per row
      CHECK(p.numel() == 5 * cols);
      CHECK(p.bytes() == int64_t(p.data.size() + 5 * sizeof(float)));
      CHECK(unpack_trits(p) == t);
      CHECK(p.scales == rows);
      auto pt = pack_ternary(t, shape, {0.7f}, 5 * cols, enc);  // per tensor
      CHECK(unpack_trits(pt) == t);
      CHECK_THROWS_WITH(pack_ternary(t, shape, {1.f, 2.f}, cols, enc), Contains("2 scales"));
      CHECK_THROWS_WITH(pack_ternary(t, Shape{6, cols}, rows, cols, enc), Contains("trits for"));
      auto broken = p;
      broken.data.pop_back();
      CHECK_THROWS_AS(unpack_trits(broken), Error);
      broken = p;
      broken.scales.pop_back();
      CHECK_THROWS_WITH(unpack_trits(broken), Contains("4 scales"));
    }
  }
}

TEST_CASE("a quantized weight survives pack / unpack bit for bit", "[packing]") {
  Rng rng(6);
  auto w = Tensor<float>::randn({9, 24}, rng);
  for (auto gran : {quant::Granularity::per_tensor, quant::Granularity::per_row,
                    quant::Granularity::per_group}) {
    quant::TernaryConfig c;
    c.granularity = gran;
    c.group_size = 8;
    const auto q = quant::quantize_absmean(w, c);
    for (auto enc : {TritEncoding::two_bit, TritEncoding::base3}) {
      const auto back = quant::unpack(quant::pack(q, enc));
      CHECK(back.trits == q.trits);
      CHECK(back.scales == q.scales);
      CHECK(back.group == q.group);
      CHECK(max_abs_diff(back.dequantize(), q.dequantize()) == 0.0);
    }
  }
  auto bad = quant::quantize_absmean(w);
  bad.trits[17] = 3;
  CHECK_THROWS_WITH(quant::pack(bad), Contains("position 17"));
}
