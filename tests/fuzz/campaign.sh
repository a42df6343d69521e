#!/usr/bin/env bash
# Fuzzes every decoder on its own with libFuzzer, RUNS executions each (default 10 million), and
# prints one markdown row per target: executions, seconds, executions per second, corpus size,
# coverage, result. A crash, leak or sanitizer report stops that target and its input is kept in
# OUT/NAME/. Needs the libFuzzer build (docs/testing.md):
#   tests/fuzz/campaign.sh build-fuzz/tests/fuzz_decoders_libfuzzer [RUNS] [OUT] [TARGET...]
set -uo pipefail
bin=${1:?usage: campaign.sh FUZZER_BINARY [RUNS] [OUT] [TARGET...]}
runs=${2:-10000000}
out=${3:-out/fuzz-campaign}
shift $(( $# < 3 ? $# : 3 ))
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$out"
if [ $# -gt 0 ]; then
  names=("$@")
else
  mapfile -t names < <(ls "$here/corpus" | sed -E 's/-[0-9]+$//' | sort -u)
fi
echo "| target | executions | seconds | exec/s | corpus | coverage (edges) | result |"
echo "|---|---:|---:|---:|---:|---:|---|"
status=0
for name in "${names[@]}"; do
  dir="$out/$name"
  rm -rf "$dir" && mkdir -p "$dir/corpus"
  # The repository's seeds carry a selector byte first; a single-target run takes the rest.
  for f in "$here/corpus/$name"-*; do tail -c +2 "$f" > "$dir/corpus/$(basename "$f")"; done
  leaks=1
  start=$(date +%s.%N)
  APIARY_FUZZ_TARGET="$name" "$bin" "$dir/corpus" -runs="$runs" -max_len=4096 -print_final_stats=1 -detect_leaks=$leaks \
    -artifact_prefix="$dir/" -close_fd_mask=1 > "$dir/log" 2>&1
  rc=$?
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$dir/log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$dir/log" | tail -1 | grep -o '[0-9]*')
  units=$(ls "$dir/corpus" | wc -l)
  result="clean"
  if [ $rc -ne 0 ]; then result="FAILED (exit $rc, see $dir/log)"; status=1; fi
  printf '| %s | %s | %.0f | %.0f | %s | %s | %s |\n' "$name" "${execs:-0}" "$secs" \
    "$(awk -v n="${execs:-0}" -v s="$secs" 'BEGIN { print n / s }')" "$units" "${cov:-?}" "$result"
done
exit $status
