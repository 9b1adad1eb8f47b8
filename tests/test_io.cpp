// Tests for io/: compression codecs and safetensors checkpoints (round trips and every
// validation error). Files go to a fresh temporary directory per test case.
#include <dirent.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "ternary/core/random.hpp"
#include "ternary/io/compress.hpp"
#include "ternary/io/file.hpp"
#include "ternary/io/safetensors.hpp"

#include "test_util.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

namespace {

using test::TempDir;

std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng.next_u64());
  return v;
}

std::vector<uint8_t> text_bytes(size_t n) {
  const std::string s =
      "In the beginning God created the heaven and the earth. And the earth was without form, "
      "and void; and darkness was upon the face of the deep.\n";
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(s[(i * 7 / 5) % s.size()]);
  return v;
}

std::vector<Codec> available_codecs() {
  std::vector<Codec> c;
  for (Codec x : {Codec::none, Codec::zlib, Codec::zstd, Codec::lzma})
    if (codec_available(x)) c.push_back(x);
  return c;
}

// A safetensors file from a raw header string and data area.
std::vector<uint8_t> raw_safetensors(const std::string& header, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out(8 + header.size());
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::string load_error(const std::string& path) {
  try {
    load_safetensors(path);
  } catch (const IOError& e) {
    return e.what();
  }
  return "<no error>";
}

size_t count_files(const std::string& dir) {
  size_t n = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(dir)) ++n;
  return n;
}

}  // namespace

// ---- compression -------------------------------------------------------------------------------

TEST_CASE("compress: zlib is always there; zstd and lzma are compiled in here", "[io][compress]") {
  CHECK(codec_available(Codec::none));
  CHECK(codec_available(Codec::zlib));
  CHECK(codec_available(Codec::zstd) == (TERNARY_HAVE_ZSTD != 0));
  CHECK(codec_available(Codec::lzma) == (TERNARY_HAVE_LZMA != 0));
  CHECK(codec_from_name("zstd") == Codec::zstd);
  CHECK(codec_from_name("xz") == Codec::lzma);
  CHECK(codec_name(Codec::zlib) == "zlib");
  CHECK_THROWS_WITH(codec_from_name("brotli"), Contains("brotli"));
  const std::vector<uint8_t> some{1, 2, 3};
  for (Codec c : {Codec::zstd, Codec::lzma}) {
    if (codec_available(c)) continue;  // built without it: a clear error, not a crash
    CHECK_THROWS_WITH(compress(some, c), Contains("not compiled in"));
    CHECK_THROWS_WITH(decompress(some, c), Contains("not compiled in"));
  }
}

TEST_CASE("compress: round trip on random and text data at several sizes", "[io][compress]") {
  for (Codec c : available_codecs()) {
    for (size_t n : {size_t(0), size_t(1), size_t(1000), size_t(1) << 20}) {
      for (bool text : {false, true}) {
        INFO("codec " << codec_name(c) << ", " << n << (text ? " text" : " random") << " bytes");
        auto in = text ? text_bytes(n) : random_bytes(n, n + 1);
        auto packed = compress(in, c);
        CHECK(decompress(packed, c) == in);            // size unknown
        if (n) CHECK(decompress(packed, c, n) == in);  // size known
        if (text && n >= 100000 && c != Codec::none) CHECK(packed.size() < n / 4);
      }
    }
  }
}

TEST_CASE("compress: levels", "[io][compress]") {
  auto in = text_bytes(200000);
  CHECK(decompress(compress(in, Codec::zlib, 0), Codec::zlib) == in);
  CHECK(decompress(compress(in, Codec::zlib, 9), Codec::zlib) == in);
  CHECK_THROWS_AS(compress(in, Codec::zlib, 10), IOError);
  CHECK_THROWS_WITH(compress(in, Codec::zlib, -3), Contains("level -3"));
#if TERNARY_HAVE_ZSTD
  CHECK(decompress(compress(in, Codec::zstd, 19), Codec::zstd) == in);
  CHECK(decompress(compress(in, Codec::zstd, 1), Codec::zstd) == in);
  CHECK_THROWS_AS(compress(in, Codec::zstd, 23), IOError);
#endif
#if TERNARY_HAVE_LZMA
  CHECK(decompress(compress(in, Codec::lzma, 9), Codec::lzma) == in);
  CHECK_THROWS_AS(compress(in, Codec::lzma, 10), IOError);
#endif
}

TEST_CASE("compress: wrong expected size, truncation, corruption and garbage throw",
          "[io][compress]") {
  auto in = text_bytes(100000);
  for (Codec c : available_codecs()) {
    INFO("codec " << codec_name(c));
    auto packed = compress(in, c);
    CHECK_THROWS_AS(decompress(packed, c, in.size() + 1), IOError);
    CHECK_THROWS_AS(decompress(packed, c, in.size() - 1), IOError);
    if (c == Codec::none) continue;
    // truncated
    std::vector<uint8_t> cut(packed.begin(), packed.end() - 5);
    CHECK_THROWS_AS(decompress(cut, c), IOError);
    std::vector<uint8_t> half(packed.begin(), packed.begin() + packed.size() / 2);
    CHECK_THROWS_WITH(decompress(half, c), Contains(std::string(codec_name(c))));
    // empty input is not a valid stream
    CHECK_THROWS_AS(decompress(std::vector<uint8_t>{}, c), IOError);
    // garbage
    CHECK_THROWS_AS(decompress(random_bytes(1000, 7), c), IOError);
    // a flipped byte in the middle: caught by the format or its checksum (Adler-32, XXH64, CRC64)
    for (size_t at : {packed.size() / 3, packed.size() / 2, packed.size() - 2}) {
      auto bad = packed;
      bad[at] ^= 0x55;
      bool threw = false;
      try {
        threw = decompress(bad, c) != in;  // a silently wrong result would fail here
      } catch (const IOError&) {
        threw = true;
      }
      CHECK(threw);
    }
  }
}

TEST_CASE("compress: concatenated zstd frames and xz streams decode as one", "[io][compress]") {
  auto a = text_bytes(70000), b = random_bytes(5000, 9);
  auto both = a;
  both.insert(both.end(), b.begin(), b.end());
  for (Codec c : {Codec::zstd, Codec::lzma}) {
    if (!codec_available(c)) continue;
    INFO("codec " << codec_name(c));
    auto packed = compress(a, c), pb = compress(b, c);
    packed.insert(packed.end(), pb.begin(), pb.end());
    CHECK(decompress(packed, c) == both);
    CHECK(decompress(packed, c, both.size()) == both);
  }
}

TEST_CASE("compress: zlib decompress also reads gzip streams", "[io][compress]") {
  auto in = text_bytes(50000);
  z_stream s{};
  REQUIRE(deflateInit2(&s, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK);  // gzip
  std::vector<uint8_t> gz(deflateBound(&s, in.size()) + 64);
  s.next_in = in.data();
  s.avail_in = static_cast<uInt>(in.size());
  s.next_out = gz.data();
  s.avail_out = static_cast<uInt>(gz.size());
  REQUIRE(deflate(&s, Z_FINISH) == Z_STREAM_END);
  gz.resize(s.total_out);
  deflateEnd(&s);
  CHECK(decompress(gz, Codec::zlib) == in);
  auto twice = gz;  // two gzip members, as `cat a.gz b.gz` makes
  twice.insert(twice.end(), gz.begin(), gz.end());
  auto both = in;
  both.insert(both.end(), in.begin(), in.end());
  CHECK(decompress(twice, Codec::zlib) == both);
}

// ---- safetensors -------------------------------------------------------------------------------

TEST_CASE("safetensors: round trip of every dtype, metadata and odd shapes", "[io][safetensors]") {
  TempDir dir;
  Rng rng(3);
  std::map<std::string, TensorBlob> m;
  auto f32 = Tensor<float>::randn(Shape{3, 5}, rng);
  auto f64 = Tensor<double>::randn(Shape{2, 2, 2}, rng);
  m["f32"] = TensorBlob::from(f32);
  m["f64"] = TensorBlob::from(f64);
  m["i32"] = TensorBlob::from(Tensor<int32_t>::from(Shape{4}, {-1, 0, 7, INT32_MIN}));
  m["i64"] = TensorBlob::from(Tensor<int64_t>::from(Shape{2}, {INT64_MAX, -5}));
  m["u16"] = TensorBlob::from(Tensor<uint16_t>::from(Shape{3}, {0, 1024, 65535}));
  m["u8"] = TensorBlob::from(Tensor<uint8_t>::from(Shape{2, 1}, {0, 255}));
  m["i8"] = TensorBlob::from(Tensor<int8_t>::from(Shape{3}, {-128, 0, 127}));
  auto b16 = Tensor<bf16>::empty(Shape{2});
  b16.data()[0] = bf16(1.5f);
  b16.data()[1] = bf16(-2.0f);
  m["bf16"] = TensorBlob::from(b16);
  m["scalar"] = TensorBlob::from(Tensor<float>::from(Shape{}, {42.f}));
  m["empty"] = TensorBlob::from(Tensor<float>::empty(Shape{0, 4}));
  m["layer.0.weight/transposed"] = TensorBlob::from(f32.transpose(0, 1));  // strided view
  const std::map<std::string, std::string> meta{{"step", "1200"}, {"note", "ünïcode ok"}};

  const std::string path = dir.file("model.safetensors");
  save_safetensors(path, m, meta);
  CHECK(count_files(dir.path) == 1);  // no temporary file left behind
  Safetensors st = load_safetensors(path);
  CHECK(st.metadata == meta);
  REQUIRE(st.tensors.size() == m.size());
  for (const auto& [name, blob] : m) {
    INFO(name);
    const TensorBlob& got = st.tensors.at(name);
    CHECK(got.dtype == blob.dtype);
    CHECK(got.shape == blob.shape);
    CHECK(got.bytes == blob.bytes);
  }
  CHECK(max_abs_diff(st.tensors["f32"].as<float>(), f32) == 0);
  CHECK(max_abs_diff(st.tensors["f64"].as<double>(), f64) == 0);
  CHECK(st.tensors["u16"].as<uint16_t>().to_vector() == std::vector<uint16_t>{0, 1024, 65535});
  CHECK(float(st.tensors["bf16"].as<bf16>().data()[0]) == 1.5f);
  CHECK(st.tensors["scalar"].as<float>().item() == 42.f);
  CHECK(st.tensors["empty"].as<float>().numel() == 0);
  auto tr = st.tensors["layer.0.weight/transposed"].as<float>();
  CHECK(tr.shape() == Shape{5, 3});
  CHECK(tr(4, 2) == f32(2, 4));

  // in-memory encode/decode gives the same bytes as the file, and the header is 8-aligned
  auto bytes = encode_safetensors(m, meta);
  CHECK(bytes == read_file(path));
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  CHECK(n % 8 == 0);
  CHECK(bytes[8] == '{');
  CHECK(decode_safetensors(bytes).tensors.size() == m.size());

  // saving again replaces the file atomically
  m.erase("f64");
  save_safetensors(path, m);
  CHECK(load_safetensors(path).tensors.count("f64") == 0);
  CHECK(load_safetensors(path).metadata.empty());
  CHECK(count_files(dir.path) == 1);
}

TEST_CASE("safetensors: the reference layout; reference vectors load", "[io][safetensors]") {
  // As huggingface/safetensors writes it: __metadata__ first, then dtype/shape/data_offsets,
  // the JSON padded with spaces so that N (and so the data start 8 + N) is a multiple of 8.
  const std::string header =
      R"({"__metadata__":{"framework":"pt"},"test1":{"dtype":"I32","shape":[2,2],)"
      R"("data_offsets":[0,16]}} )";
  REQUIRE(header.size() == 96);
  auto expect = raw_safetensors(header, std::vector<uint8_t>(16, 0));
  auto got = encode_safetensors({{"test1", TensorBlob::from(Tensor<int32_t>::zeros(Shape{2, 2}))}},
                                {{"framework", "pt"}});
  CHECK(got == expect);
  // vectors from bindings/python/tests/test_simple.py (unpadded, and padded to N = 102)
  auto st = decode_safetensors(raw_safetensors(
      R"({"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}})", std::vector<uint8_t>(16)));
  CHECK(st.tensors.at("test").as<int32_t>().shape() == Shape{2, 2});
  auto st2 = decode_safetensors(
      raw_safetensors(header.substr(0, 95) + std::string(7, ' '), std::vector<uint8_t>(16)));
  CHECK(st2.metadata.at("framework") == "pt");
  CHECK(st2.tensors.at("test1").numel() == 4);
}

TEST_CASE("safetensors: as<T>() checks the dtype; bad names and sizes are refused",
          "[io][safetensors]") {
  auto blob = TensorBlob::from(Tensor<float>::zeros(Shape{2}));
  CHECK_THROWS_WITH(blob.as<double>(), Contains("F32") && Contains("F64"));
  CHECK_THROWS_AS(blob.as<int32_t>(), IOError);
  CHECK_THROWS_AS(TensorBlob(DType::f32, Shape{3}, std::vector<uint8_t>(8)), ShapeError);
  std::map<std::string, TensorBlob> m{{"__metadata__", blob}};
  CHECK_THROWS_AS(encode_safetensors(m), IOError);
  std::map<std::string, TensorBlob> m2{{"", blob}};
  CHECK_THROWS_AS(encode_safetensors(m2), IOError);
  TensorBlob broken = blob;
  broken.bytes.pop_back();
  std::map<std::string, TensorBlob> m3{{"w", broken}};
  CHECK_THROWS_WITH(encode_safetensors(m3), Contains("'w'"));
}

TEST_CASE("safetensors: overlapping and unsorted offsets load; the header may be unpadded",
          "[io][safetensors]") {
  TempDir dir;
  std::vector<uint8_t> data(8);
  float a = 1.0f, b = 2.0f;
  std::memcpy(data.data(), &a, 4);
  std::memcpy(data.data() + 4, &b, 4);
  const std::string h = R"({"second":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                        R"("both":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("first":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})";
  const std::string path = dir.file("overlap.safetensors");
  write_file_atomic(path, raw_safetensors(h, data));
  auto st = load_safetensors(path);
  CHECK(st.tensors["first"].as<float>().item() == 1.0f);
  CHECK(st.tensors["second"].as<float>().to_vector() == std::vector<float>{2.0f});
  CHECK(st.tensors["both"].as<float>().to_vector() == std::vector<float>{1.0f, 2.0f});
}

TEST_CASE("safetensors: every malformed file throws IOError naming file, tensor, field, offset",
          "[io][safetensors]") {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  auto write_raw = [&](const std::vector<uint8_t>& bytes) { write_file_atomic(path, bytes); };
  const std::vector<uint8_t> data(24, 0);  // room for a [2, 3] F32 tensor
  auto with = [&](const std::string& entry) {
    write_raw(raw_safetensors(R"({"w":)" + entry + "}", data));
    return load_error(path);
  };

  SECTION("missing file") {
    CHECK_THAT(load_error(dir.file("nope")), Contains("nope"));
  }
  SECTION("empty file") {
    write_raw({});
    CHECK_THAT(load_error(path), Contains(path) && Contains("0 bytes"));
  }
  SECTION("shorter than the length field") {
    write_raw({1, 2, 3});
    CHECK_THAT(load_error(path), Contains("3 bytes"));
  }
  SECTION("header length past the end of the file") {
    auto good = encode_safetensors({{"w", TensorBlob::from(Tensor<float>::zeros(Shape{2, 3}))}});
    uint64_t n = good.size();  // 8 more than fits
    std::memcpy(good.data(), &n, 8);
    write_raw(good);
    CHECK_THAT(load_error(path),
               Contains("header length") && Contains("byte offset 0") && Contains("past the end"));
  }
  SECTION("oversized header length") {
    std::vector<uint8_t> b(16, ' ');
    uint64_t n = uint64_t(1) << 62;
    std::memcpy(b.data(), &n, 8);
    write_raw(b);
    CHECK_THAT(load_error(path), Contains("exceeds the limit"));
  }
  SECTION("truncated file: the data area is too short") {
    auto good = encode_safetensors({{"w", TensorBlob::from(Tensor<float>::zeros(Shape{2, 3}))}});
    good.resize(good.size() - 4);
    write_raw(good);
    CHECK_THAT(load_error(path),
               Contains("tensor 'w'") && Contains("data_offsets") && Contains("past the end"));
  }
  SECTION("invalid JSON") {
    write_raw(raw_safetensors(R"({"w": {"dtype": "F32",)", data));
    CHECK_THAT(load_error(path), Contains("JSON") && Contains("byte offset"));
  }
  SECTION("JSON that is not an object") {
    write_raw(raw_safetensors("[1, 2, 3]", data));
    CHECK_THAT(load_error(path), Contains("start with '{'"));
    write_raw(raw_safetensors("{} []", data));
    CHECK_THAT(load_error(path), Contains("JSON"));
  }
  SECTION("flipped bytes in the header") {
    auto good = encode_safetensors({{"w", TensorBlob::from(Tensor<float>::zeros(Shape{2, 3}))}});
    // Flip every header byte in turn: each corruption must throw or load something valid.
    uint64_t n;
    std::memcpy(&n, good.data(), 8);
    int threw = 0;
    for (uint64_t i = 8; i < 8 + n; ++i) {
      auto bad = good;
      bad[i] ^= 0x20;
      try {
        auto st = decode_safetensors(bad, "flipped");
        for (auto& [name, blob] : st.tensors)
          CHECK(blob.bytes.size() == size_t(blob.numel()) * dtype_size(blob.dtype));
      } catch (const IOError& e) {
        CHECK_THAT(std::string(e.what()), Contains("flipped"));
        ++threw;
      }
    }
    CHECK(threw > int(n) / 2);
  }
  SECTION("entry is not an object") {
    CHECK_THAT(with("17"), Contains("tensor 'w'") && Contains("not an object"));
  }
  SECTION("missing or unknown dtype") {
    CHECK_THAT(with(R"({"shape":[2,3],"data_offsets":[0,24]})"),
               Contains("tensor 'w'") && Contains("field dtype"));
    CHECK_THAT(with(R"({"dtype":"F16","shape":[2,3],"data_offsets":[0,24]})"),
               Contains("field dtype") && Contains("F16"));
  }
  SECTION("bad shape") {
    CHECK_THAT(with(R"({"dtype":"F32","data_offsets":[0,24]})"), Contains("field shape"));
    CHECK_THAT(with(R"({"dtype":"F32","shape":[2,-3],"data_offsets":[0,24]})"),
               Contains("field shape") && Contains("-3"));
    CHECK_THAT(with(R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,24]})"),
               Contains("field shape"));
    CHECK_THAT(with(R"({"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]})"),
               Contains("rank 9"));
  }
  SECTION("bad data_offsets") {
    CHECK_THAT(with(R"({"dtype":"F32","shape":[2,3]})"), Contains("field data_offsets"));
    CHECK_THAT(with(R"({"dtype":"F32","shape":[2,3],"data_offsets":[0]})"),
               Contains("field data_offsets"));
    CHECK_THAT(with(R"({"dtype":"F32","shape":[2,3],"data_offsets":[-4,20]})"),
               Contains("field data_offsets"));
    CHECK_THAT(with(R"({"dtype":"F32","shape":[2,3],"data_offsets":[8,32]})"),
               Contains("tensor 'w'") && Contains("past the end") && Contains("file byte offset"));
    CHECK_THAT(with(R"({"dtype":"F32","shape":[2,3],"data_offsets":[20,4]})"),
               Contains("after end"));
    CHECK_THAT(with(R"({"dtype":"F32","shape":[2,3],"data_offsets":[0,20]})"),
               Contains("holds 20 bytes") && Contains("needs 24"));
    CHECK_THAT(with(R"({"dtype":"F64","shape":[2,3],"data_offsets":[0,24]})"),
               Contains("needs 48"));
    CHECK_THAT(with(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,24]})"),
               Contains("2^64"));
  }
  SECTION("bad metadata") {
    write_raw(raw_safetensors(R"({"__metadata__":{"step":12}})", {}));
    CHECK_THAT(load_error(path), Contains("__metadata__") && Contains("step"));
    write_raw(raw_safetensors(R"({"__metadata__":[1]})", {}));
    CHECK_THAT(load_error(path), Contains("__metadata__"));
  }
}
