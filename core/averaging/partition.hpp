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

// How the parts of an all-reduce are sized by the members' bandwidths.
//   kMinMax        the all-reduce's slowest member finishes as early as it can (hivemind's load
//                  balancing): a member that reduces a fraction x of n members' vectors moves
//                  (1 + (n - 2) x) vectors, so fast members take more than their bandwidth share
//                  and slow ones may get nothing; where the slowest member's own vector decides
//                  the time, the slack is shared in proportion to what each member could take
//   kProportional  parts proportional to bandwidth
enum class PartRule { kMinMax, kProportional };
const char* to_string(PartRule r);

// Part sizes (elements) per member for `total` elements. Reducers (full and auxiliary members
// with positive bandwidth) share the elements by `rule`; clients get 0. With kMinMax a reducer
// whose share is below `min_part` gets none (unless every share is) and the others take its
// share, and fractions become integers by the Hagenbach-Bischoff method; with kProportional a
// reducer below `min_part` is dropped (the fastest always stays) and sizes are rounded by
// largest remainder. Sizes always add up to `total`; every member computes the same sizes. Error
// if the group has no reducer but `total` > 0.
Result<std::vector<std::uint64_t>> balance_parts(std::uint64_t total, std::span<const double> bandwidth,
                                                 std::span<const MemberKind> kinds, std::uint64_t min_part,
                                                 PartRule rule = PartRule::kMinMax);

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
