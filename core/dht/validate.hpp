#pragma once
// Record validation. A key or subkey that names an owner — it contains "[owner:<64 hex digits of
// an Ed25519 public key>]" — must carry that owner's signature over the record; anything else is
// refused, so nobody can write or overwrite another owner's record or subkey. A schema validator
// types the values under key prefixes. Validators run on every store a node accepts and on every
// value a lookup returns.
#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_set>
#include <vector>

#include "core/dht/record.hpp"

namespace apiary::dht {

// An Ed25519 key pair (libsodium). A peer's DHT id is the hash of its public key.
struct Identity {
  std::array<std::uint8_t, 32> public_key{};
  std::array<std::uint8_t, 64> secret_key{};

  static Identity from_seed(std::uint64_t seed);  // deterministic, for simulations
  static Identity generate();                     // from the OS's CSPRNG via libsodium
  // The cost of an id (S/Kademlia's static puzzle): keys are drawn until the hash of the id has
  // `bits` leading zero bits, about 2^bits Ed25519 key derivations (16 us each here). A swarm that
  // demands the work makes every Sybil id, and every id ground next to a chosen key, that much
  // dearer. The first from `seed` on, deterministic (simulations); or random.
  static Identity with_work(std::uint64_t seed, unsigned bits);
  static Identity generate_with_work(unsigned bits);
  // What a Sybil attacker does: keys drawn from `seed` on until the id shares its first `prefix`
  // bits with `target` and carries `work` bits of work (about 2^(prefix + work) derivations). For
  // the adversary suite and experiments that place Sybils next to a key.
  static Identity ground_near(const DhtId& target, int prefix, std::uint64_t seed, unsigned work = 0);
  // Key file: 64 hex digits of the 32-byte seed. Throws std::runtime_error on a bad file.
  static Identity load(const std::string& path);
  void save(const std::string& path) const;
  DhtId id() const { return DhtId::hash(public_key); }
  std::string owner_tag() const;  // "[owner:<hex>]"
  void sign(Record& r) const;
  // An Ed25519 signature over any bytes (messages that must name who sent them).
  std::array<std::uint8_t, 64> sign_bytes(std::span<const std::uint8_t> msg) const;

 private:
  std::array<std::uint8_t, 32> seed_{};
  static Identity from_seed_bytes(const std::array<std::uint8_t, 32>& seed);
};

// The work a public key's id carries: the leading zero bits of the hash of its id.
unsigned id_work(const std::array<std::uint8_t, 32>& public_key);

// "[owner:<hex>]": how keys and subkeys name the owner with this public key.
std::string owner_tag_of(const std::array<std::uint8_t, 32>& public_key);
// The public key `tag` is exactly the owner tag of; nullopt for anything else.
std::optional<std::array<std::uint8_t, 32>> owner_of_tag(std::string_view tag);

// Whether `sig` is `key`'s Ed25519 signature over `msg`.
bool verify_signature(const std::array<std::uint8_t, 32>& key, std::span<const std::uint8_t> msg,
                      std::span<const std::uint8_t> sig);

class Validator {
 public:
  virtual ~Validator() = default;
  // nullopt if acceptable, else why not.
  virtual std::optional<std::string> check(const Record& r) const = 0;
};

// One per node. A signature it has verified is remembered (by a BLAKE2b digest of the owner's key,
// the signature and the signed bytes, the last `remembered` of them), so the same record seen
// again (from another holder, in the next get, republished) costs a hash instead of an Ed25519
// verification. A record that differs in any signed byte has another digest.
class SignatureValidator final : public Validator {
 public:
  explicit SignatureValidator(std::size_t remembered = 4096) : remembered_(remembered) {}
  std::optional<std::string> check(const Record& r) const override;
  std::uint64_t verifications() const { return verifications_; }  // Ed25519 verifications done

 private:
  using Digest = std::array<std::uint8_t, 16>;
  struct DigestHash {
    std::size_t operator()(const Digest& d) const noexcept;
  };
  bool verify(const std::array<std::uint8_t, 32>& key, const Record& r, const Bytes& msg) const;
  std::size_t remembered_;
  mutable std::unordered_set<Digest, DigestHash> verified_;
  mutable std::deque<Digest> order_;
  mutable std::uint64_t verifications_ = 0;
};

class SchemaValidator final : public Validator {
 public:
  enum class Type { kInt64, kFloat64, kUtf8, kBytes };
  // Values under keys starting with `prefix` must be of `type` and at most `max_size` bytes.
  void require(std::string prefix, Type type, std::size_t max_size = SIZE_MAX);
  // Records under keys that end with `suffix` must be dictionary entries whose subkey is exactly an
  // owner tag (so each entry is written, and signed, by the owner it names: install a
  // SignatureValidator too), with values of at most `max_size` bytes that `check` accepts.
  using ValueCheck = std::function<std::optional<std::string>(std::span<const std::uint8_t>)>;
  void require_owned(std::string suffix, std::size_t max_size, ValueCheck check = {});
  std::optional<std::string> check(const Record& r) const override;

 private:
  struct Rule {
    std::string prefix;
    Type type;
    std::size_t max_size;
  };
  struct OwnedRule {
    std::string suffix;
    std::size_t max_size;
    ValueCheck check;
  };
  std::vector<Rule> rules_;
  std::vector<OwnedRule> owned_;
};

std::optional<std::string> validate(const std::vector<std::shared_ptr<Validator>>& validators,
                                    const Record& r);

}  // namespace apiary::dht
