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
# On a CPU with AMX, -march=native compiles ggml's AMX matmul, and built with Debian's g++ 12 its first tile
# instruction dies (SIGILL at ldtilecfg in ggml_backend_amx_mul_mat for Q8_0/Q4_0 models: the g++ 12
# _tile_loadconfig bug of ../shared/spec/machine.md). There ggml is built for the CPU's own vector ISA named
# option by option from /proc/cpuinfo, AMX left out; elsewhere -march=native (GGML_NATIVE) as before.
isa="-DGGML_NATIVE=ON"
if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
  has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
  isa="-DGGML_NATIVE=OFF -DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c)
       -DGGML_BMI2=$(has bmi2) -DGGML_AVX_VNNI=$(has avx_vnni) -DGGML_AVX512=$(has avx512f)
       -DGGML_AVX512_VBMI=$(has avx512vbmi) -DGGML_AVX512_VNNI=$(has avx512_vnni) -DGGML_AVX512_BF16=$(has avx512_bf16)
       -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
fi
# shellcheck disable=SC2086
cmake -S src -B build -DCMAKE_BUILD_TYPE=Release $isa -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DCMAKE_C_FLAGS= -DCMAKE_CXX_FLAGS= >/dev/null
cmake --build build -j"$(nproc)" --target llama-bench llama-quantize >/dev/null
echo "$(pwd)/build/bin/llama-bench"
