// The Parameter Golf GPT of include/ternary/nn/gpt.hpp written with LibTorch's C++ frontend,
// the peer that bench/peers/run_peers.sh times against bench_train_step. Same shape, same
// forward (resid mix, rms-normed q/k with RoPE and q_gain, relu^2 MLP, U-net skips, tied
// softcapped head), same step (forward, backward, clip 1.0, update) on random tokens.
// Optimizer: AdamW (Adam, no decay) for every parameter -- LibTorch 1.13 has no Muon; ours
// runs Muon with 5 Newton-Schulz steps on the matrices, which costs us extra work.
// --ternary: each projection is a BitLinear with STE (extra RMSNorm, per-token int8
// activations, absmean ternary weights), written with detach() as in BitNet's reference.
//
// Build: bench/peers/run_peers.sh (cmake with Torch_DIR from Debian's libtorch-dev).
// Last stdout line: one JSON object with tokens_per_s and ms_per_step.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

struct Cfg {
  int64_t layers = 4, dim = 256, heads = 4, kv_heads = 4, mlp_mult = 4, vocab = 1024, seq = 256,
          batch = 16;
  int threads = 1, steps = 10, warmup = 2;
  bool ternary = false;
};

torch::Tensor rms(const torch::Tensor& x, double eps = 1e-6) {
  return x * torch::rsqrt(x.pow(2).mean(-1, true) + eps);
}

struct ProjImpl : torch::nn::Module {
  ProjImpl(int64_t in, int64_t out, bool ternary, bool zero) : ternary(ternary) {
    const double b = 1.0 / std::sqrt(double(in));
    w = register_parameter(
        "w", zero ? torch::zeros({out, in}) : torch::empty({out, in}).uniform_(-b, b));
    if (ternary) g = register_parameter("g", torch::ones({in}));
  }
  torch::Tensor forward(torch::Tensor x) {
    if (!ternary) return torch::nn::functional::linear(x, w);
    x = rms(x) * g;
    auto s = 127.0 / x.abs().amax(-1, true).clamp_min(1e-5);
    x = x + ((x * s).round().clamp(-128, 127) / s - x).detach();
    auto ws = w.abs().mean() + 1e-5;
    auto wq = w + ((w / ws).round().clamp(-1, 1) * ws - w).detach();
    return torch::nn::functional::linear(x, wq);
  }
  bool ternary;
  torch::Tensor w, g;
};
TORCH_MODULE(Proj);

struct BlockImpl : torch::nn::Module {
  BlockImpl(const Cfg& c) : c(c) {
    const int64_t kv = c.kv_heads * (c.dim / c.heads);
    q = register_module("q", Proj(c.dim, c.dim, c.ternary, false));
    k = register_module("k", Proj(c.dim, kv, c.ternary, false));
    v = register_module("v", Proj(c.dim, kv, c.ternary, false));
    o = register_module("o", Proj(c.dim, c.dim, c.ternary, true));
    fc = register_module("fc", Proj(c.dim, c.mlp_mult * c.dim, c.ternary, false));
    pr = register_module("pr", Proj(c.mlp_mult * c.dim, c.dim, c.ternary, true));
    q_gain = register_parameter("q_gain", torch::full({c.heads}, 1.5));
    attn_scale = register_parameter("attn_scale", torch::ones({c.dim}));
    mlp_scale = register_parameter("mlp_scale", torch::ones({c.dim}));
    mix = register_parameter("mix", torch::stack({torch::ones({c.dim}), torch::zeros({c.dim})}));
  }
  torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
    auto h = x.size(-1) / 2;
    auto x1 = x.narrow(-1, 0, h), x2 = x.narrow(-1, h, h);
    return torch::cat({x1 * cos - x2 * sin, x1 * sin + x2 * cos}, -1);
  }
  torch::Tensor attn(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                     const torch::Tensor& mask) {
    const int64_t B = x.size(0), T = x.size(1), Dh = c.dim / c.heads;
    auto qh = q->forward(x).view({B, T, c.heads, Dh}).transpose(1, 2);
    auto kh = k->forward(x).view({B, T, c.kv_heads, Dh}).transpose(1, 2);
    auto vh = v->forward(x).view({B, T, c.kv_heads, Dh}).transpose(1, 2);
    qh = rope(rms(qh), cos, sin) * q_gain.view({c.heads, 1, 1});
    kh = rope(rms(kh), cos, sin);
    if (c.kv_heads != c.heads) {
      kh = kh.repeat_interleave(c.heads / c.kv_heads, 1);
      vh = vh.repeat_interleave(c.heads / c.kv_heads, 1);
    }
    auto s = torch::matmul(qh, kh.transpose(-1, -2)) / std::sqrt(double(Dh));
    auto y = torch::matmul(torch::softmax(s.masked_fill(mask, -INFINITY), -1), vh);
    return o->forward(y.transpose(1, 2).reshape({B, T, c.dim}));
  }
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& x0, const torch::Tensor& cos,
                        const torch::Tensor& sin, const torch::Tensor& mask) {
    x = mix[0] * x + mix[1] * x0;
    x = x + attn_scale * attn(rms(x), cos, sin, mask);
    return x + mlp_scale * pr->forward(torch::relu(fc->forward(rms(x))).square());
  }
  Cfg c;
  Proj q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr}, fc{nullptr}, pr{nullptr};
  torch::Tensor q_gain, attn_scale, mlp_scale, mix;
};
TORCH_MODULE(Block);

struct GPTImpl : torch::nn::Module {
  GPTImpl(const Cfg& c) : c(c) {
    emb = register_parameter("emb", torch::randn({c.vocab, c.dim}) * 0.005);
    skip = register_parameter("skip", torch::ones({c.layers / 2, c.dim}));
    for (int64_t i = 0; i < c.layers; ++i)
      blocks.push_back(register_module("b" + std::to_string(i), Block(c)));
    const int64_t Dh = c.dim / c.heads;
    auto inv = torch::pow(10000.0, -torch::arange(0, Dh / 2, torch::kFloat) / double(Dh / 2));
    auto ang = torch::outer(torch::arange(c.seq, torch::kFloat), inv);
    cos = ang.cos(), sin = ang.sin();
    mask = torch::ones({c.seq, c.seq}, torch::kBool).triu(1);
  }
  torch::Tensor loss(const torch::Tensor& ids, const torch::Tensor& tgt) {
    auto x = rms(torch::nn::functional::embedding(ids, emb));
    auto x0 = x;
    std::vector<torch::Tensor> skips;
    const int64_t enc = c.layers / 2;
    for (int64_t i = 0; i < c.layers; ++i) {
      if (i >= enc && !skips.empty()) {
        x = x + skip[i - enc] * skips.back();
        skips.pop_back();
      }
      x = blocks[i]->forward(x, x0, cos, sin, mask);
      if (i < enc) skips.push_back(x);
    }
    auto logits = torch::nn::functional::linear(rms(x), emb);
    logits = 30.0 * torch::tanh(logits / 30.0);
    return torch::nn::functional::cross_entropy(logits.reshape({-1, c.vocab}), tgt.reshape({-1}));
  }
  Cfg c;
  torch::Tensor emb, skip, cos, sin, mask;
  std::vector<Block> blocks;
};
TORCH_MODULE(GPT);

int main(int argc, char** argv) {
  Cfg c;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return std::stoll(argv[++i]); };
    if (a == "--layers")
      c.layers = next();
    else if (a == "--dim")
      c.dim = next();
    else if (a == "--heads")
      c.heads = next();
    else if (a == "--kv-heads")
      c.kv_heads = next();
    else if (a == "--mlp-mult")
      c.mlp_mult = next();
    else if (a == "--vocab")
      c.vocab = next();
    else if (a == "--seq")
      c.seq = next();
    else if (a == "--batch")
      c.batch = next();
    else if (a == "--threads")
      c.threads = int(next());
    else if (a == "--steps")
      c.steps = int(next());
    else if (a == "--ternary")
      c.ternary = true;
    else {
      std::fprintf(stderr, "gpt_libtorch: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  torch::set_num_threads(c.threads);
  torch::manual_seed(1337);
  GPT model(c);
  torch::optim::AdamW opt(model->parameters(),
                          torch::optim::AdamWOptions(1e-3).betas({0.9, 0.95}).weight_decay(0));
  auto step = [&] {
    auto ids = torch::randint(c.vocab, {c.batch, c.seq + 1}, torch::kLong);
    auto loss = model->loss(ids.narrow(1, 0, c.seq), ids.narrow(1, 1, c.seq));
    opt.zero_grad();
    loss.backward();
    torch::nn::utils::clip_grad_norm_(model->parameters(), 1.0);
    opt.step();
    return loss.item<double>();
  };
  for (int i = 0; i < c.warmup; ++i) step();
  double loss = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < c.steps; ++i) loss = step();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "{\"peer\": \"libtorch %s\", \"ternary\": %s, \"threads\": %d, \"steps\": %d, "
      "\"tokens_per_s\": %.1f, "
      "\"ms_per_step\": %.2f, \"loss\": %.4f}\n",
      TORCH_VERSION, c.ternary ? "true" : "false", c.threads, c.steps,
      double(c.batch * c.seq) * c.steps / secs, 1e3 * secs / c.steps, loss);
  return 0;
}
