// The GPT: forward pass against the same model written by hand from the ops, gradients,
// the artifact round trip, checkpoint resume, and config errors.
#include <catch2/catch.hpp>
#include <filesystem>

#include "ternary/gpt.hpp"
#include "test_util.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

namespace {
nn::GPTConfig tiny_config(bool ternary) {
  return test::tiny_gpt_config(ternary, /*seed=*/5);
}
using test::random_ids;
std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("ternary_test_gpt_" + name)).string();
}

// The model written out by hand from the ops and the named parameters (full precision).
Var<float> reference_logits(const nn::GPT<float>& m, const Tensor<int32_t>& ids) {
  const auto& c = m.config();
  auto P = [&](const std::string& n) { return m.parameter(n); };
  const int64_t B = ids.size(0), T = ids.size(1), Dh = c.head_dim();
  auto x = rms_norm(embedding(P("tok_emb.weight"), ids), c.norm_eps);
  const auto x0 = x;
  auto block = [&](int64_t i, Var<float> h) {
    const std::string p = "blocks." + std::to_string(i) + ".";
    h = select(P(p + "resid_mix"), 0, 0) * h + select(P(p + "resid_mix"), 0, 1) * x0;
    auto a_in = rms_norm(h, c.norm_eps);
    auto q = permute(reshape(linear(a_in, P(p + "attn.c_q.weight")), {B, T, c.n_heads, Dh}),
                     {0, 2, 1, 3});
    auto k = permute(reshape(linear(a_in, P(p + "attn.c_k.weight")), {B, T, c.n_kv_heads, Dh}),
                     {0, 2, 1, 3});
    auto v = permute(reshape(linear(a_in, P(p + "attn.c_v.weight")), {B, T, c.n_kv_heads, Dh}),
                     {0, 2, 1, 3});
    q = rope(rms_norm(q, c.norm_eps), c.rope_base) *
        reshape(P(p + "attn.q_gain"), {c.n_heads, 1, 1});
    k = rope(rms_norm(k, c.norm_eps), c.rope_base);
    auto y = reshape(permute(causal_attention_reference(q, k, v), {0, 2, 1, 3}), {B, T, c.dim});
    h = h + P(p + "attn_scale") * linear(y, P(p + "attn.proj.weight"));
    auto m_in = rms_norm(h, c.norm_eps);
    auto mlp = linear(relu2(linear(m_in, P(p + "mlp.fc.weight"))), P(p + "mlp.proj.weight"));
    return h + P(p + "mlp_scale") * mlp;
  };
  auto e0 = block(0, x);                                          // encoder
  auto d0 = block(1, e0 + select(P("skip_weights"), 0, 0) * e0);  // decoder, with the skip
  auto d1 = block(2, d0);
  return softcap(linear(rms_norm(d1, c.norm_eps), P("tok_emb.weight")), c.logit_softcap);
}
}  // namespace

TEST_CASE("GPT forward matches the model written by hand from the ops", "[gpt]") {
  nn::GPT<float> model(tiny_config(false));
  // Break the zero init of the output projections so every path contributes.
  Rng rng(3);
  for (auto& [name, p] : model.named_parameters()) {
    Var<float> v = p;
    if (name.find("proj.weight") != std::string::npos)
      v.value().assign(Tensor<float>::randn(p.shape(), rng, 0, 0.2));
  }
  auto ids = random_ids(2, 7, 32, rng);
  NoGrad ng;
  auto ours = model.logits(ids).value();
  auto ref = reference_logits(model, ids).value();
  REQUIRE(ours.shape() == Shape{2, 7, 32});
  CHECK(max_abs_diff(ours, ref) < 1e-5);
}

TEST_CASE("GPT loss is the cross-entropy of its logits and trains every parameter", "[gpt]") {
  for (bool ternary : {false, true}) {
    nn::GPT<float> model(tiny_config(ternary));
    Rng rng(4);
    auto ids = random_ids(2, 8, 32, rng), targets = random_ids(2, 8, 32, rng);
    auto loss = model.loss(ids, targets);
    {
      NoGrad ng;
      CHECK(loss.item() == Approx(cross_entropy(model.logits(ids), targets).item()).epsilon(1e-5));
    }
    CHECK(loss.item() == Approx(std::log(32.0)).epsilon(0.05));  // near uniform at init
    loss.backward();
    for (auto& [name, p] : model.named_parameters()) {
      INFO(name);
      CHECK(p.grad().defined());
    }
  }
}

TEST_CASE("config errors name the values at fault", "[gpt]") {
  auto c = tiny_config(false);
  c.n_kv_heads = 3;
  CHECK_THROWS_WITH(nn::GPT<float>(c), Contains("n_heads 4") && Contains("n_kv_heads 3"));
  c = tiny_config(false);
  c.dim = 18;
  CHECK_THROWS_WITH(nn::GPT<float>(c), Contains("dim 18"));
  nn::GPT<float> model(tiny_config(false));
  CHECK_THROWS_AS(model.logits(Tensor<int32_t>::zeros({4})), ShapeError);
  auto bad = Tensor<int32_t>::full({1, 3}, 40);
  CHECK_THROWS_WITH(model.logits(bad), Contains("40"));
}

TEST_CASE("artifact round trip: ternary weights exactly, float tensors as encoded",
          "[gpt][artifact]") {
  nn::GPT<float> model(tiny_config(true));
  Rng rng(6);
  for (auto& [name, p] : model.named_parameters()) {
    Var<float> v = p;
    v.value().assign(Tensor<float>::randn(p.shape(), rng, 0, 0.3));
  }
  auto ids = random_ids(2, 9, 32, rng), targets = random_ids(2, 9, 32, rng);
  NoGrad ng;
  const auto logits = model.logits(ids).value();

  // Lossless float encodings: the reloaded model computes exactly the same logits.
  const std::string exact = temp_path("exact.art");
  ExportOptions lossless;
  lossless.matrices = lossless.vectors = FloatEncoding::f32;
  export_gpt_artifact(model, exact, lossless);
  auto back = load_gpt_artifact(exact);
  CHECK(max_abs_diff(back->logits(ids).value(), logits) == 0.0);

  // Defaults (int8 rows, fp16 vectors, LZMA): a small, bounded difference; smaller file.
  const std::string small = temp_path("default.art");
  const int64_t bytes = export_gpt_artifact(model, small);
  CHECK(bytes < int64_t(std::filesystem::file_size(exact)));
  auto back2 = load_gpt_artifact(small);
  const double l0 = model.loss(ids, targets).item(), l1 = back2->loss(ids, targets).item();
  CHECK(std::abs(l1 - l0) / l0 < 0.01);
  for (auto& [name, proj] : back2->projection_modules()) {
    auto* bl = dynamic_cast<const nn::BitLinear<float>*>(proj);
    REQUIRE(bl);
    CHECK(bl->frozen());
  }
  std::filesystem::remove(exact);
  std::filesystem::remove(small);
}

TEST_CASE("artifact reader rejects damaged files with the field at fault", "[gpt][artifact]") {
  nn::GPT<float> model(tiny_config(true));
  const std::string path = temp_path("damaged.art");
  export_gpt_artifact(model, path);
  auto bytes = read_file(path);
  auto write = [&](std::vector<uint8_t> b) { write_file_atomic(path, b); };
  auto flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x40;
  write(flipped);
  CHECK_THROWS_AS(load_gpt_artifact(path), IOError);
  write(std::vector<uint8_t>(bytes.begin(), bytes.begin() + 20));
  CHECK_THROWS_WITH(load_gpt_artifact(path), Contains("shorter than the 40-byte header"));
  auto magic = bytes;
  magic[0] = 'X';
  write(magic);
  CHECK_THROWS_WITH(load_gpt_artifact(path), Contains("magic"));
  write(std::vector<uint8_t>(bytes.begin(), bytes.end() - 5));
  CHECK_THROWS_WITH(load_gpt_artifact(path), Contains("offset 24"));
  std::filesystem::remove(path);
}

TEST_CASE("resuming from a checkpoint gives the same losses as an uninterrupted run",
          "[gpt][checkpoint]") {
  std::vector<uint16_t> tokens(4000);
  Rng data_rng(9);
  for (auto& t : tokens) t = uint16_t(data_rng.below(32));
  const std::string full_log = temp_path("full.jsonl"), split_log = temp_path("split.jsonl"),
                    ck = temp_path("ck.safetensors");
  std::filesystem::remove(full_log);
  std::filesystem::remove(split_log);
  // Trains steps [from, to) of a 6-step run, optionally resuming from / saving to `ck`.
  auto run = [&](int64_t from, int64_t to, const std::string& log) {
    nn::GPT<float> model(tiny_config(true));
    train::GolfOptimizers<float> opt(model, {});
    RandomBatcher batcher(tokens, 2, 8, 7, 32);
    if (from > 0) {
      auto loaded = train::load_checkpoint(ck, model);
      opt.load_state_dict(loaded.optimizer_state);
      batcher.restore(BatcherState::parse(loaded.metadata.at("batcher")));
    }
    train::LoopOptions o;
    o.steps = to;
    o.start_step = from;
    o.warmup = 2;
    o.warmdown = 0;  // the LR schedule then depends on the step alone, not on the run length
    o.log_every = 1000;
    o.log_path = log;
    train::train_loop(model, opt, batcher, o);
    train::save_checkpoint(ck, model, opt.state_dict(), {{"batcher", batcher.state().to_string()}});
  };
  run(0, 6, full_log);
  run(0, 3, split_log);
  run(3, 6, split_log);
  auto losses_of = [](const std::string& log) {
    std::vector<double> v;
    std::ifstream in(log);
    std::string line;
    while (std::getline(in, line)) v.push_back(nlohmann::json::parse(line).at("loss"));
    return v;
  };
  auto a = losses_of(full_log), b = losses_of(split_log);
  REQUIRE(a.size() == 6);
  REQUIRE(b.size() == 6);
  for (size_t i = 0; i < a.size(); ++i) CHECK(a[i] == b[i]);  // bit for bit
  std::filesystem::remove(full_log);
  std::filesystem::remove(split_log);
  std::filesystem::remove(ck);
}

TEST_CASE("the golf recipe puts exactly the projection weights under Muon", "[gpt][optim]") {
  for (bool ternary : {false, true}) {
    nn::GPT<float> model(tiny_config(ternary));
    train::GolfOptimizers<float> opt(model, {});
    CHECK(opt.num_matrices() == 6 * 3);  // c_q, c_k, c_v, proj, fc, mlp.proj per block
  }
}
