// The rank of this process in a data-parallel run, from the environment that tools/launch
// (or torchrun, or a cluster scheduler) sets for every process:
//
//   RANK         this process's index among all processes, 0 .. WORLD_SIZE-1
//   WORLD_SIZE   the number of processes (one per GPU)
//   LOCAL_RANK   the index on this machine, which picks the GPU (cudaSetDevice(LOCAL_RANK))
//   TERNARY_DIST_ID_FILE   where rank 0 leaves the NCCL unique id for the others (optional;
//                          else /tmp/ternary-nccl-<TERNARY_RUN_ID>.id)
//   TERNARY_DIST_TIMEOUT   seconds a rank waits for that file (optional, default 120)
//
// All three of RANK, WORLD_SIZE, LOCAL_RANK or none: none means a single-process run.
// Anything else (one missing, not a number, RANK >= WORLD_SIZE) is an Error naming the
// variable and its value.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>

#include "ternary/core/error.hpp"

namespace ternary::dist {

struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string id_file;           // TERNARY_DIST_ID_FILE, or "" (see nccl_id_path)
  std::string run_id;            // TERNARY_RUN_ID, or ""
  double timeout_seconds = 120;  // TERNARY_DIST_TIMEOUT

  bool is_main() const { return rank == 0; }
  // The file through which the NCCL unique id travels; throws if neither variable names one
  // (a fixed default would let a stale file from an earlier run be read).
  std::string nccl_id_path() const {
    if (!id_file.empty()) return id_file;
    if (!run_id.empty()) return "/tmp/ternary-nccl-" + run_id + ".id";
    throw Error(
        "dist: neither TERNARY_DIST_ID_FILE nor TERNARY_RUN_ID is set, so the ranks cannot agree "
        "on where rank 0 leaves the NCCL id; start the ranks with tools/launch, or set one of "
        "them (the same value on every rank, new for every run)");
  }
};

using EnvLookup = std::function<const char*(const char*)>;

namespace env_detail {
inline std::optional<int64_t> parse_count(const char* text) {
  if (!text || !*text) return std::nullopt;
  int64_t v = 0;
  for (const char* p = text; *p; ++p) {
    if (*p < '0' || *p > '9') return std::nullopt;
    v = v * 10 + (*p - '0');
    if (v > (int64_t(1) << 30)) return std::nullopt;
  }
  return v;
}
}  // namespace env_detail

// Parses the variables through `lookup` (std::getenv by default; tests pass a map). Returns
// nullopt when none of RANK, WORLD_SIZE, LOCAL_RANK is set.
inline std::optional<DistEnv> parse_dist_env(const EnvLookup& lookup = [](const char* k) {
  return std::getenv(k);
}) {
  const char* names[] = {"RANK", "WORLD_SIZE", "LOCAL_RANK"};
  const char* values[3];
  int set = 0;
  for (int i = 0; i < 3; ++i) set += (values[i] = lookup(names[i])) != nullptr;
  if (set == 0) return std::nullopt;
  int parsed[3];
  for (int i = 0; i < 3; ++i) {
    if (!values[i])
      throw Error(detail::cat(
          "dist: ", names[i], " is not set, but ", values[0] ? "RANK" : "WORLD_SIZE",
          " is; a data-parallel run needs all of RANK, WORLD_SIZE and LOCAL_RANK (tools/launch "
          "sets them)"));
    auto v = env_detail::parse_count(values[i]);
    if (!v)
      throw Error(
          detail::cat("dist: ", names[i], "='", values[i], "' is not a non-negative integer"));
    parsed[i] = static_cast<int>(*v);
  }
  DistEnv e;
  e.rank = parsed[0], e.world_size = parsed[1], e.local_rank = parsed[2];
  if (e.world_size < 1)
    throw Error(detail::cat("dist: WORLD_SIZE='", values[1], "' must be at least 1"));
  if (e.rank >= e.world_size)
    throw Error(detail::cat("dist: RANK=", e.rank, " is not below WORLD_SIZE=", e.world_size,
                            " (ranks are 0 .. WORLD_SIZE-1)"));
  if (e.local_rank > e.rank)
    throw Error(detail::cat("dist: LOCAL_RANK=", e.local_rank, " is above RANK=", e.rank,
                            " (the local index on a machine cannot exceed the global one)"));
  if (const char* f = lookup("TERNARY_DIST_ID_FILE")) e.id_file = f;
  if (const char* r = lookup("TERNARY_RUN_ID")) e.run_id = r;
  if (const char* t = lookup("TERNARY_DIST_TIMEOUT")) {
    auto v = env_detail::parse_count(t);
    if (!v || *v == 0)
      throw Error(detail::cat("dist: TERNARY_DIST_TIMEOUT='", t,
                              "' is not a positive whole number of seconds"));
    e.timeout_seconds = double(*v);
  }
  return e;
}

// The environment of a rank that must be part of a data-parallel run: like parse_dist_env,
// but a single-process environment (none set) is an error too.
inline DistEnv require_dist_env(const EnvLookup& lookup = [](const char* k) {
  return std::getenv(k);
}) {
  auto e = parse_dist_env(lookup);
  if (!e)
    throw Error(
        "dist: RANK, WORLD_SIZE and LOCAL_RANK are not set; start one process per GPU with "
        "tools/launch -n <gpus> -- <program> <args>");
  return *e;
}

}  // namespace ternary::dist
