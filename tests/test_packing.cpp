// Trit packing: base-3 (5 per byte) and 2-bit (4 per byte) are exact inverses.
#include <catch2/catch.hpp>

#include "ternary/quant/packing.hpp"

#include "ternary/core/random.hpp"

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
}

TEST_CASE("pack and unpack are exact inverses on random trits of any length", "[packing]") {
  Rng rng(3);
  for (int64_t n : {0, 1, 4, 5, 6, 7, 63, 64, 65, 1001}) {
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
  std::vector<uint8_t> code{243};
  CHECK_THROWS_WITH(unpack_trits_base3(code, 5), Contains("byte 0 is 243"));
  CHECK_THROWS_WITH(unpack_trits_base3(code, 6), Contains("needs 2"));
  std::vector<uint8_t> two{0xff};
  CHECK_THROWS_WITH(unpack_trits_2bit(two, 4), Contains("invalid code 3"));
}
