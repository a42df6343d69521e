#pragma once
// A reference model in plain C++ (Eigen) for simulated training: multinomial logistic regression
// (one linear layer and a softmax) on flattened images. Real math at simulated time: the
// collaborative protocol in ns-3 trains a real model and reports a real loss, while a compute
// model decides how long each batch takes. Parameters are one flat vector [W (classes x inputs),
// b (classes)], so they go through the all-reduce as they are.
#include <cstdint>
#include <span>
#include <vector>

#include "core/averaging/partition.hpp"

namespace apiary::optim {

// Examples: `inputs` floats per example, row-major, and a label per example.
struct Examples {
  std::size_t inputs = 0;
  std::vector<float> x;
  std::vector<std::uint8_t> y;
  std::size_t size() const { return y.size(); }
};

class SoftmaxRegression {
 public:
  SoftmaxRegression(std::size_t inputs, std::size_t classes) : inputs_(inputs), classes_(classes) {}
  std::size_t parameters() const { return classes_ * inputs_ + classes_; }
  averaging::TensorSchema schema() const;
  // Gradient of the summed cross-entropy over the examples `rows` of `data`; returns the summed loss.
  double grad_sum(std::span<const float> params, const Examples& data, std::span<const std::size_t> rows,
                  std::span<float> grad) const;
  struct Eval {
    double loss = 0;      // mean cross-entropy
    double accuracy = 0;  // fraction correct
  };
  Eval evaluate(std::span<const float> params, const Examples& data, std::size_t limit) const;

 private:
  std::size_t inputs_, classes_;
};

}  // namespace apiary::optim
