// Writes the fuzz targets' seed corpora: small valid inputs of every format, made by the
// library's own writers, one directory per target (corpus/<target>/). The fuzzers start from
// these, so they reach deep into each reader from the first run.
//
//   fuzz_seeds <corpus-dir>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "ternary/data/shards.hpp"
#include "ternary/io/gpt_artifact.hpp"
#include "ternary/io/safetensors.hpp"

namespace fs = std::filesystem;
using namespace ternary;

static void put(const fs::path& dir, const std::string& name, std::span<const uint8_t> bytes,
                int mode_byte = -1) {
  fs::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  if (mode_byte >= 0) out.put(char(mode_byte));
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  if (!out) throw IOError(detail::cat("fuzz_seeds: cannot write ", (dir / name).string()));
}
static void put_text(const fs::path& dir, const std::string& name, const std::string& text) {
  put(dir, name, std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seeds <corpus-dir>\n");
    return 2;
  }
  try {
    const fs::path root = argv[1];
    Rng rng(7);
    // safetensors: several dtypes, a scalar, an empty tensor, metadata.
    {
      std::map<std::string, TensorBlob> t{
          {"w", TensorBlob::from(Tensor<float>::randn({3, 4}, rng))},
          {"d", TensorBlob::from(Tensor<double>::randn({2}, rng))},
          {"i", TensorBlob::from(Tensor<int32_t>::from({5}, {1, 2, 3, 4, 5}))},
          {"s", TensorBlob::from(Tensor<float>::scalar(2.5f))},
          {"e", TensorBlob::from(Tensor<float>::zeros({0, 3}))}};
      put(root / "safetensors", "mixed", encode_safetensors(t, {{"step", "12"}}));
      put(root / "safetensors", "one", encode_safetensors({{"x", t.at("w")}}));
    }
    // shards: a few tokens, and an empty shard.
    {
      const fs::path tmp = root / "shard.tmp";
      std::vector<uint16_t> tokens{1,  2,  3,  1023, 0,  7,  9,  11, 13, 15,
                                   17, 19, 21, 23,   25, 27, 29, 31, 33, 35};
      write_shard(tmp.string(), tokens);
      put(root / "shard", "twenty", read_file(tmp.string()));
      write_shard(tmp.string(), std::vector<uint16_t>{});
      put(root / "shard", "empty", read_file(tmp.string()));
      fs::remove(tmp);
    }
    // text: plain and each codec (first byte picks the suffix: 0 txt, 1 zst, 2 xz, 3 gz).
    {
      const std::string text = "In the beginning God created the heaven and the earth.\n";
      const std::span<const uint8_t> raw(reinterpret_cast<const uint8_t*>(text.data()),
                                         text.size());
      put(root / "text", "plain", raw, 0);
      const Codec codecs[] = {Codec::zstd, Codec::lzma, Codec::zlib};
      for (int i = 0; i < 3; ++i)
        if (codec_available(codecs[i]))
          put(root / "text", std::string(codec_name(codecs[i])), compress(raw, codecs[i]), i + 1);
    }
    // token byte-length table (vocabulary 8).
    put_text(root / "token_table", "table", "1 1 2 3\n1.5 0 4 1\n");
    // artifact: a tiny ternary GPT exported as a file (mode 0), and its payload (mode 1).
    {
      nn::GPTConfig c;
      c.vocab_size = 16;
      c.n_layers = 2;
      c.dim = 8;
      c.n_heads = 2;
      c.n_kv_heads = 1;
      nn::GPT<float> model(c);
      const fs::path tmp = root / "artifact.tmp";
      ExportOptions eo;
      eo.codec = Codec::none;
      export_gpt_artifact(model, tmp.string(), eo);
      const std::vector<uint8_t> file = read_file(tmp.string());
      put(root / "artifact", "file", file, 0);
      put(root / "artifact", "payload", std::span(file).subspan(kArtifactHeaderBytes), 1);
      fs::remove(tmp);
    }
    // command lines (one argument per line).
    put_text(root / "cli", "shape", "--layers\n4\n--dim\n128\n--heads\n4\n--kv-heads\n2\n");
    put_text(root / "cli", "run", "--seq\n64\n--batch\n8\n--warmup\n5\n--warmdown\n0.5\n");
    put_text(root / "cli", "lr",
             "--matrix-lr=0.02\n--embed-lr\n0.1\n--scalar-lr\n0.04\n--threads\n2");
    std::printf("fuzz_seeds: wrote the seed corpora under %s\n", root.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_seeds: error: %s\n", e.what());
    return 1;
  }
}
