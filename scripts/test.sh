#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, runs every test in a release build
# and again under AddressSanitizer + UndefinedBehaviorSanitizer, and checks single_include/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
jobs=$(nproc)
stage() { echo "test.sh: ${SECONDS}s: $*"; }  # where the minutes go (CI must stay well under 60)
/usr/bin/python3 scripts/amalgamate.py --check

# The microbenchmarks (bench/) are not built here: they are measured by hand (bench/README.md), and
# building them cost CI minutes that the sanitizer and fuzz passes need.
# Kernel paths: the builtin ones, not timed at each load (docs/kernels.md, "Kernel choice"): every test
# process runs the same arithmetic and nothing is cached under $HOME. The kernel-choice tests set their own.
export FASTVLM_KERNELS=default

stage "release build"
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DFASTVLM_BUILD_BENCH=OFF >/dev/null
cmake --build build/release -j"$jobs"
stage "release tests"
ctest --test-dir build/release --output-on-failure -j"$jobs"

# AddressSanitizer + UndefinedBehaviorSanitizer: the unit tests, fastvlm-server through its error-case suite
# (server.errors), and fastvlm-cli + fastvlm-server through the generated hostile-input suite (tests/hostile,
# label hostile). The CLI end-to-end tests (labels cli, python, stream, scene, slow) run in release only.
# -Og: a third less compile time than -O1 with the same checks.
stage "ASan build"
cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=None -DFASTVLM_SANITIZE=ON -DFASTVLM_BUILD_BENCH=OFF \
      -DFASTVLM_BUILD_EXAMPLES=ON -DFASTVLM_BUILD_PYTHON=OFF -DCMAKE_CXX_FLAGS="-Og -g1" >/dev/null
cmake --build build/asan -j"$jobs"
stage "ASan tests"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build/asan --output-on-failure -j"$jobs" -LE "slow|cli|python|stream|scene"

# ThreadSanitizer: the engine (several threads submitting and cancelling, the scheduler, the pool, the image
# cache), metrics, the frame stream (a pushing thread against its answering thread) and fastvlm-server
# (its error-case suite: concurrent requests, cancellations, disconnects; a race report fails it).
stage "TSan build"
cmake -S . -B build/tsan -DCMAKE_BUILD_TYPE=None -DFASTVLM_BUILD_BENCH=OFF -DFASTVLM_BUILD_EXAMPLES=OFF -DFASTVLM_BUILD_SERVER=ON \
      -DFASTVLM_BUILD_PYTHON=OFF -DCMAKE_CXX_FLAGS="-Og -g1 -fsanitize=thread" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" >/dev/null
cmake --build build/tsan -j"$jobs" --target test_engine test_metrics test_frames test_adaptive fastvlm-server
stage "TSan tests"
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 build/tsan/tests/test_engine
TSAN_OPTIONS=halt_on_error=1 build/tsan/tests/test_metrics
TSAN_OPTIONS=halt_on_error=1 build/tsan/tests/test_frames
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 build/tsan/tests/test_adaptive
TSAN_OPTIONS=halt_on_error=1:exitcode=66 ctest --test-dir build/tsan --output-on-failure -R '^server\.errors$'

# libFuzzer smoke run: every target in tests/fuzz for 20 s (clang-14, ASan + UBSan; tests/fuzz/README.md).
stage "fuzz"
tests/fuzz/run.sh 20
stage "all tests passed"
