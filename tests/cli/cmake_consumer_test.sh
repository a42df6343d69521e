#!/usr/bin/env bash
# Apiary as a CMake package: install the build into a fresh prefix, build examples/cmake-consumer
# against it with find_package(Apiary), and run the program (a DHT swarm in ns-3 and a signed record).
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
echo "cmake consumer: passed"
