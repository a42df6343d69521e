#!/usr/bin/env bash
# A storage flood against one live peer process, measured: how much of what one client offers the
# peer keeps (resident memory before and after), and whether honest records survive.
#   tests/bench/storage_flood.sh build/apiary [GIB_OFFERED]
# Figures in docs/results.md ("Hostile peers"). Loopback only; takes about a minute per GiB.
set -euo pipefail
APIARY=$1
GIB=${2:-6}
work=$(mktemp -d)
trap 'kill $victim 2>/dev/null || true; rm -rf "$work"' EXIT
"$APIARY" peer --listen 127.0.0.1:0 --ready-file "$work/ready" --max-storage-bytes $((64 << 20)) \
  --source-quota-bytes $((16 << 20)) --ip-quota-bytes $((32 << 20)) > /dev/null &
victim=$!
for _ in $(seq 100); do [ -s "$work/ready" ] && break; sleep 0.1; done
ep=$(cut -d' ' -f2 "$work/ready")
rss() { awk '/VmRSS/ {print $2}' /proc/$victim/status; }
"$APIARY" dht flood --via "$ep" --records 100 --value-bytes 64 --prefix honest --ttl 3600 > "$work/honest.json"
before=$(rss)
"$APIARY" dht flood --via "$ep" --records 100000 --value-bytes 1 --prefix tiny > "$work/tiny.json"
big=$((GIB * 16384))  # 64 KiB each
"$APIARY" dht flood --via "$ep" --records $big --value-bytes 65000 --per-message 1 --prefix big > "$work/big.json"
after=$(rss)
kept=0
for i in $(seq 0 99); do
  if "$APIARY" dht get --via "$ep" "honest$i" > /dev/null 2>&1; then kept=$((kept + 1)); fi
done
/usr/bin/python3 - "$work" "$before" "$after" "$kept" <<'PY'
import json, sys
work, before, after, kept = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t, b = (json.load(open(f"{work}/{n}.json")) for n in ("tiny", "big"))
offered = t["bytes"] + b["bytes"]
print(f"offered: {t['sent'] + b['sent']} records, {offered / 2**30:.2f} GiB in {t['seconds'] + b['seconds']:.1f} s")
print(f"answers: tiny {t['outcomes']}, big {b['outcomes']}")
print(f"victim resident memory: {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after "
      f"(+{(after - before) / 1024:.1f} MiB; store capped at 64 MiB)")
print(f"honest records still found: {kept} of 100")
PY
