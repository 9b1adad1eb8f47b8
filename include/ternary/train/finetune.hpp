// Fine-tuning a full-precision GPT to ternary, the recipe of "An Extra RMSNorm is All You
// Need for Fine Tuning to 1.58 Bits":
//   1. build the ternary twin of the fp model (same shape, BitLinear projections, by default
//      with the extra RMSNorm before each projection, its gain initialised to ones);
//   2. copy the fp weights in (the extra-norm gains are the only parameters the fp
//      checkpoint lacks);
//   3. train while each block's lambda ramps 0 -> 1 (quant::LambdaSchedule, block after
//      block in a chosen order), then keep training at lambda = 1.
// A block is the schedule's "layer": all projections of blocks.<i> share lambda_i.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ternary/io/gpt_artifact.hpp"
#include "ternary/io/safetensors.hpp"
#include "ternary/nn/bitlinear.hpp"
#include "ternary/nn/gpt.hpp"
#include "ternary/quant/schedule.hpp"
#include "ternary/train/loop.hpp"

namespace ternary::train {

// The ternary twin of a full-precision configuration.
inline nn::GPTConfig ternary_twin(nn::GPTConfig fp, bool extra_norm) {
  fp.ternary = true;
  fp.extra_norm = extra_norm;
  return fp;
}

// The block index of a projection named "blocks.<i>.<...>".
inline int64_t block_index(const std::string& name) {
  const std::string prefix = "blocks.";
  const size_t dot = name.find('.', prefix.size());
  if (name.rfind(prefix, 0) != 0 || dot == std::string::npos || dot == prefix.size())
    throw Error(detail::cat("block_index: '", name, "' is not named blocks.<i>.<...>"));
  try {
    size_t used = 0;
    const std::string digits = name.substr(prefix.size(), dot - prefix.size());
    const int64_t i = std::stoll(digits, &used);
    if (used != digits.size() || i < 0) throw Error("");
    return i;
  } catch (const std::exception&) {
    throw Error(detail::cat("block_index: '", name, "' is not named blocks.<i>.<...>"));
  }
}

// The model's BitLinear layers with their block index, in projection order. Throws if a
// projection is not a BitLinear (a full-precision model has nothing to schedule).
inline std::vector<std::pair<int64_t, nn::BitLinear<float>*>> bitlinears(
    const nn::GPT<float>& model) {
  std::vector<std::pair<int64_t, nn::BitLinear<float>*>> out;
  for (auto& [name, proj] : model.projection_modules()) {
    auto* bl = dynamic_cast<nn::BitLinear<float>*>(proj);
    if (!bl)
      throw Error(detail::cat("fine-tune: projection '", name,
                              "' is not a BitLinear (is the model ternary?)"));
    out.emplace_back(block_index(name), bl);
  }
  return out;
}

// Sets every BitLinear's lambda to one value.
inline void set_lambda(const nn::GPT<float>& model, double lambda) {
  for (auto& [block, bl] : bitlinears(model)) bl->set_lambda(lambda);
}
// Sets each block's lambda from the schedule at `step`.
inline void apply_lambda_schedule(const nn::GPT<float>& model, const quant::LambdaSchedule& s,
                                  int64_t step) {
  if (s.num_layers() != model.num_layers())
    throw Error(detail::cat("apply_lambda_schedule: a schedule for ", s.num_layers(),
                            " layers, the model has ", model.num_layers()));
  for (auto& [block, bl] : bitlinears(model)) bl->set_lambda(s.lambda(block, step));
}
// Every BitLinear's lambda, in projection order (for logs and checks).
inline std::vector<double> lambdas(const nn::GPT<float>& model) {
  std::vector<double> out;
  for (auto& [block, bl] : bitlinears(model)) out.push_back(bl->lambda());
  return out;
}

// "forward" (block 0 first) or "reverse" (the last block first).
inline std::vector<int64_t> layer_order(const std::string& name, int64_t n_layers) {
  if (name == "forward") return {};  // LambdaSchedule's default: 0, 1, ..., n - 1
  if (name == "reverse") return quant::LambdaSchedule::reversed(n_layers);
  throw Error(detail::cat("layer order must be 'forward' or 'reverse', got '", name, "'"));
}

// Copies a full-precision checkpoint's weights (safetensors, as train_gpt --save writes them)
// into a model; optimizer state ("optim.*") is skipped. The only parameters the file may
// lack are the extra-norm gains ("*.norm.weight"), which keep their values (ones at init);
// anything else missing, unknown or of the wrong shape throws. Returns the names kept.
inline std::vector<std::string> load_fp_weights(const std::string& path, nn::Module<float>& model) {
  Safetensors st = load_safetensors(path);
  std::map<std::string, Tensor<float>> params;
  for (auto& [name, blob] : st.tensors)
    if (name.rfind("optim.", 0) != 0) params[name] = blob.as<float>();
  std::vector<std::string> kept;
  try {
    kept = model.load_parameters(params, /*strict=*/false);
  } catch (const Error& e) {
    throw IOError(detail::cat("checkpoint ", path, ": ", e.what()));
  }
  for (const auto& name : kept)
    if (!name.ends_with(".norm.weight"))
      throw IOError(detail::cat("checkpoint ", path, ": missing parameter '", name, "'"));
  return kept;
}

// The model configuration a checkpoint carries in its metadata ("gpt_config", JSON), and
// the rest of its metadata.
inline nn::GPTConfig checkpoint_config(const std::string& path,
                                       std::map<std::string, std::string>* metadata = nullptr) {
  const Safetensors st = load_safetensors(path);
  if (metadata) *metadata = st.metadata;
  auto it = st.metadata.find("gpt_config");
  if (it == st.metadata.end())
    throw IOError(
        detail::cat("checkpoint ", path,
                    ": no 'gpt_config' in its metadata (was it written by train_gpt --save?)"));
  try {
    return gpt_config_from_json(nlohmann::json::parse(it->second));
  } catch (const std::exception& e) {
    throw IOError(detail::cat("checkpoint ", path, ": bad 'gpt_config' metadata: ", e.what()));
  }
}

struct FinetuneOptions {
  int64_t ramp_steps = 200;       // lambda 0 -> 1, block after block
  int64_t steps = 200;            // then this many steps at lambda = 1
  std::string order = "forward";  // forward | reverse
  LoopOptions loop;               // warmup, warmdown, clipping, logging (steps is set here)
};

// Runs the gradual schedule: ramp_steps + steps optimizer steps, each block's lambda set
// before every step. On return every lambda is 1 (also when steps = 0).
inline LoopResult finetune_to_ternary(const nn::GPT<float>& model, GolfOptimizers<float>& opt,
                                      RandomBatcher& batcher, const FinetuneOptions& o) {
  if (o.ramp_steps < 0 || o.steps < 0 || o.ramp_steps + o.steps <= 0)
    throw Error(detail::cat(
        "finetune_to_ternary: needs ramp_steps, steps >= 0 and some steps in all; got ramp ",
        o.ramp_steps, ", steps ", o.steps));
  const quant::LambdaSchedule schedule(model.num_layers(), o.ramp_steps, 0,
                                       layer_order(o.order, model.num_layers()));
  LoopOptions lo = o.loop;
  lo.steps = o.ramp_steps + o.steps;
  lo.start_step = 0;
  lo.seconds = 0;
  apply_lambda_schedule(model, schedule, 0);  // also checks the model is ternary up front
  LoopResult r = train_loop(model, opt, batcher, lo,
                            [&](int64_t step) { apply_lambda_schedule(model, schedule, step); });
  apply_lambda_schedule(model, schedule, schedule.end());
  return r;
}

}  // namespace ternary::train
