// libFuzzer target: the programs' shared command-line options (train/cli.hpp) on arbitrary
// argument lists (the input split at newlines), then the checks the programs run after
// parsing. A bad argument must end in CLI11's parse error or a ternary::Error.
#include <string>
#include <vector>

#include "ternary/train/cli.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> args{"train_gpt"};
  std::string cur;
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == '\n') {
      args.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(char(data[i]));
    }
  }
  if (!cur.empty()) args.push_back(cur);
  if (args.size() > 64) return 0;
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());

  ternary::nn::GPTConfig m;
  ternary::train::GolfOptimizerOptions optim;
  int64_t seq = 128, batch = 16, warmup = 10;
  double warmdown = 0.3;
  int threads = 0;
  CLI::App app{"fuzz"};
  ternary::train::add_model_shape_options(app, m, false);
  ternary::train::add_batch_options(app, seq, batch);
  ternary::train::add_schedule_options(app, warmup, warmdown);
  ternary::train::add_learning_rate_options(app, optim);
  ternary::train::add_threads_option(app, threads);
  try {
    app.parse(int(argv.size()), argv.data());
  } catch (const CLI::Error&) {
    return 0;
  }
  try {
    m.validate();
    ternary::train::check_run_shape(seq, batch);
  } catch (const ternary::Error&) {
    return 0;
  }
  // Accepted: every value is inside the ranges the options promise.
  if (m.dim < 1 || m.dim > ternary::train::kMaxModelExtent || seq * batch < 1 ||
      seq * batch > ternary::train::kMaxTokensPerStep || warmdown < 0 || warmdown > 1 ||
      threads < 0)
    std::abort();
  return 0;
}
