#!/usr/bin/env bash
# Full-size FastViTHD (1024², synthetic weights) — fastvlm vs PyTorch CPU in the same run.
#
#   bench/run_vision_bench.sh [BUILD_DIR] [options passed to both: none]
#   env: THREADS (2), RUNS (3), PRECISION (fp32), MODEL_DIR (BUILD_DIR/vision_bench_model), SEED (0),
#        TORCH_DTYPE (bf16 when PRECISION is bf16, else fp32), SKIP_BUILD (0; 1 = use bench_vision as built)
#
# 1. writes the vision-only synthetic model folder (tests/vision_fullsize.py; 629 BF16 tensors, reused)
# 2. bench_vision: fastvlm, THREADS threads, 1 warm-up + RUNS timed forwards, per-part times
# 3. bench/pytorch_vision.py --dtype TORCH_DTYPE: the PyTorch reference model (fused form) on the same
#    weights; bf16 = the faster of bf16 weights / bf16 autocast (oneDNN), checked against fp32
# 4. prints the ratio of medians (wall) and of process CPU times. The box is shared: read the load
#    averages printed around the runs; CPU time is the steadier measure of work done.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
build="${1:-$root/build/release}"
threads="${THREADS:-2}"
runs="${RUNS:-3}"
precision="${PRECISION:-fp32}"
if [ "$precision" = bf16 ]; then torch_dtype="${TORCH_DTYPE:-bf16}"; else torch_dtype="${TORCH_DTYPE:-fp32}"; fi
model="${MODEL_DIR:-$build/vision_bench_model}"
py=/usr/bin/python3
out="$build/vision_bench"
mkdir -p "$out"

[ "${SKIP_BUILD:-0}" = 1 ] || cmake --build "$build" --target bench_vision >/dev/null
"$py" "$root/tests/vision_fullsize.py" --dir "$model" --seed "${SEED:-0}"

echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$build/bench/bench_vision" --model "$model" --threads "$threads" --runs "$runs" --warmup 1 \
    --precision "$precision" --json "$out/fastvlm.json"
echo "== load between: $(cut -d' ' -f1-3 /proc/loadavg)"
OPENBLAS_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" "$py" "$here/pytorch_vision.py" --model "$model" \
    --threads "$threads" --runs "$runs" --warmup 1 --dtype "$torch_dtype" --json "$out/pytorch.json" >/dev/null
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"

"$py" - "$out/fastvlm.json" "$out/pytorch.json" <<'PY'
import json, sys
ours = json.load(open(sys.argv[1]))
torch = json.load(open(sys.argv[2]))
t = torch["results"][torch.get("primary", 0)]
tlabel = t["label"]
print("\n%-40s %10s %10s %10s" % ("", "wall s", "CPU s", "GFLOP/s"))
print("%-40s %10.3f %10.2f %10.1f" % (ours["label"] + ", %d threads" % ours["threads"], ours["median_s"], ours["cpu_s"],
                                      ours["gflops_per_s"]))
print("%-40s %10.3f %10s %10.1f" % ("PyTorch %s %s, %d threads" % (torch["torch"], tlabel, torch["threads"]), t["median_s"],
                                    "%.2f" % t["cpu_s_median"] if "cpu_s_median" in t else "-", t["gflops_per_s"]))
print("speed-up (wall, medians): %.2fx" % (t["median_s"] / ours["median_s"]))
if "cpu_s_median" in t:
    print("speed-up (process CPU):   %.2fx" % (t["cpu_s_median"] / ours["cpu_s"]))
if torch.get("dtype") == "bf16":
    print("PyTorch: mkldnn available %s, oneDNN %s, ISA: %s, bf16 conv: %s" % (
        torch.get("mkldnn_available"), torch.get("onednn_version", "?"), torch.get("onednn_isa", "?"),
        torch.get("onednn_conv_impl", "?")))
    for r in torch["results"]:
        print("PyTorch %-14s %s" % (r["label"] + ":", "error: " + r["error"] if "error" in r else
              "median %.3f s (runs %s), output %s, max|err|/max|ref| vs fp32 %.3e%s" % (
                  r["median_s"], r["runs_s"], r["features_dtype"], r["rel_err_vs_fp32"],
                  "  <- reported" if r is t else "")))
print("\n%-10s %10s %10s %8s" % ("part", "fastvlm ms", "torch ms", "ratio"))
for k, v in ours["parts_median_s"].items():
    tv = t["parts_median_s"].get(k)
    print("%-10s %10.1f %10s %8s" % (k, 1e3 * v, "%.1f" % (1e3 * tv) if tv else "-", "%.2f" % (tv / v) if tv and v else "-"))
PY
