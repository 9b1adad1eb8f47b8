// Progress on stderr for long work: a bar that redraws in place on a terminal, and plain
// lines (every `every` steps) when stderr is a file or pipe, so logs stay readable.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace ternary {

class Progress {
 public:
  Progress(std::string label, int64_t total, int64_t every = 10)
      : label_(std::move(label)),
        total_(total),
        every_(every > 0 ? every : 1),
        tty_(isatty(fileno(stderr))),
        start_(std::chrono::steady_clock::now()) {}

  double elapsed_seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

  // Reports step `step` (1-based) with a free-form detail ("loss 2.31  12.3k tok/s").
  void update(int64_t step, const std::string& detail) {
    const double t = elapsed_seconds();
    const double eta = step > 0 && total_ > step ? t / double(step) * double(total_ - step) : 0;
    if (tty_ && total_ <= 0) {  // a wall-clock budget: no step count to draw a bar against
      std::fprintf(stderr, "\r%s step %lld  %s  elapsed %s   ", label_.c_str(), (long long)step,
                   detail.c_str(), format_seconds(t).c_str());
    } else if (tty_) {
      const int width = 24;
      const int filled = total_ > 0 ? int(width * double(step) / double(total_)) : 0;
      std::string bar(filled, '#');
      bar.resize(width, '.');
      std::fprintf(stderr, "\r%s [%s] %lld/%lld  %s  eta %s   ", label_.c_str(), bar.c_str(),
                   (long long)step, (long long)total_, detail.c_str(), format_seconds(eta).c_str());
      if (step >= total_) std::fprintf(stderr, "\n");
    } else if (total_ <= 0) {  // a wall-clock budget: no step count to show progress against
      if (step % every_ == 0 || step == 1)
        std::fprintf(stderr, "%s step %lld  %s  elapsed %s\n", label_.c_str(), (long long)step,
                     detail.c_str(), format_seconds(t).c_str());
    } else if (step % every_ == 0 || step == 1 || step >= total_) {
      std::fprintf(stderr, "%s %lld/%lld  %s  elapsed %s  eta %s\n", label_.c_str(),
                   (long long)step, (long long)total_, detail.c_str(), format_seconds(t).c_str(),
                   format_seconds(eta).c_str());
    }
    std::fflush(stderr);
  }
  // Ends a bar early (e.g. when a wall-clock budget stops training).
  void finish() {
    if (tty_) std::fprintf(stderr, "\n");
  }

  static std::string format_seconds(double s) {
    char buf[32];
    const long total = long(s + 0.5);
    if (total >= 3600)
      std::snprintf(buf, sizeof buf, "%ldh%02ldm", total / 3600, (total / 60) % 60);
    else
      std::snprintf(buf, sizeof buf, "%ldm%02lds", total / 60, total % 60);
    return buf;
  }

 private:
  std::string label_;
  int64_t total_, every_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace ternary
