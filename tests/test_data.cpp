// Tests for data/: token shards, byte-level text, batchers and the bundled corpus. Files go to
// a fresh temporary directory per test case; of the bundled corpus we only check that it loads.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "ternary/data/batcher.hpp"
#include "ternary/data/corpus.hpp"
#include "ternary/data/shards.hpp"
#include "ternary/data/text.hpp"
#include "ternary/io/compress.hpp"
#include "ternary/io/file.hpp"

#include "test_util.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

namespace {

using test::TempDir;

std::vector<uint16_t> iota_tokens(size_t n, uint16_t start = 0) {
  std::vector<uint16_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint16_t>(start + i);
  return v;
}

std::string shard_error(const std::string& path) {
  try {
    read_shard(path);
  } catch (const IOError& e) {
    return e.what();
  }
  return "<no error>";
}

// Shard bytes with a given header and `payload` bytes after it.
std::vector<uint8_t> raw_shard(int32_t magic, int32_t version, int32_t count, size_t payload) {
  std::vector<uint8_t> b(1024 + payload, 0);
  int32_t h[3] = {magic, version, count};
  std::memcpy(b.data(), h, sizeof h);
  return b;
}

bool same(const Tensor<int32_t>& a, const Tensor<int32_t>& b) {
  return a.shape() == b.shape() && a.to_vector() == b.to_vector();
}
bool same(const Batch& a, const Batch& b) {
  return same(a.inputs, b.inputs) && same(a.targets, b.targets);
}

}  // namespace

// ---- shards ------------------------------------------------------------------------------------

TEST_CASE("shards: write/read round trip and the exact on-disk layout", "[data][shards]") {
  TempDir dir;
  std::vector<uint16_t> tokens = {0, 1, 2, 1023, 65535, 7};
  const std::string path = dir.file("s.bin");
  write_shard(path, tokens);
  CHECK(read_shard(path) == tokens);
  CHECK(read_shard_header(path) == tokens.size());

  auto bytes = read_file(path);
  REQUIRE(bytes.size() == 1024 + 2 * tokens.size());
  int32_t h[256];
  std::memcpy(h, bytes.data(), 1024);
  CHECK(h[0] == 20240520);
  CHECK(h[1] == 1);
  CHECK(h[2] == 6);
  for (int i = 3; i < 256; ++i) CHECK(h[i] == 0);
  CHECK(bytes[1024 + 2 * 4] == 0xff);  // little-endian uint16 65535
  CHECK(bytes[1024 + 2 * 3] == (1023 & 0xff));
  CHECK(bytes[1024 + 2 * 3 + 1] == (1023 >> 8));

  write_shard(path, {});  // an empty shard is valid
  CHECK(read_shard(path).empty());
  auto big = iota_tokens(300000, 5);
  write_shard(path, big);
  CHECK(read_shard(path) == big);
}

TEST_CASE("shards: every malformed file throws IOError naming file, field and offset",
          "[data][shards]") {
  TempDir dir;
  const std::string path = dir.file("bad.bin");
  auto put = [&](const std::vector<uint8_t>& b) { write_file_atomic(path, b); };

  SECTION("missing") {
    CHECK_THAT(shard_error(dir.file("none.bin")), Contains("none.bin"));
  }
  SECTION("empty") {
    put({});
    CHECK_THAT(shard_error(path), Contains(path) && Contains("0 bytes") && Contains("header"));
  }
  SECTION("truncated header") {
    put(std::vector<uint8_t>(1000, 0));
    CHECK_THAT(shard_error(path), Contains("1000 bytes"));
  }
  SECTION("wrong magic") {
    put(raw_shard(20240521, 1, 0, 0));
    CHECK_THAT(shard_error(path),
               Contains("magic") && Contains("byte offset 0") && Contains("20240521"));
  }
  SECTION("wrong version") {
    put(raw_shard(20240520, 2, 0, 0));
    CHECK_THAT(shard_error(path),
               Contains("version") && Contains("byte offset 4") && Contains("is 2"));
  }
  SECTION("negative count") {
    put(raw_shard(20240520, 1, -5, 0));
    CHECK_THAT(shard_error(path),
               Contains("token count") && Contains("byte offset 8") && Contains("negative"));
  }
  SECTION("count larger than the file (truncated tokens)") {
    put(raw_shard(20240520, 1, 10, 18));
    CHECK_THAT(shard_error(path),
               Contains("byte offset 8") && Contains("1044") && Contains("1042 bytes"));
  }
  SECTION("count smaller than the file (trailing bytes)") {
    put(raw_shard(20240520, 1, 10, 21));
    CHECK_THAT(shard_error(path), Contains("1045 bytes"));
  }
  SECTION("a flipped byte in the header words") {
    write_shard(path, iota_tokens(10));
    auto good = read_file(path);
    for (int at : {0, 3, 4, 7, 8, 11}) {
      auto bad = good;
      bad[at] ^= 0x10;
      put(bad);
      CHECK_THROWS_AS(read_shard(path), IOError);
    }
  }
}

TEST_CASE("shards: glob_files is sorted and throws on no match", "[data][shards]") {
  TempDir dir;
  for (const char* n : {"train_000002.bin", "train_000000.bin", "train_000010.bin", "val_0.bin"})
    write_shard(dir.file(n), std::vector<uint16_t>{1});
  auto files = glob_files(dir.file("train_*.bin"));
  REQUIRE(files.size() == 3);
  CHECK(files[0] == dir.file("train_000000.bin"));
  CHECK(files[1] == dir.file("train_000002.bin"));
  CHECK(files[2] == dir.file("train_000010.bin"));
  const std::string pattern = dir.file("nothing_*.bin");
  CHECK_THROWS_WITH(glob_files(pattern), Contains(pattern));
  CHECK_THROWS_AS(glob_files(pattern), IOError);
}

TEST_CASE("shards: TokenStream crosses shard boundaries, wraps, skips empty shards, resumes",
          "[data][shards]") {
  TempDir dir;
  write_shard(dir.file("a_0.bin"), iota_tokens(5, 100));  // 100..104
  write_shard(dir.file("a_1.bin"), {});                   // empty: skipped
  write_shard(dir.file("a_2.bin"), iota_tokens(7, 200));  // 200..206
  std::vector<uint16_t> all = iota_tokens(5, 100);
  auto b = iota_tokens(7, 200);
  all.insert(all.end(), b.begin(), b.end());

  auto stream = TokenStream::from_pattern(dir.file("a_*.bin"));
  CHECK(stream.paths().size() == 3);
  std::vector<uint16_t> got;
  for (size_t n : {3, 4, 0, 6, 9, 1}) {
    auto part = stream.take(n);
    CHECK(part.size() == n);
    got.insert(got.end(), part.begin(), part.end());
  }
  REQUIRE(got.size() == 23);
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == all[i % all.size()]);
  CHECK(stream.state().epoch == 1);

  // resume: a new stream restored to a saved state continues identically
  auto saved = stream.state();
  auto expect = stream.take(17);
  TokenStream again({dir.file("a_0.bin"), dir.file("a_1.bin"), dir.file("a_2.bin")});
  again.restore(saved);
  CHECK(again.state() == saved);
  CHECK(again.take(17) == expect);
  CHECK_THROWS_AS(again.restore({9, 0, 0}), IndexError);
  CHECK_THROWS_AS(again.restore({0, 6, 0}), IndexError);

  // batches straight from the stream, Parameter Golf style (B*T + 1 tokens)
  TokenStream s2({dir.file("a_0.bin"), dir.file("a_2.bin")});
  auto chunk = s2.take(2 * 3 + 1);
  Batch bt = batch_from_chunk(chunk, 2, 3, 1024);
  CHECK(bt.inputs.to_vector() == std::vector<int32_t>{100, 101, 102, 103, 104, 200});
  CHECK(bt.targets.to_vector() == std::vector<int32_t>{101, 102, 103, 104, 200, 201});
  CHECK_THROWS_AS(batch_from_chunk(chunk, 2, 2, 1024), ShapeError);
  CHECK_THROWS_WITH(batch_from_chunk(chunk, 2, 3, 150), Contains("200") && Contains("position 5"));

  // invalid lists
  CHECK_THROWS_AS(TokenStream({}), IOError);
  CHECK_THROWS_WITH(TokenStream({dir.file("a_1.bin")}), Contains("empty"));
  write_file_atomic(dir.file("a_3.bin"), std::vector<uint8_t>{1, 2, 3});
  CHECK_THROWS_WITH(TokenStream::from_pattern(dir.file("a_*.bin")), Contains("a_3.bin"));
}

// ---- text --------------------------------------------------------------------------------------

TEST_CASE("text: the split rule is the last floor(n * fraction) bytes", "[data][text]") {
  std::vector<uint8_t> bytes(1000);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 31);
  auto s = split_text(bytes);  // default 0.05
  CHECK(s.train.size() == 950);
  CHECK(s.val.size() == 50);
  CHECK(std::equal(s.train.begin(), s.train.end(), bytes.begin()));
  CHECK(std::equal(s.val.begin(), s.val.end(), bytes.begin() + 950));
  CHECK(split_text(bytes, 0.1).val.size() == 100);
  CHECK(split_text(bytes, 0.0).val.empty());
  CHECK(split_text(std::vector<uint8_t>(19), 0.05).val.size() == 0);  // floor(0.95)
  CHECK(split_text(std::vector<uint8_t>(21), 0.05).val.size() == 1);  // floor(1.05)
  CHECK(split_text(std::vector<uint8_t>(99), 0.5).val.size() == 49);
  CHECK_THROWS_AS(split_text(bytes, 1.0), Error);
  CHECK_THROWS_AS(split_text(bytes, -0.1), Error);
  auto again = split_text(bytes, 0.05);  // deterministic
  CHECK(again.train == s.train);
  CHECK(again.val == s.val);
}

TEST_CASE("text: plain, .zst, .xz and .gz files load to the same bytes", "[data][text]") {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 2000; ++i) text += "Line " + std::to_string(i) + ": and it was so.\n";
  std::vector<uint8_t> bytes(text.begin(), text.end());
  write_file_atomic(dir.file("t.txt"), bytes);
  CHECK(read_text_bytes(dir.file("t.txt")) == bytes);
  if (codec_available(Codec::zstd)) {
    write_file_atomic(dir.file("t.txt.zst"), compress(bytes, Codec::zstd, 19));
    CHECK(read_text_bytes(dir.file("t.txt.zst")) == bytes);
  }
  if (codec_available(Codec::lzma)) {
    write_file_atomic(dir.file("t.txt.xz"), compress(bytes, Codec::lzma));
    CHECK(read_text_bytes(dir.file("t.txt.xz")) == bytes);
  }
  write_file_atomic(dir.file("t.txt.gz"), compress(bytes, Codec::zlib));  // zlib or gzip: both read
  CHECK(read_text_bytes(dir.file("t.txt.gz")) == bytes);

  auto split = load_text(dir.file("t.txt.gz"), 0.25);
  CHECK(split.val.size() == bytes.size() / 4);
  CHECK(split.train.size() + split.val.size() == bytes.size());

  write_file_atomic(dir.file("bad.zst"), std::vector<uint8_t>{1, 2, 3, 4});
  CHECK_THROWS_WITH(read_text_bytes(dir.file("bad.zst")), Contains("bad.zst"));
  write_file_atomic(dir.file("empty.txt"), {});
  CHECK_THROWS_WITH(load_text(dir.file("empty.txt")), Contains("empty"));
  CHECK_THROWS_AS(load_text(dir.file("missing.txt")), IOError);
}

TEST_CASE("corpus: the bundled KJV loads, is non-empty and splits 95/5", "[data][corpus]") {
  const std::string path = default_corpus_path();
  CHECK_THAT(path, Contains("kjv.txt.zst"));
  TextSplit s = load_default_corpus();
  CHECK(s.train.size() > 1000000);
  CHECK(s.val.size() == (s.train.size() + s.val.size()) / 20);
  // byte-level: it feeds a byte batcher without complaint
  RandomBatcher rb(s.val, 4, 64, 0);
  Batch b = rb.next();
  for (int32_t x : b.inputs.to_vector()) CHECK((x >= 0 && x < 256));
}

TEST_CASE("corpus: a missing data directory gives a clear error", "[data][corpus]") {
  if (std::string(TERNARY_DATA_DIR).starts_with("/")) return;  // absolute: cannot move away
  TempDir dir;
  auto cwd = std::filesystem::current_path();
  std::filesystem::current_path(dir.path);
  std::string msg;
  try {
    default_corpus_path();
  } catch (const IOError& e) {
    msg = e.what();
  }
  std::filesystem::current_path(cwd);
  CHECK_THAT(msg, Contains("kjv.txt.zst") && Contains("missing") && Contains("TERNARY_DATA_DIR"));
}

// ---- batchers ----------------------------------------------------------------------------------

TEST_CASE("batcher: shapes, shifted targets and windows taken from the data", "[data][batcher]") {
  auto tokens = iota_tokens(1000);  // token i has id i, so a window is a run of consecutive ids
  RandomBatcher rb(tokens, 6, 16, 1234, 1000);
  for (int step = 0; step < 20; ++step) {
    Batch b = rb.next();
    REQUIRE(b.inputs.shape() == Shape{6, 16});
    REQUIRE(b.targets.shape() == Shape{6, 16});
    for (int r = 0; r < 6; ++r) {
      int32_t start = b.inputs(r, 0);
      CHECK((start >= 0 && start + 16 < 1000));
      for (int t = 0; t < 16; ++t) {
        CHECK(b.inputs(r, t) == start + t);
        CHECK(b.targets(r, t) == start + t + 1);
      }
    }
  }
  CHECK(rb.step() == 20);
}

TEST_CASE("batcher: deterministic from the seed, and every offset is reachable",
          "[data][batcher]") {
  auto tokens = iota_tokens(40);
  RandomBatcher a(tokens, 4, 8, 7, 256), b(tokens, 4, 8, 7, 256), c(tokens, 4, 8, 8, 256);
  bool differs = false;
  std::vector<int> seen(40, 0);
  for (int i = 0; i < 200; ++i) {
    Batch x = a.next(), y = b.next(), z = c.next();
    CHECK(same(x, y));
    differs |= !same(x, z);
    for (int r = 0; r < 4; ++r) seen[x.inputs(r, 0)]++;
  }
  CHECK(differs);
  for (int off = 0; off <= 40 - 9; ++off) CHECK(seen[off] > 0);   // offsets 0..31 all drawn
  for (int off = 40 - 8; off < 40; ++off) CHECK(seen[off] == 0);  // none past the last window
  CHECK(same(a.batch_at(3), b.batch_at(3)));

  // exactly T + 1 tokens: one possible window
  RandomBatcher tight(iota_tokens(9), 2, 8, 1, 256);
  CHECK(tight.next().inputs.to_vector() ==
        std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7});
}

TEST_CASE("batcher: state() and restore() resume at exactly the same batch", "[data][batcher]") {
  std::vector<uint8_t> bytes(5000);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>((i * i) % 251);
  RandomBatcher run(bytes, 3, 32, 99);
  for (int i = 0; i < 5; ++i) run.next();
  BatcherState saved = run.state();
  CHECK(saved.step == 5);
  CHECK(saved.seed == 99);
  std::vector<Batch> expect;
  for (int i = 0; i < 4; ++i) expect.push_back(run.next());

  // a fresh batcher (different seed even) restored from the saved state
  RandomBatcher resumed(bytes, 3, 32, 12345);
  resumed.restore(BatcherState::parse(saved.to_string()));
  CHECK(resumed.state() == saved);
  for (int i = 0; i < 4; ++i) CHECK(same(resumed.next(), expect[i]));

  CHECK(BatcherState::parse(saved.to_string()) == saved);
  CHECK(saved.to_string() == "seed=99 step=5 tokens=5000 batch=3 seq=32");
  CHECK_THROWS_AS(BatcherState::parse("seed=1 step=x tokens=1 batch=1 seq=1"), Error);
  CHECK_THROWS_AS(BatcherState::parse("seed=1 step=2"), Error);
  CHECK_THROWS_AS(BatcherState::parse(saved.to_string() + " extra"), Error);

  RandomBatcher other_shape(bytes, 4, 32, 99);
  CHECK_THROWS_WITH(other_shape.restore(saved), Contains("batch 3") && Contains("batch 4"));
  RandomBatcher other_data(std::vector<uint8_t>(bytes.begin(), bytes.end() - 1), 3, 32, 99);
  CHECK_THROWS_AS(other_data.restore(saved), Error);
}

TEST_CASE("batcher: clear errors for short data, bad ids and bad shapes", "[data][batcher]") {
  CHECK_THROWS_AS(RandomBatcher(iota_tokens(8), 2, 8, 0, 256), ShapeError);
  CHECK_THROWS_WITH(RandomBatcher(iota_tokens(8), 2, 8, 0, 256),
                    Contains("8 tokens") && Contains("seq + 1 = 9"));
  CHECK_THROWS_AS(SequentialBatcher(iota_tokens(8), 2, 8, 256), ShapeError);
  CHECK_THROWS_AS(RandomBatcher(std::vector<uint8_t>{}, 1, 1, 0), ShapeError);
  auto tokens = iota_tokens(100);
  tokens[57] = 1024;
  CHECK_THROWS_AS(RandomBatcher(tokens, 2, 8, 0, 1024), IndexError);
  CHECK_THROWS_WITH(RandomBatcher(tokens, 2, 8, 0, 1024),
                    Contains("1024") && Contains("position 57"));
  CHECK_THROWS_WITH(SequentialBatcher(tokens, 2, 8, 1024), Contains("position 57"));
  CHECK_NOTHROW(RandomBatcher(tokens, 2, 8, 0, 1025));
  CHECK_THROWS_AS(RandomBatcher(iota_tokens(100), 0, 8, 0, 256), ShapeError);
  CHECK_THROWS_AS(RandomBatcher(iota_tokens(100), 2, -1, 0, 256), ShapeError);
  CHECK_THROWS_AS(RandomBatcher(iota_tokens(100), 2, 8, 0, 0), IndexError);
}

TEST_CASE("batcher: sequential windows cover the data in order; the tail is dropped",
          "[data][batcher]") {
  // 23 tokens, T = 4: windows of 5 -> 4 windows (0..19), tokens 20..22 dropped.
  SequentialBatcher sb(iota_tokens(23), 3, 4, 256);
  CHECK(sb.num_windows() == 4);
  CHECK(sb.num_batches() == 2);
  CHECK(sb.dropped_tokens() == 3);
  CHECK(sb.num_targets() == 16);
  for (int pass = 0; pass < 2; ++pass) {
    auto b1 = sb.next();
    REQUIRE(b1);
    CHECK(b1->inputs.shape() == Shape{3, 4});
    CHECK(b1->inputs.to_vector() == std::vector<int32_t>{0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13});
    CHECK(b1->targets.to_vector() == std::vector<int32_t>{1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 14});
    auto b2 = sb.next();
    REQUIRE(b2);
    CHECK(b2->inputs.shape() == Shape{1, 4});  // the last batch is short
    CHECK(b2->inputs.to_vector() == std::vector<int32_t>{15, 16, 17, 18});
    CHECK(b2->targets.to_vector() == std::vector<int32_t>{16, 17, 18, 19});
    CHECK_FALSE(sb.next());
    CHECK_FALSE(sb.next());
    sb.reset();
  }
  // byte input, exact fit: nothing dropped
  SequentialBatcher exact(std::vector<uint8_t>(10, 'a'), 8, 4);
  CHECK(exact.dropped_tokens() == 0);
  CHECK(exact.num_windows() == 2);
  CHECK(exact.next()->inputs.shape() == Shape{2, 4});
  CHECK_FALSE(exact.next());
}
