"""Collaborative training from two (or more) terminals: each peer trains one model on its own data.
    python3 collaborative.py --listen 127.0.0.1:31337                  # terminal 1 (peer 0)
    python3 collaborative.py --index 1 --initial-peer 127.0.0.1:31337  # terminal 2
Each global step averages the gradients of all peers' batches (4, 8, ... samples): the same step as
one process taking SGD on the concatenated batches. (PYTHONPATH=build/python, or installed.)"""
import argparse
import torch
import apiary

p = argparse.ArgumentParser()
p.add_argument("--listen", default="127.0.0.1:0")
p.add_argument("--initial-peer", action="append", default=[])
p.add_argument("--index", type=int, default=0, help="this peer's number: its data and batch size")
p.add_argument("--peers", type=int, default=2, help="peers in the swarm (each global step waits for all)")
p.add_argument("--steps", type=int, default=5)
p.add_argument("--save", help="write the final parameters here (torch.save)")
a = p.parse_args()

torch.manual_seed(0)  # every peer starts from the same model
model = torch.nn.Linear(8, 1)
dht = apiary.DHT(initial_peers=a.initial_peer, listen=a.listen)
print(f"peer {a.index} listening on {dht.endpoint}", flush=True)
batch = 4 * (a.index + 1)
opt = apiary.CollaborativeOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), dht, prefix="example",
                                    target_batch_size=sum(4 * (i + 1) for i in range(a.peers)),
                                    target_group_size=a.peers, min_group_size=a.peers, load_state=False)
data = torch.Generator().manual_seed(100 + a.index)
for _ in range(a.steps):
    x = torch.randn(batch, 8, generator=data)
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True) * 0.5)
    loss.backward()
    info = opt.step(batch_size=batch, wait=True)
    print(f"epoch {info.epoch}: loss {loss.item():.4f}, averaged over {info.group_size} peers", flush=True)
if a.save:
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, a.save)
dht.shutdown()
