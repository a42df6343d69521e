#pragma once
// PowerSGD gradient compression (Vogels, Karimireddy and Jaggi, NeurIPS 2019), as hivemind
// averages with it: every gradient tensor of two or more dimensions is seen as an n x m matrix
// M (its first dimension by the rest) and sent as a rank-r pair instead of n x m values.
//
// One step of the collaborative optimizer with rank r:
//  1. M += the error left by the last step (error feedback); P = M Q, with Q the last step's
//     (warm start; the first Q is drawn from a seed every peer shares);
//  2. all-reduce [every P, every tensor left uncompressed] (weighted mean); orthonormalise the
//     mean P's columns (Gram-Schmidt, the same on every peer);
//  3. Q = M^T P; all-reduce [every Q];
//  4. the step's gradient is P Q^T for each compressed tensor (the mean of the uncompressed ones as
//     they are); each peer keeps M - P Q^T as its error, and Q for the next step.
// A tensor is compressed only where (n + m) r < n m. Bytes per step: (n + m) r per compressed
// tensor instead of n m. Every member of a group should hold the same Q: after a step they do
// (the group's mean); a peer that joins late starts from the seeded Q, which skews the P of its
// first step, and holds the group's Q from then on. A step that fails loses its gradient, as
// without compression; the error carried so far stays.
#include <cstdint>
#include <span>
#include <vector>

#include "core/averaging/partition.hpp"

namespace apiary::optim {

class PowerSgd {
 public:
  // `rank` >= 1; `seed` must be the same on every peer (the first Q).
  PowerSgd(averaging::TensorSchema schema, std::uint32_t rank, std::uint64_t seed);

  const averaging::TensorSchema& first_schema() const { return first_; }   // every P, then the rest
  const averaging::TensorSchema& second_schema() const { return second_; }  // every Q
  std::size_t compressed_tensors() const { return mats_.size(); }

  // Step 1: adds the error to `grad` (the gradient in the model's schema, kept for step 3) and
  // returns the first round's input.
  std::vector<float> begin(std::span<const float> grad);
  // Step 2 to 3: takes the first round's mean, returns the second round's input.
  std::vector<float> middle(std::span<const float> first_mean);
  // Step 4: takes the second round's mean; returns the step's gradient in the model's schema and
  // updates the error and Q.
  std::vector<float> finish(std::span<const float> second_mean);

 private:
  struct Mat {
    std::size_t tensor = 0, n = 0, m = 0;
    std::uint64_t at = 0;                 // offset in the model's flat vector
    std::uint64_t p_at = 0, q_at = 0;     // offsets in the rounds' vectors
    std::vector<float> q;                 // m x r, row-major: the warm start
    std::vector<float> p;                 // n x r: this step's orthonormal P
  };
  averaging::TensorSchema schema_, first_, second_;
  std::uint32_t rank_;
  std::vector<Mat> mats_;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> plain_;  // (offset, size) of uncompressed tensors
  std::uint64_t plain_at_ = 0;  // where they start in the first round's vector
  std::vector<float> error_;    // error feedback, in the model's schema
  std::vector<float> m_;        // this step's gradient plus error
  std::vector<float> plain_mean_;
};

}  // namespace apiary::optim
