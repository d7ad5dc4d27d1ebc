#!/usr/bin/python3
"""Issue 15's whole table in one run: every preset of 0.5B, 1.5B and 7B next to llama.cpp, on this machine.

    bench/llama_cpp/build.sh build/llama.cpp          # once (llama.cpp from npm's node-llama-cpp, built here)
    /usr/bin/python3 bench/issue15_table.py --models /work/synth-0.5b,/work/synth-1.5b,/work/synth-7b \\
        [--reps 3] [--reps-7b 2] [--presets-7b auto] [--out DIR]

For each folder (tools/make_synthetic_checkpoint.py --variant {0.5b,1.5b,7b}), one after the other:
  1. bench/precision_table.py --skip-accuracy: load ms, vision ms, prefill tok/s, TTFT, decode tok/s and peak
     RSS of every preset (`fastvlm-cli run --json`, presets round-robin, medians);
  2. bench/llama_cpp/compare.py: bf16/BF16, fp16/F16, int8/Q8_0, int4/Q4_0 against llama-bench (prefill of
     280 tokens, decode of 64 after them), and the kernel paths fastvlm chose at load;
  3. bench_engine --decode-bw for int8 and int4 (and bf16/fp16): decode against the 1 GiB read bandwidth
     measured just before and just after each decode (the bandwidth of a shared host moves within seconds).
Presets whose weights do not fit in 80 % of the RAM are left out (7B fp32: 30 GB); --presets-7b picks
them by hand. Prints one markdown table per model, then issue 15's targets with the ratio each came to;
every raw number is kept in DIR (default build/issue15) as JSON. Takes about an hour on 2 cores
(most of it 7B: the GGUF files are written once and kept in build/llama.cpp/models).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import precision_table as pt  # noqa: E402

ALL = ["fp32", "bf16", "fp16", "int8", "int4"]
LLAMA = {"bf16": "BF16", "fp16": "F16", "int8": "Q8_0", "int4": "Q4_0"}
PAIR_NAMES = {"bf16": "bf16xbf16", "fp16": "f16xf32", "int8": "q8xq8", "int4": "q4xq8"}


def mem_total_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def run(cmd, log_path, timeout):
    pt.log("$ " + " ".join(str(c) for c in cmd))
    with open(log_path, "w") as log:
        p = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=log, text=True, timeout=timeout)
    if p.returncode != 0:
        raise pt.CommandError(f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} failed ({p.returncode}); see {log_path}")
    return p.stdout


def decode_bw(a, model, preset, out):
    pairs, tokens = (8, 64) if pt.model_size(model) == "0.5B" else (6, 48) if pt.model_size(model) == "1.5B" else (4, 16)
    txt = run([a.bench_engine, "--model", model, "--precision", preset, "--decode-bw", "--pairs", pairs, "--max-tokens", tokens,
               "--threads", a.threads], out / f"decode_bw-{pt.model_size(model)}-{preset}.log", 3600)
    m = re.search(r"\|\s*\w+\s*\|\s*([\d.]+) MB\s*\|\s*([\d.]+)\s*\|\s*([\d.]+) GB/s\s*\|\s*\*\*(\d+) %\*\*\s*\|\s*(\d+)–(\d+) %"
                  r" \((\d+) of (\d+) pairs\)", txt)
    if not m:
        raise pt.CommandError(f"bench_engine --decode-bw {preset}: no result row in {txt!r}")
    keys = ["mb_per_token", "tok_s", "read_gb_s", "pct", "pct_min", "pct_max", "counted", "pairs"]
    return {k: float(v) for k, v in zip(keys, m.groups())}


def fits(counts, preset, frac=0.8):
    return pt.weight_bytes(counts, preset)["total"] <= frac * mem_total_bytes()


def one_model(a, model, out):
    size = pt.model_size(model)
    counts, _ = pt.checkpoint_params(model)
    want = a.presets_7b.split(",") if size == "7B" and a.presets_7b != "auto" else a.presets.split(",")
    presets = [p for p in want if fits(counts, p)]
    skipped = [p for p in want if p not in presets]
    reps = a.reps_7b if size == "7B" else a.reps
    res = {"size": size, "model": model, "presets": presets, "skipped": skipped}
    pj, cj = out / f"precision-{size}.json", out / f"compare-{size}.json"
    run([sys.executable, HERE / "precision_table.py", "--cli", a.cli, "--model", model, "--threads", a.threads, "--reps", reps,
         "--presets", ",".join(presets), "--skip-accuracy", "--json", pj], out / f"precision-{size}.log", 7200)
    res["precision"] = json.loads(pj.read_text())
    pairs = [p for p in presets if p in LLAMA]
    run([sys.executable, HERE / "llama_cpp" / "compare.py", "--model", model, "--llama", a.llama, "--cli", a.cli,
         "--threads", a.threads, "--reps", reps, "--pairs", ",".join(pairs), "--json", cj], out / f"compare-{size}.log", 14400)
    res["compare"] = json.loads(cj.read_text())
    res["decode_bw"] = {}
    for p in [p for p in ["int8", "int4", "fp16", "bf16"] if p in presets]:
        try:
            res["decode_bw"][p] = decode_bw(a, model, p, out)
        except pt.CommandError as e:  # every pair saw the bandwidth move by > 10 %: say so, go on
            res["decode_bw"][p] = {"error": str(e)}
    (out / f"issue15-{size}.json").write_text(json.dumps(res, indent=1))
    return res


def f(v, spec):
    return "–" if v is None else format(v, spec)


def table(r):
    """fastvlm's columns from precision_table (presets interleaved, fp32 included); llama.cpp's from compare.py,
    with the ratio fastvlm / llama.cpp of compare.py's own interleaved pairs."""
    speed = {p: r["precision"]["results"][p].get("speed") for p in r["presets"]}
    cmp = r["compare"]["summary"]
    lines = [f"### {r['size']} (`{r['model']}`)", "",
             "| preset | load ms | vision ms | prefill tok/s | llama.cpp prefill (ratio) | TTFT ms | decode tok/s "
             "| llama.cpp decode (ratio) | decode % of the read BW around it | peak RSS MB | kernels (gemv / gemm) |",
             "|---|---:|---:|---:|---|---:|---:|---|---|---:|---|"]
    for p in r["presets"]:
        s, c, d = speed.get(p), cmp.get(p, {}), r["decode_bw"].get(p, {})
        if not s:
            lines.append(f"| {p} | failed: see precision-{r['size']}.log |")
            continue
        lp, ld, fp, fd = c.get("llama_prefill"), c.get("llama_decode_ctx"), c.get("fastvlm_prefill"), c.get("fastvlm_decode")
        lpre = f"{lp:.0f} (**{fp / lp:.2f}×**)" if lp and fp else "–"
        ldec = f"{ld:.1f} (**{fd / ld:.2f}×**)" if ld and fd else "–"
        bw = ("n/a: " + d["error"][:60]) if "error" in d else \
            (f"**{d['pct']:.0f} %** of {d['read_gb_s']:.0f} GB/s ({d['pct_min']:.0f}–{d['pct_max']:.0f} %, {d['counted']:.0f} of "
             f"{d['pairs']:.0f} pairs)" if d else "–")
        k = c.get("kernels", {})
        kern = f"{k.get('gemv', '?')} / {k.get('gemm', '?')}" if k else ("simd" if p == "fp32" else "–")
        lines.append(f"| {p} | {s['load_ms']:.0f} | {s['vision_ms']:.0f} | {s['prefill_tok_s']:.0f} | {lpre} | {s['ttft_ms']:.0f} "
                     f"| {s['decode_tok_s']:.1f} | {ldec} | {bw} | {s['peak_rss_mb']:.0f} | {kern} |")
    if r["skipped"]:
        lines.append(f"\nLeft out (weights > 80 % of the {mem_total_bytes() / 2**30:.0f} GiB of RAM): {', '.join(r['skipped'])}.")
    return "\n".join(lines)


def targets(results):
    out = ["### Issue 15's targets, from this run", ""]

    def check(ok, text):
        out.append(f"- {'met' if ok else '**not met**'}: {text}")

    for r in results:
        sp = {p: r["precision"]["results"][p].get("speed") for p in r["presets"]}
        base = sp.get("fp32")
        for p in ("bf16", "fp16"):
            if base and sp.get(p):
                v, pr, de = (base["vision_ms"] / sp[p]["vision_ms"], sp[p]["prefill_tok_s"] / base["prefill_tok_s"],
                             sp[p]["decode_tok_s"] / base["decode_tok_s"])
                check(min(v, pr, de) >= 1.0, f"{r['size']} {p} never slower than fp32: vision {v:.2f}×, prefill {pr:.2f}×, "
                      f"decode {de:.2f}×")
        for p in ("int8", "int4"):
            d = r["decode_bw"].get(p)
            if d and "error" not in d:
                check(d["pct"] >= 90, f"{r['size']} {p} decode {d['pct']:.0f} % of the read bandwidth around it (≥ 90 %)")
        c = r["compare"]["summary"].get("fp16")
        if c and c.get("llama_decode_ctx") and c.get("fastvlm_decode"):
            check(c["fastvlm_decode"] >= c["llama_decode_ctx"], f"{r['size']} fp16 decode {c['fastvlm_decode']:.1f} tok/s vs "
                  f"llama.cpp F16 {c['llama_decode_ctx']:.1f} in the same interleaved runs "
                  f"({c['fastvlm_decode'] / c['llama_decode_ctx']:.2f}×)")
        if r["size"] == "7B":
            for p, bound in (("int4", 6000), ("int8", 10000)):
                if sp.get(p):
                    check(sp[p]["peak_rss_mb"] <= bound, f"7B {p} end to end, peak RSS {sp[p]['peak_rss_mb']:.0f} MB (≤ {bound} MB)")
        if r["size"] == "0.5B":
            for p in ("int8", "int4"):
                if sp.get(p):
                    check(sp[p]["ttft_ms"] <= 1000, f"0.5B {p} time to first token {sp[p]['ttft_ms']:.0f} ms (≤ 1,000 ms)")
            slow = [f"{p} {s['load_ms']:.0f} ms" for p, s in sp.items() if s and s["load_ms"] > 2000]
            check(not slow, "0.5B every preset loads in ≤ 2 s from a warm page cache" + (f" ({', '.join(slow)})" if slow else
                  f" (slowest {max(s['load_ms'] for s in sp.values() if s):.0f} ms)"))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="comma-separated FastVLM folders (0.5B, 1.5B, 7B)")
    ap.add_argument("--cli", default=str(Path(pt.ROOT) / "build" / "release" / "examples" / "fastvlm-cli"))
    ap.add_argument("--bench-engine", default=None, help="default: next to --cli, ../bench/bench_engine")
    ap.add_argument("--llama", default=str(Path(pt.ROOT) / "build" / "llama.cpp"), help="folder of bench/llama_cpp/build.sh")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="repetitions per preset (0.5B, 1.5B)")
    ap.add_argument("--reps-7b", type=int, default=2)
    ap.add_argument("--presets", default=",".join(ALL), help="presets of the 0.5B and 1.5B (and of 7B with --presets-7b auto)")
    ap.add_argument("--presets-7b", default="auto", help="7B presets (auto: every preset whose weights fit in 80 %% of the RAM)")
    ap.add_argument("--out", default=str(Path(pt.ROOT) / "build" / "issue15"))
    a = ap.parse_args()
    a.bench_engine = a.bench_engine or str(Path(a.cli).resolve().parent.parent / "bench" / "bench_engine")
    for p, what in ((a.cli, "--cli"), (a.bench_engine, "--bench-engine"), (Path(a.llama) / "build" / "bin" / "llama-bench", "--llama")):
        if not Path(p).exists():
            ap.error(f"{what}: {p} not found (build it first: see the docstring)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = []
    for m in [m for m in a.models.split(",") if m]:
        results.append(one_model(a, m, out))
        pt.log(f"{results[-1]['size']} done ({time.time() - t0:.0f} s)")
    rev = subprocess.run(["git", "-C", pt.ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    llama_rev = next((runs["llama"][0].get("build_commit", "?") for r in results for runs in r["compare"]["raw"].values()
                      if runs["llama"]), "?")
    print(f"\n{pt.machine()}; fastvlm {rev}; {a.threads} threads; llama.cpp {llama_rev}; {time.time() - t0:.0f} s in all\n")
    for r in results:
        print(table(r) + "\n")
    print(targets(results))


if __name__ == "__main__":
    main()
