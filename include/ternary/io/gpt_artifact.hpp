// Export a GPT to an artifact and rebuild it from that file alone.
//   ternary projections -> trits_base3 (the exact trits and scales the forward pass used)
//   2-d float tensors   -> int8_row (tied embedding, full-precision projections)
//   vectors and scalars -> fp16 (gains, scales, residual mixes)
// The model's configuration travels in the artifact's metadata ("gpt_config", JSON).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "ternary/io/artifact.hpp"
#include "ternary/nn/gpt.hpp"

namespace ternary {

inline nlohmann::json gpt_config_to_json(const nn::GPTConfig& c) {
  return {{"vocab_size", c.vocab_size},
          {"n_layers", c.n_layers},
          {"dim", c.dim},
          {"n_heads", c.n_heads},
          {"n_kv_heads", c.n_kv_heads},
          {"mlp_mult", c.mlp_mult},
          {"rope_base", c.rope_base},
          {"logit_softcap", c.logit_softcap},
          {"qk_gain_init", c.qk_gain_init},
          {"tied_embed_init_std", c.tied_embed_init_std},
          {"norm_eps", c.norm_eps},
          {"ternary", c.ternary},
          {"extra_norm", c.extra_norm},
          {"act_quant", c.act_quant},
          {"seed", c.seed}};
}
// Strict: each field must be there with its JSON type (an integer for sizes, so a float
// such as 1e300 never reaches an integer conversion); throws IOError naming the field.
inline nn::GPTConfig gpt_config_from_json(const nlohmann::json& j) {
  auto field = [&](const char* key) -> const nlohmann::json& {
    if (!j.is_object() || !j.contains(key))
      throw IOError(detail::cat("gpt_config: missing field '", key, "'"));
    return j[key];
  };
  auto integer = [&](const char* key) {
    const auto& v = field(key);
    if (!v.is_number_integer())
      throw IOError(detail::cat("gpt_config: '", key, "' must be an integer, got ", v.dump()));
    return v.is_number_unsigned() ? int64_t(std::min<uint64_t>(v.get<uint64_t>(), INT64_MAX))
                                  : v.get<int64_t>();
  };
  auto number = [&](const char* key) {
    const auto& v = field(key);
    if (!v.is_number()) throw IOError(detail::cat("gpt_config: '", key, "' must be a number"));
    return v.get<double>();
  };
  auto boolean = [&](const char* key) {
    const auto& v = field(key);
    if (!v.is_boolean()) throw IOError(detail::cat("gpt_config: '", key, "' must be true/false"));
    return v.get<bool>();
  };
  nn::GPTConfig c;
  c.vocab_size = integer("vocab_size");
  c.n_layers = integer("n_layers");
  c.dim = integer("dim");
  c.n_heads = integer("n_heads");
  c.n_kv_heads = integer("n_kv_heads");
  c.mlp_mult = integer("mlp_mult");
  c.rope_base = number("rope_base");
  c.logit_softcap = number("logit_softcap");
  c.qk_gain_init = number("qk_gain_init");
  c.tied_embed_init_std = number("tied_embed_init_std");
  c.norm_eps = number("norm_eps");
  c.ternary = boolean("ternary");
  c.extra_norm = boolean("extra_norm");
  c.act_quant = boolean("act_quant");
  const auto& seed = field("seed");
  if (!seed.is_number_integer()) throw IOError("gpt_config: 'seed' must be an integer");
  c.seed = seed.get<uint64_t>();
  return c;
}

struct ExportOptions {
  Codec codec = Codec::lzma;
  std::optional<int> level;  // codec default when empty
  FloatEncoding matrices = FloatEncoding::int8_row;
  FloatEncoding vectors = FloatEncoding::fp16;
};

// Writes the artifact; returns its size in bytes.
inline int64_t export_gpt_artifact(const nn::GPT<float>& model, const std::string& path,
                                   const ExportOptions& o = {}) {
  ArtifactWriter w;
  w.set_metadata("gpt_config", gpt_config_to_json(model.config()).dump());
  std::set<std::string> ternary_weights;
  for (auto& [name, proj] : model.projection_modules()) {
    auto* bl = dynamic_cast<const nn::BitLinear<float>*>(proj);
    if (!bl) continue;
    const auto q = bl->ternary_weights();
    if (q.hadamard != 0)  // QuEST trits live in a Hadamard basis the artifact does not record yet
      throw Error(detail::cat("export_gpt_artifact: '", name,
                              "' is quantized in a Hadamard basis (QuEST); "
                              "the artifact stores STE (absmean) layers only"));
    w.add_ternary(name + ".weight", q.shape, q.trits, q.scales, q.group);
    ternary_weights.insert(name + ".weight");
  }
  for (auto& [name, p] : model.named_parameters()) {
    if (ternary_weights.count(name)) continue;
    w.add_float(name, p.value(), p.dim() >= 2 ? o.matrices : o.vectors);
  }
  return w.write(path, o.codec, o.level);
}

// Rebuilds a GPT from an artifact: float tensors are loaded as stored (dequantized), ternary
// projections are frozen to the stored trits and scales.
inline std::unique_ptr<nn::GPT<float>> load_gpt_artifact(const std::string& path) {
  Artifact a = read_artifact(path);
  auto it = a.metadata.find("gpt_config");
  if (it == a.metadata.end())
    throw IOError(detail::cat("artifact ", path, ": no 'gpt_config' in its metadata"));
  nn::GPTConfig config;
  try {
    config = gpt_config_from_json(nlohmann::json::parse(it->second));
  } catch (const std::exception& e) {
    throw IOError(detail::cat("artifact ", path, ": bad 'gpt_config' metadata: ", e.what()));
  }
  try {
    config.validate();
  } catch (const Error& e) {
    throw IOError(detail::cat("artifact ", path, ": bad 'gpt_config' metadata: ", e.what()));
  }
  // The config decides how much the model allocates: before building it, check that the
  // artifact really holds the config's largest tensors, so a corrupt or hostile config cannot
  // make us allocate more than the artifact itself contains.
  auto expect = [&](const std::string& name, const Shape& shape) {
    auto t = a.tensors.find(name);
    if (t == a.tensors.end())
      throw IOError(detail::cat("artifact ", path, ": its gpt_config (", config.n_layers,
                                " layers, dim ", config.dim, ", vocab ", config.vocab_size,
                                ") needs tensor '", name, "', which it lacks"));
    if (!(t->second.shape == shape))
      throw IOError(detail::cat("artifact ", path, ": tensor '", name, "' has shape ",
                                t->second.shape, ", its gpt_config implies ", shape));
  };
  expect("tok_emb.weight", {config.vocab_size, config.dim});
  for (int64_t i = 0; i < config.n_layers; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    expect(b + "attn.c_q.weight", {config.dim, config.dim});
    expect(b + "mlp.fc.weight", {config.mlp_mult * config.dim, config.dim});
  }
  auto model = std::make_unique<nn::GPT<float>>(config);
  std::map<std::string, const nn::Projection<float>*> projections;
  for (auto& [name, proj] : model->projection_modules()) projections[name + ".weight"] = proj;
  for (auto& [name, p] : model->named_parameters()) {
    auto t = a.tensors.find(name);
    if (t == a.tensors.end())
      throw IOError(detail::cat("artifact ", path, ": missing tensor '", name, "'"));
    if (!(t->second.shape == p.shape()))
      throw IOError(detail::cat("artifact ", path, ": tensor '", name, "' has shape ",
                                t->second.shape, ", the model expects ", p.shape()));
    Var<float> v = p;
    v.value().assign(t->second.values);
    if (t->second.encoding == "trits_base3") {
      auto pit = projections.find(name);
      auto* bl = pit == projections.end() ? nullptr
                                          : dynamic_cast<nn::BitLinear<float>*>(
                                                const_cast<nn::Projection<float>*>(pit->second));
      if (!bl)
        throw IOError(detail::cat("artifact ", path, ": '", name,
                                  "' is ternary but the model's layer is not a BitLinear"));
      bl->freeze({t->second.shape, t->second.trits, t->second.scales, t->second.group});
    }
  }
  return model;
}

}  // namespace ternary
