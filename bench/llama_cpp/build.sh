#!/usr/bin/env bash
# Builds llama.cpp from source for the side-by-side benchmark (bench/llama_cpp/README.md): the source is
# the git bundle shipped inside npm's node-llama-cpp package (llama/gitRelease.bundle), built natively
# (-march=native, g++ from Debian) with only llama-bench and llama-quantize. The npm tarball is the only
# download, made once into DIR; nothing is fetched when the benchmark runs.
#
#   bench/llama_cpp/build.sh [DIR]        # default DIR: build/llama.cpp; prints the llama-bench path
set -euo pipefail
dir=${1:-build/llama.cpp}
version=${NODE_LLAMA_CPP_VERSION:-3.22.1}
mkdir -p "$dir"
cd "$dir"
if [ ! -f "node-llama-cpp-$version.tgz" ]; then
  command -v npm >/dev/null || { echo "build.sh: npm is needed once to fetch node-llama-cpp (apt-get install npm)" >&2; exit 1; }
  npm pack --silent "node-llama-cpp@$version" >/dev/null
fi
[ -f package/llama/gitRelease.bundle ] || tar xzf "node-llama-cpp-$version.tgz" package/llama/gitRelease.bundle
[ -d src/.git ] || git -c advice.detachedHead=false clone -q package/llama/gitRelease.bundle src
cmake -S src -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF >/dev/null
cmake --build build -j"$(nproc)" --target llama-bench llama-quantize >/dev/null
echo "$(pwd)/build/bin/llama-bench"
