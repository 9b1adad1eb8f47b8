// No heap allocation inside a CPU training step after the first: tensors' control blocks,
// Var nodes and tape closures come from core/pool.hpp, tensor memory from the cpu block
// cache. operator new is replaced in this test program and counts while a flag is set.
#include <array>
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <memory>
#include <new>

#include "ternary/gpt.hpp"
#include "ternary/optim/clip.hpp"
#include "ternary/train/golf_optimizers.hpp"
#include "test_util.hpp"

// (GCC cannot see that the replaced operator new below is malloc's, so it flags every free.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
namespace {
std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_news{0};
void* counted_malloc(std::size_t n, std::size_t align) {
  if (g_counting.load(std::memory_order_relaxed)) g_news.fetch_add(1, std::memory_order_relaxed);
  void* p = align ? std::aligned_alloc(align, (n + align - 1) / align * align) : std::malloc(n);
  if (!p && n) throw std::bad_alloc();
  return p ? p : std::malloc(1);
}
}  // namespace
void* operator new(std::size_t n) {
  return counted_malloc(n, 0);
}
void* operator new[](std::size_t n) {
  return counted_malloc(n, 0);
}
void* operator new(std::size_t n, std::align_val_t a) {
  return counted_malloc(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return counted_malloc(n, static_cast<std::size_t>(a));
}
// The nothrow forms too (Catch uses them), so that every delete below frees what malloc gave.
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted_malloc(n, 0);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept {
  return operator new(n, t);
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try {
    return counted_malloc(n, static_cast<std::size_t>(a));
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t& t) noexcept {
  return operator new(n, a, t);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}

using namespace ternary;

namespace {
// operator new calls made by f (on any thread).
template <class F>
int64_t count_news(F&& f) {
  const int64_t before = g_news.load();
  g_counting = true;
  f();
  g_counting = false;
  return g_news.load() - before;
}

// One training step as bench/bench_train_step.cpp runs it: forward, backward, clip, Muon + Adam.
struct Trainer {
  nn::GPT<float> model;
  std::vector<Var<float>> params = model.parameters();
  train::GolfOptimizers<float> opt{model, {}};
  Rng rng{3};
  Tensor<int32_t> x = test::random_ids(2, 8, 32, rng), y = test::random_ids(2, 8, 32, rng);
  explicit Trainer(bool ternary) : model(test::tiny_gpt_config(ternary, 7)) {}
  float step() {
    auto loss = model.loss(x, y);
    const float v = loss.item();
    loss.backward();
    optim::clip_grad_norm(params, 1.0);
    opt.step();
    opt.zero_grad();
    return v;
  }
};
}  // namespace

TEST_CASE("a training step allocates nothing in steady state (fp32 and ternary)") {
  for (bool ternary : {false, true}) {
    INFO((ternary ? "ternary" : "fp32"));
    Trainer t(ternary);
    float losses[4];
    CHECK(count_news([&] { losses[0] = t.step(); }) > 0);  // warm-up fills the pools
    // The first update creates the optimizer's state tensors after the activations were
    // freed, so the second step's peak holds that many more tensors than the first's: it
    // takes one pooled block per state tensor, and nothing else.
    size_t state_tensors = 0;
    for (const auto& [key, v] : t.opt.state_dict()) state_tensors += !key.ends_with("step");
    const int64_t second = count_news([&] { losses[1] = t.step(); });
    CHECK(second <= int64_t(state_tensors));
    const size_t cached = detail::SmallObjectPool::cached_blocks();
    const int64_t third = count_news([&] { losses[2] = t.step(); });
    const int64_t fourth = count_news([&] { losses[3] = t.step(); });
    CHECK(third == 0);
    CHECK(fourth == 0);
    // Steady state reuses the same blocks: the pool does not grow from step to step.
    CHECK(detail::SmallObjectPool::cached_blocks() == cached);
    CHECK(losses[3] < losses[0]);  // and it still trains
  }
}

TEST_CASE("tensors and Vars give their blocks back to the pool when destroyed") {
  {  // warm the pools with one round
    auto a = Var<float>::parameter(Tensor<float>::ones({4}));
    exp(a * a).backward(Tensor<float>::ones({4}));
  }
  const size_t cached = detail::SmallObjectPool::cached_blocks();
  size_t recorded = 0;
  const int64_t news = count_news([&] {
    auto a = Var<float>::parameter(Tensor<float>::ones({4}));
    auto y = exp(a * a);
    recorded = Tape::current().size();  // two closures, in pooled blocks
    y.backward(Tensor<float>::ones({4}));
  });
  CHECK(recorded == 2);
  CHECK(news == 0);
  CHECK(detail::SmallObjectPool::cached_blocks() == cached);  // every block came back
}

TEST_CASE("Callback runs, moves and destroys its closure") {
  int calls = 0;
  auto owned = std::make_shared<int>(5);
  {
    detail::Callback a([&calls, owned] { calls += *owned; });
    CHECK(owned.use_count() == 2);
    detail::Callback b = std::move(a);
    CHECK(!a);
    b();
    CHECK(calls == 5);
    b = detail::Callback([&calls] { ++calls; });  // the first closure is destroyed here
    CHECK(owned.use_count() == 1);
    b();
    CHECK(calls == 6);
  }
  // A closure larger than the pooled sizes still works (from operator new).
  std::array<char, 2 * detail::SmallObjectPool::kMaxBytes> big{};
  big[7] = 3;
  detail::Callback c([&calls, big] { calls += big[7]; });
  c();
  CHECK(calls == 9);
}
