#!/usr/bin/env bash
# The whole test suite: sets up and builds (cmake/bootstrap.sh), then runs every test with CTest
# (C++ unit, ns-3 and live suites, determinism, purity check, Python analysis tests).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake/bootstrap.sh
ctest --test-dir build --output-on-failure -j"${JOBS:-2}" --timeout 300
/usr/bin/python3 -m pytest -q tests/python
