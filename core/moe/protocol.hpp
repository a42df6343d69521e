#pragma once
// The expert protocol: what a client asks an expert server and what it answers, the same in
// every world. A LibTorch server (real/torch) computes on real tensors; the DMoE workload's
// servers in ns-3 and in one live process model the compute and carry size-only payloads of the
// same sizes. Tensors travel as a shape in the header and the values in the payload: float32 as
// raw bytes, or any other codec as compression::encode's self-describing blob.
//
//   info      uid                                  -> ExpertInfo (input/output widths, kind)
//   forward   uid, inputs [batch, ..., dim], keep  -> outputs, same codec
//   backward  uid, inputs then output gradients    -> input gradients; the server steps its
//             back to back, keep (the forward        optimizer
//             whose activations it may still hold)
#include <cstdint>
#include <string>
#include <vector>

#include "core/compression/codecs.hpp"
#include "core/runtime/payload.hpp"
#include "core/wire/codec.hpp"

namespace apiary::moe {

struct TensorShape {
  std::vector<std::int64_t> dims;
  // Values the shape holds (1 for a scalar).
  std::int64_t elements() const {
    std::int64_t n = 1;
    for (auto d : dims) n *= d;
    return n;
  }
  void encode(wire::Writer& w) const {
    w.varint(dims.size());
    for (auto d : dims) w.varint(static_cast<std::uint64_t>(d));
  }
  static TensorShape decode(wire::Reader& r) {
    TensorShape s;
    const auto n = r.varint_max(8, "tensor dimensions");
    for (std::uint64_t i = 0; i < n; ++i)
      s.dims.push_back(static_cast<std::int64_t>(r.varint_max(std::uint64_t{1} << 31, "dimension")));
    return s;
  }
};

// A tensor codec byte (compression::Codec); unknown values are a decode error.
inline std::uint8_t read_codec(wire::Reader& r) {
  const std::uint8_t c = r.u8();
  if (c > static_cast<std::uint8_t>(compression::Codec::kBlockwise8))
    throw wire::DecodeError("unknown tensor codec " + std::to_string(c));
  return c;
}

// An expert's answer: a tensor.
struct TensorReply {
  TensorShape shape;
  Payload payload;
  std::uint8_t codec = 0;  // compression::Codec of the payload
  void encode(wire::Writer& w) const {
    shape.encode(w);
    w.u8(codec);
  }
  static TensorReply decode(wire::Reader& r) {
    TensorReply t{TensorShape::decode(r), {}};
    t.codec = read_codec(r);
    return t;
  }
};

// keep != 0: the server keeps this forward's activations for the backward with the same id.
struct ForwardRequest {
  static constexpr std::uint32_t kMethod = 300;
  std::string uid;
  TensorShape shape;
  std::uint64_t keep = 0;
  Payload payload;
  std::uint8_t codec = 0;  // of the payload; the reply comes back in the same codec
  void encode(wire::Writer& w) const {
    w.str(uid);
    shape.encode(w);
    w.u64(keep);
    w.u8(codec);
  }
  static ForwardRequest decode(wire::Reader& r) {
    ForwardRequest q;
    q.uid = r.str(256);
    q.shape = TensorShape::decode(r);
    q.keep = r.u64();
    q.codec = read_codec(r);
    return q;
  }
};

// Inputs then output gradients, back to back in the payload.
struct BackwardRequest {
  static constexpr std::uint32_t kMethod = 301;
  std::string uid;
  TensorShape input, grad;
  std::uint64_t keep = 0;  // the forward whose activations the server may still hold
  Payload payload;
  std::uint8_t codec = 0;
  std::uint64_t input_bytes = 0;  // the payload's first part: the inputs
  void encode(wire::Writer& w) const {
    w.str(uid);
    input.encode(w);
    grad.encode(w);
    w.u64(keep);
    w.u8(codec);
    w.varint(input_bytes);
  }
  static BackwardRequest decode(wire::Reader& r) {
    BackwardRequest q;
    q.uid = r.str(256);
    q.input = TensorShape::decode(r);
    q.grad = TensorShape::decode(r);
    q.keep = r.u64();
    q.codec = read_codec(r);
    q.input_bytes = r.varint();
    return q;
  }
};

// A backward request for `uid`: the inputs then the output gradients in one payload (size-only
// when either part is).
inline BackwardRequest backward_request(std::string uid, TensorShape input, const Payload& inputs, TensorShape grad,
                                        const Payload& grads, std::uint64_t keep, std::uint8_t codec) {
  Payload both = Payload::size_only(inputs.size() + grads.size());
  if (inputs.has_data() && grads.has_data()) {
    Bytes bytes(inputs.data().begin(), inputs.data().end());
    bytes.insert(bytes.end(), grads.data().begin(), grads.data().end());
    both = Payload::bytes(std::move(bytes));
  }
  return BackwardRequest{std::move(uid), std::move(input), std::move(grad), keep, std::move(both), codec, inputs.size()};
}

struct InfoRequest {
  static constexpr std::uint32_t kMethod = 302;
  std::string uid;
  void encode(wire::Writer& w) const { w.str(uid); }
  static InfoRequest decode(wire::Reader& r) { return InfoRequest{r.str(256)}; }
};

// What an info request answers: the expert's input/output schema.
struct ExpertInfo {
  std::int64_t input_dim = 0, output_dim = 0;
  bool sequence = false;  // inputs [batch, seq, dim] instead of [batch, dim]
  std::string kind;
  void encode(wire::Writer& w) const {
    w.varint(static_cast<std::uint64_t>(input_dim));
    w.varint(static_cast<std::uint64_t>(output_dim));
    w.u8(sequence ? 1 : 0);
    w.str(kind);
  }
  static ExpertInfo decode(wire::Reader& r) {
    ExpertInfo i;
    i.input_dim = static_cast<std::int64_t>(r.varint_max(std::uint64_t{1} << 31, "input dim"));
    i.output_dim = static_cast<std::int64_t>(r.varint_max(std::uint64_t{1} << 31, "output dim"));
    i.sequence = r.u8() != 0;
    i.kind = r.str(64);
    return i;
  }
};

// Whether inputs of shape `dims` fit an expert: [batch, input_dim], or [batch, seq, input_dim]
// for a sequence expert.
inline bool fits(const ExpertInfo& e, const std::vector<std::int64_t>& dims) {
  return dims.size() == (e.sequence ? 3u : 2u) && dims.back() == e.input_dim;
}

// The error text for inputs that do not fit.
inline std::string misfit(const std::string& uid, const ExpertInfo& e, const std::vector<std::int64_t>& dims) {
  std::string got = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) got += (i ? ", " : "") + std::to_string(dims[i]);
  return "expert " + uid + " takes [batch, " + (e.sequence ? "seq, " : "") + std::to_string(e.input_dim) + "] inputs, got " +
         got + "]";
}

}  // namespace apiary::moe
