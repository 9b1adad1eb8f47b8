// train_gpt: train the Parameter Golf GPT on CPU, export it to a compressed artifact,
// reload the artifact and report bits per byte. With no arguments it trains the `tiny`
// ternary preset on the bundled King James Bible text (about 3 minutes on 2 cores).
//
//   ./build/examples/train_gpt                          # tiny ternary GPT, bundled text
//   ./build/examples/train_gpt --no-ternary --save fp.safetensors
//   ./build/examples/train_gpt --preset golf --train 'data/fineweb_train_*.bin'
//       --val data/fineweb_val_000000.bin --bytes-per-token bytes.txt --seconds 600
//
// Progress goes to stderr; the last stdout line is one JSON object with the results.
// Built by nvcc with -DTERNARY_CUDA=ON (then --device cuda works, and data-parallel over
// NCCL under tools/launch); by the host compiler otherwise (CPU only).
#if defined(TERNARY_WITH_CUDA)
#include "ternary/backend/cuda/all.cuh"  // first: declares the CUDA kernels before the ops
#include "ternary/dist/nccl_communicator.hpp"
#endif

#include <omp.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "ternary/dist/env.hpp"
#include "ternary/gpt.hpp"
#include "ternary/train/cli.hpp"
#include "ternary/train/data.hpp"
#include "ternary/train/loop.hpp"

using namespace ternary;

struct Options {
  std::string preset = "tiny";
  nn::GPTConfig model;
  int64_t seq = 0, batch = 0, steps = 0;
  int64_t micro_batch = 0;  // sequences per forward/backward on a rank (0: no accumulation)
  double seconds = 0;
  int64_t warmup = 10;
  double warmdown = 0.3;  // fraction of the run
  train::GolfOptimizerOptions optim;
  double grad_clip = 1.0;
  std::string train_path, val_path, bytes_per_token;
  double val_fraction = 0.05;
  int64_t eval_batches = 0, eval_every = 0, log_every = 10;
  int threads = 0;
  uint64_t seed = 1337;
  std::string save, resume, export_path = "gpt.artifact", log_path, codec = "lzma";
  int64_t save_every = 0;
  std::string on_nonfinite = "stop";
  std::string device = "cpu";
  std::string precision = "bf16";  // of matrix products on the GPU (the fastest: docs/cuda.md)
};

// Fills in what the preset decides, leaving flags the user gave alone.
void apply_preset(Options& o, const CLI::App& app) {
  auto unset = [&](const char* flag) { return app.count(flag) == 0; };
  nn::GPTConfig& m = o.model;
  if (o.preset == "tiny") {
    if (unset("--layers")) m.n_layers = 4;
    if (unset("--dim")) m.dim = 128;
    if (unset("--heads")) m.n_heads = 4;
    if (unset("--kv-heads")) m.n_kv_heads = 2;
    if (unset("--mlp-mult")) m.mlp_mult = 2;
    if (unset("--vocab")) m.vocab_size = 256;
    if (unset("--seq")) o.seq = 128;
    if (unset("--batch")) o.batch = 16;
    if (unset("--steps") && unset("--seconds")) o.steps = 600;
  } else if (o.preset == "golf") {
    if (unset("--layers")) m.n_layers = 9;
    if (unset("--dim")) m.dim = 512;
    if (unset("--heads")) m.n_heads = 8;
    if (unset("--kv-heads")) m.n_kv_heads = 4;
    if (unset("--mlp-mult")) m.mlp_mult = 2;
    if (unset("--vocab")) m.vocab_size = 1024;
    if (unset("--seq")) o.seq = 1024;
    if (unset("--batch")) o.batch = 8;
    if (unset("--steps") && unset("--seconds")) o.steps = 200;
  } else {
    throw Error(detail::cat("unknown preset '", o.preset, "' (choose tiny or golf)"));
  }
  m.seed = o.seed;
}

// Training and validation tokens from the bundled corpus, a text file, or token shards.
train::Data load_data(const Options& o) {
  return train::load_data(
      {o.train_path, o.val_path, o.bytes_per_token, o.val_fraction, o.model.vocab_size},
      "train_gpt");
}

template <class B>
double evaluate_model(const nn::GPT<float, B>& model, const train::Data& d, const Options& o) {
  // Scored in micro-batches: a global batch of 512 sequences need not fit on one device.
  return train::evaluate_gpt(model, d, o.micro_batch > 0 ? o.micro_batch : o.batch, o.seq,
                             o.eval_batches)
      .bpb;
}

// The data-parallel side of a run under tools/launch (RANK, WORLD_SIZE, ... set): NCCL
// between GPUs. Created before anything touches the device (it picks the GPU).
struct Parallel {
  std::unique_ptr<dist::Communicator> comm;
  int world_size = 1;
  bool main = true;
};

template <class B>
Parallel make_parallel(const Options& o) {
  Parallel p;
  const auto env = dist::parse_dist_env();
  if (!env || env->world_size <= 1) return p;
  if (o.batch % env->world_size != 0)
    throw Error(detail::cat("--batch ", o.batch, " must be a multiple of WORLD_SIZE ",
                            env->world_size,
                            " (each rank trains on batch / WORLD_SIZE sequences)"));
#if defined(TERNARY_WITH_CUDA)
  if constexpr (!B::on_host) {
    p.comm = std::make_unique<dist::NcclCommunicator>(*env);
    p.world_size = env->world_size;
    p.main = env->rank == 0;
    return p;
  }
#endif
  throw Error(detail::cat("WORLD_SIZE is ", env->world_size,
                          ": data-parallel training runs over NCCL, with --device cuda in a "
                          "train_gpt built with -DTERNARY_CUDA=ON"));
}

template <class B>
int run(Options& o, const train::Data& data) {
  Parallel par = make_parallel<B>(o);
  nn::GPT<float, B> model(o.model);
  train::GolfOptimizers<float, B> opt(model, o.optim);
  RandomBatcher batcher(data.train, o.batch, o.seq, o.seed, o.model.vocab_size);
  int64_t start_step = 0;
  if (!o.resume.empty()) {
    nn::GPT<float> host(o.model);  // checkpoints are read on the host, then copied over
    auto ck = train::load_checkpoint(o.resume, host);
    train::copy_parameters(host, model);
    opt.load_state_dict(train::state_to_backend<B>(ck.optimizer_state));
    start_step = ck.require_count("step");
    batcher.restore(BatcherState::parse(ck.require("batcher")));
    std::fprintf(stderr, "train_gpt: resumed from %s at step %lld\n", o.resume.c_str(),
                 (long long)start_step);
  }
  std::unique_ptr<dist::DataParallel<float, B>> dp;
  if (par.comm) {
    dp = std::make_unique<dist::DataParallel<float, B>>(model, *par.comm);
    opt.shard_muon(*par.comm);
  }
  if (par.main)
    std::fprintf(
        stderr,
        "train_gpt: %s GPT on %s%s, %lld parameters (%lld layers, dim %lld, %lld/%lld heads, mlp "
        "x%lld, vocab %lld), "
        "seq %lld, batch %lld%s, %d threads\n  data: %s (%zu train / %zu val tokens)\n",
        o.model.ternary ? "ternary" : "full-precision", o.device.c_str(),
        par.world_size > 1 ? detail::cat(" x", par.world_size, " ranks").c_str() : "",
        (long long)model.num_parameters(), (long long)o.model.n_layers, (long long)o.model.dim,
        (long long)o.model.n_heads, (long long)o.model.n_kv_heads, (long long)o.model.mlp_mult,
        (long long)o.model.vocab_size, (long long)o.seq, (long long)o.batch,
        o.micro_batch > 0 ? detail::cat(" in micro-batches of ", o.micro_batch).c_str() : "",
        omp_get_max_threads(), data.description.c_str(), data.train.size(), data.val.size());

  train::LoopOptions lo;
  lo.steps = o.steps;
  lo.seconds = o.seconds;
  lo.start_step = start_step;
  lo.warmup = o.warmup;
  lo.warmdown = o.warmdown;
  lo.grad_clip = o.grad_clip;
  lo.log_every = o.log_every;
  lo.micro_batch = o.micro_batch;
  lo.log_path = o.log_path;
  lo.on_nonfinite = o.on_nonfinite == "skip" ? train::NonFinite::skip : train::NonFinite::stop;
  std::function<void(int64_t)> eval_hook;
  if (o.eval_every > 0)
    eval_hook = [&](int64_t s) {
      if (par.main && s > start_step && s % o.eval_every == 0)
        std::fprintf(stderr, "\nstep %lld: val bpb %.4f\n", (long long)s,
                     evaluate_model(model, data, o));
    };
  // A checkpoint holds everything the next step depends on (parameters, optimizer state and
  // step counts, the batcher's position), so a resumed run continues bit for bit.
  auto save = [&](int64_t steps_done) {
    std::map<std::string, std::string> meta{{"step", std::to_string(steps_done)},
                                            {"batcher", batcher.state().to_string()},
                                            {"gpt_config", gpt_config_to_json(o.model).dump()}};
    train::save_checkpoint(o.save, model, opt.state_dict(), meta);
  };
  std::function<void(int64_t)> save_hook;
  if (o.save_every > 0)
    save_hook = [&](int64_t steps_done) {
      if (steps_done % o.save_every == 0) save(steps_done);
    };
  const train::LoopResult trained =
      train::train_loop(model, opt, batcher, lo, eval_hook, save_hook, dp.get());
  if (dp) {  // every rank applied the same updates: the replicas must be bit-identical
    dp->check_parameters_identical();
    if (par.main)
      std::fprintf(stderr, "train_gpt: parameters bit-identical on all %d ranks\n", par.world_size);
  }
  if (!par.main) return 0;  // rank 0 alone saves, exports and scores
  const int64_t step = trained.steps;
  const double train_seconds = trained.seconds, tokens_per_s = trained.tokens_per_s;

  if (!o.save.empty()) {
    save(step);
    std::fprintf(stderr, "train_gpt: checkpoint saved to %s\n", o.save.c_str());
  }
  std::fprintf(stderr, "train_gpt: evaluating the trained weights...\n");
  const double val_bpb = evaluate_model(model, data, o);
  ExportOptions eo;
  eo.codec = codec_from_name(o.codec);
  nn::GPT<float> host(o.model);  // the artifact is written from host memory
  train::copy_parameters(model, host);
  const int64_t artifact_bytes = export_gpt_artifact(host, o.export_path, eo);
  std::fprintf(
      stderr,
      "train_gpt: artifact %s: %lld bytes (%.2f%% of the %lld-byte Parameter Golf budget)\n",
      o.export_path.c_str(), (long long)artifact_bytes,
      100.0 * double(artifact_bytes) / kParameterGolfBudget, (long long)kParameterGolfBudget);
  auto reloaded = load_gpt_artifact(o.export_path);
  const double val_bpb_artifact = evaluate_model(*reloaded, data, o);
  std::fprintf(stderr, "train_gpt: val bpb %.4f (trained weights), %.4f (reloaded artifact)\n",
               val_bpb, val_bpb_artifact);
  nlohmann::json result{{"val_bpb", val_bpb},
                        {"val_bpb_artifact", val_bpb_artifact},
                        {"artifact_bytes", artifact_bytes},
                        {"params", model.num_parameters()},
                        {"ternary", o.model.ternary},
                        {"steps", step},
                        {"train_seconds", train_seconds},
                        {"tokens_per_s", tokens_per_s},
                        {"device", o.device},
                        {"ranks", par.world_size}};
  std::printf("%s\n", result.dump().c_str());
  return 0;
}

int run(Options& o) {
  if (o.threads > 0) omp_set_num_threads(o.threads);
  const train::Data data = load_data(o);
  if (o.device == "cpu") return run<cpu>(o, data);
#if defined(TERNARY_WITH_CUDA)
  // GEMMs and attention: exact fp32, TF32 tensor cores (attention in bf16), or bf16 operands.
  cuda::set_tf32(o.precision == "tf32");
  cuda::set_bf16(o.precision == "bf16");
  return run<cuda>(o, data);
#else
  throw Error(
      "--device cuda: this train_gpt was built without CUDA (configure with -DTERNARY_CUDA=ON)");
#endif
}

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Train a Parameter Golf GPT on CPU, export it, reload it and report bits per byte."};
  nn::GPTConfig& m = o.model;
  app.add_option("--preset", o.preset,
                 "tiny (default: ~3 minutes on 2 cores) or golf (9x512, vocab 1024, seq 1024)");
  train::add_model_shape_options(app, m, /*show_defaults=*/false);
  app.add_option("--vocab", m.vocab_size, "vocabulary size (>= 256 for byte-level text)")
      ->check(CLI::Range(int64_t(1), int64_t(65536)));
  app.add_option("--rope-base", m.rope_base, "RoPE base")
      ->check(CLI::Range(1.0, 1e12))
      ->capture_default_str();
  app.add_option("--softcap", m.logit_softcap, "logit softcap c in c*tanh(x/c)")
      ->check(CLI::Range(1e-3, 1e6))
      ->capture_default_str();
  app.add_option("--qk-gain", m.qk_gain_init, "initial per-head query gain")
      ->check(CLI::Range(-1e3, 1e3))
      ->capture_default_str();
  train::add_batch_options(app, o.seq, o.batch);
  app.add_option("--micro-batch", o.micro_batch,
                 "sequences per forward/backward on each rank; the rest of --batch is gradient "
                 "accumulation (0: none). The run does not depend on it, only memory does")
      ->check(CLI::Range(int64_t(0), train::kMaxModelExtent));
  app.add_option("--steps", o.steps, "training steps")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
  app.add_option("--seconds", o.seconds, "stop after this many seconds of training (wall clock)")
      ->check(CLI::Range(0.0, 1e9));
  train::add_schedule_options(app, o.warmup, o.warmdown);
  train::add_learning_rate_options(app, o.optim);
  app.add_option("--muon-momentum", o.optim.muon_momentum, "Muon momentum")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--weight-decay", o.optim.weight_decay, "decoupled weight decay on matrices")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--grad-clip", o.grad_clip, "clip the global gradient norm (0: off)")
      ->check(CLI::Range(0.0, 1e9))
      ->capture_default_str();
  app.add_option("--on-nonfinite", o.on_nonfinite,
                 "a NaN/Inf loss or gradient: stop (naming the step and tensor) or skip the step")
      ->check(CLI::IsMember({"stop", "skip"}))
      ->capture_default_str();
  app.add_flag("--ternary,!--no-ternary", m.ternary,
               "BitLinear (ternary) projections (default) or full precision");
  app.add_flag("--extra-norm,!--no-extra-norm", m.extra_norm,
               "BitLinear's extra RMSNorm (default on)");
  app.add_flag("--act-quant,!--no-act-quant", m.act_quant,
               "BitLinear's int8 activations (default on)");
  app.add_option("--train", o.train_path,
                 "training data: a text file, or a glob of token shards (*.bin)");
  app.add_option("--val", o.val_path,
                 "validation data (required with shards; default: the end of --train text)");
  app.add_option("--val-fraction", o.val_fraction, "fraction of a text file kept for validation")
      ->check(CLI::Range(0.0, 0.5))
      ->capture_default_str();
  app.add_option("--bytes-per-token", o.bytes_per_token,
                 "token byte lengths (one number per token id), for shards");
  app.add_option("--eval-batches", o.eval_batches, "validation batches to score (0: all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--eval-every", o.eval_every,
                 "also score validation every N steps (0: only at the end)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--log-every", o.log_every,
                 "progress line every N steps when stderr is not a terminal")
      ->check(CLI::PositiveNumber);
  train::add_threads_option(app, o.threads);
  app.add_option("--device", o.device, "cpu, or cuda (a build with -DTERNARY_CUDA=ON)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--precision", o.precision,
                 "matrix products with --device cuda: fp32 (exact), tf32 (tensor cores; "
                 "attention in bf16) or bf16 (linear layers' operands and attention in bf16, "
                 "fp32 accumulation); always fp32 on the CPU")
      ->check(CLI::IsMember({"fp32", "tf32", "bf16"}))
      ->capture_default_str();
  app.add_option("--seed", o.seed, "seed for initialisation and batches")->capture_default_str();
  app.add_option("--save", o.save, "write a checkpoint (safetensors) after training");
  app.add_option("--save-every", o.save_every,
                 "also write the --save checkpoint every N steps (atomically: a crash leaves the "
                 "previous one)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
  app.add_option("--resume", o.resume, "resume from a checkpoint written by --save");
  app.add_option("--export", o.export_path, "artifact path")->capture_default_str();
  app.add_option("--codec", o.codec, "artifact compression: lzma, zstd, zlib or none")
      ->capture_default_str();
  app.add_option("--log", o.log_path, "append JSON lines (step, loss, lr_scale, tokens_per_s)");
  CLI11_PARSE(app, argc, argv);
  try {
    apply_preset(o, app);
    o.model.validate();
    train::check_run_shape(o.seq, o.batch);
    if (o.save_every > 0 && o.save.empty()) throw Error("--save-every needs --save PATH");
    if (o.device == "cpu" && app.count("--precision") && o.precision != "fp32")
      throw Error(detail::cat("--precision ", o.precision,
                              " applies to --device cuda; the CPU computes in fp32"));
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_gpt: error: %s\n", e.what());
    return 1;
  }
}
