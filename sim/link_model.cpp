#include "sim/link_model.hpp"

#include <algorithm>

#include <ns3/simulator.h>

namespace apiary::sim {

using namespace ns3;

namespace {
std::uint64_t pair_key(std::uint32_t a, std::uint32_t b) { return (static_cast<std::uint64_t>(a) << 32) | b; }
}  // namespace

void LinkModel::add_host(std::uint32_t host, const LinkParams& link) {
  if (host >= hosts_.size()) hosts_.resize(host + 1);
  hosts_[host].link = link;
  hosts_[host].up = true;
  hosts_[host].present = true;
}

std::optional<Time> LinkModel::depart(std::uint32_t src, std::uint32_t dst, std::uint64_t bytes) {
  if (!has_host(dst)) {
    ++stats_.dropped_no_route;
    return std::nullopt;
  }
  if (partitioned_ && side_of(src) != side_of(dst)) {
    ++stats_.dropped_partition;
    return std::nullopt;
  }
  const Time now = Simulator::Now();
  if (src < nat_.size() && nat_[src]) nat_open_[pair_key(src, dst)] = now;
  if (dst < nat_.size() && nat_[dst]) {
    auto way = nat_open_.find(pair_key(dst, src));
    if (way == nat_open_.end() || now - way->second > nat_mapping_) {
      ++stats_.dropped_nat;
      return std::nullopt;
    }
  }
  Host& from = hosts_.at(src);
  const Host& to = hosts_[dst];
  const Time tx = Seconds(static_cast<double>(bytes) * 8.0 / (from.link.up_bps * factor_of(src)));
  from.tx_free = std::max(now, from.tx_free) + tx;
  const Time latency = (latency_fn_ ? latency_fn_(base_ip_ + src, base_ip_ + dst) : from.link.latency + to.link.latency) +
                       extra_of(src) + extra_of(dst);
  ++stats_.packets;
  stats_.bytes += bytes;
  Time arrival = from.tx_free + latency;
  if (loss_ > 0) {
    Time rto = rto_min_;
    for (int resend = 0; resend < 12 && loss_rng_->uniform(0, 1) < loss_; ++resend, rto = rto * 2) {
      arrival += rto;
      ++stats_.retransmissions;
    }
    Time& clear = pair_clear_[pair_key(src, dst)];
    arrival = std::max(arrival, clear);
    clear = arrival;
  }
  return arrival;
}

std::optional<Time> LinkModel::arrive(std::uint32_t dst, std::uint64_t bytes) {
  if (!hosts_.at(dst).up) {
    ++stats_.dropped_down;
    return std::nullopt;
  }
  return serialise_down(dst, bytes, Simulator::Now());
}

Time LinkModel::serialise_down(std::uint32_t dst, std::uint64_t bytes, Time at) {
  Host& h = hosts_.at(dst);
  const Time rx = Seconds(static_cast<double>(bytes) * 8.0 / (h.link.down_bps * factor_of(dst)));
  h.rx_free = std::max(at, h.rx_free) + rx;
  return h.rx_free;
}

void LinkModel::SetLoss(double p, Time rto_min, std::uint64_t seed) {
  loss_ = p;
  rto_min_ = rto_min;
  loss_rng_ = std::make_unique<Rng>(seed);
}

void LinkModel::SetNat(std::uint32_t host, Time mapping) {
  if (host >= nat_.size()) nat_.resize(host + 1, false);
  nat_[host] = true;
  nat_mapping_ = mapping;
}

void LinkModel::ForgetNat(std::uint32_t host) {
  if (host >= nat_.size() || !nat_[host]) return;
  std::erase_if(nat_open_, [host](const auto& e) { return (e.first >> 32) == host; });
}

void LinkModel::SetSide(std::uint32_t host, std::uint8_t side) {
  if (host >= side_.size()) side_.resize(host + 1, 0);
  side_[host] = side;
}

void LinkModel::SetExtraLatency(std::uint32_t host, Time extra) {
  if (host >= extra_latency_.size()) extra_latency_.resize(host + 1, Time(0));
  extra_latency_[host] = extra;
}

void LinkModel::SetBandwidthFactor(std::uint32_t host, double factor) {
  if (host >= bandwidth_factor_.size()) bandwidth_factor_.resize(host + 1, 1.0);
  bandwidth_factor_[host] = factor;
}

}  // namespace apiary::sim
