#!/usr/bin/env bash
# Simulation against live with the live peers in network namespaces: sim_vs_live.py creates a
# namespace per peer, joined by veth pairs on a bridge with tc netem where the kernel has netem and
# by TUN devices and delay_switch.py where it has not, runs the same DHT in ns-3 and live, prints
# the side-by-side table, and leaves no namespace, device or switch process behind. Needs the right to create
# network namespaces (root); without it the test says so and is reported as skipped (77).
set -euo pipefail
APIARY=$1
SRC=$2
fail() { echo "sim_vs_live_netns_test: FAIL: $*" >&2; exit 1; }
probe="apyprobe$$"
if ! ip netns add "$probe" 2>/dev/null; then
  echo "sim_vs_live_netns_test: SKIPPED: this user cannot create network namespaces (ip netns add)"
  exit 77
fi
ip netns del "$probe"
before=$(ip netns list | sort)
set +e
out=$(/usr/bin/python3 "$SRC/analysis/compare/sim_vs_live.py" --apiary "$APIARY" --peers 6 --keys 30 \
      --latency-ms 20 --netns on 2>&1)
rc=$?
set -e
if [ $rc -eq 3 ]; then  # namespaces exist here, but a bridge or veth pair cannot be made
  echo "$out"
  echo "sim_vs_live_netns_test: SKIPPED: the namespace network cannot be built on this machine"
  exit 77
fi
[ $rc -eq 0 ] || fail "sim_vs_live.py exited $rc: $out"
echo "$out"
grep -q "live peers in 7 network namespaces" <<<"$out" || fail "the live peers did not run in namespaces"
# The delay is the network's (netem or the delay switch), not the transport's.
grep -Eq "tc netem 10 ms on each side|delay_switch.py, which holds every packet 20 ms" <<<"$out" \
  || fail "the namespaces were not joined by a delaying network"
grep -Eq '^\| dht.store success \| [0-9.]+% \| 100.00% \|' <<<"$out" || fail "live stores did not all succeed"
grep -Eq '^\| dht.get success \| [0-9.]+% \| 100.00% \|' <<<"$out" || fail "live gets did not all succeed"
# The live store latency reflects the emulated 20 ms one-way delay (at least two round trips).
python3 - "$out" <<'PY' || fail "live latency does not show the emulated delay"
import re, sys
rows = dict(re.findall(r"^\| (dht\.store\.latency_ns p50) \| [0-9.]+ ms \| ([0-9.]+) ms", sys.argv[1], re.M))
assert float(rows["dht.store.latency_ns p50"]) >= 80, rows
PY
after=$(ip netns list | sort)
left=$(comm -13 <(echo "$before") <(echo "$after"))  # (it may also remove leftovers of killed runs)
[ -z "$left" ] || fail "namespaces left behind: $left"
! ip -o link show | grep -Eq 'apy[0-9]+(br|v[0-9]+)' || fail "bridge or veth left behind"
! pgrep -f 'compare/delay_switch.py' >/dev/null || fail "delay_switch.py left running"
echo "sim_vs_live_netns_test: ok"
