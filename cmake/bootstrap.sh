#!/usr/bin/env bash
# Installs what Apiary needs from Debian's archive (only what is missing), then configures and
# builds into build/. Safe to run again: it does only what is left to do.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  cmake g++ ninja-build ccache pkg-config
  libns3-dev ns3 libgsl-dev                 # ns-3 3.37 (ns3 ships binaries its CMake package names)
  libtorch-dev libopenblas0-openmp          # LibTorch (CPU) with a fast BLAS
  libboost-dev libeigen3-dev
  libhdf5-dev hdf5-tools
  zlib1g-dev libtomlplusplus-dev libcli11-dev nlohmann-json3-dev libfmt-dev libsodium-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  dataset-fashion-mnist
  python3 python3-h5py python3-numpy python3-pandas python3-matplotlib python3-pytest  # analysis/
  python3-distributed                       # apiary sweep --executor dask://
  python3-dev pybind11-dev python3-torch    # the Python package (real/python), on the same libtorch
  iproute2 procps                           # ip netns, tc, pgrep: sim_vs_live.py builds its own network
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}
if [ ! -f build/build.ninja ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="$BUILD_TYPE"
fi
cmake --build build -j"${JOBS:-2}"
