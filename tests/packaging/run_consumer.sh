#!/usr/bin/env bash
# usage: run_consumer.sh find_package|add_subdirectory SOURCE_DIR PROJECT_BINARY_DIR WORK_DIR
set -euo pipefail
mode=$1 src=$2 bin=$3 work=$4
rm -rf "$work" && mkdir -p "$work"
if [ "$mode" = find_package ]; then
  cmake --install "$bin" --prefix "$work/prefix" >/dev/null
  test -f "$work/prefix/share/cmake/fastvlm/fastvlmConfig.cmake"
  test -f "$work/prefix/share/cmake/fastvlm/fastvlmConfigVersion.cmake"
  test -f "$work/prefix/share/pkgconfig/fastvlm.pc"
  cmake -S "$src/tests/packaging/consumer" -B "$work/build" -DFASTVLM_CONSUME_MODE=find_package \
        -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
else
  cmake -S "$src/tests/packaging/consumer" -B "$work/build" -DFASTVLM_CONSUME_MODE=add_subdirectory \
        -DFASTVLM_SOURCE="$src" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$work/build" >/dev/null
"$work/build/consumer"
