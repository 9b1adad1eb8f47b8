// Data-parallel training (dist/): the tape's grad-ready hook, the in-process communicator
// (N ranks as N threads), gradient buckets against the per-parameter reference, a small GPT
// whose averaged shard gradients must equal the single-process gradient of the whole batch,
// a few training steps against the single-process run, sharding, env parsing, and
// tools/launch. Catch2 assertions are not thread-safe, so rank threads record what they saw
// and the main thread checks it after the join.
#include <signal.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "ternary/dist/data_parallel.hpp"
#include "ternary/dist/env.hpp"
#include "ternary/dist/sharding.hpp"
#include "ternary/gpt.hpp"
#include "ternary/optim/clip.hpp"
#include "ternary/train/golf_optimizers.hpp"
#include "ternary/train/loop.hpp"
#include "test_util.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

namespace {

// The tiny GPT of the brief: 2 layers, dim 32, 2 heads, vocab 64 (sequences of 16).
nn::GPTConfig dist_config(bool ternary_weights) {
  nn::GPTConfig c;
  c.vocab_size = 64;
  c.n_layers = 2;
  c.dim = 32;
  c.n_heads = 2;
  c.n_kv_heads = 2;
  c.mlp_mult = 2;
  c.ternary = ternary_weights;
  c.seed = 21;
  return c;
}
constexpr int64_t kSeq = 16, kGlobalBatch = 12;  // 12: divisible by 1, 2, 3 and 4 ranks

// Breaks the zero init of the output projections so that every parameter gets a gradient.
void perturb(const nn::GPT<float>& m, uint64_t seed, double stddev = 0.2) {
  Rng rng(seed);
  for (auto& [name, p] : m.named_parameters()) {
    Var<float> v = p;
    if (name.find("proj.weight") != std::string::npos)
      v.value().assign(Tensor<float>::randn(p.shape(), rng, 0, stddev));
  }
}

// Learnable tokens: mostly next = (5 prev + 3) mod 64, sometimes a random one.
std::vector<uint16_t> corpus() {
  Rng rng(77);
  std::vector<uint16_t> t(4000);
  t[0] = 1;
  for (size_t i = 1; i < t.size(); ++i)
    t[i] = uint16_t(rng.uniform() < 0.9 ? (5 * t[i - 1] + 3) % 64 : rng.below(64));
  return t;
}
RandomBatcher global_batcher() {
  return RandomBatcher(corpus(), kGlobalBatch, kSeq, 5, 64);
}

std::map<std::string, std::vector<float>> grads_of(const nn::Module<float>& m) {
  std::map<std::string, std::vector<float>> out;
  for (auto& [name, p] : m.named_parameters())
    if (p.grad().defined()) out[name] = p.grad().to_vector();
  return out;
}
std::map<std::string, std::vector<float>> values_of(const nn::Module<float>& m) {
  std::map<std::string, std::vector<float>> out;
  for (auto& [name, p] : m.named_parameters()) out[name] = p.value().to_vector();
  return out;
}
double l2(const std::vector<float>& a) {
  double s = 0;
  for (float x : a) s += double(x) * x;
  return std::sqrt(s);
}
double l2_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return std::sqrt(s);
}
bool bits_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

// ---- the tape hook ----------------------------------------------------------------------

TEST_CASE("tape: the grad-ready hook fires once, after the last contribution", "[dist][hook]") {
  Rng rng(1);
  auto w = Var<float>::parameter(Tensor<float>::randn({3, 3}, rng));
  auto v = Var<float>::parameter(Tensor<float>::randn({3, 3}, rng));
  auto x = Var<float>::constant(Tensor<float>::randn({2, 3}, rng));
  int fired_w = 0, fired_v = 0;
  std::vector<float> w_grad_at_hook;
  std::vector<std::string> order;
  w.set_grad_ready_hook([&] {
    ++fired_w;
    w_grad_at_hook = w.grad().to_vector();
    order.push_back("w");
  });
  v.set_grad_ready_hook([&] {
    ++fired_v;
    order.push_back("v");
  });
  // w is read by the first op and again by the last one; v only in between.
  auto h = relu(matmul(x, w));
  auto y = sum(square(matmul(matmul(h, v), w)));
  y.backward();
  CHECK(fired_w == 1);
  CHECK(fired_v == 1);
  CHECK(order == std::vector<std::string>{"v", "w"});  // v is final first: w's last use is oldest
  CHECK(bits_equal(w_grad_at_hook, w.grad().to_vector()));  // nothing was added after the hook

  SECTION("fires again on the next step, and not after removal") {
    auto y2 = sum(matmul(x, w));
    y2.backward();
    CHECK(fired_w == 2);
    w.set_grad_ready_hook({});
    sum(matmul(x, w)).backward();
    CHECK(fired_w == 2);
  }
  SECTION("a leaf whose reader got no gradient still becomes final") {
    auto unused = matmul(x, v);  // recorded, but the loss does not depend on it
    sum(matmul(x, w)).backward();
    CHECK(fired_v == 2);
    (void)unused;
  }
  SECTION("only leaves can have one") {
    auto z = matmul(x, w);
    CHECK_THROWS_WITH(z.set_grad_ready_hook([] {}), Contains("only a leaf"));
    Tape::current().clear();
  }
}

// ---- the in-process communicator --------------------------------------------------------

TEMPLATE_TEST_CASE("InProcessCommunicator: all-reduce is bit-identical on every rank",
                   "[dist][comm]", float, double) {
  for (int world : {2, 3, 4}) {
    const size_t n = 1001;
    auto input = [&](int r) {  // values of mixed magnitude, so the sum order matters
      Rng rng(100 + r);
      std::vector<TestType> v(n);
      for (auto& x : v) x = TestType(rng.normal(0, 1) * std::pow(10.0, rng.uniform(-3, 3)));
      return v;
    };
    std::vector<std::vector<TestType>> sums(world), avgs(world);
    dist::run_in_process(world, [&](dist::Communicator& c) {
      auto s = input(c.rank()), a = input(c.rank());
      c.all_reduce_sum(std::span<TestType>(s));
      c.all_reduce_average(std::span<TestType>(a));
      sums[c.rank()] = s, avgs[c.rank()] = a;
    });
    std::vector<TestType> want_sum(n, 0), want_avg(n);
    for (int r = 0; r < world; ++r) {
      auto v = input(r);
      for (size_t i = 0; i < n; ++i) want_sum[i] = r == 0 ? v[i] : want_sum[i] + v[i];
    }
    for (size_t i = 0; i < n; ++i) want_avg[i] = want_sum[i] / TestType(world);
    for (int r = 0; r < world; ++r) {
      INFO("world " << world << " rank " << r);
      CHECK(std::memcmp(sums[r].data(), want_sum.data(), n * sizeof(TestType)) == 0);
      CHECK(std::memcmp(avgs[r].data(), want_avg.data(), n * sizeof(TestType)) == 0);
    }
  }
}

TEST_CASE("InProcessCommunicator: broadcast, barrier, rank and size", "[dist][comm]") {
  const int world = 3;
  std::vector<std::vector<float>> from0(world), from2(world);
  std::vector<int> ranks(world, -1), sizes(world, -1);
  dist::run_in_process(world, [&](dist::Communicator& c) {
    std::vector<float> a(5, float(c.rank() + 1)), b(5, float(10 * c.rank()));
    c.broadcast_from_main(std::span<float>(a));
    c.barrier();
    c.broadcast(b.data(), b.size(), 2);
    from0[c.rank()] = a, from2[c.rank()] = b;
    ranks[c.rank()] = c.rank(), sizes[c.rank()] = c.world_size();
  });
  for (int r = 0; r < world; ++r) {
    CHECK(from0[r] == std::vector<float>(5, 1.0f));
    CHECK(from2[r] == std::vector<float>(5, 20.0f));
    CHECK(ranks[r] == r);
    CHECK(sizes[r] == world);
  }
}

TEST_CASE("InProcessCommunicator: mismatches, failures and timeouts throw, never hang",
          "[dist][comm]") {
  const auto t0 = std::chrono::steady_clock::now();
  SECTION("different sizes") {
    CHECK_THROWS_WITH(dist::run_in_process(2,
                                           [](dist::Communicator& c) {
                                             std::vector<float> v(c.rank() == 0 ? 4 : 5);
                                             c.all_reduce_sum(std::span<float>(v));
                                           }),
                      Contains("mismatched collectives") && Contains("elements"));
  }
  SECTION("different collectives") {
    CHECK_THROWS_WITH(dist::run_in_process(3,
                                           [](dist::Communicator& c) {
                                             std::vector<double> v(4);
                                             if (c.rank() == 1)
                                               c.barrier();
                                             else
                                               c.all_reduce_sum(std::span<double>(v));
                                           }),
                      Contains("mismatched collectives") && Contains("barrier"));
  }
  SECTION("a rank that throws releases the others, and its error is the one reported") {
    CHECK_THROWS_WITH(dist::run_in_process(4,
                                           [](dist::Communicator& c) {
                                             if (c.rank() == 2) throw IOError("disk full");
                                             c.barrier();
                                           }),
                      Contains("rank 2") && Contains("disk full"));
  }
  SECTION("a rank that never arrives times out") {
    CHECK_THROWS_WITH(dist::run_in_process(
                          2,
                          [](dist::Communicator& c) {
                            if (c.rank() == 0) c.barrier();
                          },
                          std::chrono::milliseconds(300)),
                      Contains("timed out") && Contains("barrier") && Contains("1 of 2"));
  }
  SECTION("bad ranks and roots") {
    auto g = std::make_shared<dist::InProcessGroup>(2);
    CHECK_THROWS_WITH(dist::InProcessCommunicator(g, 2), Contains("rank 2 is outside [0, 2)"));
    CHECK_THROWS_WITH(dist::InProcessGroup(0), Contains("world size must be >= 1"));
    dist::InProcessCommunicator c(g, 0);
    float x = 0;
    CHECK_THROWS_WITH(c.broadcast(&x, 1, 5), Contains("root 5"));
  }
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20));
}

// ---- buckets ----------------------------------------------------------------------------

TEST_CASE("GradBuckets: reverse registration order, size cap, unused parameters",
          "[dist][buckets]") {
  // Four parameters of 256 floats (1 KiB each); cap 2 KiB: buckets {p3, p2}, {p1, p0}.
  const double cap_mib = 2048.0 / (1024 * 1024);
  std::vector<std::vector<std::vector<float>>> got(2);
  std::vector<std::vector<bool>> defined(2);
  std::vector<size_t> n_buckets(2), by_hooks(2);
  std::vector<std::vector<size_t>> first_bucket(2);
  dist::run_in_process(2, [&](dist::Communicator& c) {
    std::vector<Var<float>> ps;
    for (int i = 0; i < 4; ++i)
      ps.push_back(Var<float>::parameter(Tensor<float>::full({16, 16}, float(i + 1))));
    dist::GradBuckets<float> buckets(ps, c, cap_mib);
    n_buckets[c.rank()] = buckets.buckets().size();
    first_bucket[c.rank()] = buckets.buckets()[0].params;
    // Rank 0 uses p0, p1, p2; rank 1 uses p0 and p1 only; p3 is unused everywhere.
    Var<float> loss = sum(ps[0] * float(c.rank() + 1)) + sum(square(ps[1]));
    if (c.rank() == 0) loss = loss + sum(ps[2] * 4.0f);
    loss.backward();
    by_hooks[c.rank()] = buckets.launched_during_backward();
    buckets.finish();
    for (auto& p : ps) {
      defined[c.rank()].push_back(p.grad().defined());
      got[c.rank()].push_back(p.grad().defined() ? p.grad().to_vector() : std::vector<float>{});
    }
  });
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r);
    CHECK(n_buckets[r] == 2);
    CHECK(first_bucket[r] == std::vector<size_t>{3, 2});
    // Bucket 0 waits for p3 (never used): nothing can be issued before finish().
    CHECK(by_hooks[r] == 0);
    CHECK(defined[r] == std::vector<bool>{true, true, true, false});
    CHECK(got[r][0] == std::vector<float>(256, 1.5f));  // (1 + 2) / 2
    CHECK(got[r][1] == std::vector<float>(256, 4.0f));  // 2 * p1 = 4 on both ranks
    CHECK(got[r][2] == std::vector<float>(256, 2.0f));  // (4 + 0) / 2
  }
}

TEST_CASE("GradBuckets: errors", "[dist][buckets]") {
  dist::run_in_process(1, [&](dist::Communicator& c) {
    auto p = Var<float>::parameter(Tensor<float>::ones({4}));
    // Not REQUIRE: run on a rank thread, but with one rank there is no other thread.
    bool threw_cap = false, threw_twice = false;
    try {
      dist::GradBuckets<float> b({p}, c, 0.0);
    } catch (const Error& e) {
      threw_cap = std::string(e.what()).find("bucket size must be positive") != std::string::npos;
    }
    dist::GradBuckets<float> b({p}, c, 1.0);
    b.set_sync(true);
    sum(p).backward();
    try {
      sum(p).backward();
    } catch (const Error& e) {
      threw_twice = std::string(e.what()).find("set_sync(false)") != std::string::npos;
    }
    b.reset();
    if (!threw_cap || !threw_twice) throw Error("GradBuckets error checks failed");
  });
}

TEST_CASE("GradBuckets: gradient accumulation with set_sync", "[dist][buckets]") {
  std::vector<std::vector<float>> got(3);
  dist::run_in_process(3, [&](dist::Communicator& c) {
    auto p = Var<float>::parameter(Tensor<float>::ones({8}));
    dist::GradBuckets<float> b({p}, c, 1.0);
    b.set_sync(false);
    sum(p * float(c.rank())).backward();  // micro-batch 1: r
    b.set_sync(true);
    sum(p * 2.0f).backward();  // micro-batch 2: 2; accumulated r + 2
    b.finish();
    got[c.rank()] = p.grad().to_vector();
  });
  for (int r = 0; r < 3; ++r) CHECK(got[r] == std::vector<float>(8, 3.0f));  // mean(0,1,2)+2
}

// ---- the GPT: averaged shard gradients = the whole-batch gradient -------------------------

TEST_CASE("data parallel GPT: averaged shard gradients equal the single-process gradient",
          "[dist][gpt]") {
  // Reference: one process, the whole global batch.
  nn::GPT<float> ref(dist_config(false));
  perturb(ref, 3);
  const Batch whole = global_batcher().batch_at(0);
  ref.loss(whole.inputs, whole.targets).backward();
  const auto want = grads_of(ref);
  REQUIRE(want.size() == ref.named_parameters().size());

  for (int world : {2, 3, 4}) {
    for (double bucket_mib : {0.01, 25.0}) {
      INFO("world " << world << ", buckets of " << bucket_mib << " MiB");
      std::vector<std::map<std::string, std::vector<float>>> bucketed(world), plain(world);
      std::vector<size_t> n_buckets(world), by_hooks(world);
      dist::run_in_process(world, [&](dist::Communicator& c) {
        // Model A: DataParallel (bucketed, overlapped). Rank != 0 starts from other weights:
        // the constructor's broadcast must replace them with rank 0's.
        nn::GPT<float> a(dist_config(false)), b(dist_config(false));
        perturb(a, c.rank() == 0 ? 3 : 1000 + c.rank());
        perturb(b, 3);
        dist::DataParallelOptions o;
        o.bucket_mib = bucket_mib;
        dist::DataParallel<float> dp(a, c, o);
        dist::ShardedBatcher sharded(global_batcher(), c.rank(), c.world_size());
        const Batch mine = sharded.next();
        a.loss(mine.inputs, mine.targets).backward();
        by_hooks[c.rank()] = dp.buckets().launched_during_backward();
        n_buckets[c.rank()] = dp.buckets().buckets().size();
        dp.finish_gradients();
        bucketed[c.rank()] = grads_of(a);
        // Model B: the reference all-reduce, one parameter at a time after backward.
        b.loss(mine.inputs, mine.targets).backward();
        dist::all_reduce_gradients(b.parameters(), c);
        plain[c.rank()] = grads_of(b);
      });
      if (bucket_mib < 1) CHECK(n_buckets[0] > 3);
      for (int r = 0; r < world; ++r) {
        INFO("rank " << r);
        // Every bucket was issued from inside backward (overlapping it), none left to finish().
        CHECK(by_hooks[r] == n_buckets[r]);
        REQUIRE(bucketed[r].size() == want.size());
        for (auto& [name, g] : want) {
          INFO(name);
          // Bucketed == reference all-reduce, bit for bit (same sums in the same order), and
          // identical on every rank.
          CHECK(bits_equal(bucketed[r].at(name), plain[r].at(name)));
          CHECK(bits_equal(bucketed[r].at(name), bucketed[0].at(name)));
          // == the whole-batch gradient up to float summation order: relative L2 <= 1e-5
          // (measured: up to 4e-7).
          CHECK(l2_diff(bucketed[r].at(name), g) <= 1e-5 * l2(g) + 1e-9);
        }
      }
    }
  }
}

// ---- a few training steps ---------------------------------------------------------------

namespace {
struct Curve {
  std::vector<double> losses;
  std::map<std::string, std::vector<float>> params;
};

// One optimizer step the way train_loop takes it (clip 1.0, Golf optimizers), on `batch`.
template <class StepGrads>
double train_step(const nn::GPT<float>& m, train::GolfOptimizers<float>& opt, const Batch& b,
                  const StepGrads& reduce_and_mean) {
  auto loss = m.loss(b.inputs, b.targets);
  const double mean = reduce_and_mean(loss);
  optim::clip_grad_norm(m.parameters(), 1.0);
  opt.step();
  opt.zero_grad();
  return mean;
}

train::GolfOptimizerOptions golf_options() {  // gentler than the defaults for 6 tiny steps
  train::GolfOptimizerOptions o;
  o.matrix_lr = 0.01, o.embed_lr = 0.02, o.scalar_lr = 0.01;
  return o;
}

Curve single_process_run(bool ternary_weights, int steps) {
  nn::GPT<float> m(dist_config(ternary_weights));
  perturb(m, 3, 0.05);
  train::GolfOptimizers<float> opt(m, golf_options());
  RandomBatcher batcher = global_batcher();
  Curve c;
  for (int s = 0; s < steps; ++s)
    c.losses.push_back(train_step(m, opt, batcher.next(), [](Var<float>& loss) {
      const double v = loss.item();
      loss.backward();
      return v;
    }));
  c.params = values_of(m);
  return c;
}

std::vector<Curve> data_parallel_run(bool ternary_weights, int steps, int world) {
  std::vector<Curve> out(world);
  dist::run_in_process(world, [&](dist::Communicator& comm) {
    nn::GPT<float> m(dist_config(ternary_weights));
    perturb(m, 3, 0.05);
    dist::DataParallelOptions o;
    o.bucket_mib = 0.02;
    dist::DataParallel<float> dp(m, comm, o);
    train::GolfOptimizers<float> opt(m, golf_options());
    dist::ShardedBatcher batcher(global_batcher(), comm.rank(), comm.world_size());
    Curve& c = out[comm.rank()];
    for (int s = 0; s < steps; ++s)
      c.losses.push_back(train_step(m, opt, batcher.next(), [&](Var<float>& loss) {
        const double mean = dp.average(loss.item());
        loss.backward();
        dp.finish_gradients();
        return mean;
      }));
    dp.check_parameters_identical();
    c.params = values_of(m);
  });
  return out;
}
}  // namespace

TEST_CASE("data parallel training follows the single-process run", "[dist][train]") {
  const int steps = 6;
  const Curve single = single_process_run(false, steps);
  INFO("single-process losses " << Catch::Detail::stringify(single.losses));
  CHECK(single.losses.back() < single.losses.front() - 0.05);  // it does train
  for (int world : {2, 4}) {
    INFO("world " << world);
    const auto ranks = data_parallel_run(false, steps, world);
    for (int r = 0; r < world; ++r) {
      INFO("rank " << r);
      // Loss curve: the mean of the shard means is the whole-batch mean; relative 1e-6
      // (measured: up to 6e-8).
      for (int s = 0; s < steps; ++s)
        CHECK(std::abs(ranks[r].losses[s] - single.losses[s]) <= 1e-6 * single.losses[s]);
      for (auto& [name, v] : single.params) {
        INFO(name);
        // Replicas identical bit for bit (also checked by check_parameters_identical).
        CHECK(bits_equal(ranks[r].params.at(name), ranks[0].params.at(name)));
        // Parameters after 6 steps: relative L2 distance to the single-process ones <= 1e-5
        // (float rounding of the gradient through Muon and Adam; measured: up to 4e-7).
        CHECK(l2_diff(ranks[r].params.at(name), v) <= 1e-5 * l2(v) + 1e-8);
      }
    }
  }
}

TEST_CASE("data parallel ternary GPT: replicas stay bit-identical", "[dist][train]") {
  const auto ranks = data_parallel_run(true, 3, 3);  // check_parameters_identical runs inside
  for (int r = 1; r < 3; ++r)
    for (auto& [name, v] : ranks[0].params) CHECK(bits_equal(ranks[r].params.at(name), v));
  CHECK(ranks[0].losses == ranks[2].losses);
}

TEST_CASE("check_parameters_identical names a parameter that diverged", "[dist][train]") {
  CHECK_THROWS_WITH(
      dist::run_in_process(3,
                           [](dist::Communicator& c) {
                             nn::GPT<float> m(dist_config(false));
                             dist::DataParallel<float> dp(m, c);
                             dp.check_parameters_identical();  // fine after the broadcast
                             if (c.rank() == 2)
                               m.parameter("blocks.1.mlp_scale").value().data()[3] += 1e-6f;
                             dp.check_parameters_identical();
                           }),
      Contains("'blocks.1.mlp_scale'") && Contains("on 1 of 3 ranks"));
}

TEST_CASE("DataParallel::average: the mean over ranks; a NaN anywhere is a NaN everywhere",
          "[dist][train]") {
  std::vector<double> mean(4), nan(4);
  std::vector<int> main(4);
  dist::run_in_process(4, [&](dist::Communicator& c) {
    nn::GPT<float> m(dist_config(false));
    dist::DataParallel<float> dp(m, c);
    mean[c.rank()] = dp.average(double(c.rank()));
    nan[c.rank()] = dp.average(c.rank() == 1 ? std::nan("") : 1.0);
    main[c.rank()] = dp.is_main();
    dp.skip_step();
  });
  for (int r = 0; r < 4; ++r) {
    CHECK(mean[r] == 1.5);
    CHECK(std::isnan(nan[r]));
    CHECK(main[r] == (r == 0));
  }
}

// ---- sharding ---------------------------------------------------------------------------

TEST_CASE("sharding: the ranks' shards are exactly the single-process global batch",
          "[dist][shard]") {
  const RandomBatcher global = global_batcher();
  for (int world : {1, 2, 3, 4, 6, 12}) {
    INFO("world " << world);
    std::vector<dist::ShardedBatcher> ranks;
    for (int r = 0; r < world; ++r) ranks.emplace_back(global_batcher(), r, world);
    for (uint64_t step = 0; step < 3; ++step) {
      const Batch want = global.batch_at(step);
      std::vector<int32_t> in, tg;
      for (auto& s : ranks) {
        const Batch b = s.next();
        CHECK(b.inputs.size(0) == kGlobalBatch / world);
        CHECK(s.batch_size() == kGlobalBatch / world);
        auto i = b.inputs.to_vector(), t = b.targets.to_vector();
        in.insert(in.end(), i.begin(), i.end());
        tg.insert(tg.end(), t.begin(), t.end());
      }
      CHECK(in == want.inputs.to_vector());
      CHECK(tg == want.targets.to_vector());
    }
    for (auto& s : ranks) CHECK(s.state() == ranks[0].state());  // one state for checkpoints
  }
  CHECK_THROWS_WITH(dist::ShardedBatcher(global_batcher(), 0, 5),
                    Contains("12 sequences does not split evenly over 5 ranks"));
  CHECK_THROWS_WITH(dist::shard_rows(12, 4, 4), Contains("rank 4 is outside [0, 4)"));
}

TEST_CASE("sharding: a rank's slice of a Parameter Golf chunk", "[dist][shard]") {
  Rng rng(4);
  const auto tokens = test::random_tokens(6 * 8 + 1, 64, rng);
  const Batch whole = batch_from_chunk(tokens, 6, 8, 64);
  std::vector<int32_t> in;
  for (int r = 0; r < 3; ++r) {
    auto part = dist::shard_chunk(tokens, 6, 8, r, 3);
    CHECK(part.size() == 2 * 8 + 1);
    auto v = batch_from_chunk(part, 2, 8, 64).inputs.to_vector();
    in.insert(in.end(), v.begin(), v.end());
  }
  CHECK(in == whole.inputs.to_vector());
  CHECK_THROWS_WITH(dist::shard_chunk(std::span(tokens).first(40), 6, 8, 0, 3),
                    Contains("need global batch 6 * seq 8 + 1 = 49"));
}

// ---- environment ------------------------------------------------------------------------

TEST_CASE("dist env: RANK, WORLD_SIZE, LOCAL_RANK are parsed and checked", "[dist][env]") {
  using Env = std::map<std::string, std::string>;
  auto parse = [](const Env& e) {
    return dist::parse_dist_env([&e](const char* k) -> const char* {
      auto it = e.find(k);
      return it == e.end() ? nullptr : it->second.c_str();
    });
  };
  CHECK_FALSE(parse({}).has_value());
  auto ok = parse({{"RANK", "3"},
                   {"WORLD_SIZE", "4"},
                   {"LOCAL_RANK", "1"},
                   {"TERNARY_DIST_ID_FILE", "/tmp/x.id"},
                   {"TERNARY_DIST_TIMEOUT", "30"}});
  REQUIRE(ok.has_value());
  CHECK(ok->rank == 3);
  CHECK(ok->world_size == 4);
  CHECK(ok->local_rank == 1);
  CHECK_FALSE(ok->is_main());
  CHECK(ok->nccl_id_path() == "/tmp/x.id");
  CHECK(ok->timeout_seconds == 30);
  CHECK(parse({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}, {"TERNARY_RUN_ID", "ab"}})
            ->nccl_id_path() == "/tmp/ternary-nccl-ab.id");
  CHECK_THROWS_WITH(
      parse({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}})->nccl_id_path(),
      Contains("TERNARY_DIST_ID_FILE nor TERNARY_RUN_ID"));
  CHECK_THROWS_WITH(parse({{"RANK", "1"}, {"WORLD_SIZE", "2"}}), Contains("LOCAL_RANK is not set"));
  CHECK_THROWS_WITH(parse({{"LOCAL_RANK", "0"}}), Contains("RANK is not set"));
  CHECK_THROWS_WITH(parse({{"RANK", "x1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}}),
                    Contains("RANK='x1' is not a non-negative integer"));
  CHECK_THROWS_WITH(parse({{"RANK", "0"}, {"WORLD_SIZE", "-2"}, {"LOCAL_RANK", "0"}}),
                    Contains("WORLD_SIZE='-2' is not a non-negative integer"));
  CHECK_THROWS_WITH(parse({{"RANK", "0"}, {"WORLD_SIZE", ""}, {"LOCAL_RANK", "0"}}),
                    Contains("WORLD_SIZE='' is not"));
  CHECK_THROWS_WITH(parse({{"RANK", "0"}, {"WORLD_SIZE", "0"}, {"LOCAL_RANK", "0"}}),
                    Contains("must be at least 1"));
  CHECK_THROWS_WITH(parse({{"RANK", "4"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "0"}}),
                    Contains("RANK=4 is not below WORLD_SIZE=4"));
  CHECK_THROWS_WITH(parse({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "2"}}),
                    Contains("LOCAL_RANK=2 is above RANK=1"));
  CHECK_THROWS_WITH(parse({{"RANK", "1"},
                           {"WORLD_SIZE", "4"},
                           {"LOCAL_RANK", "1"},
                           {"TERNARY_DIST_TIMEOUT", "soon"}}),
                    Contains("TERNARY_DIST_TIMEOUT='soon'"));
  CHECK_THROWS_WITH(dist::require_dist_env([](const char*) -> const char* { return nullptr; }),
                    Contains("tools/launch"));
}

// ---- tools/launch -----------------------------------------------------------------------

namespace {
std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}
// Runs a shell command; returns its exit status (-1 if it did not exit normally).
int shell(const std::string& cmd) {
  const int st = std::system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
const std::string kLaunch = std::string(TERNARY_TEST_SOURCE_DIR) + "/../tools/launch";
}  // namespace

TEST_CASE("tools/launch: sets the rank environment and prefixes output", "[dist][launch]") {
  test::TempDir dir("launch");
  const std::string out = dir.file("out.txt");
  const int rc = shell(kLaunch +
                       " -n 3 -- sh -c 'echo \"env $RANK $WORLD_SIZE $LOCAL_RANK "
                       "${TERNARY_DIST_ID_FILE:+idfile}\"' > " +
                       out + " 2>&1");
  const std::string text = slurp(out);
  INFO(text);
  CHECK(rc == 0);
  for (int r = 0; r < 3; ++r)
    CHECK_THAT(text, Contains("[rank " + std::to_string(r) + "] env " + std::to_string(r) + " 3 " +
                              std::to_string(r) + " idfile"));
  CHECK(shell(kLaunch + " -n 0 -- true > /dev/null 2>&1") != 0);
  CHECK(shell(kLaunch + " -n 2 > /dev/null 2>&1") != 0);  // no program
}

TEST_CASE("tools/launch: one failing rank stops all, with its exit status, leaving nothing",
          "[dist][launch]") {
  test::TempDir dir("launch");
  // Every rank records its own pid and a grandchild's (sleep); rank 1 fails after 0.5 s.
  const std::string rank_script =
      "sleep 30 & echo $! > " + dir.path + "/sleep.$RANK; echo $$ > " + dir.path +
      "/sh.$RANK; if [ \"$RANK\" = 1 ]; then sleep 0.5; exit 7; fi; wait";
  const auto t0 = std::chrono::steady_clock::now();
  const int rc =
      shell(kLaunch + " -n 4 -- sh -c '" + rank_script + "' > " + dir.file("out") + " 2>&1");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO(slurp(dir.file("out")));
  CHECK(rc == 7);
  CHECK(seconds < 10);
  CHECK_THAT(slurp(dir.file("out")), Contains("rank 1 exited with status 7"));
  for (int r = 0; r < 4; ++r)
    for (const char* what : {"sleep.", "sh."}) {
      const std::string pid = slurp(dir.path + "/" + what + std::to_string(r));
      INFO(what << r << " pid " << pid);
      REQUIRE_FALSE(pid.empty());
      // Gone: killed with its rank's process group (allow a moment for init to reap it).
      bool gone = false;
      for (int i = 0; i < 50 && !gone; ++i) {
        gone = ::kill(std::stoi(pid), 0) != 0;
        if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      CHECK(gone);
    }
}

TEST_CASE("train_loop with DataParallel and micro-batches follows the single-process train_loop",
          "[dist][train]") {
  train::LoopOptions o;
  o.steps = 5;
  o.warmup = 1;
  o.log_every = 1000;
  nn::GPT<float> single(dist_config(false));
  perturb(single, 3, 0.05);
  train::GolfOptimizers<float> single_opt(single, golf_options());
  RandomBatcher single_batcher = global_batcher();
  const double single_loss = train::train_loop(single, single_opt, single_batcher, o).final_loss;
  const auto single_params = values_of(single);

  // The global batch of 12 over `world` ranks, each cutting its share into micro-batches.
  // (not a structured binding: clang before 16 cannot capture those in a lambda)
  const auto row = GENERATE(table<int, int64_t>({{2, 0}, {2, 3}, {3, 2}, {1, 4}, {1, 1}}));
  const int world = std::get<0>(row);
  const int64_t micro = std::get<1>(row);
  INFO("world " << world << ", micro-batch " << micro);
  o.micro_batch = micro;
  std::vector<double> losses(world);
  std::vector<std::map<std::string, std::vector<float>>> params(world);
  dist::run_in_process(world, [&](dist::Communicator& comm) {
    nn::GPT<float> m(dist_config(false));
    perturb(m, 3, 0.05);
    std::optional<dist::DataParallel<float>> dp;  // its gradient hooks only with several ranks
    if (world > 1) dp.emplace(m, comm);
    train::GolfOptimizers<float> opt(m, golf_options());
    opt.shard_muon(comm);                      // each rank orthogonalises its share of the matrices
    RandomBatcher batcher = global_batcher();  // the global batch; train_loop shards it
    losses[comm.rank()] =
        train::train_loop(m, opt, batcher, o, {}, {}, dp ? &*dp : nullptr).final_loss;
    params[comm.rank()] = values_of(m);
  });
  for (int r = 0; r < world; ++r) {
    INFO("rank " << r);
    CHECK(std::abs(losses[r] - single_loss) <= 1e-6 * single_loss);
    for (auto& [name, v] : single_params) {
      INFO(name);
      CHECK(bits_equal(params[r].at(name), params[0].at(name)));
      CHECK(l2_diff(params[r].at(name), v) <= 1e-5 * l2(v) + 1e-8);
    }
  }
}

TEST_CASE("Muon: sharded orthogonalisation gives every rank the unsharded update, bit for bit",
          "[dist][optim]") {
  // Five matrices of three shapes (two 8 x 12, 12 x 8, two 6 x 6), two steps, with momentum.
  const std::vector<Shape> shapes{{8, 12}, {12, 8}, {6, 6}, {8, 12}, {6, 6}};
  auto make = [&](uint64_t seed) {
    Rng rng(seed);
    std::vector<Var<float>> ps;
    for (const auto& s : shapes) ps.push_back(Var<float>::parameter(Tensor<float>::randn(s, rng)));
    return ps;
  };
  auto run = [&](std::vector<Var<float>>& ps, optim::Muon<float>& muon) {
    for (int step = 0; step < 2; ++step) {
      Rng grads(100 + uint64_t(step));
      for (auto& p : ps) p.accumulate_grad(Tensor<float>::randn(p.shape(), grads));
      muon.step();
      muon.zero_grad();
    }
  };
  std::vector<Var<float>> ref = make(7);
  optim::Muon<float> plain(ref, optim::MuonOptions{});
  run(ref, plain);

  for (int world : {2, 3}) {
    std::vector<std::vector<std::vector<float>>> got(world);
    dist::run_in_process(world, [&](dist::Communicator& comm) {
      std::vector<Var<float>> ps = make(7);
      optim::Muon<float> muon(ps, optim::MuonOptions{});
      muon.shard_updates(comm.rank(), comm.world_size(), [&comm](float* d, size_t n) {
        comm.all_reduce(d, n, dist::ReduceOp::sum);
      });
      run(ps, muon);
      for (auto& p : ps) got[comm.rank()].push_back(p.value().to_vector());
    });
    for (int r = 0; r < world; ++r)
      for (size_t i = 0; i < ref.size(); ++i) {
        INFO("world " << world << ", rank " << r << ", matrix " << i);
        CHECK(bits_equal(got[r][i], ref[i].value().to_vector()));
      }
  }
  optim::Muon<float> m(make(1), optim::MuonOptions{});
  CHECK_THROWS_WITH(m.shard_updates(2, 2, [](float*, size_t) {}), Contains("rank 2 of 2"));
}

TEST_CASE("train_loop: a micro-batch that does not divide a rank's share is an error",
          "[dist][train]") {
  train::LoopOptions o;
  o.steps = 1;
  o.micro_batch = 5;  // 12 sequences per step: not a multiple of 5
  nn::GPT<float> m(dist_config(false));
  train::GolfOptimizers<float> opt(m, golf_options());
  RandomBatcher batcher = global_batcher();
  CHECK_THROWS_AS(train::train_loop(m, opt, batcher, o), ShapeError);
  CHECK_THROWS_WITH(
      train::train_loop(m, opt, batcher, o),
      Catch::Matchers::Contains("12 per rank") && Catch::Matchers::Contains("micro-batch 5"));
}
