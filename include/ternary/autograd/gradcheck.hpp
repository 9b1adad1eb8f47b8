// gradcheck: compares the tape's gradients with central finite differences, in double.
//
//   auto r = gradcheck([](std::vector<Var<double>>& in) { return tanh(in[0] * in[1]); },
//                      {Tensor<double>::randn({3, 4}, rng), Tensor<double>::randn({4}, rng)});
//   REQUIRE(r.ok);   // r.report says which input and element failed, and by how much
//
// The function's output is reduced with fixed random weights w (L = sum(w * f(x))), so
// every output element is checked at once. Inputs may be non-contiguous views: they are
// perturbed in place through the view, so strided code paths are exercised too.
#pragma once

#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "ternary/autograd/var.hpp"

namespace ternary {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-6;
  double rtol = 1e-4;
  uint64_t seed = 1234;
  std::vector<bool> check;  // per input; empty = all
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0;
  std::string report;
};

namespace detail {
inline std::vector<int64_t> unravel(int64_t flat, const Shape& s) {
  std::vector<int64_t> idx(s.size());
  for (int d = s.size() - 1; d >= 0; --d) {
    idx[d] = flat % s[d];
    flat /= s[d];
  }
  return idx;
}
inline double weighted_sum(const Tensor<double>& out, const Tensor<double>& w) {
  auto a = out.to_vector(), b = w.to_vector();
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}
}  // namespace detail

inline GradcheckResult gradcheck(const std::function<Var<double>(std::vector<Var<double>>&)>& f,
                                 const std::vector<Tensor<double>>& inputs,
                                 GradcheckOptions opt = {}) {
  GradcheckResult result;
  std::ostringstream report;
  // Analytic gradients.
  std::vector<Var<double>> vars;
  for (const auto& t : inputs) vars.push_back(Var<double>::parameter(t));
  Var<double> out = f(vars);
  Rng rng(opt.seed);
  auto w = Tensor<double>::randn(out.shape(), rng);
  if (out.requires_grad()) out.backward(w);

  std::vector<Var<double>> probe;
  for (const auto& t : inputs) probe.push_back(Var<double>::constant(t));
  for (size_t k = 0; k < inputs.size(); ++k) {
    if (!opt.check.empty() && !opt.check[k]) continue;
    const Tensor<double>& x = inputs[k];
    Tensor<double> analytic =
        vars[k].grad().defined() ? vars[k].grad() : Tensor<double>::zeros(x.shape());
    for (int64_t i = 0; i < x.numel(); ++i) {
      auto idx = detail::unravel(i, x.shape());
      double& xi = x.at(idx);
      const double saved = xi;
      double lp, lm;
      {
        NoGrad ng;
        xi = saved + opt.eps;
        lp = detail::weighted_sum(f(probe).value(), w);
        xi = saved - opt.eps;
        lm = detail::weighted_sum(f(probe).value(), w);
      }
      xi = saved;
      const double numeric = (lp - lm) / (2 * opt.eps);
      const double a = analytic.at(idx);
      const double err = std::abs(a - numeric);
      result.max_abs_error = std::max(result.max_abs_error, err);
      if (err > opt.atol + opt.rtol * std::abs(numeric)) {
        if (result.ok) report << "gradcheck failed:\n";
        result.ok = false;
        report << "  input " << k << " shape " << x.shape() << " element " << to_string(Dims(idx))
               << ": analytic " << a << ", numeric " << numeric << " (error " << err << ")\n";
      }
    }
  }
  if (result.ok) report << "gradcheck passed (max abs error " << result.max_abs_error << ")";
  result.report = report.str();
  return result;
}

}  // namespace ternary
