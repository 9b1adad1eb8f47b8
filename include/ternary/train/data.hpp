// The programs' data and scoring: training and validation tokens from the bundled corpus, a
// text file or token shards, and a GPT's validation bits per byte on them. Shared by
// train_gpt, finetune_ternary and ablate_extra_norm so they read and score data alike.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "ternary/data/batcher.hpp"
#include "ternary/data/corpus.hpp"
#include "ternary/data/shards.hpp"
#include "ternary/data/text.hpp"
#include "ternary/nn/gpt.hpp"
#include "ternary/train/evaluate.hpp"

namespace ternary::train {

struct DataOptions {
  std::string train_path;       // empty: the bundled corpus; "*" or ".bin": token shards
  std::string val_path;         // text: optional (default the end of train); shards: required
  std::string bytes_per_token;  // shards: token byte-length table (empty: one byte per token)
  double val_fraction = kDefaultValFraction;
  int64_t vocab_size = kByteVocab;
};

struct Data {
  std::vector<uint16_t> train, val;
  std::vector<double> bytes_per_token;  // empty: one byte per token
  std::string description;
};

inline bool looks_like_shards(const std::string& p) {
  return p.find('*') != std::string::npos || p.ends_with(".bin");
}

inline std::vector<uint16_t> load_shards(const std::string& pattern, int64_t vocab_size) {
  std::vector<uint16_t> all;
  for (const auto& f : glob_files(pattern)) {
    auto t = read_shard(f, vocab_size);
    all.insert(all.end(), t.begin(), t.end());
  }
  return all;
}

// `who` names the program in the warning printed when shards come without a byte table.
inline Data load_data(const DataOptions& o, const std::string& who = "train") {
  Data d;
  if (o.train_path.empty() || !looks_like_shards(o.train_path)) {
    TextSplit s = o.train_path.empty() ? load_default_corpus(o.val_fraction)
                                       : load_text(o.train_path, o.val_fraction);
    d.description = o.train_path.empty() ? "bundled corpus " + default_corpus_path() : o.train_path;
    d.train.assign(s.train.begin(), s.train.end());
    d.val.assign(s.val.begin(), s.val.end());
    if (!o.val_path.empty()) {
      auto v = read_text_bytes(o.val_path);
      d.val.assign(v.begin(), v.end());
    }
    if (o.vocab_size < kByteVocab)
      throw Error(detail::cat("byte-level text needs a vocabulary >= 256, got ", o.vocab_size));
  } else {
    if (o.val_path.empty())
      throw Error("token shards need --val (a shard file or glob) for validation");
    d.train = load_shards(o.train_path, o.vocab_size);
    d.val = load_shards(o.val_path, o.vocab_size);
    d.description = o.train_path;
    if (!o.bytes_per_token.empty()) {
      d.bytes_per_token = read_bytes_per_token(o.bytes_per_token, o.vocab_size);
    } else {
      std::fprintf(stderr, "%s: warning: no --bytes-per-token table; counting one byte per token\n",
                   who.c_str());
    }
  }
  return d;
}

// Validation loss and bits per byte of `model` on d.val, in windows of `seq` tokens,
// `batch` windows at a time; max_batches <= 0 scores every window.
// Any backend: batches are drawn on the host and uploaded.
template <class B = cpu>
EvalResult evaluate_gpt(const nn::GPT<float, B>& model, const Data& d, int64_t batch, int64_t seq,
                        int64_t max_batches = 0) {
  SequentialBatcher val(d.val, batch, seq, model.config().vocab_size);
  return evaluate_bpb(
      [&](const Tensor<int32_t>& x, const Tensor<int32_t>& y) {
        return model.loss(to_backend<B>(x), to_backend<B>(y));
      },
      val, d.bytes_per_token, max_batches);
}

}  // namespace ternary::train
