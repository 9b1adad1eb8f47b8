// fp -> ternary fine-tuning (train/finetune.hpp): the ternary twin at lambda = 0 is the fp
// model, the schedule ends with every lambda at 1, fp checkpoints load into the twin (extra
// norms excepted, nothing else), and the fine-tuned model survives the artifact round trip.
#include <catch2/catch.hpp>
#include <filesystem>

#include "ternary/gpt.hpp"
#include "ternary/train/finetune.hpp"
#include "test_util.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

namespace {
nn::GPTConfig fp_config() {
  return test::tiny_gpt_config(/*ternary=*/false, /*seed=*/11);
}
using test::random_ids;
using test::random_tokens;
std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("ternary_test_finetune_" + name)).string();
}
// A trained-looking fp model: weights away from their init, saved as train_gpt --save does.
std::string save_fp_checkpoint(nn::GPT<float>& fp, const std::string& name) {
  Rng rng(3);
  for (auto& [n, p] : fp.named_parameters()) {
    Var<float> v = p;
    v.value().assign(Tensor<float>::randn(p.shape(), rng, 0, 0.2));
  }
  const std::string path = temp_path(name);
  train::save_checkpoint(path, fp, {}, {{"gpt_config", gpt_config_to_json(fp.config()).dump()}});
  return path;
}
}  // namespace

TEST_CASE("the ternary twin holds the fp model: at lambda 0 its logits are the fp logits",
          "[finetune]") {
  nn::GPT<float> fp(fp_config());
  const std::string path = save_fp_checkpoint(fp, "twin.safetensors");
  CHECK(train::checkpoint_config(path).ternary == false);
  Rng rng(4);
  const auto ids = random_ids(2, 7, 32, rng);
  NoGrad ng;
  const auto fp_logits = fp.logits(ids).value();

  SECTION("without the extra norm: exactly equal") {
    nn::GPT<float> twin(train::ternary_twin(fp.config(), false));
    CHECK(train::load_fp_weights(path, twin).empty());
    train::set_lambda(twin, 0.0);
    CHECK(max_abs_diff(twin.logits(ids).value(), fp_logits) == 0.0);
    // and lambda = 1 (naive ternarization) is a different model
    train::set_lambda(twin, 1.0);
    CHECK(max_abs_diff(twin.logits(ids).value(), fp_logits) > 1e-3);
  }
  SECTION("with the extra norm: every gain is a fresh one; the fp weights are in") {
    nn::GPT<float> twin(train::ternary_twin(fp.config(), true));
    const auto kept = train::load_fp_weights(path, twin);
    CHECK(kept.size() == size_t(6 * fp.config().n_layers));  // one gain per projection
    for (const auto& name : kept) {
      CHECK_THAT(name, Contains(".norm.weight"));
      CHECK(max_abs_diff(twin.parameter(name).value(),
                         Tensor<float>::ones(twin.parameter(name).shape())) == 0.0);
    }
    for (auto& [name, p] : fp.named_parameters())
      CHECK(max_abs_diff(twin.parameter(name).value(), p.value()) == 0.0);
    // At lambda 0 the extra norm is the only change: on an input that is already RMS
    // normalized (as c_q's is) the projection is the fp one; on a raw input it is not.
    train::set_lambda(twin, 0.0);
    auto* tq = twin.projection_modules()[0].second;
    auto* fq = fp.projection_modules()[0].second;
    const auto x = Var<float>::constant(Tensor<float>::randn({3, 16}, rng, 0, 2.0));
    const auto xn = rms_norm(x, fp.config().norm_eps);
    CHECK(max_abs_diff(tq->forward(xn).value(), fq->forward(xn).value()) < 1e-4);
    CHECK(max_abs_diff(tq->forward(x).value(), fq->forward(x).value()) > 1e-2);
  }
  std::filesystem::remove(path);
}

TEST_CASE("load_fp_weights rejects checkpoints that do not fit the twin", "[finetune]") {
  nn::GPT<float> fp(fp_config());
  const std::string path = save_fp_checkpoint(fp, "misfit.safetensors");
  auto wide = fp_config();
  wide.dim = 32;
  nn::GPT<float> twin(train::ternary_twin(wide, true));
  CHECK_THROWS_WITH(train::load_fp_weights(path, twin), Contains("shape"));
  // A checkpoint missing a weight (not an extra-norm gain) is an error, not a silent init.
  std::map<std::string, TensorBlob> partial;
  for (auto& [name, p] : fp.named_parameters())
    if (name != "blocks.1.mlp.fc.weight") partial[name] = TensorBlob::from(p.value());
  save_safetensors(path, partial, {});
  nn::GPT<float> same(train::ternary_twin(fp.config(), true));
  CHECK_THROWS_WITH(train::load_fp_weights(path, same),
                    Contains("missing parameter 'blocks.1.mlp.fc.weight'"));
  std::filesystem::remove(path);
}

TEST_CASE("block_index and the layer orders", "[finetune]") {
  CHECK(train::block_index("blocks.0.attn.c_q") == 0);
  CHECK(train::block_index("blocks.12.mlp.fc") == 12);
  CHECK_THROWS_WITH(train::block_index("tok_emb"), Contains("tok_emb"));
  CHECK_THROWS_WITH(train::block_index("blocks.x.mlp"), Contains("blocks.x.mlp"));
  CHECK(train::layer_order("reverse", 3) == std::vector<int64_t>{2, 1, 0});
  CHECK_THROWS_WITH(train::layer_order("sideways", 3), Contains("sideways"));
  nn::GPT<float> fp(fp_config());
  CHECK_THROWS_WITH(train::set_lambda(fp, 0.5), Contains("not a BitLinear"));
}

TEST_CASE(
    "fine-tuning: lambdas follow the schedule block by block and end at 1; the artifact scores the "
    "same",
    "[finetune]") {
  nn::GPT<float> fp(fp_config());
  const std::string path = save_fp_checkpoint(fp, "ft.safetensors");
  const std::string order = GENERATE(as<std::string>{}, "forward", "reverse");
  nn::GPT<float> model(train::ternary_twin(fp.config(), true));
  train::load_fp_weights(path, model);
  Rng rng(8);
  RandomBatcher batcher(random_tokens(4000, 32, rng), 2, 8, 1, 32);
  train::GolfOptimizers<float> opt(model, {});

  train::FinetuneOptions o;
  o.ramp_steps = 6;  // 3 blocks: 2 steps each
  o.steps = 2;
  o.order = order;
  o.loop.warmup = 1;
  o.loop.log_every = 1000;
  // Record every block's lambda before each step through the same hook the loop uses.
  const quant::LambdaSchedule schedule(3, o.ramp_steps, 0, train::layer_order(order, 3));
  std::vector<std::vector<double>> seen;
  for (int64_t s = 0; s < o.ramp_steps + o.steps; ++s) {
    train::apply_lambda_schedule(model, schedule, s);
    seen.push_back(train::lambdas(model));
  }
  // Step 3: the first block of the order is halfway (1/2), the others untouched or done.
  const int64_t first = order == "forward" ? 0 : 2, last = order == "forward" ? 2 : 0;
  CHECK(seen[1][6 * first] == Approx(0.5));
  CHECK(seen[1][6 * last] == 0.0);
  CHECK(seen[5][6 * first] == 1.0);
  CHECK(seen[5][6 * last] == Approx(0.5));
  for (int64_t p = 0; p < 6; ++p)
    CHECK(seen[1][6 * first + p] == seen[1][6 * first]);  // a block moves together

  train::set_lambda(model, 0.0);
  const auto before = model.parameter("blocks.1.mlp.fc.weight").value().clone();
  const auto r = train::finetune_to_ternary(model, opt, batcher, o);
  CHECK(r.steps == 8);
  for (double l : train::lambdas(model)) CHECK(l == 1.0);
  CHECK(max_abs_diff(model.parameter("blocks.1.mlp.fc.weight").value(), before) >
        0.0);  // it trained

  // The artifact reload scores what the training weights score.
  const std::string art = temp_path("ft.art");
  export_gpt_artifact(model, art);
  auto back = load_gpt_artifact(art);
  const auto ids = random_ids(2, 8, 32, rng), targets = random_ids(2, 8, 32, rng);
  NoGrad ng;
  const double l0 = model.loss(ids, targets).item(), l1 = back->loss(ids, targets).item();
  CHECK(std::isfinite(l0));
  CHECK(std::abs(l1 - l0) / l0 < 0.01);
  std::filesystem::remove(art);
  std::filesystem::remove(path);
}

TEST_CASE("fine-tuning with no steps after the ramp still ends fully ternary", "[finetune]") {
  nn::GPT<float> model(train::ternary_twin(fp_config(), false));
  Rng rng(9);
  RandomBatcher batcher(random_tokens(2000, 32, rng), 2, 8, 1, 32);
  train::GolfOptimizers<float> opt(model, {});
  train::FinetuneOptions o;
  o.ramp_steps = 3;
  o.steps = 0;
  o.loop.warmup = 1;
  o.loop.log_every = 1000;
  train::finetune_to_ternary(model, opt, batcher, o);
  for (double l : train::lambdas(model)) CHECK(l == 1.0);
  o.ramp_steps = 0;
  CHECK_THROWS_WITH(train::finetune_to_ternary(model, opt, batcher, o), Contains("some steps"));
}
