// finetune_ternary: the Extra RMSNorm recipe. Takes a full-precision checkpoint written by
// `train_gpt --no-ternary --save`, builds its ternary twin (same shape, BitLinear layers with
// an extra RMSNorm before each projection unless --no-extra-norm), copies the fp weights in,
// and fine-tunes with the gradual layer-wise lambda schedule: each block's lambda ramps
// 0 -> 1 over its share of --ramp-steps (block order --order forward|reverse), then --steps
// more steps at lambda = 1. It scores, in validation bits per byte:
//   fp              the checkpoint as trained (full precision)
//   naive ternary   the ternary twin holding the fp weights at lambda = 1, no fine-tuning
//                   (post-training ternarization)
//   fine-tuned      after the schedule, from the training weights and from the exported,
//                   reloaded artifact
//
//   ./build/examples/train_gpt --no-ternary --save fp.safetensors
//   ./build/examples/finetune_ternary fp.safetensors --ramp-steps 200 --steps 200
//
// Progress goes to stderr; the last stdout line is one JSON object with the results.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "ternary/gpt.hpp"
#include "ternary/train/cli.hpp"
#include "ternary/train/data.hpp"
#include "ternary/train/finetune.hpp"

using namespace ternary;

struct Options {
  std::string checkpoint;
  bool extra_norm = true;
  train::FinetuneOptions ft;
  train::GolfOptimizerOptions optim;
  int64_t seq = 0, batch = 0;  // 0: as the checkpoint's run (its batcher metadata), else 128 x 16
  train::DataOptions data;
  int64_t eval_batches = 0;
  int threads = 0;
  uint64_t seed = 1337;
  std::string export_path = "finetuned.artifact", codec = "lzma", save;
};

int run(Options& o) {
  if (o.threads > 0) omp_set_num_threads(o.threads);
  std::map<std::string, std::string> meta;
  const nn::GPTConfig fp_config = train::checkpoint_config(o.checkpoint, &meta);
  if (fp_config.ternary)
    throw Error(detail::cat("checkpoint ", o.checkpoint,
                            " holds a ternary model; fine-tuning starts from a "
                            "full-precision one (train_gpt --no-ternary --save)"));
  // Sequence length and batch default to the fp run's (its batcher state is in the metadata).
  std::optional<BatcherState> fp_batcher;
  if (auto it = meta.find("batcher"); it != meta.end())
    fp_batcher = BatcherState::parse(it->second);
  if (o.seq <= 0) o.seq = fp_batcher ? int64_t(fp_batcher->seq) : 128;
  if (o.batch <= 0) o.batch = fp_batcher ? int64_t(fp_batcher->batch) : 16;
  o.data.vocab_size = fp_config.vocab_size;
  const train::Data data = train::load_data(o.data, "finetune_ternary");
  auto score = [&](const nn::GPT<float>& m) {
    return train::evaluate_gpt(m, data, o.batch, o.seq, o.eval_batches).bpb;
  };

  // The full-precision model, as trained.
  double fp_bpb = 0;
  {
    nn::GPT<float> fp(fp_config);
    train::load_checkpoint(o.checkpoint, fp, /*strict=*/true);
    std::fprintf(stderr, "finetune_ternary: scoring the full-precision model...\n");
    fp_bpb = score(fp);
  }
  const nn::GPTConfig config = train::ternary_twin(fp_config, o.extra_norm);
  nn::GPT<float> model(config);
  const auto kept = train::load_fp_weights(o.checkpoint, model);
  std::fprintf(stderr,
               "finetune_ternary: ternary twin of %s: %lld parameters (%lld layers, dim %lld), "
               "extra norm %s "
               "(%zu gains initialised to ones), seq %lld, batch %lld, %d threads\n  data: %s (%zu "
               "train / %zu val "
               "tokens)\n",
               o.checkpoint.c_str(), (long long)model.num_parameters(), (long long)config.n_layers,
               (long long)config.dim, o.extra_norm ? "on" : "off", kept.size(), (long long)o.seq,
               (long long)o.batch, omp_get_max_threads(), data.description.c_str(),
               data.train.size(), data.val.size());

  // Naive post-training ternarization: the fp weights, fully ternary, no training.
  train::set_lambda(model, 1.0);
  std::fprintf(stderr, "finetune_ternary: scoring naive post-training ternarization...\n");
  const double naive_bpb = score(model);

  // The gradual schedule. Training batches continue the fp run's stream when they can.
  train::GolfOptimizers<float> opt(model, o.optim);
  RandomBatcher batcher(data.train, o.batch, o.seq, o.seed, config.vocab_size);
  if (fp_batcher && fp_batcher->seed == o.seed && fp_batcher->batch == uint64_t(o.batch) &&
      fp_batcher->seq == uint64_t(o.seq) && fp_batcher->num_tokens == data.train.size()) {
    batcher.restore(*fp_batcher);
    std::fprintf(stderr,
                 "finetune_ternary: training batches continue the fp run's (from its step %llu)\n",
                 (unsigned long long)fp_batcher->step);
  }
  o.ft.loop.label = "finetune";
  const train::LoopResult trained = train::finetune_to_ternary(model, opt, batcher, o.ft);
  if (!o.save.empty()) {
    std::map<std::string, std::string> m{{"step", std::to_string(trained.steps)},
                                         {"batcher", batcher.state().to_string()},
                                         {"gpt_config", gpt_config_to_json(config).dump()}};
    train::save_checkpoint(o.save, model, opt.state_dict(), m);
    std::fprintf(stderr, "finetune_ternary: checkpoint saved to %s\n", o.save.c_str());
  }
  std::fprintf(stderr, "finetune_ternary: scoring the fine-tuned model...\n");
  const double ft_bpb = score(model);
  ExportOptions eo;
  eo.codec = codec_from_name(o.codec);
  const int64_t artifact_bytes = export_gpt_artifact(model, o.export_path, eo);
  auto reloaded = load_gpt_artifact(o.export_path);
  const double ft_bpb_artifact = score(*reloaded);
  std::fprintf(stderr,
               "finetune_ternary: val bpb  fp %.4f | naive ternary %.4f | fine-tuned %.4f "
               "(artifact %.4f, %lld "
               "bytes: %s)\n",
               fp_bpb, naive_bpb, ft_bpb, ft_bpb_artifact, (long long)artifact_bytes,
               o.export_path.c_str());
  nlohmann::json result{{"fp_bpb", fp_bpb},
                        {"naive_ternary_bpb", naive_bpb},
                        {"finetuned_bpb", ft_bpb},
                        {"finetuned_bpb_artifact", ft_bpb_artifact},
                        {"artifact_bytes", artifact_bytes},
                        {"params", model.num_parameters()},
                        {"extra_norm", o.extra_norm},
                        {"order", o.ft.order},
                        {"ramp_steps", o.ft.ramp_steps},
                        {"steps", o.ft.steps},
                        {"train_seconds", trained.seconds},
                        {"tokens_per_s", trained.tokens_per_s}};
  std::printf("%s\n", result.dump().c_str());
  return 0;
}

int main(int argc, char** argv) {
  Options o;
  CLI::App app{
      "Fine-tune a full-precision GPT checkpoint to ternary with the extra RMSNorm and the gradual "
      "layer-wise lambda schedule; report bits per byte of the fp, naively ternarized and "
      "fine-tuned models."};
  app.add_option("checkpoint", o.checkpoint,
                 "full-precision checkpoint (train_gpt --no-ternary --save PATH)")
      ->required();
  app.add_flag("--extra-norm,!--no-extra-norm", o.extra_norm,
               "insert the extra RMSNorm before each projection "
               "(default on)");
  app.add_option("--ramp-steps", o.ft.ramp_steps,
                 "steps over which the blocks' lambdas go 0 -> 1, block by block")
      ->capture_default_str();
  app.add_option("--steps", o.ft.steps, "further steps at lambda = 1")->capture_default_str();
  app.add_option("--order", o.ft.order,
                 "block order of the ramp: forward (block 0 first) or reverse")
      ->check(CLI::IsMember({"forward", "reverse"}))
      ->capture_default_str();
  train::add_batch_options(app, o.seq, o.batch);  // default: the checkpoint run's
  train::add_schedule_options(app, o.ft.loop.warmup, o.ft.loop.warmdown);
  train::add_learning_rate_options(app, o.optim);
  app.add_option("--grad-clip", o.ft.loop.grad_clip, "clip the global gradient norm (0: off)")
      ->capture_default_str();
  app.add_option("--train", o.data.train_path,
                 "training data: a text file, or a glob of token shards (*.bin); "
                 "default: the bundled corpus");
  app.add_option("--val", o.data.val_path, "validation data (required with shards)");
  app.add_option("--val-fraction", o.data.val_fraction,
                 "fraction of a text file kept for validation")
      ->capture_default_str();
  app.add_option("--bytes-per-token", o.data.bytes_per_token,
                 "token byte lengths (one per token id), for shards");
  app.add_option("--eval-batches", o.eval_batches, "validation batches to score (0: all)")
      ->capture_default_str();
  app.add_option("--log-every", o.ft.loop.log_every,
                 "progress line every N steps when stderr is not a terminal");
  app.add_option("--log", o.ft.loop.log_path,
                 "append JSON lines (step, loss, lr_scale, tokens_per_s)");
  train::add_threads_option(app, o.threads);
  app.add_option("--seed", o.seed, "seed for the training batches")->capture_default_str();
  app.add_option("--save", o.save, "write the fine-tuned model as a checkpoint (safetensors)");
  app.add_option("--export", o.export_path, "artifact path")->capture_default_str();
  app.add_option("--codec", o.codec, "artifact compression: lzma, zstd, zlib or none")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "finetune_ternary: error: %s\n", e.what());
    return 1;
  }
}
