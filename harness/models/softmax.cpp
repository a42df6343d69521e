#include "harness/models/softmax.hpp"

#include <Eigen/Dense>
#include <cmath>
#include <stdexcept>

namespace apiary::optim {

namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Row-wise softmax in place; returns the summed cross-entropy of the labelled classes.
double softmax_rows(RowMatrix& z, const std::vector<std::uint8_t>& labels) {
  double loss = 0;
  for (Eigen::Index r = 0; r < z.rows(); ++r) {
    const float m = z.row(r).maxCoeff();
    z.row(r) = (z.row(r).array() - m).exp();
    const float s = z.row(r).sum();
    z.row(r) /= s;
    loss -= std::log(std::max(z(r, labels[static_cast<std::size_t>(r)]), 1e-30f));
  }
  return loss;
}

}  // namespace

averaging::TensorSchema SoftmaxRegression::schema() const {
  return averaging::TensorSchema{{{static_cast<std::int64_t>(classes_), static_cast<std::int64_t>(inputs_)},
                                  {static_cast<std::int64_t>(classes_)}}};
}

double SoftmaxRegression::grad_sum(std::span<const float> params, const Examples& data, std::span<const std::size_t> rows,
                                   std::span<float> grad) const {
  if (params.size() != parameters() || grad.size() != parameters())
    throw std::invalid_argument("softmax regression: parameter or gradient size mismatch");
  if (data.inputs != inputs_) throw std::invalid_argument("softmax regression: examples have the wrong width");
  const auto n = static_cast<Eigen::Index>(rows.size());
  const auto in = static_cast<Eigen::Index>(inputs_), k = static_cast<Eigen::Index>(classes_);
  RowMatrix x(n, in);
  std::vector<std::uint8_t> labels(rows.size());
  for (Eigen::Index r = 0; r < n; ++r) {
    const std::size_t i = rows[static_cast<std::size_t>(r)];
    x.row(r) = Eigen::Map<const Eigen::RowVectorXf>(data.x.data() + i * inputs_, in);
    labels[static_cast<std::size_t>(r)] = data.y[i];
  }
  Eigen::Map<const RowMatrix> w(params.data(), k, in);
  Eigen::Map<const Eigen::RowVectorXf> b(params.data() + k * in, k);
  RowMatrix z = x * w.transpose();
  z.rowwise() += b;
  const double loss = softmax_rows(z, labels);
  for (Eigen::Index r = 0; r < n; ++r) z(r, labels[static_cast<std::size_t>(r)]) -= 1.0f;  // dL/dz
  Eigen::Map<RowMatrix> gw(grad.data(), k, in);
  Eigen::Map<Eigen::RowVectorXf> gb(grad.data() + k * in, k);
  gw.noalias() = z.transpose() * x;
  gb = z.colwise().sum();
  return loss;
}

SoftmaxRegression::Eval SoftmaxRegression::evaluate(std::span<const float> params, const Examples& data,
                                                    std::size_t limit) const {
  const std::size_t n = std::min(limit, data.size());
  if (n == 0) return {};
  const auto in = static_cast<Eigen::Index>(inputs_), k = static_cast<Eigen::Index>(classes_);
  Eigen::Map<const RowMatrix> x(data.x.data(), static_cast<Eigen::Index>(n), in);
  Eigen::Map<const RowMatrix> w(params.data(), k, in);
  Eigen::Map<const Eigen::RowVectorXf> b(params.data() + k * in, k);
  RowMatrix z = x * w.transpose();
  z.rowwise() += b;
  std::size_t correct = 0;
  for (Eigen::Index r = 0; r < z.rows(); ++r) {
    Eigen::Index arg = 0;
    z.row(r).maxCoeff(&arg);
    correct += static_cast<std::size_t>(arg) == data.y[static_cast<std::size_t>(r)];
  }
  std::vector<std::uint8_t> labels(data.y.begin(), data.y.begin() + static_cast<std::ptrdiff_t>(n));
  const double loss = softmax_rows(z, labels);
  return {loss / static_cast<double>(n), static_cast<double>(correct) / static_cast<double>(n)};
}

}  // namespace apiary::optim
