"""The Python package `apiary` (built into build/python by the README's commands): the DHT, the
averager and the collaborative optimizer over real sockets, scenario runs as DataFrames, and bad
input from Python. These run in this process's threads and in child processes on loopback."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("APIARY_BUILD_DIR", ROOT / "build")).resolve()
PYDIR = BUILD / "python"
assert (PYDIR / "apiary").is_dir(), f"{PYDIR}/apiary is missing: build the project first (cmake/bootstrap.sh)"
sys.path.insert(0, str(PYDIR))
import apiary  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(PYDIR))
EXAMPLE = ROOT / "examples" / "python" / "collaborative.py"


def swarm(n, **kw):
    first = apiary.DHT(**kw)
    return [first] + [apiary.DHT(initial_peers=[first.endpoint], **kw) for _ in range(n - 1)]


def test_the_package_is_the_build_s_and_names_its_version():
    assert apiary.__file__.startswith(str(PYDIR))
    version = (ROOT / "CMakeLists.txt").read_text().split("project(apiary VERSION ", 1)[1].split()[0]
    assert apiary.__version__ == version


def test_dht_stores_and_gets_values_subkeys_and_signed_records():
    a, b, c = swarm(3)
    try:
        t = apiary.get_dht_time() + 60
        assert b.store("plain", b"v1", t)
        got = c.get("plain")
        assert got.value == b"v1" and abs(got.expiration_time - t) < 1e-3 and not got.signed
        assert a.store("dict", b"x", t, subkey="one") and b.store("dict", "y", t + 1, subkey="two")
        d = c.get("dict").value
        assert {k: v.value for k, v in d.items()} == {"one": b"x", "two": b"y"}
        # Only the owner may write under its tag: a signed record is taken, an unsigned one refused.
        owned = "mine" + a.owner_tag
        assert a.store(owned, b"ok", t, sign=True)
        assert c.get(owned).signed
        report = b.store_report(owned, b"forged", t + 5)
        assert not report["ok"] and report["refused"] > 0, report
        assert c.get(owned).value == b"ok"
        assert c.get("absent") is None
    finally:
        for d in (a, b, c):
            d.shutdown()


def test_averager_averages_torch_tensors_of_any_float_dtype_in_place():
    dhts = swarm(3)
    tensors = [[torch.full((3, 4), float(i)), torch.arange(5, dtype=torch.float64) * i] for i in range(3)]
    avs = [apiary.Averager(t, d, target_group_size=3, min_group_size=3, matchmaking_time=10)
           for t, d in zip(tensors, dhts)]
    infos = [None] * 3
    threads = [threading.Thread(target=lambda i=i: infos.__setitem__(i, avs[i].step(weight=i + 1.0))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert all(i is not None and i.group_size == 3 for i in infos), infos
        mean = (0 * 1 + 1 * 2 + 2 * 3) / 6  # weighted by 1, 2, 3
        for ts in tensors:
            assert torch.allclose(ts[0], torch.full((3, 4), mean))
            assert ts[1].dtype == torch.float64 and torch.allclose(ts[1], torch.arange(5, dtype=torch.float64) * mean)
        # A second averager on a peer is refused before it could take over the first one's
        # messages: the first still averages.
        with pytest.raises(ValueError, match="already serves averaging"):
            apiary.Averager([torch.zeros(2)], dhts[0])
        for i, ts in enumerate(tensors):
            ts[0].fill_(float(i))
        threads = [threading.Thread(target=lambda i=i: infos.__setitem__(i, avs[i].step())) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert all(i.group_size == 3 and i.key == "round1" for i in infos), infos
        assert all(torch.allclose(ts[0], torch.full((3, 4), 1.0)) for ts in tensors)
    finally:
        for d in dhts:
            d.shutdown()


def test_three_peer_training_equals_sgd_on_the_concatenated_batches(tmp_path):
    steps, peers = 3, 3
    first = subprocess.Popen([sys.executable, str(EXAMPLE), "--index", "0", "--peers", str(peers), "--steps", str(steps),
                              "--save", str(tmp_path / "p0.pt")], env=ENV, stdout=subprocess.PIPE, text=True)
    endpoint = first.stdout.readline().split()[-1]
    others = [subprocess.Popen([sys.executable, str(EXAMPLE), "--index", str(i), "--peers", str(peers), "--steps",
                                str(steps), "--initial-peer", endpoint, "--save", str(tmp_path / f"p{i}.pt")],
                               env=ENV, stdout=subprocess.PIPE, text=True) for i in (1, 2)]
    for p in [first] + others:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out
        assert out.count(f"averaged over {peers} peers") == steps, out
    # The reference: one process, the same initial model, SGD on each step's batches concatenated.
    torch.manual_seed(0)
    ref = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(peers)]
    for _ in range(steps):
        x = torch.cat([torch.randn(4 * (i + 1), 8, generator=gens[i]) for i in range(peers)])
        opt.zero_grad()
        torch.nn.functional.mse_loss(ref(x), x.sum(1, keepdim=True) * 0.5).backward()
        opt.step()
    for i in range(peers):
        got = torch.load(tmp_path / f"p{i}.pt")
        assert torch.allclose(got["weight"], ref.weight, atol=1e-5), (i, got["weight"], ref.weight)
        assert torch.allclose(got["bias"], ref.bias, atol=1e-5), (i, got["bias"], ref.bias)


def test_a_newcomer_downloads_parameters_and_adam_state():
    a, b = swarm(2)
    try:
        torch.manual_seed(1)
        m1 = torch.nn.Linear(4, 2)
        o1 = apiary.CollaborativeOptimizer(torch.optim.Adam(m1.parameters(), lr=0.01), a, prefix="adam",
                                           target_batch_size=8, min_group_size=1, max_wait=5)
        for _ in range(2):
            o1.zero_grad()
            m1(torch.randn(8, 4)).pow(2).sum().backward()
            assert o1.step(batch_size=8, wait=True).epoch >= 1
        m2 = torch.nn.Linear(4, 2)  # another initialisation
        o2 = apiary.CollaborativeOptimizer(torch.optim.Adam(m2.parameters(), lr=0.01), b, prefix="adam",
                                           target_batch_size=8, min_group_size=1)
        assert o2.local_epoch == o1.local_epoch == 2
        assert torch.equal(m2.weight, m1.weight) and torch.equal(m2.bias, m1.bias)
        s1, s2 = o1.opt.state[m1.weight], o2.opt.state[m2.weight]
        assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])
        assert float(s2["step"]) == float(s1["step"]) == 2.0
    finally:
        a.shutdown()
        b.shutdown()


def test_diloco_outer_step_is_nesterov_sgd_on_the_weighted_mean_pseudo_gradient():
    dhts = swarm(2)
    h, batches = 3, (2, 6)
    torch.manual_seed(5)
    start = torch.nn.Linear(3, 2)
    models = [torch.nn.Linear(3, 2) for _ in range(2)]
    for m in models:
        m.load_state_dict(start.state_dict())
    opts = [apiary.DiLoCoOptimizer(torch.optim.SGD(m.parameters(), lr=0.05), d, prefix="dl", inner_steps=h,
                                   min_group_size=2, target_group_size=2)
            for m, d in zip(models, dhts)]
    data = [[torch.randn(batches[i], 3) for _ in range(2 * h)] for i in range(2)]
    infos = [[], []]

    def train(i):
        for x in data[i]:
            opts[i].zero_grad()
            models[i](x).pow(2).mean().backward()
            info = opts[i].step(batch_size=batches[i])
            if info is not None:
                infos[i].append(info)

    threads = [threading.Thread(target=train, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert [len(i) for i in infos] == [2, 2] and infos[0][0].group_size == 2, infos
        # The reference: the same inner steps per peer, then the outer Nesterov step on the
        # sample-weighted mean of (start - reached), twice.
        ref = torch.nn.Linear(3, 2)
        ref.load_state_dict(start.state_dict())
        outer = torch.optim.SGD(ref.parameters(), lr=0.7, momentum=0.9, nesterov=True)
        for r in range(2):
            deltas = []
            for i in range(2):
                m = torch.nn.Linear(3, 2)
                m.load_state_dict(ref.state_dict())
                inner = torch.optim.SGD(m.parameters(), lr=0.05)
                for x in data[i][r * h:(r + 1) * h]:
                    inner.zero_grad()
                    m(x).pow(2).mean().backward()
                    inner.step()
                deltas.append([p0.detach() - p1.detach() for p0, p1 in zip(ref.parameters(), m.parameters())])
            w = [batches[i] * h for i in range(2)]
            outer.zero_grad()
            for k, p in enumerate(ref.parameters()):
                p.grad = (w[0] * deltas[0][k] + w[1] * deltas[1][k]) / sum(w)
            outer.step()
        for m in models:
            assert torch.allclose(m.weight, ref.weight, atol=1e-5) and torch.allclose(m.bias, ref.bias, atol=1e-5)
    finally:
        for d in dhts:
            d.shutdown()


def test_bad_input_raises_clear_exceptions():
    with pytest.raises(ValueError, match="IPV4:PORT"):
        apiary.DHT(listen="nowhere")
    with pytest.raises(ConnectionError, match="no answer from 127.0.0.1:9"):
        apiary.DHT(initial_peers=["127.0.0.1:9"], join_timeout=3)
    with apiary.DHT() as d:
        with pytest.raises(OSError):
            apiary.DHT(listen=d.endpoint)  # taken
        with pytest.raises(TypeError, match="bytes"):
            d.store("k", 42, apiary.get_dht_time() + 60)
        with pytest.raises(ValueError, match="not in the future"):
            d.store("k", b"v", apiary.get_dht_time() - 1)
        with pytest.raises(TypeError, match="floating-point"):
            apiary.Averager([torch.zeros(3, dtype=torch.int64)], d)
        with pytest.raises(ValueError, match="compression"):
            apiary.Averager([torch.zeros(3)], d, compression="zip")
        server = apiary.ExpertServer(d)
        with pytest.raises(ValueError, match="not cpu, cuda or cuda:N"):
            server.add_builtin("e.0", dim=4, hidden_dim=4, device="tpu")
        if not torch.cuda.is_available():
            with pytest.raises(ValueError, match="no CUDA here"):
                server.add_builtin("e.1", dim=4, hidden_dim=4, device="cuda")
        with pytest.raises(ValueError, match="no experts"):
            server.start()
        t = torch.zeros(3)
        avg = apiary.Averager([t], d, matchmaking_time=0.5)
        with pytest.raises(TimeoutError):
            avg.step()  # nobody to average with
        t.resize_(4)
        with pytest.raises(ValueError, match=r"shape \[4\], expected \[3\]"):
            avg.step()
    with pytest.raises(RuntimeError, match="shut down"):
        d.get("k")
    t.resize_(3)
    with pytest.raises(RuntimeError, match="shut down"):
        avg.step()


def test_ctrl_c_interrupts_a_waiting_call_and_exit_never_hangs():
    code = textwrap.dedent("""
        import faulthandler, signal, traceback, torch, apiary
        # A job started in the background by a non-interactive shell inherits SIGINT ignored, and
        # Python then leaves it ignored: Ctrl-C is what this tests, so take Python's own handler.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # where it waits, if the test times out
        d = apiary.DHT()
        left_open = apiary.DHT(initial_peers=[d.endpoint])  # never shut down: exit must not hang
        avg = apiary.Averager([torch.zeros(3)], d, matchmaking_time=120)
        print(d.endpoint, flush=True)
        try:
            avg.step()
        except KeyboardInterrupt as e:
            print("interrupted in", traceback.extract_tb(e.__traceback__)[-1].name, flush=True)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    endpoint = p.stdout.readline().strip()
    # The child is inside step() once its matchmaking declaration is in the DHT: then interrupt it.
    with apiary.DHT(initial_peers=[endpoint]) as watcher:
        deadline = time.monotonic() + 30
        while watcher.get("avg:round0") is None:
            assert time.monotonic() < deadline, "the child never declared itself"
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    try:
        out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        # Say where the child waits, native and Python.
        native = ""
        if shutil.which("gdb"):
            native = subprocess.run(["gdb", "-p", str(p.pid), "-batch", "-ex", "thread apply all bt"], capture_output=True,
                                    text=True, timeout=60).stdout
        p.send_signal(signal.SIGUSR1)  # faulthandler writes the Python stacks to stderr
        try:
            out, err = p.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        pytest.fail(f"the child did not end 30 s after SIGINT\nstdout: {out}\nstderr: {err}\nnative stacks:\n{native[-20000:]}")
    assert "interrupted in step" in out, (out, err)  # raised from inside the blocked call
    assert p.returncode == 0, err
    assert time.monotonic() - t0 < 10


def test_run_gives_a_dataframe_and_names_the_broken_key(tmp_path):
    df = apiary.run(seed=3, set={"peers": 50, "duration": "20s"})
    assert len(df) == 1 and df["peers"][0] == 50 and df["seed"][0] == 3
    assert df["ping.success"][0] > 0.9
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nbackend = "sim"\npeers = "many"\n')
    with pytest.raises(apiary.RunError, match=r"bad\.toml.*peers"):
        apiary.run(bad)


def test_sweep_gives_one_row_per_point(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text((ROOT / "scenarios" / "quickstart.toml").read_text() +
                        '\n[sweep]\ngrid = { peers = [20, 40] }\nseeds = [1]\n')
    df = apiary.sweep(scenario, out=tmp_path / "out", set={"duration": "10s"})
    assert sorted(df["peers"]) == [20, 40]
    assert df.attrs["params"] == ["peers"]


def test_remote_mixture_equals_the_local_mixture_and_trains_the_experts():
    server_dht, client_dht = swarm(2)
    try:
        server = apiary.ExpertServer(server_dht)
        torch.manual_seed(4)
        experts = {}
        for i in range(2):
            for j in range(2):
                m = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 6))
                experts[(i, j)] = m
                server.add(f"expert.{i}.{j}", m, input_dim=6, lr=0.05)
        assert server.start() > 0
        import copy
        before = {k: copy.deepcopy(m) for k, m in experts.items()}
        moe = apiary.RemoteMixtureOfExperts(in_features=6, grid_size=(2, 2), dht=client_dht, k_best=4, k_min=4)
        x = torch.randn(5, 6, requires_grad=True)
        y = moe(x)
        assert sorted(moe.last_responders()) == [f"expert.{i}.{j}" for i in range(2) for j in range(2)]
        # The same mixture computed here: softmax over the experts' summed coordinate scores.
        x_local = x.detach().clone().requires_grad_(True)
        logits = moe.gate(x_local)
        scores = torch.stack([logits[:, i] + logits[:, 2 + j] for i in range(2) for j in range(2)], 1)
        outs = torch.stack([before[(i, j)](x_local) for i in range(2) for j in range(2)], 1)
        expected = (torch.softmax(scores, 1).unsqueeze(2) * outs).sum(1)
        assert torch.allclose(y, expected, atol=1e-5)
        y.pow(2).sum().backward()
        expected.pow(2).sum().backward()
        assert torch.allclose(x.grad, x_local.grad, atol=1e-5)
        assert all(server.updates(u) == 1 for u in server.uids)
        assert not torch.equal(experts[(0, 0)][0].weight, before[(0, 0)][0].weight)  # the expert trained
        with pytest.raises(ValueError, match=r"\[batch, 6\]"):
            moe(torch.randn(3, 5))
        # Many forwards before one backward: each keeps its experts for its own backward.
        ys = [moe(torch.randn(2, 6)) for _ in range(80)]
        torch.stack(ys).sum().backward()
        assert all(server.updates(u) == 81 for u in server.uids)
        # A backward after the peer is gone fails cleanly.
        late = moe(torch.randn(2, 6))
        client_dht.shutdown()
        with pytest.raises(RuntimeError, match="is gone"):
            late.sum().backward()
        with pytest.raises(ValueError, match="already served"):
            server.add("expert.0.0", torch.nn.Linear(6, 6), input_dim=6)
    finally:
        server_dht.shutdown()
        client_dht.shutdown()


def test_a_dead_expert_server_is_skipped():
    a, b, c = swarm(3)
    try:
        for dht, row in ((a, 0), (b, 1)):
            s = apiary.ExpertServer(dht)
            s.add_builtin([f"ffn.{row}.0", f"ffn.{row}.1"], "ffn", dim=4, hidden_dim=8)
            s.start()
        moe = apiary.RemoteMixtureOfExperts(in_features=4, grid_size=(2, 2), dht=c, uid_prefix="ffn", k_best=4,
                                            k_min=1, forward_timeout=2, timeout_after_k_min=0.5)
        assert len(moe(torch.randn(3, 4)).shape) == 2 and len(moe.last_responders()) == 4
        b.shutdown()  # its two experts stay declared until their records expire
        y = moe(torch.randn(3, 4))
        assert y.shape == (3, 4) and sorted(moe.last_responders()) == ["ffn.0.0", "ffn.0.1"]
    finally:
        for d in (a, b, c):
            d.shutdown()
