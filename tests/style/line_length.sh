#!/usr/bin/env bash
# Fails if a C++ line in Apiary's own code is longer than .clang-format's ColumnLimit: the limit
# is enforced, not a wish. Arg: the source dir. (`clang-format -i --lines=N:N FILE` wraps one.)
set -euo pipefail
cd "$1"
limit=$(sed -n 's/^ColumnLimit: *//p' .clang-format)
[ -n "$limit" ] || { echo "no ColumnLimit in .clang-format"; exit 1; }
bad=$(find core harness sim real cli tests analysis \( -name '*.cpp' -o -name '*.hpp' \) -print0 |
  xargs -0 awk -v n="$limit" 'length > n { printf "%s:%d: %d columns\n", FILENAME, FNR, length }')
if [ -n "$bad" ]; then
  echo "lines over the ColumnLimit of $limit:"
  echo "$bad"
  exit 1
fi
echo "every C++ line within $limit columns"
