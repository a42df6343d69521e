#pragma once
// How a group splits its tensors for a butterfly all-reduce.
//
// Every member flattens its tensors (in schema order) into one float32 vector. The vector is cut
// into one contiguous part per reducing member, sized by bandwidth (load balancing); each part is
// cut again into pieces that never cross a tensor boundary (so each piece has one tensor's codec)
// and hold at most `piece_elements` values. Every member computes the same parts and pieces from
// the group description, so no piece layout travels on the wire.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/compression/codecs.hpp"
#include "core/runtime/error.hpp"

namespace apiary::averaging {

// The shapes of the tensors being averaged, in order. Empty shape: a scalar; a zero dimension:
// an empty tensor.
struct TensorSchema {
  std::vector<std::vector<std::int64_t>> shapes;

  std::uint64_t numel(std::size_t i) const;
  std::uint64_t total() const;
  std::vector<std::uint64_t> sizes() const;
  // Identifies the schema (shapes and the float32 element type) across peers.
  std::uint64_t hash() const;
  std::string describe() const;  // "[3x4, 10, scalar]"
  bool operator==(const TensorSchema&) const = default;
};

struct Tensor {
  std::vector<std::int64_t> shape;
  std::vector<float> data;
};

// Flattens tensors into one vector; an error names the first tensor whose shape or element count
// does not match the schema.
Result<std::vector<float>> flatten(const TensorSchema& schema, const std::vector<Tensor>& tensors);
// The inverse; an error if `flat` has the wrong length.
Result<std::vector<Tensor>> unflatten(const TensorSchema& schema, std::span<const float> flat);

enum class MemberKind : std::uint8_t {
  kFull = 0,    // sends its tensors and reduces a part
  kClient = 1,  // sends its tensors, reduces nothing (behind NAT, or weak)
  kAux = 2,     // reduces a part, contributes no tensors
};
const char* to_string(MemberKind k);
inline bool sends(MemberKind k) { return k != MemberKind::kAux; }
inline bool reduces(MemberKind k) { return k != MemberKind::kClient; }

// Part sizes (elements) per member for `total` elements: reducers (full and auxiliary members with
// positive bandwidth) get shares proportional to their bandwidth, rounded by largest remainder so
// the sizes add up to `total`; a reducer whose share would be below `min_part` gets none and its
// share goes to the others (the fastest reducer always keeps one). Clients get 0. Error if the
// group has no reducer but `total` > 0.
Result<std::vector<std::uint64_t>> balance_parts(std::uint64_t total, std::span<const double> bandwidth,
                                                 std::span<const MemberKind> kinds,
                                                 std::uint64_t min_part);

// Which codec a tensor travels with: tensors of at least `min_elements` values use `codec`,
// smaller ones (biases, norms, scalars) go as exact float32.
struct CodecPolicy {
  compression::Codec codec = compression::Codec::kFloat32;
  std::uint64_t min_elements = 0;
  compression::Codec for_tensor(std::uint64_t numel) const {
    return numel >= min_elements ? codec : compression::Codec::kFloat32;
  }
};

struct Piece {
  std::uint64_t begin = 0;  // offset in the flattened vector
  std::uint64_t end = 0;
  std::uint32_t tensor = 0;
  std::uint64_t size() const { return end - begin; }
};

// The pieces of part [begin, end) of a vector with the given tensor sizes: in order, never empty,
// never crossing a tensor boundary, at most `piece_elements` long.
std::vector<Piece> make_pieces(std::span<const std::uint64_t> tensor_sizes, std::uint64_t begin,
                               std::uint64_t end, std::uint64_t piece_elements);

}  // namespace apiary::averaging
