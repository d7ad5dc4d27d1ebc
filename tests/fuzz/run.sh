#!/usr/bin/env bash
# Runs the libFuzzer targets one after the other (tests/fuzz/README.md):
#
#   tests/fuzz/run.sh [seconds] [target...]     # default: 30 s each, every target
#
# Builds build/fuzz first (configures it with clang when it does not exist). Each target runs for
# `seconds` (-max_total_time) with -rss_limit_mb=2048 -timeout=10 and its own -max_len and dictionary,
# on a writable corpus, build/fuzz/work/<target>/corpus (kept between runs), read together with the
# committed seeds (tests/fuzz/corpus/<target>) and the generated ones (make_corpus.py); new inputs go
# only to build/fuzz/work, nothing is written into the source tree. Prints one summary line per target and exits non-zero when any target found a
# crash, leak, timeout or out-of-memory, after printing the report (stack) and the saved input.
#
# Environment: FUZZ_BUILD_DIR (build/fuzz), FUZZ_CXX (clang++-14), FUZZ_JOBS (nproc) for the build,
# FUZZ_NO_BUILD=1 to use the binaries as they are, FUZZ_ARGS extra libFuzzer flags (e.g. -seed=1). The
# targets run one at a time, each as a single process.
set -uo pipefail
cd "$(dirname "$0")/../.."
src=$(pwd)

seconds=${1:-30}
[[ $# -gt 0 ]] && shift
if ! [[ $seconds =~ ^[0-9]+$ ]] || (( seconds < 1 )); then
  echo "usage: tests/fuzz/run.sh [seconds] [target...]" >&2
  exit 2
fi

all_targets=(safetensors safetensors_index config tokenizer image prompt batch_jsonl openai_request frames)
declare -A max_len=([safetensors]=16384 [safetensors_index]=8192 [config]=8192 [tokenizer]=16384 [image]=32768
                    [prompt]=4096 [batch_jsonl]=8192 [openai_request]=32768 [frames]=65536)
targets=()
for t in "$@"; do
  t=${t#fuzz_}
  if [[ -z ${max_len[$t]:-} ]]; then
    echo "run.sh: unknown target '$t' (targets: ${all_targets[*]})" >&2
    exit 2
  fi
  targets+=("$t")
done
(( ${#targets[@]} )) || targets=("${all_targets[@]}")

build=${FUZZ_BUILD_DIR:-build/fuzz}
[[ $build = /* ]] || build="$src/$build"
if [[ ${FUZZ_NO_BUILD:-0} != 1 ]]; then
  mkdir -p "$build"
  blog="$build/fuzz-build.log"
  : >"$blog"
  if [[ ! -f $build/CMakeCache.txt ]]; then
    if ! cmake -S . -B "$build" -DCMAKE_CXX_COMPILER="${FUZZ_CXX:-clang++-14}" -DFASTVLM_BUILD_FUZZ=ON \
          -DFASTVLM_BUILD_TESTS=OFF -DFASTVLM_BUILD_EXAMPLES=OFF -DFASTVLM_BUILD_SERVER=OFF \
          -DFASTVLM_BUILD_PYTHON=OFF -DFASTVLM_BUILD_BENCH=OFF >>"$blog" 2>&1; then
      cat "$blog" >&2
      rm -f "$build/CMakeCache.txt"  # configure again next time
      echo "run.sh: configuring $build failed (log above)" >&2
      exit 1
    fi
  fi
  if ! nice -n 10 cmake --build "$build" --target fuzz -j"${FUZZ_JOBS:-$(nproc)}" >>"$blog" 2>&1; then
    grep -E 'error|Error' "$blog" | head -n 40 >&2
    echo "run.sh: building the fuzz targets failed (full log: $blog)" >&2
    exit 1
  fi
fi

work="$build/work"
seeds="$work/seeds"
rm -rf "$seeds"
/usr/bin/python3 tests/fuzz/make_corpus.py "$seeds" >/dev/null || exit 1

# Symbolized stacks; every sanitizer report is fatal.
for d in /usr/lib/llvm-14/bin /usr/lib/llvm-15/bin /usr/lib/llvm-16/bin; do
  [[ -x $d/llvm-symbolizer ]] && { export ASAN_SYMBOLIZER_PATH=$d/llvm-symbolizer; break; }
done
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:symbolize=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# The harnesses' scratch folders are fastvlm-fuzz-<tag>.<pid>.*; a run that dies (crash, timeout) cannot
# remove its own: remove those whose process is gone.
cleanup_scratch() {
  local d name rest pid
  for d in /dev/shm/fastvlm-fuzz-*.*.* "${TMPDIR:-/tmp}"/fastvlm-fuzz-*.*.*; do
    [[ -d $d ]] || continue
    name=${d##*/}; rest=${name#*.}; pid=${rest%%.*}
    [[ $pid =~ ^[0-9]+$ ]] || continue
    kill -0 "$pid" 2>/dev/null || rm -rf -- "$d"
  done
}

failed=()
printf '%-26s %-8s %10s %8s %7s %7s %12s\n' target result execs exec/s cov ft corpus
for t in "${targets[@]}"; do
  bin="$build/tests/fuzz/fuzz_$t"
  if [[ ! -x $bin ]]; then
    echo "run.sh: $bin is missing (build with -DFASTVLM_BUILD_FUZZ=ON; see tests/fuzz/README.md)" >&2
    failed+=("$t")
    continue
  fi
  dir="$work/$t"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  log="$dir/fuzz.log"
  corpora=("$dir/corpus")  # libFuzzer writes new inputs into the first folder only
  [[ -d tests/fuzz/corpus/$t ]] && corpora+=("$src/tests/fuzz/corpus/$t")
  [[ -d $seeds/$t ]] && corpora+=("$seeds/$t")
  dict=()
  [[ -f tests/fuzz/$t.dict ]] && dict=("-dict=$src/tests/fuzz/$t.dict")

  # libFuzzer stops itself after max_total_time; `timeout` only ends a run stuck outside its per-input
  # timeout (e.g. while loading the corpus).
  # shellcheck disable=SC2086
  timeout -k 10 $((seconds + 300)) \
    "$bin" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len="${max_len[$t]}" \
           -print_final_stats=1 -artifact_prefix="$dir/artifacts/" "${dict[@]}" ${FUZZ_ARGS:-} \
           "${corpora[@]}" >"$log" 2>&1
  rc=$?
  cleanup_scratch

  status=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$status")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$status")
  corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9]+[a-zA-Z]*).*/\1/p' <<<"$status")
  execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -n 1)
  eps=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$log" | tail -n 1)
  [[ -z $execs ]] && execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$status")
  [[ -z $eps ]] && eps=$(sed -nE 's/.* exec\/s: ([0-9]+).*/\1/p' <<<"$status")
  artifact=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$log" | tail -n 1)

  result=ok
  if (( rc != 0 )) || [[ -n $artifact ]]; then
    case "$(basename "${artifact:-none}")" in
      crash-*) result=CRASH ;;
      leak-*) result=LEAK ;;
      timeout-*) result=TIMEOUT ;;
      oom-*) result=OOM ;;
      slow-unit-*) result=SLOW ;;
      *) result="FAIL($rc)"; (( rc == 124 || rc == 137 )) && result=HUNG ;;
    esac
  fi
  printf '%-26s %-8s %10s %8s %7s %7s %12s\n' "fuzz_$t" "$result" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}"
  if [[ $result != ok ]]; then
    failed+=("$t")
    {
      echo "---- fuzz_$t: $result (exit $rc); log: $log"
      # The report: from the first error line to the end of the log.
      first=$(grep -nE '==[0-9]+==ERROR|==FUZZ INVARIANT==|runtime error:|terminate called|ALARM: working|out-of-memory|deadly signal|LeakSanitizer' "$log" | head -n 1 | cut -d: -f1)
      tail -n +"${first:-1}" "$log" | head -n 150
      if [[ -n $artifact ]]; then
        echo "---- input: $artifact"
        echo "---- reproduce: $bin $artifact"
      fi
    } >&2
  fi
done

if (( ${#failed[@]} )); then
  echo "fuzz: FAILED: ${failed[*]} (reports above; inputs under $work/<target>/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} target(s) ran ${seconds} s each without a finding"
