#include "core/optim/powersgd.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "core/runtime/rng.hpp"

namespace apiary::optim {

namespace {

// Orthonormalises the r columns of the n x r row-major matrix `a` in place (modified
// Gram-Schmidt); a column that vanishes becomes zero.
void orthonormalise(std::vector<float>& a, std::size_t n, std::size_t r) {
  for (std::size_t j = 0; j < r; ++j) {
    for (std::size_t k = 0; k < j; ++k) {
      double dot = 0;
      for (std::size_t i = 0; i < n; ++i) dot += double(a[i * r + j]) * a[i * r + k];
      for (std::size_t i = 0; i < n; ++i) a[i * r + j] -= static_cast<float>(dot * a[i * r + k]);
    }
    double norm = 0;
    for (std::size_t i = 0; i < n; ++i) norm += double(a[i * r + j]) * a[i * r + j];
    norm = std::sqrt(norm);
    const double inv = norm > 1e-20 ? 1.0 / norm : 0.0;
    for (std::size_t i = 0; i < n; ++i) a[i * r + j] = static_cast<float>(a[i * r + j] * inv);
  }
}

// M is n x m (row-major), `in` and `out` have r columns. Adds M `in` to `out` (n rows from m), or
// with `transposed` M^T `in` (m rows from n). Zeros of M (sparse gradients) are skipped.
void multiply(const float* M, std::size_t n, std::size_t m, std::size_t r, const float* in, float* out, bool transposed) {
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t k = 0; k < m; ++k) {
      const float x = M[i * m + k];
      if (x == 0) continue;
      const float* a = in + (transposed ? i : k) * r;
      float* b = out + (transposed ? k : i) * r;
      for (std::size_t j = 0; j < r; ++j) b[j] += x * a[j];
    }
}

}  // namespace

PowerSgd::PowerSgd(averaging::TensorSchema schema, std::uint32_t rank, std::uint64_t seed)
    : schema_(std::move(schema)), rank_(rank) {
  if (rank_ == 0) throw std::invalid_argument("PowerSGD needs a rank of at least 1");
  Rng rng(seed);
  std::uint64_t at = 0, p_at = 0, q_at = 0;
  std::vector<std::vector<std::int64_t>> ps, qs, plain_shapes;
  for (std::size_t t = 0; t < schema_.shapes.size(); ++t) {
    const auto& shape = schema_.shapes[t];
    const std::uint64_t size = schema_.numel(t);
    std::uint64_t n = 0, m = 0;
    if (shape.size() >= 2) {
      n = static_cast<std::uint64_t>(shape[0]);
      m = n ? size / n : 0;
    }
    if (n && m && (n + m) * rank_ < n * m) {
      Mat mat{t, n, m, at, p_at, q_at, std::vector<float>(m * rank_), {}};
      for (auto& x : mat.q) x = static_cast<float>(rng.normal());
      ps.push_back({static_cast<std::int64_t>(n), static_cast<std::int64_t>(rank_)});
      qs.push_back({static_cast<std::int64_t>(m), static_cast<std::int64_t>(rank_)});
      p_at += n * rank_;
      q_at += m * rank_;
      mats_.push_back(std::move(mat));
    } else {
      plain_.emplace_back(at, size);
      plain_shapes.push_back(shape);
    }
    at += size;
  }
  plain_at_ = p_at;
  first_.shapes = ps;
  first_.shapes.insert(first_.shapes.end(), plain_shapes.begin(), plain_shapes.end());
  second_.shapes = qs;
  error_.assign(schema_.total(), 0.0f);
}

std::vector<float> PowerSgd::begin(std::span<const float> grad) {
  if (grad.size() != schema_.total())
    throw std::invalid_argument("PowerSGD: a gradient of " + std::to_string(grad.size()) + " values for the schema's " +
                                std::to_string(schema_.total()));
  m_.assign(grad.begin(), grad.end());
  for (std::size_t i = 0; i < m_.size(); ++i) m_[i] += error_[i];
  std::vector<float> out(first_.total(), 0.0f);
  const std::size_t r = rank_;
  for (auto& mat : mats_)  // P = M Q
    multiply(m_.data() + mat.at, mat.n, mat.m, r, mat.q.data(), out.data() + mat.p_at, false);
  std::uint64_t w = plain_at_;
  for (auto [at, size] : plain_) {
    std::copy_n(m_.data() + at, size, out.data() + w);
    w += size;
  }
  return out;
}

std::vector<float> PowerSgd::middle(std::span<const float> first_mean) {
  if (first_mean.size() != first_.total()) throw std::invalid_argument("PowerSGD: the first round's mean has the wrong size");
  const std::size_t r = rank_;
  std::vector<float> out(second_.total(), 0.0f);
  for (auto& mat : mats_) {  // orthonormal P, then Q = M^T P
    mat.p.assign(first_mean.begin() + static_cast<std::ptrdiff_t>(mat.p_at),
                 first_mean.begin() + static_cast<std::ptrdiff_t>(mat.p_at + mat.n * r));
    orthonormalise(mat.p, mat.n, r);
    multiply(m_.data() + mat.at, mat.n, mat.m, r, mat.p.data(), out.data() + mat.q_at, true);
  }
  plain_mean_.assign(first_mean.begin() + static_cast<std::ptrdiff_t>(plain_at_), first_mean.end());
  return out;
}

std::vector<float> PowerSgd::finish(std::span<const float> second_mean) {
  if (second_mean.size() != second_.total()) throw std::invalid_argument("PowerSGD: the second round's mean has the wrong size");
  const std::size_t r = rank_;
  std::vector<float> grad(schema_.total(), 0.0f);
  for (auto& mat : mats_) {  // the step's gradient P Q^T; the error M - P Q^T; Q for the next step
    mat.q.assign(second_mean.begin() + static_cast<std::ptrdiff_t>(mat.q_at),
                 second_mean.begin() + static_cast<std::ptrdiff_t>(mat.q_at + mat.m * r));
    float* G = grad.data() + mat.at;
    for (std::size_t i = 0; i < mat.n; ++i)
      for (std::size_t k = 0; k < mat.m; ++k) {
        double s = 0;
        for (std::size_t j = 0; j < r; ++j) s += double(mat.p[i * r + j]) * mat.q[k * r + j];
        G[i * mat.m + k] = static_cast<float>(s);
        error_[mat.at + i * mat.m + k] = m_[mat.at + i * mat.m + k] - static_cast<float>(s);
      }
  }
  std::uint64_t w = 0;
  for (auto [at, size] : plain_) {
    std::copy_n(plain_mean_.data() + w, size, grad.data() + at);
    w += size;
  }
  return grad;
}

}  // namespace apiary::optim
