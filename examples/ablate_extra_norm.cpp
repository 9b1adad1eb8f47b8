// ablate_extra_norm: the Extra RMSNorm paper's central claim as a table,
//
//                               with extra RMSNorm    without
//   from-scratch ternary               bpb              bpb
//   fp -> ternary fine-tune            bpb              bpb
//
// on the bundled corpus, with the same data, seed and step budget for every cell: a
// from-scratch cell trains its ternary model for --steps steps; a fine-tune cell spends the
// first (1 - --finetune-fraction) of them training one full-precision model (shared by both
// fine-tune cells) and the rest fine-tuning its ternary twin with the gradual lambda
// schedule, on the batches the from-scratch cells see at those same steps. The fp model and
// its naive post-training ternarization are scored too, for reference.
//
//   ./build/examples/ablate_extra_norm             # 1200 steps per cell
//
// Writes the table, the machine and the exact command into --output (docs/results.md),
// between marker lines so the rest of that file is kept, and prints them. Progress goes to
// stderr; the last stdout line is one JSON object with every number.
#include <omp.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "ternary/gpt.hpp"
#include "ternary/train/cli.hpp"
#include "ternary/train/data.hpp"
#include "ternary/train/finetune.hpp"

using namespace ternary;

struct Options {
  nn::GPTConfig model;
  int64_t seq = 64, batch = 16, steps = 1200;
  double finetune_fraction = 0.5;  // of the step budget, for the fine-tune phase
  double ramp_fraction = 0.5;      // of the fine-tune phase, for the lambda ramp
  std::string order = "forward";
  train::GolfOptimizerOptions optim;
  int64_t warmup = 10;
  double warmdown = 0.3;
  int64_t eval_batches = 40;
  int threads = 0;
  uint64_t seed = 1337;
  std::string output = "docs/results.md", log_dir, work_dir;
  std::string command;  // as run, for the report
};

struct Cell {
  double bpb = 0, bpb_artifact = 0, seconds = 0;
  int64_t artifact_bytes = 0;
};

std::string shell_quote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of(
                        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+") ==
                        std::string::npos)
    return s;
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}
std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

class Ablation {
 public:
  explicit Ablation(const Options& o) : o_(o) {
    train::DataOptions dopt;
    dopt.vocab_size = o.model.vocab_size;
    data_ = train::load_data(dopt, "ablate_extra_norm");
    ft_steps_ = std::llround(double(o.steps) * o.finetune_fraction);
    fp_steps_ = o.steps - ft_steps_;
    ramp_steps_ = std::llround(double(ft_steps_) * o.ramp_fraction);
    if (fp_steps_ <= 0 || ft_steps_ <= 0)
      throw Error(detail::cat("--steps ", o.steps, " with --finetune-fraction ",
                              o.finetune_fraction, " leaves ", fp_steps_, " fp and ", ft_steps_,
                              " fine-tune steps; both must be > 0"));
    work_ = o.work_dir.empty() ? std::filesystem::temp_directory_path() /
                                     ("ablate_extra_norm_" + std::to_string(getpid()))
                               : std::filesystem::path(o.work_dir);
    std::filesystem::create_directories(work_);
    if (!o.log_dir.empty()) std::filesystem::create_directories(o.log_dir);
  }
  ~Ablation() {
    if (o_.work_dir.empty()) std::filesystem::remove_all(work_);
  }

  double score(const nn::GPT<float>& m) const {
    return train::evaluate_gpt(m, data_, o_.batch, o_.seq, o_.eval_batches).bpb;
  }
  train::LoopOptions loop(const std::string& label, int64_t steps) const {
    train::LoopOptions lo;
    lo.steps = steps;
    lo.warmup = o_.warmup;
    lo.warmdown = o_.warmdown;
    lo.log_every = std::max<int64_t>(10, steps / 10);
    lo.label = label;
    if (!o_.log_dir.empty()) {
      lo.log_path = (std::filesystem::path(o_.log_dir) / (label + ".jsonl")).string();
      std::filesystem::remove(lo.log_path);  // the loop appends; one run per file
    }
    return lo;
  }
  RandomBatcher batcher(uint64_t from_step) const {
    RandomBatcher b(data_.train, o_.batch, o_.seq, o_.seed, o_.model.vocab_size);
    BatcherState s = b.state();
    s.step = from_step;
    b.restore(s);
    return b;
  }
  // Scores the trained weights and the exported, reloaded artifact.
  Cell finish(const nn::GPT<float>& m, const std::string& label, double seconds) const {
    Cell c;
    c.seconds = seconds;
    c.bpb = score(m);
    const std::string art = (work_ / (label + ".artifact")).string();
    c.artifact_bytes = export_gpt_artifact(m, art);
    c.bpb_artifact = score(*load_gpt_artifact(art));
    std::fprintf(stderr,
                 "ablate_extra_norm: %s: val bpb %.4f (artifact %.4f, %lld bytes), %.0f s\n",
                 label.c_str(), c.bpb, c.bpb_artifact, (long long)c.artifact_bytes, seconds);
    return c;
  }

  // The full-precision model of the fine-tune cells: fp_steps_ steps, saved as a checkpoint.
  void pretrain_fp() {
    nn::GPTConfig c = o_.model;
    c.ternary = false;
    nn::GPT<float> fp(c);
    train::GolfOptimizers<float> opt(fp, o_.optim);
    RandomBatcher b = batcher(0);
    const auto r = train::train_loop(fp, opt, b, loop("fp", fp_steps_));
    fp_path_ = (work_ / "fp.safetensors").string();
    train::save_checkpoint(fp_path_, fp, opt.state_dict(),
                           {{"gpt_config", gpt_config_to_json(c).dump()}});
    fp_ = finish(fp, "fp", r.seconds);
  }
  Cell from_scratch(bool extra_norm) const {
    const nn::GPTConfig c = train::ternary_twin(o_.model, extra_norm);
    nn::GPT<float> m(c);
    train::GolfOptimizers<float> opt(m, o_.optim);
    RandomBatcher b = batcher(0);
    const std::string label = std::string("scratch_") + (extra_norm ? "norm" : "nonorm");
    const auto r = train::train_loop(m, opt, b, loop(label, o_.steps));
    return finish(m, label, r.seconds);
  }
  // Returns the fine-tuned cell; `naive` gets the twin's score before any fine-tuning.
  Cell finetune(bool extra_norm, double& naive) const {
    const nn::GPTConfig c = train::ternary_twin(train::checkpoint_config(fp_path_), extra_norm);
    nn::GPT<float> m(c);
    train::load_fp_weights(fp_path_, m);
    train::set_lambda(m, 1.0);
    naive = score(m);
    train::GolfOptimizers<float> opt(m, o_.optim);
    RandomBatcher b = batcher(uint64_t(fp_steps_));  // the batches scratch cells see at these steps
    const std::string label = std::string("finetune_") + (extra_norm ? "norm" : "nonorm");
    train::FinetuneOptions fo;
    fo.ramp_steps = ramp_steps_;
    fo.steps = ft_steps_ - ramp_steps_;
    fo.order = o_.order;
    fo.loop = loop(label, ft_steps_);
    const auto r = train::finetune_to_ternary(m, opt, b, fo);
    std::fprintf(stderr,
                 "ablate_extra_norm: %s: naive ternarization of the fp model: val bpb %.4f\n",
                 label.c_str(), naive);
    return finish(m, label, r.seconds);
  }

  int run() {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string load_before = load_average();
    std::fprintf(stderr,
                 "ablate_extra_norm: %lld layers, dim %lld, seq %lld, batch %lld; budget %lld "
                 "steps per cell "
                 "(fine-tune cells: %lld fp + %lld fine-tune, ramp %lld, order %s); %d threads\n  "
                 "data: %s (%zu "
                 "train / %zu val tokens)\n",
                 (long long)o_.model.n_layers, (long long)o_.model.dim, (long long)o_.seq,
                 (long long)o_.batch, (long long)o_.steps, (long long)fp_steps_,
                 (long long)ft_steps_, (long long)ramp_steps_, o_.order.c_str(),
                 omp_get_max_threads(), data_.description.c_str(), data_.train.size(),
                 data_.val.size());
    pretrain_fp();
    double naive_norm = 0, naive_nonorm = 0;
    const Cell scratch_norm = from_scratch(true), scratch_nonorm = from_scratch(false);
    const Cell ft_norm = finetune(true, naive_norm), ft_nonorm = finetune(false, naive_nonorm);
    const double total =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    auto fmt = [](const Cell& c) {
      char b[64];
      std::snprintf(b, sizeof b, "%.4f (%.4f)", c.bpb, c.bpb_artifact);
      return std::string(b);
    };
    auto num = [](double v) {
      char b[32];
      std::snprintf(b, sizeof b, "%.4f", v);
      return std::string(b);
    };
    auto secs = [](double v) {
      char b[32];
      std::snprintf(b, sizeof b, "%.0f", v);
      return std::string(b);
    };
    std::time_t now = std::time(nullptr);
    char date[32];
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    struct utsname un {};
    uname(&un);
    std::ostringstream md;
    md << "## Extra RMSNorm ablation (`ablate_extra_norm`)\n\n"
       << "Validation bits per byte on the bundled corpus (lower is better): the training weights, "
          "and in "
          "parentheses the exported, reloaded artifact. Every cell: the same data, seed ("
       << o_.seed << ") and budget of " << o_.steps << " optimizer steps; a fine-tune cell spends "
       << fp_steps_ << " of them training the full-precision model and " << ft_steps_
       << " fine-tuning its ternary twin (lambda ramp over " << ramp_steps_
       << " steps, block order " << o_.order << ", then " << ft_steps_ - ramp_steps_
       << " steps at lambda = 1).\n\n"
       << "| " << o_.steps << " steps per cell | with extra RMSNorm | without extra RMSNorm |\n"
       << "|---|---|---|\n"
       << "| from-scratch ternary | " << fmt(scratch_norm) << " | " << fmt(scratch_nonorm) << " |\n"
       << "| fp -> ternary fine-tune | " << fmt(ft_norm) << " | " << fmt(ft_nonorm) << " |\n"
       << "| naive ternarization of the fp model (no fine-tune) | " << num(naive_norm) << " | "
       << num(naive_nonorm) << " |\n\n"
       << "Reference: the full-precision model after its " << fp_steps_ << " steps scores "
       << num(fp_.bpb) << " (" << num(fp_.bpb_artifact) << " from its int8 artifact).\n\n"
       << "Model: " << o_.model.n_layers << " layers, dim " << o_.model.dim << ", "
       << o_.model.n_heads << "/" << o_.model.n_kv_heads << " heads, mlp x" << o_.model.mlp_mult
       << ", vocab " << o_.model.vocab_size << ", seq " << o_.seq << ", batch " << o_.batch
       << "; scored on the first " << o_.eval_batches << " validation batches ("
       << o_.eval_batches * o_.batch * o_.seq << " tokens).\n\n"
       << "Training seconds: fp " << secs(fp_.seconds) << ", scratch " << secs(scratch_norm.seconds)
       << " / " << secs(scratch_nonorm.seconds) << ", fine-tune " << secs(ft_norm.seconds) << " / "
       << secs(ft_nonorm.seconds) << " (with / without the extra norm); whole run " << secs(total)
       << " s.\n\n"
       << "Machine: " << cpu_model() << ", " << std::thread::hardware_concurrency()
       << " cores, OpenMP threads: " << omp_get_max_threads() << "; " << un.sysname << " "
       << un.release << "; g++ " << __VERSION__ << "; load average " << load_before
       << " at the start, " << load_average() << " at the end (a shared "
       << "machine: other jobs slow the timings, not the numbers). Run " << date << ".\n\n"
       << "Command:\n\n```\n"
       << o_.command << "\n```\n";
    write_section(md.str());
    std::printf("%s\n", md.str().c_str());
    nlohmann::json j;
    auto cell = [](const Cell& c) {
      return nlohmann::json{{"bpb", c.bpb},
                            {"bpb_artifact", c.bpb_artifact},
                            {"artifact_bytes", c.artifact_bytes},
                            {"seconds", c.seconds}};
    };
    j["scratch"] = {{"extra_norm", cell(scratch_norm)}, {"no_extra_norm", cell(scratch_nonorm)}};
    j["finetune"] = {{"extra_norm", cell(ft_norm)}, {"no_extra_norm", cell(ft_nonorm)}};
    j["naive_ternary"] = {{"extra_norm", naive_norm}, {"no_extra_norm", naive_nonorm}};
    j["fp"] = cell(fp_);
    j["steps"] = o_.steps;
    j["fp_steps"] = fp_steps_;
    j["finetune_steps"] = ft_steps_;
    j["ramp_steps"] = ramp_steps_;
    j["seconds"] = total;
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }

  // Replaces the text between the marker lines of --output (or appends it), keeping the rest.
  void write_section(const std::string& body) const {
    if (o_.output.empty()) return;
    const std::string
        begin = "<!-- ablate_extra_norm: begin (written by the program; edits are overwritten) -->",
        end = "<!-- ablate_extra_norm: end -->";
    std::string text;
    if (std::ifstream in(o_.output); in) {
      std::stringstream ss;
      ss << in.rdbuf();
      text = ss.str();
    } else {
      text = "# Results\n\n";
    }
    const std::string section = begin + "\n" + body + end + "\n";
    const size_t b = text.find(begin), e = text.find(end);
    if (b != std::string::npos && e != std::string::npos && e > b) {
      text.replace(
          b, e + end.size() - b + (e + end.size() < text.size() && text[e + end.size()] == '\n'),
          section);
    } else {
      if (!text.empty() && text.back() != '\n') text += "\n";
      text += "\n" + section;
    }
    const std::filesystem::path out(o_.output);
    if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
    std::ofstream f(o_.output, std::ios::trunc);
    f << text;
    if (!f) throw IOError(detail::cat("ablate_extra_norm: cannot write ", o_.output));
    std::fprintf(stderr, "ablate_extra_norm: wrote %s\n", o_.output.c_str());
  }

 private:
  Options o_;
  train::Data data_;
  int64_t fp_steps_ = 0, ft_steps_ = 0, ramp_steps_ = 0;
  std::filesystem::path work_;
  std::string fp_path_;
  Cell fp_;
};

int main(int argc, char** argv) {
  Options o;
  nn::GPTConfig& m = o.model;
  m.n_layers = 4;
  m.dim = 64;
  m.n_heads = 4;
  m.n_kv_heads = 2;
  m.mlp_mult = 2;
  m.vocab_size = 256;
  CLI::App app{
      "The Extra RMSNorm ablation: {from-scratch ternary, fp -> ternary fine-tune} x {with, "
      "without the "
      "extra RMSNorm} on the bundled corpus; writes the table into docs/results.md."};
  app.add_option("--steps", o.steps, "optimizer steps per cell (the budget)")
      ->capture_default_str();
  app.add_option(
         "--finetune-fraction", o.finetune_fraction,
         "share of a fine-tune cell's budget spent fine-tuning (the rest trains the fp model)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--ramp-fraction", o.ramp_fraction,
                 "share of the fine-tune steps spent ramping lambda 0 -> 1")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--order", o.order, "block order of the lambda ramp: forward or reverse")
      ->check(CLI::IsMember({"forward", "reverse"}))
      ->capture_default_str();
  train::add_model_shape_options(app, m, /*show_defaults=*/true);
  train::add_batch_options(app, o.seq, o.batch);
  train::add_schedule_options(app, o.warmup, o.warmdown);
  train::add_learning_rate_options(app, o.optim);
  app.add_option("--eval-batches", o.eval_batches, "validation batches to score (0: all)")
      ->capture_default_str();
  train::add_threads_option(app, o.threads);
  app.add_option("--seed", o.seed, "seed for initialisation and batches (every cell)")
      ->capture_default_str();
  app.add_option("--output", o.output, "markdown file to write the table into (empty: print only)")
      ->capture_default_str();
  app.add_option("--log-dir", o.log_dir,
                 "write each run's training log (JSON lines) here, for tools/plot_log");
  app.add_option("--work-dir", o.work_dir,
                 "keep the fp checkpoint and artifacts here (default: a temporary "
                 "directory, removed)");
  CLI11_PARSE(app, argc, argv);
  for (const char* var : {"OMP_NUM_THREADS", "OMP_WAIT_POLICY"})  // they change the timings
    if (const char* v = std::getenv(var))
      o.command += std::string(var) + "=" + shell_quote(v) + " ";
  for (int i = 0; i < argc; ++i) o.command += (i ? " " : "") + shell_quote(argv[i]);
  try {
    if (o.threads > 0) omp_set_num_threads(o.threads);
    m.seed = o.seed;
    m.validate();
    train::check_run_shape(o.seq, o.batch);
    Ablation a(o);
    return a.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ablate_extra_norm: error: %s\n", e.what());
    return 1;
  }
}
