// A 2-layer MLP learns two interleaved spirals (a classic non-linear 2-D task).
// Shows: parameters as Vars, a forward pass from ops, cross-entropy, backward, and a
// hand-written SGD-with-momentum update under NoGrad. Run: ./build/examples/mlp
#include <cmath>
#include <cstdio>
#include <numbers>

#include "ternary/ops/loss.hpp"
#include "ternary/ternary.hpp"

using namespace ternary;

int main() {
  // Data: two spirals of 200 points each, labels 0 and 1.
  const int64_t per_class = 200, n = 2 * per_class, hidden = 64;
  Rng rng(7);
  auto points = Tensor<float>::empty({n, 2});
  auto labels = Tensor<int32_t>::empty({n});
  for (int64_t i = 0; i < n; ++i) {
    const int64_t cls = i / per_class;
    const double t = double(i % per_class) / per_class;  // 0..1 along the arm
    const double angle = 3.0 * std::numbers::pi * t + cls * std::numbers::pi;
    points(i, 0) = float(t * std::cos(angle) + rng.normal(0, 0.02));
    points(i, 1) = float(t * std::sin(angle) + rng.normal(0, 0.02));
    labels(i) = int32_t(cls);
  }
  auto x = Var<float>::constant(points);

  // Model: logits = W2 relu(W1 x + b1) + b2.
  auto W1 = Var<float>::parameter(Tensor<float>::randn({hidden, 2}, rng, 0, 1.0));
  auto b1 = Var<float>::parameter(Tensor<float>::zeros({hidden}));
  auto W2 =
      Var<float>::parameter(Tensor<float>::randn({2, hidden}, rng, 0, 1.0 / std::sqrt(hidden)));
  auto b2 = Var<float>::parameter(Tensor<float>::zeros({2}));
  std::vector<Var<float>> params{W1, b1, W2, b2};
  std::vector<Tensor<float>> velocity;
  for (auto& p : params) velocity.push_back(Tensor<float>::zeros(p.shape()));

  const float lr = 0.1f, momentum = 0.9f;
  float loss_value = 0;
  for (int step = 0; step <= 2000; ++step) {
    auto logits = linear(relu(linear(x, W1) + b1), W2) + b2;  // [n, 2]
    auto loss = cross_entropy(logits, labels);
    loss.backward();
    loss_value = loss.item();
    {
      NoGrad no_grad;  // the update itself is not part of any graph
      for (size_t k = 0; k < params.size(); ++k) {
        velocity[k].assign(velocity[k] * momentum + params[k].grad());
        params[k].value() -= velocity[k] * lr;
        params[k].zero_grad();
      }
    }
    if (step % 250 == 0) {
      NoGrad no_grad;
      auto pred = linear(relu(linear(x, W1) + b1), W2) + b2;
      int64_t correct = 0;
      for (int64_t i = 0; i < n; ++i)
        correct += (pred.value()(i, 1) > pred.value()(i, 0)) == (labels(i) == 1);
      std::printf("step %4d  loss %.4f  accuracy %5.1f%%\n", step, loss_value, 100.0 * correct / n);
    }
  }
  // ln 2 = 0.693 is chance; a working MLP ends far below it.
  return loss_value < 0.2f ? 0 : 1;
}
