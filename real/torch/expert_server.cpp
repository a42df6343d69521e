#include "real/torch/expert_server.hpp"

#include <filesystem>
#include <stdexcept>

#include "real/torch/tensor.hpp"

namespace apiary::real {

ExpertInfo TorchExperts::info_of(const HostedExpert& e) { return ExpertInfo{e.input_dim, e.output_dim, e.sequence, e.kind}; }

std::optional<ExpertInfo> TorchExperts::info(const std::string& uid) {
  const HostedExpert* e = find(uid);
  if (!e) return std::nullopt;
  return info_of(*e);
}

Task<void> TorchExperts::run(const std::string& uid, bool backward, std::vector<moe::ExpertJob*> jobs) {
  HostedExpert* e = find(uid);
  if (!e) throw std::runtime_error("removed");
  // Decode every request; one that does not decode is answered alone, the rest run as a batch.
  std::vector<Decoded> batch;
  for (auto* j : jobs) {
    try {
      Decoded d{j, unpack(j->inputs(), j->input.dims, j->codec).to(e->device), {}};  // off the wire onto the expert's device
      if (backward) d.g = unpack(j->output_grads(), j->grad.dims, j->codec).to(e->device);
      batch.push_back(std::move(d));
    } catch (const std::exception& ex) {
      j->reply = Error{ErrorCode::kBadMessage, "expert " + uid + ": " + ex.what()};
    }
  }
  if (!batch.empty()) {
    if (backward)
      backward_batch(uid, *e, batch);
    else
      forward_batch(uid, *e, batch);
  }
  co_return;
}

void TorchExperts::forward_batch(const std::string& uid, HostedExpert& e, std::vector<Decoded>& jobs) {
  if (jobs.size() == 1 && jobs[0].job->keep) {  // alone: keep the graph, the backward need not recompute
    auto& j = jobs[0];
    torch::AutoGradMode grad_on(true);
    torch::Tensor x = j.x.requires_grad_(true);
    torch::Tensor y = e.forward(x);
    j.job->reply = moe::TensorReply{shape_of(y), pack(y, j.job->codec), j.job->codec};
    keep(j.job->from, uid, j.job->keep, x, y);
    return;
  }
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> xs;
  for (auto& j : jobs) xs.push_back(j.x);
  const torch::Tensor y = e.forward(jobs.size() == 1 ? xs[0] : torch::cat(xs, 0));
  std::int64_t at = 0;
  for (auto& j : jobs) {
    const torch::Tensor part = y.narrow(0, at, j.x.size(0));
    at += j.x.size(0);
    j.job->reply = moe::TensorReply{shape_of(part), pack(part.contiguous(), j.job->codec), j.job->codec};
  }
}

void TorchExperts::backward_batch(const std::string& uid, HostedExpert& e, std::vector<Decoded>& jobs) {
  torch::AutoGradMode grad_on(true);  // (this may run inside a client's backward, in-process)
  e.optimizer->zero_grad();
  bool done = false;
  if (jobs.size() == 1) {
    auto& j = jobs[0];
    if (auto kept = take(j.job->from, uid, j.job->keep)) {
      try {
        kept->second.backward(j.g);
        j.job->reply = moe::TensorReply{shape_of(kept->first.grad()), pack(kept->first.grad(), j.job->codec), j.job->codec};
        done = true;
        rt_.observer.count("moe.backwards_from_kept");
      } catch (const c10::Error&) {
        e.optimizer->zero_grad();  // the parameters moved since that forward: recompute
      }
    }
  } else {
    for (auto& j : jobs) take(j.job->from, uid, j.job->keep);  // batched: recompute once for all
  }
  if (!done) {
    std::vector<torch::Tensor> xs, gs;
    for (auto& j : jobs) {
      xs.push_back(j.x);
      gs.push_back(j.g);
    }
    torch::Tensor x = (jobs.size() == 1 ? xs[0] : torch::cat(xs, 0)).detach().requires_grad_(true);
    e.forward(x).backward(jobs.size() == 1 ? gs[0] : torch::cat(gs, 0));
    std::int64_t at = 0;
    for (auto& j : jobs) {
      const torch::Tensor part = x.grad().narrow(0, at, j.x.size(0)).contiguous();
      at += j.x.size(0);
      j.job->reply = moe::TensorReply{shape_of(part), pack(part, j.job->codec), j.job->codec};
    }
  }
  e.optimizer->step();  // one step per batch; the expert learns from every client, asynchronously
  ++e.updates;
}

void TorchExperts::keep(const Endpoint& from, const std::string& uid, std::uint64_t id, torch::Tensor x, torch::Tensor y) {
  const TimePoint now = rt_.now();
  for (auto it = kept_.begin(); it != kept_.end();)  // drop what its client never came back for
    it = (now - it->second.at > kKeepFor) ? kept_.erase(it) : std::next(it);
  if (kept_.size() >= kMaxKept) kept_.erase(kept_.begin());
  kept_[{from, uid, id}] = Kept{std::move(x), std::move(y), now};
}

std::optional<std::pair<torch::Tensor, torch::Tensor>> TorchExperts::take(const Endpoint& from, const std::string& uid,
                                                                         std::uint64_t id) {
  if (!id) return std::nullopt;
  auto it = kept_.find({from, uid, id});
  if (it == kept_.end()) return std::nullopt;
  auto out = std::make_pair(std::move(it->second.x), std::move(it->second.y));
  kept_.erase(it);
  return out;
}

void TorchExperts::add(std::string uid, HostedExpert expert) { experts_[std::move(uid)] = std::move(expert); }

HostedExpert* TorchExperts::find(const std::string& uid) {
  auto it = experts_.find(uid);
  return it == experts_.end() ? nullptr : &it->second;
}

void TorchExperts::save(const std::string& dir) {
  std::filesystem::create_directories(dir);
  for (auto& [uid, e] : experts_) {
    torch::serialize::OutputArchive ar;
    e.module->save(ar);
    ar.save_to(dir + "/" + uid + ".pt");
  }
}

void TorchExperts::load(const std::string& dir) {
  for (auto& [uid, e] : experts_) {
    torch::serialize::InputArchive ar;
    ar.load_from(dir + "/" + uid + ".pt", e.device);
    e.module->load(ar);
  }
}

}  // namespace apiary::real
