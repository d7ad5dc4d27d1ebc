#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, runs every test in a release build
# and again under AddressSanitizer + UndefinedBehaviorSanitizer, and checks single_include/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
jobs=$(nproc)
/usr/bin/python3 scripts/amalgamate.py --check

cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DFASTVLM_BUILD_BENCH=ON >/dev/null
cmake --build build/release -j"$jobs"
ctest --test-dir build/release --output-on-failure -j"$jobs"

# The sanitizer pass covers the library through the unit tests and fastvlm-server through its error-case
# suite (server.errors); the CLI end-to-end tests run in release.
cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=None -DFASTVLM_SANITIZE=ON -DFASTVLM_BUILD_BENCH=OFF \
      -DFASTVLM_BUILD_EXAMPLES=OFF -DFASTVLM_BUILD_PYTHON=OFF -DCMAKE_CXX_FLAGS="-O1 -g1" >/dev/null
cmake --build build/asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build/asan --output-on-failure -j"$jobs" -LE slow
# ThreadSanitizer: the engine (several threads submitting and cancelling, the scheduler, the pool, the image
# cache), metrics, and the frame stream (a pushing thread against its answering thread).
cmake -S . -B build/tsan -DCMAKE_BUILD_TYPE=None -DFASTVLM_BUILD_BENCH=OFF -DFASTVLM_BUILD_EXAMPLES=OFF -DFASTVLM_BUILD_SERVER=OFF -DFASTVLM_BUILD_PYTHON=OFF \
      -DCMAKE_CXX_FLAGS="-O1 -g1 -fsanitize=thread" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" >/dev/null
cmake --build build/tsan -j"$jobs" --target test_engine test_metrics test_frames
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 build/tsan/tests/test_engine
TSAN_OPTIONS=halt_on_error=1 build/tsan/tests/test_metrics
TSAN_OPTIONS=halt_on_error=1 build/tsan/tests/test_frames
echo "all tests passed"
