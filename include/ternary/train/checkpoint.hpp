// Checkpoints: one safetensors file with the model's parameters (by name), the optimizer
// state ("optim.*") and metadata (step, data position, anything the caller adds). Written
// to a temporary file and renamed, so a crash never leaves half a checkpoint.
#pragma once

#include <cerrno>
#include <cstdlib>
#include <map>
#include <string>

#include "ternary/io/safetensors.hpp"
#include "ternary/nn/module.hpp"

namespace ternary::train {

template <class T, class B>
void save_checkpoint(const std::string& path, const nn::Module<T, B>& model,
                     const std::map<std::string, Tensor<T, B>>& optimizer_state,
                     const std::map<std::string, std::string>& metadata) {
  Safetensors st;
  for (auto& [name, p] : model.named_parameters()) st.tensors[name] = TensorBlob::from(p.value());
  for (auto& [name, t] : optimizer_state) st.tensors[name] = TensorBlob::from(t);
  st.metadata = metadata;
  save_safetensors(path, st.tensors, st.metadata);
}

// Copies every parameter of `from` into the parameter of the same name in `to`, across
// backends (host <-> device) too; names and shapes must match.
template <class T, class B1, class B2>
void copy_parameters(const nn::Module<T, B1>& from, const nn::Module<T, B2>& to) {
  const auto src = from.named_parameters();
  const auto dst = to.named_parameters();
  if (src.size() != dst.size())
    throw ShapeError(detail::cat("copy_parameters: ", src.size(), " parameters into ", dst.size()));
  for (size_t i = 0; i < src.size(); ++i) {
    const auto& [name, p] = src[i];
    const auto& [dname, d] = dst[i];
    if (name != dname || !(p.shape() == d.shape()))
      throw ShapeError(detail::cat("copy_parameters: '", name, "' ", p.shape(), " into '", dname,
                                   "' ", d.shape()));
    Var<T, B2> v = d;
    v.value().assign(to_backend<B2>(p.value()));
  }
}

// A state dict moved to another backend (optimizer state between host and device).
template <class B2, class T, class B1>
std::map<std::string, Tensor<T, B2>> state_to_backend(
    const std::map<std::string, Tensor<T, B1>>& state) {
  std::map<std::string, Tensor<T, B2>> out;
  for (const auto& [name, t] : state) out[name] = to_backend<B2>(t);
  return out;
}

struct LoadedCheckpoint {
  std::string path;
  std::map<std::string, Tensor<float>> optimizer_state;
  std::map<std::string, std::string> metadata;

  // A metadata entry the caller cannot go on without; throws IOError naming file and key.
  const std::string& require(const std::string& key) const {
    auto it = metadata.find(key);
    if (it == metadata.end())
      throw IOError(detail::cat("checkpoint ", path, ": no '", key, "' in its metadata"));
    return it->second;
  }
  // A non-negative integer entry ("step").
  int64_t require_count(const std::string& key) const {
    const std::string& v = require(key);
    char* end = nullptr;
    errno = 0;
    const long long n = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno != 0 || n < 0)
      throw IOError(detail::cat("checkpoint ", path, ": metadata '", key, "' is '", v,
                                "', not a non-negative integer"));
    return n;
  }
};

// Loads parameters into `model` (names and shapes must match; with strict = false,
// parameters the file lacks keep their values) and returns the rest.
inline LoadedCheckpoint load_checkpoint(const std::string& path, nn::Module<float>& model,
                                        bool strict = true) {
  Safetensors st = load_safetensors(path);
  std::map<std::string, Tensor<float>> params;
  LoadedCheckpoint out;
  out.path = path;
  for (auto& [name, blob] : st.tensors) {
    if (name.rfind("optim.", 0) == 0)
      out.optimizer_state[name] = blob.as<float>();
    else
      params[name] = blob.as<float>();
  }
  try {
    model.load_parameters(params, strict);
  } catch (const Error& e) {
    throw IOError(detail::cat("checkpoint ", path, ": ", e.what()));
  }
  out.metadata = st.metadata;
  return out;
}

}  // namespace ternary::train
