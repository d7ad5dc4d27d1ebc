#!/usr/bin/env bash
# What including fastvlm costs a user's file: compile time and peak compiler memory of one file, in
# header-only mode and in compiled mode (include/fastvlm/core/compiled.hpp), runs interleaved, medians.
#
#   bench/build_time.sh [BUILD_DIR [RUNS [FILE]]]
#
# BUILD_DIR (default build/release) must hold libfastvlm_presets.a (`cmake --build BUILD_DIR --target
# fastvlm_presets`); FILE (default examples/describe.cpp: Model<policy::fp32> + Session, one image) is
# compiled with g++ -std=c++20 -O2 -march=native, the flags a user would pick, and linked in compiled mode
# to prove the library has every symbol. A third line compiles a file that only includes the umbrella
# header (`int main(){}`): the floor that parsing the headers alone costs.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build/release}
runs=${2:-3}
file=${3:-$here/examples/describe.cpp}
lib=$build/libfastvlm_presets.a
[ -f "$lib" ] || { echo "build_time.sh: $lib is missing: cmake --build $build --target fastvlm_presets" >&2; exit 2; }
[ -f "$file" ] || { echo "build_time.sh: $file is missing" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '#include "fastvlm/fastvlm.hpp"\nint main() {}\n' > "$tmp/umbrella.cpp"
flags=(-std=c++20 -O2 -march=native -I"$here/include" -isystem /usr/include/stb -DFASTVLM_USE_LIBJPEG)
libs=(-lutf8proc -ljpeg -pthread)

# measure NAME SOURCE EXTRA_FLAGS... : appends "seconds kilobytes" to $tmp/NAME
measure() {
    local name=$1 src=$2
    shift 2
    /usr/bin/time -f "%e %M" -o "$tmp/t" g++ "${flags[@]}" "$@" -c "$src" -o "$tmp/$name.o"
    cat "$tmp/t" >> "$tmp/$name"
}
for ((r = 1; r <= runs; ++r)); do
    echo "build_time.sh: run $r of $runs" >&2
    measure header_only "$file"
    measure compiled "$file" -DFASTVLM_COMPILED_LIB
    measure umbrella "$tmp/umbrella.cpp"
done
g++ "$tmp/compiled.o" "$lib" "${libs[@]}" -o "$tmp/compiled_program"  # every symbol is in the library

median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
echo "| mode ($(basename "$file"), g++ $(g++ -dumpversion) -O2, median of $runs) | compile time | compiler memory |"
echo "|---|---:|---:|"
for m in header_only compiled umbrella; do
    t=$(cut -d' ' -f1 "$tmp/$m" | median)
    kb=$(cut -d' ' -f2 "$tmp/$m" | median)
    case $m in
        header_only) label="header-only" ;;
        compiled) label="compiled mode (\`-DFASTVLM_COMPILED_LIB\`, linked with \`libfastvlm_presets.a\`)" ;;
        umbrella) label="the umbrella header alone (\`int main(){}\`), for scale" ;;
    esac
    awk -v l="$label" -v t="$t" -v kb="$kb" 'BEGIN {printf "| %s | %.1f s | %.2f GB |\n", l, t, kb / 1e6}'
done
