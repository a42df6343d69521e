#!/usr/bin/env bash
# Idle connections against one live peer process, measured: honest pings before and while an
# attacker holds N TCP connections to the peer without sending a byte, from one loopback address
# (the per-address limit) and from five (the limit in all), and a client that connects only then.
#   tests/bench/idle_connections.sh build/apiary [CONNECTIONS]
# Figures in docs/results.md ("Hostile peers"). Loopback only; a few seconds.
set -euo pipefail
APIARY=$1
N=${2:-4100}
work=$(mktemp -d)
trap 'kill $victim 2>/dev/null || true; rm -rf "$work"' EXIT
"$APIARY" peer --listen 127.0.0.1:0 --ready-file "$work/ready" > /dev/null &
victim=$!
for _ in $(seq 100); do [ -s "$work/ready" ] && break; sleep 0.1; done
ep=$(cut -d' ' -f2 "$work/ready")
for from in 0 5; do
  "$APIARY" dht hold --via "$ep" --connections "$N" --source-addresses "$from" --calls 500 > "$work/hold$from.json"
done
/usr/bin/python3 - "$work" <<'PY'
import json, sys
for f in ("hold0", "hold5"):
    r = json.load(open(f"{sys.argv[1]}/{f}.json"))
    src = "127.0.0.1 (the clients' own)" if r["source_addresses"] == 0 else f"{r['source_addresses']} loopback addresses"
    print(f"{r['opened']} idle connections from {src}, {r['still_open']} still held at the end:")
    print(f"  connected client: {r['answered_during']}/{r['calls']} answered, p50 {r['p50_during_ms'] * 1e3:.1f} us "
          f"(before: {r['p50_before_ms'] * 1e3:.1f} us; ratio {r['p50_during_ms'] / r['p50_before_ms']:.2f})")
    print(f"  new client: {r['answered_new_client']}/{r['calls']} answered, p50 {r['p50_new_client_ms'] * 1e3:.1f} us "
          f"(ratio {r['p50_new_client_ms'] / r['p50_before_ms']:.2f}); its first call {r['first_call_new_client_ms']:.2f} ms")
PY
