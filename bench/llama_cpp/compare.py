#!/usr/bin/python3
"""fastvlm against llama.cpp on the same Qwen2 decoder, the same machine, the same run.

    bench/llama_cpp/build.sh build/llama.cpp                         # once: llama.cpp from npm's node-llama-cpp
    /usr/bin/python3 bench/llama_cpp/compare.py --model /work/synth-0.5b \\
        --llama build/llama.cpp --cli build/release/examples/fastvlm-cli [--reps 5] [--threads 2]

For the FastVLM folder --model (the synthetic full-size ones of tools/make_synthetic_checkpoint.py, or an
official one), the decoder is written as GGUF (make_gguf.py: BF16, then llama-quantize to F16, Q8_0 and
Q4_0; kept in --work). Then, --reps times, round-robin over the pairs (fastvlm preset, llama.cpp type):
bf16/BF16, fp16/F16, int8/Q8_0, int4/Q4_0:
  - llama.cpp: `llama-bench -m F -p P -n N -d 0,P -t T -r 1 -o json` (prompt processing of P tokens; decode of
    N tokens at depth 0 and after P tokens of context, as fastvlm decodes after its prompt)
  - fastvlm: `fastvlm-cli run --model M --image IMG --precision X --max-tokens N --threads T --json`
    (prefill of the P = 256 image + 24 text tokens of the default prompt; decode after them)
Medians are reported, with decode GB/s against the best `bench_matmul` Limit/ReadBW_1GiB of the same run
(3 repetitions before and after), and the ratio fastvlm / llama.cpp. llama.cpp's random-free GGUFs
carry the very weights fastvlm runs; both run greedy on a synthetic model, so the texts mean nothing.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import precision_table as pt  # noqa: E402  (run_cmd, read_bandwidth, weight bytes, machine, make_image)

PAIRS = [("bf16", "BF16"), ("fp16", "F16"), ("int8", "Q8_0"), ("int4", "Q4_0")]
GGUF_BYTES = {"BF16": 2.0, "F16": 2.0, "Q8_0": 34 / 32, "Q4_0": 18 / 32}


def ggufs(a, types):
    """The model's decoder as GGUF, one file per type (made once, kept in --work)."""
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    stem = Path(a.model).resolve().name
    base = work / f"{stem}.BF16.gguf"
    src = Path(a.llama) / "src"
    if not base.exists():
        pt.log(f"writing {base}")
        pt.run_cmd([sys.executable, str(HERE / "make_gguf.py"), "--model", a.model, "--gguf-py", str(src / "gguf-py"),
                    "--out", str(base)], 3600, "make_gguf.py")
    out = {}
    for t in types:
        f = work / f"{stem}.{t}.gguf"
        if not f.exists():
            pt.log(f"llama-quantize -> {f}")
            # --pure: every matrix in type t (else llama-quantize upgrades output.weight to Q6_K / Q8_0), as
            # fastvlm's presets keep the lm_head in the preset's format.
            pt.run_cmd([str(Path(a.llama) / "build" / "bin" / "llama-quantize"), "--pure", str(base), str(f), t, str(a.threads)],
                       3600, "llama-quantize")
        out[t] = f
    return out


def llama_bench(a, gguf):
    cmd = [str(Path(a.llama) / "build" / "bin" / "llama-bench"), "-m", str(gguf), "-p", str(a.prompt), "-n", str(a.gen),
           "-d", f"0,{a.prompt}", "-t", str(a.threads), "-r", "1", "-o", "json"]
    rows = json.loads(pt.run_cmd(cmd, 1800, "llama-bench"))
    res = {}
    for r in rows:
        if r["n_prompt"] > 0 and r["n_gen"] == 0 and r["n_depth"] == 0:
            res["prefill_tok_s"] = r["avg_ts"]
        elif r["n_gen"] > 0 and r["n_depth"] == 0:
            res["decode_tok_s"] = r["avg_ts"]
        elif r["n_gen"] > 0:
            res["decode_ctx_tok_s"] = r["avg_ts"]
    res["build_commit"] = rows[0].get("build_commit", "") if rows else ""
    return res


def fastvlm_run(a, preset, image):
    cmd = [a.cli, "run", "--model", a.model, "--image", image, "--precision", preset, "--max-tokens", str(a.gen),
           "--threads", str(a.threads), "--json"]
    j = json.loads(pt.run_cmd(cmd, 1800, f"fastvlm-cli run --precision {preset}").strip().splitlines()[-1])
    t = j["timings"]
    return {"prefill_tok_s": t["prefill_tok_s"], "prefill_tokens": t["prefill_tokens"], "decode_tok_s": t["decode_tok_s"],
            "decode_tokens": t["decode_tokens"], "vision_ms": t["vision_ms"], "ttft_ms": t["ttft_ms"],
            "peak_rss_mb": t["peak_rss_mb"], "kernels": j.get("kernels", {})}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="FastVLM folder (full-size synthetic or official)")
    ap.add_argument("--llama", default=str(Path(pt.ROOT) / "build" / "llama.cpp"), help="folder of bench/llama_cpp/build.sh")
    ap.add_argument("--cli", default=str(Path(pt.ROOT) / "build" / "release" / "examples" / "fastvlm-cli"))
    ap.add_argument("--bench-matmul", default=None, help="bench_matmul for the read bandwidth (default: next to --cli)")
    ap.add_argument("--work", default=None, help="where the GGUF files are kept (default: --llama/models)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--prompt", type=int, default=280, help="llama-bench prompt length (fastvlm: 256 image + 24 text)")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--pairs", default=",".join(p for p, _ in PAIRS), help="fastvlm presets to compare (bf16,fp16,int8,int4)")
    ap.add_argument("--json", help="write every raw number here")
    a = ap.parse_args()
    a.work = a.work or str(Path(a.llama) / "models")
    pairs = [p for p in PAIRS if p[0] in a.pairs.split(",")]
    bench = a.bench_matmul or str(Path(a.cli).resolve().parent.parent / "bench" / "bench_matmul")

    files = ggufs(a, [t for _, t in pairs])
    image = str(Path(a.work) / "compare-1024.png")
    if not os.path.exists(image):
        pt.make_image(image, 0)
    counts, _ = pt.checkpoint_params(a.model)
    bw = [] if not os.path.exists(bench) else pt.read_bandwidth(bench, a.threads, 600)["gb_s"]
    raw = {p: {"fastvlm": [], "llama": []} for p, _ in pairs}
    t0 = time.time()
    for r in range(a.reps):
        k = r % len(pairs)
        for preset, t in pairs[k:] + pairs[:k]:
            pt.warm_page_cache(str(files[t]))
            raw[preset]["llama"].append(llama_bench(a, files[t]))
            raw[preset]["fastvlm"].append(fastvlm_run(a, preset, image))
            pt.log(f"rep {r + 1}/{a.reps} {preset}/{t}: fastvlm decode {raw[preset]['fastvlm'][-1]['decode_tok_s']:.1f}, "
                   f"llama.cpp {raw[preset]['llama'][-1].get('decode_ctx_tok_s', 0):.1f} tok/s ({time.time() - t0:.0f} s)")
    if os.path.exists(bench):
        bw += pt.read_bandwidth(bench, a.threads, 600)["gb_s"]
    best_bw = max(bw) if bw else None

    print(f"\n{pt.machine()}; {a.threads} threads; {a.reps} runs each, medians; model {a.model} "
          f"({pt.model_size(a.model)}); llama.cpp {raw[pairs[0][0]]['llama'][0].get('build_commit', '?')}; "
          f"read bandwidth (best of {len(bw)}) {best_bw:.1f} GB/s\n" if best_bw else "\n")
    print("| fastvlm / llama.cpp | prefill tok/s (fastvlm / llama.cpp) | decode tok/s after the prompt | decode at depth 0 "
          "| fastvlm decode % of read BW | llama.cpp % | fastvlm kernels (gemv / gemm) |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for preset, t in pairs:
        f, l = raw[preset]["fastvlm"], raw[preset]["llama"]
        fp, fd = med([x["prefill_tok_s"] for x in f]), med([x["decode_tok_s"] for x in f])
        lp, ld, ld0 = (med([x.get(k) for x in l]) for k in ("prefill_tok_s", "decode_ctx_tok_s", "decode_tok_s"))
        per_tok_f = pt.weight_bytes(counts, preset)["decode_per_token"]
        per_tok_l = sum(n * (4.0 if c == "f32" else GGUF_BYTES[t]) for c, n in counts.items() if c in pt.DECODE_CLASSES)
        pf = 100 * fd * per_tok_f / 1e9 / best_bw if best_bw and fd else None
        pl = 100 * ld * per_tok_l / 1e9 / best_bw if best_bw and ld else None
        kern = f[-1]["kernels"]
        pair_names = {"bf16": "bf16xbf16", "fp16": "f16xf32", "int8": "q8xq8", "int4": "q4xq8"}
        kc = kern.get(pair_names[preset], {})
        summary[preset] = {"gguf": t, "fastvlm_prefill": fp, "llama_prefill": lp, "fastvlm_decode": fd, "llama_decode_ctx": ld,
                           "llama_decode_0": ld0, "fastvlm_bw_pct": pf, "llama_bw_pct": pl, "kernels": kc}
        print(f"| {preset} / {t} | {pt.fmt(fp, '.0f')} / {pt.fmt(lp, '.0f')} (**{pt.fmt(fp / lp if fp and lp else None, '.2f')}×**) "
              f"| {pt.fmt(fd, '.1f')} / {pt.fmt(ld, '.1f')} (**{pt.fmt(fd / ld if fd and ld else None, '.2f')}×**) "
              f"| llama.cpp {pt.fmt(ld0, '.1f')} | {pt.fmt(pf, '.0f')} % | {pt.fmt(pl, '.0f')} % "
              f"| {kc.get('gemv', '?')} / {kc.get('gemm', '?')} ({kc.get('source', '?')}) |")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": pt.machine(), "threads": a.threads, "reps": a.reps, "read_bw_gb_s": bw,
                                            "summary": summary, "raw": raw}, indent=1))


if __name__ == "__main__":
    main()
