#pragma once
// Errors are values: an RPC result says what went wrong (the peer is gone, it timed out, it
// answered with an error, its reply was garbage) so protocols can decide what to do.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>

namespace apiary {

enum class ErrorCode : std::uint8_t {
  kTimeout = 1,        // no reply within the call's deadline
  kUnreachable = 2,    // the transport could not reach the peer (refused, reset, closed)
  kRemote = 3,         // the peer's handler returned an error
  kBadMessage = 4,     // a message could not be decoded
  kUnknownMethod = 5,  // the peer has no handler for the method
  kCancelled = 6,      // the caller gave up
  kShutdown = 7,       // the local peer is stopping
  kTooLarge = 8,       // over a size limit
  kInvalidArgument = 9,
  kRejected = 10,      // the peer refused this caller (left out of a round, not accepting)
};

const char* to_string(ErrorCode code);

struct Error {
  ErrorCode code;
  std::string message;
  std::string describe() const { return std::string(to_string(code)) + ": " + message; }
};

// Thrown by Result::value() on an error, for code that prefers exceptions.
class ErrorException : public std::runtime_error {
 public:
  explicit ErrorException(Error e) : std::runtime_error(e.describe()), error_(std::move(e)) {}
  const Error& error() const { return error_; }

 private:
  Error error_;
};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & {
    if (!ok()) throw ErrorException(error());
    return std::get<0>(v_);
  }
  T&& value() && {
    if (!ok()) throw ErrorException(error());
    return std::get<0>(std::move(v_));
  }
  const T& value() const& {
    if (!ok()) throw ErrorException(error());
    return std::get<0>(v_);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }
  const T& operator*() const { return value(); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

struct Unit {};

}  // namespace apiary
