#include "harness/churn.hpp"

namespace apiary {

ChurnDriver::ChurnDriver(const SwarmSpec& spec, Metrics& metrics, Hooks hooks)
    : spec_(spec), metrics_(metrics), hooks_(std::move(hooks)), rng_(spec.seed ^ 0x636875726eULL) {}  // "churn"

void ChurnDriver::begin(std::uint32_t spared, Duration sessions_from, std::optional<std::uint32_t> churned) {
  const std::uint32_t n = std::min(spec_.peers, churned.value_or(spec_.peers));
  if (spec_.churn.kind == ChurnSpec::Kind::kTrace) {
    for (const auto& ev : spec_.churn.trace) {
      if (ev.peer >= n) continue;
      hooks_.at(ev.at, [this, ev] {
        const bool up = hooks_.is_up(ev.peer);
        if (ev.up && !up) {
          hooks_.up(ev.peer);
          metrics_.count("churn.joins", 1);
        } else if (!ev.up && up) {
          hooks_.down(ev.peer);
          metrics_.count("churn.leaves", 1);
        }
      });
    }
  } else if (spec_.churn.kind != ChurnSpec::Kind::kNone) {
    for (std::uint32_t i = spared; i < n; ++i) hooks_.at(sessions_from, [this, i] { session(i); });
  }
}

// Churn decisions use the run's own churn stream so they do not shift a peer's protocol stream.
void ChurnDriver::session(std::uint32_t i) {
  hooks_.at(hooks_.elapsed() + spec_.churn.draw_session(rng_), [this, i] {
    hooks_.down(i);
    metrics_.count("churn.leaves", 1);
    hooks_.at(hooks_.elapsed() + spec_.churn.draw_downtime(rng_), [this, i] {
      hooks_.up(i);
      metrics_.count("churn.joins", 1);
      session(i);
    });
  });
}

}  // namespace apiary
