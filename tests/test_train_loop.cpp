// The training loop's guards: a NaN or Inf loss or gradient stops training with the step and
// the tensor at fault, or (on_nonfinite = skip) skips that update and goes on.
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

#include "ternary/gpt.hpp"
#include "ternary/train/loop.hpp"
#include "test_util.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

namespace {
struct Run {
  nn::GPT<float> model{test::tiny_gpt_config(false, 9)};
  train::GolfOptimizers<float> opt{model, {}};
  std::vector<uint16_t> tokens;
  RandomBatcher batcher;
  Run() : tokens(make_tokens()), batcher(tokens, 2, 8, 1, 32) {}
  static std::vector<uint16_t> make_tokens() {
    Rng rng(1);
    return test::random_tokens(2000, 32, rng);
  }
  train::LoopOptions options(int64_t steps) const {
    train::LoopOptions o;
    o.steps = steps;
    o.log_every = 1000;
    return o;
  }
  Var<float> param(const std::string& name) { return model.parameter(name); }
};
const float kNaN = std::numeric_limits<float>::quiet_NaN();
}  // namespace

TEST_CASE("loop: a NaN loss stops training, naming the step", "[train][nonfinite]") {
  Run r;
  auto hook = [&](int64_t step) {
    if (step == 3) r.param("tok_emb.weight").value().data()[5] = kNaN;
  };
  CHECK_THROWS_WITH(train::train_loop(r.model, r.opt, r.batcher, r.options(6), hook),
                    Contains("step 3") && Contains("loss is nan"));
}

TEST_CASE("loop: a NaN gradient is traced to the first parameter holding it",
          "[train][nonfinite]") {
  Run r;
  Tensor<int32_t> x = Tensor<int32_t>::zeros({1, 4}), y = Tensor<int32_t>::ones({1, 4});
  r.model.loss(x, y).backward();
  CHECK_FALSE(train::first_nonfinite_gradient(r.model).has_value());
  Var<float> w = r.param("blocks.1.mlp.fc.weight");
  w.grad().data()[7] = std::numeric_limits<float>::infinity();
  r.param("blocks.2.attn.c_q.weight").grad().data()[0] = kNaN;  // later: not the first
  auto fault = train::first_nonfinite_gradient(r.model);
  REQUIRE(fault.has_value());
  CHECK_THAT(*fault,
             Contains("'blocks.1.mlp.fc.weight'") && Contains("inf") && Contains("element 7"));
}

TEST_CASE("loop: with skip, a bad step leaves the parameters untouched and training goes on",
          "[train][nonfinite]") {
  Run r;
  Var<float> gain = r.param("blocks.0.attn.q_gain");
  float saved = 0;
  std::vector<float> before;
  auto hook = [&](int64_t step) {
    if (step == 2) {  // poison a parameter for one step only
      saved = gain.value().data()[1];
      gain.value().data()[1] = kNaN;
      before = r.param("blocks.0.mlp.fc.weight").value().to_vector();
    } else if (step == 3) {
      gain.value().data()[1] = saved;
      CHECK(r.param("blocks.0.mlp.fc.weight").value().to_vector() == before);  // no update
    }
  };
  auto o = r.options(6);
  o.on_nonfinite = train::NonFinite::skip;
  const train::LoopResult res = train::train_loop(r.model, r.opt, r.batcher, o, hook);
  CHECK(res.steps == 6);
  CHECK(res.skipped_steps == 1);
  CHECK(std::isfinite(res.final_loss));
  for (auto& [name, p] : r.model.named_parameters())
    for (float v : p.value().to_vector()) REQUIRE(std::isfinite(v));
}

TEST_CASE("loop: the after-step hook sees every finished step once", "[train]") {
  Run r;
  std::vector<int64_t> seen;
  train::train_loop(r.model, r.opt, r.batcher, r.options(4), {},
                    [&](int64_t done) { seen.push_back(done); });
  CHECK(seen == std::vector<int64_t>{1, 2, 3, 4});
}
