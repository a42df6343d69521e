#include "core/averaging/partition.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace apiary::averaging {

std::uint64_t TensorSchema::numel(std::size_t i) const {
  std::uint64_t n = 1;
  for (auto d : shapes[i]) n *= static_cast<std::uint64_t>(d < 0 ? 0 : d);
  return n;
}

std::uint64_t TensorSchema::total() const {
  std::uint64_t t = 0;
  for (std::size_t i = 0; i < shapes.size(); ++i) t += numel(i);
  return t;
}

std::vector<std::uint64_t> TensorSchema::sizes() const {
  std::vector<std::uint64_t> out;
  for (std::size_t i = 0; i < shapes.size(); ++i) out.push_back(numel(i));
  return out;
}

std::uint64_t TensorSchema::hash() const {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  auto mix = [&h](std::uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 0x100000001b3ULL;
    }
  };
  mix(0xf32);  // element type: float32
  mix(shapes.size());
  for (const auto& s : shapes) {
    mix(s.size());
    for (auto d : s) mix(static_cast<std::uint64_t>(d));
  }
  return h;
}

std::string TensorSchema::describe() const {
  std::string out = "[";
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    if (i) out += ", ";
    if (shapes[i].empty()) out += "scalar";
    for (std::size_t j = 0; j < shapes[i].size(); ++j) {
      if (j) out += "x";
      out += std::to_string(shapes[i][j]);
    }
  }
  return out + "]";
}

Result<std::vector<float>> flatten(const TensorSchema& schema, const std::vector<Tensor>& tensors) {
  if (tensors.size() != schema.shapes.size())
    return Error{ErrorCode::kInvalidArgument, "expected " + std::to_string(schema.shapes.size()) +
                                                  " tensors " + schema.describe() + ", got " +
                                                  std::to_string(tensors.size())};
  std::vector<float> flat;
  flat.reserve(schema.total());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    if (t.shape != schema.shapes[i] || t.data.size() != schema.numel(i)) {
      TensorSchema got{{t.shape}};
      return Error{ErrorCode::kInvalidArgument,
                   "tensor " + std::to_string(i) + " has shape " + got.describe() + " and " +
                       std::to_string(t.data.size()) + " values; the schema expects " +
                       TensorSchema{{schema.shapes[i]}}.describe()};
    }
    flat.insert(flat.end(), t.data.begin(), t.data.end());
  }
  return flat;
}

Result<std::vector<Tensor>> unflatten(const TensorSchema& schema, std::span<const float> flat) {
  if (flat.size() != schema.total())
    return Error{ErrorCode::kInvalidArgument, "flat vector has " + std::to_string(flat.size()) +
                                                  " values; schema " + schema.describe() + " needs " +
                                                  std::to_string(schema.total())};
  std::vector<Tensor> out;
  std::uint64_t at = 0;
  for (std::size_t i = 0; i < schema.shapes.size(); ++i) {
    const auto n = schema.numel(i);
    out.push_back(Tensor{schema.shapes[i], std::vector<float>(flat.begin() + static_cast<std::ptrdiff_t>(at),
                                                              flat.begin() + static_cast<std::ptrdiff_t>(at + n))});
    at += n;
  }
  return out;
}

const char* to_string(MemberKind k) {
  switch (k) {
    case MemberKind::kFull: return "full";
    case MemberKind::kClient: return "client";
    case MemberKind::kAux: return "aux";
  }
  return "?";
}

const char* to_string(PartRule r) { return r == PartRule::kMinMax ? "minmax" : "proportional"; }

namespace {

std::vector<std::uint64_t> proportional_parts(std::uint64_t total, std::span<const double> bandwidth, std::vector<std::size_t> active,
                                              std::uint64_t min_part) {
  std::vector<std::uint64_t> sizes(bandwidth.size(), 0);
  // Drop the slowest reducer while its share is below min_part; the fastest always stays.
  for (;;) {
    double sum = 0;
    for (auto i : active) sum += bandwidth[i];
    auto slowest = std::min_element(active.begin(), active.end(), [&](std::size_t a, std::size_t b) {
      return bandwidth[a] != bandwidth[b] ? bandwidth[a] < bandwidth[b] : a > b;
    });
    if (active.size() == 1 || static_cast<double>(total) * bandwidth[*slowest] / sum >= static_cast<double>(min_part))
      break;
    active.erase(slowest);
  }
  double sum = 0;
  for (auto i : active) sum += bandwidth[i];
  std::uint64_t given = 0;
  std::vector<std::pair<double, std::size_t>> remainders;
  for (auto i : active) {
    const double share = static_cast<double>(total) * bandwidth[i] / sum;
    sizes[i] = static_cast<std::uint64_t>(std::floor(share));
    given += sizes[i];
    remainders.emplace_back(share - std::floor(share), i);
  }
  // Largest remainder first; ties to the lower index so every member computes the same sizes.
  std::sort(remainders.begin(), remainders.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  for (std::size_t k = 0; given < total; k = (k + 1) % remainders.size(), ++given)
    ++sizes[remainders[k].second];
  return sizes;
}

// The fractions of the min-max rule. With n members, reducer i's time is proportional to
// (1 + (n - 2) x_i) / b_i (its own vector out and the average back, plus the others' pieces of
// its part in and the average out); members with no bandwidth reduce nothing and their time
// does not depend on x. The least possible time t is the larger of (a) the level at which the
// fastest reducers, filled up to it, take everything — x_i = (t b_i - 1) / (n - 2) — and (b) the
// slowest reducer's time with nothing to reduce, 1 / b_min. Each reducer could take
// c_i = clamp((t b_i - 1) / (n - 2), 0, 1) without passing t; the fractions are c / sum(c)
// (exactly the filled levels when (a) decides, since then sum(c) = 1).
std::vector<double> minmax_fractions(std::span<const double> b, const std::vector<std::size_t>& active, std::size_t n) {
  std::vector<double> x(b.size(), 0.0);
  std::vector<double> c(b.size(), 0.0);
  if (n <= 2) {
    for (auto i : active) c[i] = 1;  // each member moves one vector whatever its part
  } else {
    const double m2 = static_cast<double>(n - 2);
    std::vector<std::size_t> fast = active;
    std::sort(fast.begin(), fast.end(), [&](std::size_t p, std::size_t q) { return b[p] != b[q] ? b[p] > b[q] : p < q; });
    double t_fill = 0, sum_b = 0;
    for (std::size_t m = 0; m < fast.size(); ++m) {
      sum_b += b[fast[m]];
      const double t = (m2 + static_cast<double>(m + 1)) / sum_b;  // the top m+1 filled to level t
      t_fill = t;
      if (m + 1 == fast.size() || t * b[fast[m + 1]] <= 1) break;  // the next one would get nothing
    }
    double t = t_fill;
    for (auto i : active) t = std::max(t, 1.0 / b[i]);
    for (auto i : active) c[i] = std::clamp((t * b[i] - 1) / m2, 0.0, 1.0);
  }
  double sum = 0;
  for (auto i : active) sum += c[i];
  for (auto i : active) x[i] = c[i] / sum;
  return x;
}

// Integer sizes from fractions by the Hagenbach-Bischoff method: floor of each share, then one
// more element at a time to the member with the largest fraction / (size + 1), ties to the lower
// index.
std::vector<std::uint64_t> hagenbach_bischoff(std::uint64_t total, const std::vector<double>& x) {
  double sum = 0;
  for (double v : x) sum += v;
  std::vector<std::uint64_t> sizes(x.size(), 0);
  std::uint64_t given = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    sizes[i] = static_cast<std::uint64_t>(std::floor(static_cast<double>(total) * x[i] / sum));
    given += sizes[i];
  }
  if (given > total) {  // (rounding cannot make it so, but sizes must never exceed the total)
    std::fill(sizes.begin(), sizes.end(), 0);
    given = 0;
  }
  for (; given < total; ++given) {
    std::size_t best = 0;
    double best_q = -1;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double q = x[i] / static_cast<double>(sizes[i] + 1);
      if (q > best_q) {
        best_q = q;
        best = i;
      }
    }
    ++sizes[best];
  }
  return sizes;
}

}  // namespace

Result<std::vector<std::uint64_t>> balance_parts(std::uint64_t total, std::span<const double> bandwidth,
                                                 std::span<const MemberKind> kinds, std::uint64_t min_part, PartRule rule) {
  const std::size_t n = kinds.size();
  if (bandwidth.size() != n) return Error{ErrorCode::kInvalidArgument, "one bandwidth per member is required"};
  std::vector<std::size_t> active;
  for (std::size_t i = 0; i < n; ++i)
    if (reduces(kinds[i]) && bandwidth[i] > 0 && std::isfinite(bandwidth[i])) active.push_back(i);
  if (total == 0) return std::vector<std::uint64_t>(n, 0);
  if (active.empty())
    return Error{ErrorCode::kInvalidArgument, "the group has no reducer (every member is a client or has no bandwidth)"};
  if (rule == PartRule::kProportional) return proportional_parts(total, bandwidth, std::move(active), min_part);
  std::vector<double> x = minmax_fractions(bandwidth, active, n);
  // Shares below min_part go to the others, unless every share is that small.
  const double floor_share = static_cast<double>(min_part) / static_cast<double>(total);
  if (*std::max_element(x.begin(), x.end()) >= floor_share)
    for (auto& v : x)
      if (v < floor_share) v = 0;
  return hagenbach_bischoff(total, x);
}

std::vector<Piece> make_pieces(std::span<const std::uint64_t> tensor_sizes, std::uint64_t begin,
                               std::uint64_t end, std::uint64_t piece_elements) {
  std::vector<Piece> out;
  if (piece_elements == 0) piece_elements = 1;
  std::uint64_t tensor_start = 0;
  for (std::uint32_t t = 0; t < tensor_sizes.size() && tensor_start < end; ++t) {
    const std::uint64_t tensor_end = tensor_start + tensor_sizes[t];
    std::uint64_t a = std::max(begin, tensor_start);
    const std::uint64_t b = std::min(end, tensor_end);
    while (a < b) {
      const std::uint64_t e = std::min(b, a + piece_elements);
      out.push_back(Piece{a, e, t});
      a = e;
    }
    tensor_start = tensor_end;
  }
  return out;
}

}  // namespace apiary::averaging
