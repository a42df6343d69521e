#!/usr/bin/env bash
# The whole test suite again under AddressSanitizer and UndefinedBehaviorSanitizer (g++), built
# into build-asan/, LibTorch parts included (Debian's LibTorch itself is not instrumented: its own
# code is not checked, Apiary's code around it is). Any report fails the test that made it.
# Run by CI after cmake/test.sh; by hand: cmake/test-sanitizers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f build-asan/build.ninja ]; then
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAPIARY_SANITIZE=address,undefined >/dev/null
fi
cmake --build build-asan -j"${JOBS:-2}"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1:strict_init_order=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS=suppressions=$PWD/cmake/lsan.supp
# One test is left to the plain build: it takes every file descriptor of its process for a moment,
# and the sanitizers' own checks need descriptors (UBSan then reports a false "invalid vptr").
ctest --test-dir build-asan --output-on-failure -j"${JOBS:-2}" --timeout 600 \
  -E "${APIARY_ASAN_EXCLUDE:-^LiveLimits.AcceptErrorsBackOffInsteadOfSpinning$}"
# The Python package's tests on the instrumented module: the interpreter is not instrumented, so
# the sanitizers' runtimes are preloaded (into the test's child processes too); leaks are not
# checked (the interpreter keeps its own memory at exit).
if [ -d build-asan/python/apiary ]; then
  LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 APIARY_BUILD_DIR=build-asan \
    /usr/bin/python3 -m pytest -q tests/python/test_package.py
fi
