#!/bin/bash
# Runs a command in a private network namespace whose loopback carries at most RATE (tc's token
# bucket filter): every process of the command shares that one link, as peers behind one
# bottleneck do. For comparisons where the network, not the CPU, is the limit:
#
#   analysis/compare/with_link.sh 1gbit /usr/bin/python3 analysis/compare/allreduce_vs_gloo.py ...
#
# Needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN) for unshare and tc; the machine's own network
# is untouched.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 RATE COMMAND [ARGS...]   (RATE as tc writes it: 1gbit, 100mbit, ...)" >&2
  exit 2
fi
rate=$1
shift
exec unshare -n bash -c '
  set -e
  ip link set lo up
  tc qdisc add dev lo root tbf rate "$0" burst 2mb latency 500ms
  exec "$@"' "$rate" "$@"
