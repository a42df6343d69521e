#pragma once
// The exit codes of `apiary` and `apiary-train`: one per kind of outcome, so that a script can
// tell a missing key from an unreachable swarm, or a refused output from a failed run.
namespace apiary::real {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;    // the run or operation failed (unreachable peers, a crash)
inline constexpr int kExitBadInput = 2;  // a broken scenario or option; nothing ran
inline constexpr int kExitNotFound = 3;  // dht get: the swarm answered and holds no such key
inline constexpr int kExitOutput = 4;    // the output exists (no --force) or cannot be written; nothing ran
inline constexpr int kExitNoSwarm = 5;   // a peer told to join reached no one
// Interrupted by a signal: 128 + its number (130 for SIGINT, 143 for SIGTERM), as shells report it.

}  // namespace apiary::real
