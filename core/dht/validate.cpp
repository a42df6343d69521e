#include "core/dht/validate.hpp"

#include <sodium.h>

#include <cstring>
#include <fstream>
#include <stdexcept>

namespace apiary::dht {
namespace {

struct SodiumInit {
  SodiumInit() {
    if (sodium_init() < 0) throw std::runtime_error("libsodium failed to initialise");
  }
};
void ensure_sodium() { static SodiumInit once; }

std::string to_hex(const std::uint8_t* p, std::size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    s += d[p[i] >> 4];
    s += d[p[i] & 15];
  }
  return s;
}

bool from_hex(std::string_view h, std::uint8_t* out, std::size_t n) {
  if (h.size() != 2 * n) return false;
  auto v = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < n; ++i) {
    const int hi = v(h[2 * i]), lo = v(h[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<std::uint8_t>(hi * 16 + lo);
  }
  return true;
}

// The owner named in `text`, if any: nullopt if none; an error string if malformed.
struct Owner {
  bool named = false;
  bool valid = false;
  std::array<std::uint8_t, 32> key{};
};
Owner owner_in(std::string_view text) {
  Owner o;
  const auto at = text.find("[owner:");
  if (at == std::string_view::npos) return o;
  o.named = true;
  const auto end = text.find(']', at);
  if (end == std::string_view::npos) return o;
  o.valid = from_hex(text.substr(at + 7, end - at - 7), o.key.data(), 32);
  return o;
}

}  // namespace

Identity Identity::from_seed_bytes(const std::array<std::uint8_t, 32>& seed) {
  ensure_sodium();
  Identity id;
  id.seed_ = seed;
  crypto_sign_seed_keypair(id.public_key.data(), id.secret_key.data(), seed.data());
  return id;
}

Identity Identity::from_seed(std::uint64_t seed) {
  std::array<std::uint8_t, 32> s{};
  Rng rng(seed ^ 0x6964656e74697479ULL);
  for (std::size_t i = 0; i < 32; i += 8) {
    const auto v = rng.next();
    std::memcpy(s.data() + i, &v, 8);
  }
  return from_seed_bytes(s);
}

Identity Identity::generate() {
  ensure_sodium();
  std::array<std::uint8_t, 32> s{};
  randombytes_buf(s.data(), s.size());
  return from_seed_bytes(s);
}

unsigned id_work(const std::array<std::uint8_t, 32>& public_key) {
  const DhtId twice = DhtId::hash(DhtId::hash(public_key).b);
  unsigned bits = 0;
  for (std::uint8_t byte : twice.b) {
    if (byte == 0) {
      bits += 8;
      continue;
    }
    for (int k = 7; k >= 0 && !(byte >> k & 1); --k) ++bits;
    break;
  }
  return bits;
}

Identity Identity::with_work(std::uint64_t seed, unsigned bits) {
  for (std::uint64_t j = 0;; ++j) {
    Identity id = from_seed(seed + j * 0x9e3779b97f4a7c15ULL);
    if (id_work(id.public_key) >= bits) return id;
  }
}

Identity Identity::ground_near(const DhtId& target, int prefix, std::uint64_t seed, unsigned work) {
  for (std::uint64_t j = 0;; ++j) {
    Identity id = from_seed(seed + j * 0x9e3779b97f4a7c15ULL);
    if (id.id().common_prefix(target) >= prefix && id_work(id.public_key) >= work) return id;
  }
}

Identity Identity::generate_with_work(unsigned bits) {
  for (;;) {
    Identity id = generate();
    if (id_work(id.public_key) >= bits) return id;
  }
}

Identity Identity::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot read identity file");
  std::string hex;
  in >> hex;
  std::array<std::uint8_t, 32> s{};
  if (!from_hex(hex, s.data(), 32))
    throw std::runtime_error(path + ": identity file must hold 64 hex digits (an Ed25519 seed)");
  return from_seed_bytes(s);
}

void Identity::save(const std::string& path) const {
  std::ofstream out(path, std::ios::trunc);
  if (!out) throw std::runtime_error(path + ": cannot write identity file");
  out << to_hex(seed_.data(), seed_.size()) << "\n";
}

std::string owner_tag_of(const std::array<std::uint8_t, 32>& public_key) {
  return "[owner:" + to_hex(public_key.data(), public_key.size()) + "]";
}

std::string Identity::owner_tag() const { return owner_tag_of(public_key); }

std::optional<std::array<std::uint8_t, 32>> owner_of_tag(std::string_view tag) {
  const Owner o = owner_in(tag);
  if (!o.valid || tag.size() != 7 + 64 + 1 || tag.substr(0, 7) != "[owner:") return std::nullopt;
  return o.key;
}

std::array<std::uint8_t, 64> Identity::sign_bytes(std::span<const std::uint8_t> msg) const {
  std::array<std::uint8_t, 64> sig{};
  crypto_sign_detached(sig.data(), nullptr, msg.data(), msg.size(), secret_key.data());
  return sig;
}

bool verify_signature(const std::array<std::uint8_t, 32>& key, std::span<const std::uint8_t> msg,
                      std::span<const std::uint8_t> sig) {
  return sig.size() == 64 && crypto_sign_verify_detached(sig.data(), msg.data(), msg.size(), key.data()) == 0;
}

void Identity::sign(Record& r) const {
  ensure_sodium();
  r.signature.assign(64, 0);
  const Bytes msg = r.signed_bytes();
  crypto_sign_detached(r.signature.data(), nullptr, msg.data(), msg.size(), secret_key.data());
}

std::optional<std::string> SignatureValidator::check(const Record& r) const {
  const Owner by_key = owner_in(r.key);
  const Owner by_sub = r.subkey ? owner_in(*r.subkey) : Owner{};
  if (!by_key.named && !by_sub.named) return std::nullopt;
  for (const Owner* o : {&by_key, &by_sub}) {
    if (!o->named) continue;
    if (!o->valid) return "malformed [owner:...] tag";
    if (r.signature.size() != 64) return "record names an owner but carries no signature";
    ensure_sodium();
    const Bytes msg = r.signed_bytes();
    if (!verify(o->key, r, msg)) return "signature does not match the owner named in the record";
  }
  return std::nullopt;
}

std::size_t SignatureValidator::DigestHash::operator()(const Digest& d) const noexcept {
  std::size_t h;
  std::memcpy(&h, d.data(), sizeof h);
  return h;
}

bool SignatureValidator::verify(const std::array<std::uint8_t, 32>& key, const Record& r, const Bytes& msg) const {
  Digest d;
  crypto_generichash_state st;
  crypto_generichash_init(&st, nullptr, 0, d.size());
  crypto_generichash_update(&st, key.data(), key.size());
  crypto_generichash_update(&st, r.signature.data(), r.signature.size());
  crypto_generichash_update(&st, msg.data(), msg.size());
  crypto_generichash_final(&st, d.data(), d.size());
  if (verified_.count(d)) return true;
  ++verifications_;
  if (crypto_sign_verify_detached(r.signature.data(), msg.data(), msg.size(), key.data()) != 0) return false;
  if (remembered_ == 0) return true;
  if (order_.size() >= remembered_) {
    verified_.erase(order_.front());
    order_.pop_front();
  }
  verified_.insert(d);
  order_.push_back(d);
  return true;
}

void SchemaValidator::require(std::string prefix, Type type, std::size_t max_size) {
  rules_.push_back(Rule{std::move(prefix), type, max_size});
}

void SchemaValidator::require_owned(std::string suffix, std::size_t max_size, ValueCheck check) {
  owned_.push_back(OwnedRule{std::move(suffix), max_size, std::move(check)});
}

std::optional<std::string> SchemaValidator::check(const Record& r) const {
  for (const auto& rule : owned_) {
    if (r.key.size() < rule.suffix.size() || r.key.compare(r.key.size() - rule.suffix.size(), rule.suffix.size(), rule.suffix) != 0)
      continue;
    if (!r.subkey) return "'" + rule.suffix + "' keys hold owners' entries only, not a plain value";
    const Owner o = owner_in(*r.subkey);
    if (!o.named || !o.valid || r.subkey->size() != owner_tag_of(o.key).size())
      return "an entry under a '" + rule.suffix + "' key must have its owner's tag as its subkey";
    if (r.value.size() > rule.max_size)
      return "value larger than the schema allows for '" + rule.suffix + "' (" + std::to_string(r.value.size()) + " > " +
             std::to_string(rule.max_size) + " bytes)";
    if (rule.check)
      if (auto why = rule.check(r.value)) return "value under '" + rule.suffix + "': " + *why;
  }
  for (const auto& rule : rules_) {
    if (r.key.rfind(rule.prefix, 0) != 0) continue;
    if (r.value.size() > rule.max_size) return "value larger than the schema allows for '" + rule.prefix + "'";
    switch (rule.type) {
      case Type::kInt64:
      case Type::kFloat64:
        if (r.value.size() != 8) return "value under '" + rule.prefix + "' must be 8 bytes";
        break;
      case Type::kUtf8: {
        // Validate UTF-8 structurally.
        std::size_t i = 0;
        const auto& v = r.value;
        while (i < v.size()) {
          const std::uint8_t c = v[i];
          const std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
          if (n == 0 || i + n > v.size()) return "value under '" + rule.prefix + "' is not UTF-8";
          for (std::size_t j = 1; j < n; ++j)
            if ((v[i + j] >> 6) != 2) return "value under '" + rule.prefix + "' is not UTF-8";
          i += n;
        }
        break;
      }
      case Type::kBytes:
        break;
    }
  }
  return std::nullopt;
}

std::optional<std::string> validate(const std::vector<std::shared_ptr<Validator>>& validators,
                                    const Record& r) {
  for (const auto& v : validators)
    if (auto why = v->check(r)) return why;
  return std::nullopt;
}

}  // namespace apiary::dht
