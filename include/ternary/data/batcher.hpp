// Language-model batches: inputs and targets as int32 tensors of shape [B, T], where
// targets[b, t] is the token after inputs[b, t].
//
// RandomBatcher (training): each row is a window of T + 1 tokens at a random offset. Batch k
// depends only on (seed, k): its offsets come from an Rng seeded with a hash of both. So the
// whole state is (seed, step), restore() is O(1), and a resumed run sees exactly the batches
// an uninterrupted run would have seen.
//
// SequentialBatcher (validation): the tokens cut in order into non-overlapping windows of
// T + 1 tokens, window w = tokens [w(T+1), (w+1)(T+1)), B windows a batch. The first token
// of each window is context only (never a target). The tail of n mod (T+1) tokens that does
// not fill a window is dropped (dropped_tokens() says how many); the last batch may have
// fewer than B rows.
//
// Token ids are checked once, at construction: an id >= vocab throws IndexError with the
// value and its position.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "ternary/core/error.hpp"
#include "ternary/core/random.hpp"
#include "ternary/core/tensor.hpp"

namespace ternary {

// Vocabulary of byte-level text (data/text.hpp).
inline constexpr int64_t kByteVocab = 256;

struct Batch {
  Tensor<int32_t> inputs, targets;  // [B, T] each
};

namespace detail {

inline void check_batch_args(const char* who, size_t n, int64_t batch, int64_t seq, int64_t vocab) {
  if (batch <= 0 || seq <= 0)
    throw ShapeError(
        cat(who, ": batch and seq must be positive, got batch ", batch, ", seq ", seq));
  if (vocab <= 0 || vocab > 65536)
    throw IndexError(cat(who, ": vocab must be in [1, 65536], got ", vocab));
  if (n < static_cast<uint64_t>(seq) + 1)
    throw ShapeError(
        cat(who, ": ", n, " tokens are too few for one window of seq + 1 = ", seq + 1, " tokens"));
}

template <class Tok>
void check_tokens(const char* who, std::span<const Tok> tokens, int64_t vocab) {
  for (size_t i = 0; i < tokens.size(); ++i)
    if (static_cast<int64_t>(tokens[i]) >= vocab)
      throw IndexError(cat(who, ": token id ", static_cast<int64_t>(tokens[i]), " at position ", i,
                           " is >= the vocabulary size ", vocab));
}

// Row `row` of a batch: inputs = tokens[start, start+T), targets = tokens[start+1, start+T+1).
inline void fill_row(Batch& b, int64_t row, const uint16_t* window, int64_t seq) {
  int32_t* in = b.inputs.data() + row * seq;
  int32_t* tg = b.targets.data() + row * seq;
  for (int64_t t = 0; t < seq; ++t) in[t] = window[t], tg[t] = window[t + 1];
}

inline Batch empty_batch(int64_t rows, int64_t seq) {
  return {Tensor<int32_t>::empty(Shape{rows, seq}), Tensor<int32_t>::empty(Shape{rows, seq})};
}

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace detail

// A RandomBatcher's position, small enough for checkpoint metadata. num_tokens, batch and seq
// are checked by restore(), so resuming on different data or shapes fails loudly.
struct BatcherState {
  uint64_t seed = 0, step = 0, num_tokens = 0, batch = 0, seq = 0;
  friend bool operator==(const BatcherState&, const BatcherState&) = default;

  // "seed=1 step=42 tokens=4184192 batch=8 seq=256" (for safetensors __metadata__).
  std::string to_string() const {
    return detail::cat("seed=", seed, " step=", step, " tokens=", num_tokens, " batch=", batch,
                       " seq=", seq);
  }
  static BatcherState parse(std::string_view text) {
    BatcherState s;
    std::istringstream in{std::string(text)};
    const char* keys[] = {"seed=", "step=", "tokens=", "batch=", "seq="};
    uint64_t* fields[] = {&s.seed, &s.step, &s.num_tokens, &s.batch, &s.seq};
    for (int i = 0; i < 5; ++i) {
      std::string word;
      in >> word;
      const std::string_view key = keys[i];
      bool ok = word.starts_with(key) && word.size() > key.size() &&
                word.find_first_not_of("0123456789", key.size()) == std::string::npos;
      if (ok) {
        try {
          *fields[i] = std::stoull(word.substr(key.size()));
        } catch (const std::exception&) {
          ok = false;
        }
      }
      if (!ok)
        throw Error(detail::cat("BatcherState::parse: expected '", key, "<number>' but got '", word,
                                "' in '", text, "'"));
    }
    std::string rest;
    if (in >> rest)
      throw Error(detail::cat("BatcherState::parse: unexpected '", rest, "' in '", text, "'"));
    return s;
  }
};

class RandomBatcher {
 public:
  // Tokens with ids in [0, vocab).
  RandomBatcher(std::vector<uint16_t> tokens, int64_t batch, int64_t seq, uint64_t seed,
                int64_t vocab)
      : tokens_(std::move(tokens)), batch_(batch), seq_(seq), seed_(seed) {
    detail::check_batch_args("RandomBatcher", tokens_.size(), batch, seq, vocab);
    detail::check_tokens<uint16_t>("RandomBatcher", tokens_, vocab);
  }
  // Byte-level text (vocabulary 256).
  RandomBatcher(std::span<const uint8_t> bytes, int64_t batch, int64_t seq, uint64_t seed)
      : RandomBatcher(std::vector<uint16_t>(bytes.begin(), bytes.end()), batch, seq, seed,
                      kByteVocab) {}

  // The batch at the current step; advances the step.
  Batch next() { return batch_at(step_++); }

  // The batch at any step, without changing the state.
  Batch batch_at(uint64_t step) const {
    Rng rng(detail::mix64(seed_ ^ detail::mix64(step + 0x9e3779b97f4a7c15ull)));
    const uint64_t n_offsets = tokens_.size() - static_cast<uint64_t>(seq_);  // >= 1
    Batch b = detail::empty_batch(batch_, seq_);
    for (int64_t row = 0; row < batch_; ++row)
      detail::fill_row(b, row, tokens_.data() + rng.below(n_offsets), seq_);
    return b;
  }

  uint64_t step() const { return step_; }
  int64_t batch_size() const { return batch_; }
  int64_t seq_len() const { return seq_; }
  size_t num_tokens() const { return tokens_.size(); }

  BatcherState state() const {
    return {seed_, step_, tokens_.size(), static_cast<uint64_t>(batch_),
            static_cast<uint64_t>(seq_)};
  }
  // Continues from a saved state. The data size and batch shape must match the saved ones.
  void restore(const BatcherState& s) {
    if (s.num_tokens != tokens_.size() || s.batch != static_cast<uint64_t>(batch_) ||
        s.seq != static_cast<uint64_t>(seq_))
      throw Error(detail::cat("RandomBatcher::restore: state was saved for ", s.num_tokens,
                              " tokens, batch ", s.batch, ", seq ", s.seq, " but this batcher has ",
                              tokens_.size(), " tokens, batch ", batch_, ", seq ", seq_));
    seed_ = s.seed;
    step_ = s.step;
  }

 private:
  std::vector<uint16_t> tokens_;
  int64_t batch_, seq_;
  uint64_t seed_, step_ = 0;
};

class SequentialBatcher {
 public:
  SequentialBatcher(std::vector<uint16_t> tokens, int64_t batch, int64_t seq, int64_t vocab)
      : tokens_(std::move(tokens)), batch_(batch), seq_(seq) {
    detail::check_batch_args("SequentialBatcher", tokens_.size(), batch, seq, vocab);
    detail::check_tokens<uint16_t>("SequentialBatcher", tokens_, vocab);
  }
  SequentialBatcher(std::span<const uint8_t> bytes, int64_t batch, int64_t seq)
      : SequentialBatcher(std::vector<uint16_t>(bytes.begin(), bytes.end()), batch, seq,
                          kByteVocab) {}

  int64_t num_windows() const { return static_cast<int64_t>(tokens_.size()) / (seq_ + 1); }
  int64_t num_batches() const { return (num_windows() + batch_ - 1) / batch_; }
  // Tokens at the end that fill no window and are never seen.
  int64_t dropped_tokens() const {
    return static_cast<int64_t>(tokens_.size()) - num_windows() * (seq_ + 1);
  }
  // Targets over a whole pass: num_windows() * seq.
  int64_t num_targets() const { return num_windows() * seq_; }

  // The next batch, or nothing after the last one.
  std::optional<Batch> next() {
    const int64_t rows = std::min(batch_, num_windows() - window_);
    if (rows <= 0) return std::nullopt;
    Batch b = detail::empty_batch(rows, seq_);
    for (int64_t r = 0; r < rows; ++r)
      detail::fill_row(b, r, tokens_.data() + (window_ + r) * (seq_ + 1), seq_);
    window_ += rows;
    return b;
  }
  void reset() { window_ = 0; }

 private:
  std::vector<uint16_t> tokens_;
  int64_t batch_, seq_, window_ = 0;
};

// A batch from exactly B*T + 1 consecutive tokens (the Parameter Golf layout, e.g. a
// TokenStream::take(B*T + 1)): row b is tokens [bT, bT+T), its targets [bT+1, bT+T+1).
inline Batch batch_from_chunk(std::span<const uint16_t> chunk, int64_t batch, int64_t seq,
                              int64_t vocab) {
  detail::check_batch_args("batch_from_chunk", chunk.size(), batch, seq, vocab);
  if (chunk.size() != static_cast<uint64_t>(batch * seq + 1))
    throw ShapeError(detail::cat("batch_from_chunk: got ", chunk.size(),
                                 " tokens, need batch * seq + 1 = ", batch * seq + 1));
  detail::check_tokens<uint16_t>("batch_from_chunk", chunk, vocab);
  Batch b = detail::empty_batch(batch, seq);
  for (int64_t r = 0; r < batch; ++r) detail::fill_row(b, r, chunk.data() + r * seq, seq);
  return b;
}

}  // namespace ternary
