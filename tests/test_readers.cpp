// Hostile inputs for every reader, the same four ways each: the file truncated at many
// points, bytes flipped at many offsets, extra bytes appended, and an empty file. A reader
// either returns data that passes the checks a program makes next, or throws a ternary::Error
// whose message names the file; never another exception, never a crash (the ASan + UBSan
// build runs this too). Formats with a checksum (the artifact) must reject every flip.
#include <catch2/catch.hpp>
#include <fstream>

#include "ternary/data/batcher.hpp"
#include "ternary/data/shards.hpp"
#include "ternary/data/text.hpp"
#include "ternary/gpt.hpp"
#include "ternary/train/checkpoint.hpp"
#include "ternary/train/evaluate.hpp"
#include "test_util.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

namespace {

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

enum class Outcome { loaded, rejected };

// Runs `read(path)`; a ternary::Error must name the file.
template <class Read>
Outcome try_read(const std::string& path, Read&& read) {
  try {
    read(path);
    return Outcome::loaded;
  } catch (const Error& e) {
    INFO("message: " << e.what());
    CHECK_THAT(e.what(), Contains(path));
    return Outcome::rejected;
  }
}

struct Damage {
  int truncations_rejected = 0, truncations = 0;
  int flips_rejected = 0, flips = 0;
};

// Feeds `read` the valid file and the four kinds of damage. Truncations must always be
// rejected when `every_truncation` (formats whose length is implied by their header).
template <class Read>
Damage hammer(const test::TempDir& dir, const std::string& name, const std::vector<uint8_t>& valid,
              Read&& read, bool every_truncation = true) {
  Damage d;
  const std::string path = dir.file(name);
  write_bytes(path, valid);
  REQUIRE(try_read(path, read) == Outcome::loaded);

  write_bytes(path, {});
  CHECK(try_read(path, read) == Outcome::rejected);

  Rng rng(17);
  for (int i = 0; i < 40; ++i) {
    const size_t n = i < 10 ? size_t(i) : size_t(rng.below(valid.size()));
    if (n >= valid.size()) continue;
    write_bytes(path, std::vector<uint8_t>(valid.begin(), valid.begin() + int64_t(n)));
    ++d.truncations;
    const bool rejected = try_read(path, read) == Outcome::rejected;
    d.truncations_rejected += rejected;
    if (every_truncation) {
      INFO(name << " truncated to " << n << " of " << valid.size() << " bytes");
      CHECK(rejected);
    }
  }
  for (int i = 0; i < 60; ++i) {
    std::vector<uint8_t> bad = valid;
    const size_t at = i < 16 ? size_t(i) : size_t(rng.below(valid.size()));
    bad[at] ^= uint8_t(1u << (i % 8));
    write_bytes(path, bad);
    ++d.flips;
    d.flips_rejected += try_read(path, read) == Outcome::rejected;
  }
  for (size_t extra : {1, 7, 4096}) {
    std::vector<uint8_t> big = valid;
    big.resize(valid.size() + extra, 0x5a);
    write_bytes(path, big);
    INFO(name << " with " << extra << " extra bytes");
    CHECK(try_read(path, read) == Outcome::rejected);
  }
  return d;
}

}  // namespace

TEST_CASE("readers: safetensors checkpoints", "[readers]") {
  test::TempDir dir("readers");
  nn::GPT<float> model(test::tiny_gpt_config(true, 3));
  const std::string ck = dir.file("ck.safetensors");
  train::save_checkpoint(ck, model, {}, {{"step", "4"}});
  const auto valid = read_file(ck);
  auto read = [&](const std::string& p) {
    nn::GPT<float> m(test::tiny_gpt_config(true, 3));
    auto loaded = train::load_checkpoint(p, m);
    loaded.require_count("step");
  };
  hammer(dir, "damaged.safetensors", valid, read);
}

TEST_CASE("readers: checkpoint metadata the resume needs", "[readers]") {
  test::TempDir dir("readers");
  nn::GPT<float> model(test::tiny_gpt_config(false, 3));
  const std::string ck = dir.file("ck.safetensors");
  train::save_checkpoint(ck, model, {}, {{"step", "-3"}});
  auto loaded = train::load_checkpoint(ck, model);
  CHECK_THROWS_WITH(loaded.require_count("step"), Contains(ck) && Contains("'-3'"));
  CHECK_THROWS_WITH(loaded.require("batcher"), Contains(ck) && Contains("'batcher'"));
  nn::GPTConfig other = test::tiny_gpt_config(false, 3);
  other.dim = 32;
  nn::GPT<float> wrong(other);
  CHECK_THROWS_WITH(train::load_checkpoint(ck, wrong), Contains(ck) && Contains("shape"));
}

TEST_CASE("readers: token shards, then the vocabulary check", "[readers]") {
  test::TempDir dir("readers");
  Rng rng(5);
  const std::string shard = dir.file("ok.bin");
  write_shard(shard, test::random_tokens(300, 1000, rng));
  auto read = [&](const std::string& p) {
    auto tokens = read_shard(p, 1024);  // ids >= 1024 are refused here
    RandomBatcher b(tokens, 2, 16, 1, 1024);
  };
  hammer(dir, "damaged.bin", read_file(shard), read);
  // A flipped high bit in a token id gives an id outside the vocabulary: a clear error.
  auto bytes = read_file(shard);
  bytes[kShardHeaderBytes + 11] ^= 0x80;
  write_bytes(shard, bytes);
  CHECK_THROWS_WITH(read(shard), Contains(shard) && Contains("byte offset 1034") &&
                                     Contains("vocabulary size 1024"));
}

TEST_CASE("readers: the artifact rejects every damage (CRC, sizes, fields)", "[readers]") {
  test::TempDir dir("readers");
  nn::GPT<float> model(test::tiny_gpt_config(true, 3));
  for (Codec codec : {Codec::none, Codec::zlib}) {
    const std::string path = dir.file("ok.artifact");
    ExportOptions eo;
    eo.codec = codec;
    export_gpt_artifact(model, path, eo);
    Damage d = hammer(dir, "damaged.artifact", read_file(path),
                      [](const std::string& p) { load_gpt_artifact(p); });
    INFO("codec " << codec_name(codec));
    CHECK(d.flips_rejected == d.flips);  // header fields are checked, the payload has a CRC
  }
}

TEST_CASE("readers: a config that outgrows its artifact is refused before allocating",
          "[readers]") {
  test::TempDir dir("readers");
  nn::GPT<float> model(test::tiny_gpt_config(false, 3));
  const std::string path = dir.file("big.artifact");
  ExportOptions eo;
  eo.codec = Codec::none;
  nn::GPTConfig huge = model.config();
  ArtifactWriter w;
  huge.n_layers = 60000;  // valid in itself, but the artifact holds 3 blocks
  w.set_metadata("gpt_config", gpt_config_to_json(huge).dump());
  for (auto& [name, p] : model.named_parameters()) w.add_float(name, p.value(), FloatEncoding::f32);
  w.write(path, Codec::none);
  CHECK_THROWS_WITH(load_gpt_artifact(path),
                    Contains(path) && Contains("blocks.3.attn.c_q.weight") && Contains("lacks"));
}

TEST_CASE("readers: text files, plain and compressed", "[readers]") {
  test::TempDir dir("readers");
  std::string text;
  for (int i = 0; i < 40; ++i) text += "In the beginning was the Word. ";
  const std::vector<uint8_t> raw(text.begin(), text.end());
  auto read = [](const std::string& p) { load_text(p, 0.1); };
  // Plain text: any bytes are text, so only the empty file is an error.
  write_bytes(dir.file("empty.txt"), {});
  CHECK_THROWS_WITH(read(dir.file("empty.txt")), Contains("empty.txt") && Contains("empty"));
  // Compressed: a frame checksum or structure check catches truncation (zlib/gzip, zstd, xz).
  for (Codec c : {Codec::zlib, Codec::zstd, Codec::lzma}) {
    if (!codec_available(c)) continue;
    const std::string ext = c == Codec::zlib ? ".gz" : c == Codec::zstd ? ".zst" : ".xz";
    INFO("codec " << codec_name(c));
    Damage d = hammer(dir, "damaged" + ext, compress(raw, c), read);
    CHECK(d.truncations_rejected == d.truncations);
  }
}

TEST_CASE("readers: the bytes-per-token table", "[readers]") {
  test::TempDir dir("readers");
  const std::string path = dir.file("bytes.txt");
  auto write = [&](const std::string& s) { write_bytes(path, {s.begin(), s.end()}); };
  write("1 2 3 4");
  CHECK(read_bytes_per_token(path, 4) == std::vector<double>{1, 2, 3, 4});
  for (const char* bad :
       {"", "1 2 3", "1 2 3 4 5", "1 2 x 4", "1 2 -3 4", "1 inf 3 4", "1 nan 3 4", "1 2 3 4e999"}) {
    write(bad);
    INFO("table '" << bad << "'");
    CHECK_THROWS_WITH(read_bytes_per_token(path, 4), Contains(path));
  }
  CHECK_THROWS_WITH(read_bytes_per_token(dir.file("missing.txt"), 4), Contains("missing.txt"));
}
