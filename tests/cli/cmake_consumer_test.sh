#!/usr/bin/env bash
# Apiary as a CMake package: install the build into a fresh prefix, build examples/cmake-consumer
# against it with find_package(Apiary), and run the program (a DHT swarm in ns-3 and a signed record);
# import the installed Python package and run a scenario through it.
# Usage: cmake_consumer_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
cmake --install "$build" --prefix "$work/prefix" > "$work/install.log" || fail "install: $(tail -5 "$work/install.log")"
for f in bin/apiary lib/cmake/Apiary/ApiaryConfig.cmake lib/cmake/Apiary/ApiaryTargets.cmake include/apiary/core/dht/node.hpp \
         include/apiary/apiary/version.hpp; do
  [ -e "$work/prefix/$f" ] || fail "not installed: $f"
done
cmake -S "$src/examples/cmake-consumer" -B "$work/consumer" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release \
  > "$work/configure.log" 2>&1 || fail "configure: $(tail -20 "$work/configure.log")"
cmake --build "$work/consumer" -j2 > "$work/build.log" 2>&1 || fail "build: $(tail -30 "$work/build.log")"
out=$("$work/consumer/dht-in-ns3") || fail "the program failed: $out"
echo "$out"
echo "$out" | grep -q "gets answered, 0 failed" || fail "unexpected output: $out"
echo "$out" | grep -q ": valid$" || fail "unexpected output: $out"
# The Python package, when built: importable from the prefix, running the prefix's own command.
pydir="$work/prefix/lib/python3/dist-packages"
if grep -q "^APIARY_SANITIZE:STRING=." "$build/CMakeCache.txt"; then
  # An instrumented module loads only into an interpreter with the sanitizer runtime preloaded:
  # cmake/test-sanitizers.sh runs the package's own tests that way; the install is checked here.
  [ ! -d "$build/python/apiary" ] || [ -d "$pydir/apiary" ] || fail "the Python package is not installed in $pydir"
elif [ -d "$build/python/apiary" ]; then
  [ -d "$pydir/apiary" ] || fail "the Python package is not installed in $pydir"
  PYTHONPATH="$pydir" /usr/bin/python3 - "$work/prefix" <<'PY' || fail "the installed Python package"
import sys
import apiary
from apiary._where import APIARY_COMMAND
prefix = sys.argv[1]
assert apiary.__file__.startswith(prefix), apiary.__file__
assert APIARY_COMMAND == prefix + "/bin/apiary", APIARY_COMMAND
with apiary.DHT() as a, apiary.DHT(initial_peers=[a.endpoint]) as b:
    assert b.store("k", b"v", apiary.get_dht_time() + 60) and a.get("k").value == b"v"
df = apiary.run(seed=2, set={"peers": 20, "duration": "5s"})
assert df["peers"][0] == 20 and df["seed"][0] == 2, df
print("installed Python package: passed")
PY
fi
echo "cmake consumer: passed"
