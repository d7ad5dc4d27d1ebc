#!/usr/bin/env python3
"""Markdown tables from a bench_matmul JSON file (median aggregates).

Limits: the best of the Limit/... medians (run before and after the kernels) and of the limits each
kernel benchmark observed right before it ran (counters LimitFMA / LimitBW); the % columns are
recomputed here against them (the machine is shared; the best is what the hardware does alone).

    bench_matmul --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
                 --benchmark_out=matmul.json --benchmark_out_format=json
    python3 bench/matmul_table.py matmul.json
"""
import json
import re
import sys


def main(path):
    runs = json.load(open(path))["benchmarks"]
    med = {}
    for b in runs:
        if b.get("aggregate_name", "median") != "median":
            continue
        med[b["run_name"]] = b

    limits = {}
    for name, b in med.items():
        m = re.match(r"Limit/([A-Za-z0-9]+_?[A-Za-z0-9]*?)(?:_end)?/.*threads:(\d)", name)
        if m:
            val = b.get("GFLOP/s") or b.get("GOP/s") or b.get("GB/s")
            key = (m.group(1), int(m.group(2)))
            limits[key] = max(limits.get(key, 0.0), val)
    for name, b in med.items():  # the limits each kernel benchmark observed right before it ran
        m = re.search(r"threads:(\d)", name)
        if m and "LimitFMA" in b:
            t = int(m.group(1))
            limits[("FMA_f32", t)] = max(limits.get(("FMA_f32", t), 0.0), b["LimitFMA"])
            limits[("ReadBW_1GiB", t)] = max(limits.get(("ReadBW_1GiB", t), 0.0), b["LimitBW"])
    print("| limit (best seen in the run) | 1 thread | 2 threads |\n|---|---:|---:|")
    for key, label in [("FMA_f32", "f32 FMA peak, GFLOP/s"), ("dpbf16", "vdpbf16ps peak, GFLOP/s"),
                       ("vnni_int8", "vpdpbusd peak, GOP/s"), ("ReadBW_1GiB", "read bandwidth (1 GiB), GB/s")]:
        if (key, 1) in limits:
            print(f"| {label} | {limits[(key, 1)]:.1f} | {limits.get((key, 2), float('nan')):.1f} |")
    print()

    rows = {}
    for name, b in med.items():
        m = re.match(r"(Matmul|OpenBLAS)/(\w+)/(\w+)/shape:\d+/threads:(\d)", name)
        if m:
            rows[(m.group(3), m.group(2) if m.group(1) == "Matmul" else "openblas", int(m.group(4)))] = b
    shapes = []
    for (s, _, _) in rows:
        if s not in shapes:
            shapes.append(s)
    fmts = ["f32", "bf16w_f32", "f16w_f32", "bf16", "q8", "q4", "openblas"]
    for s in shapes:
        m1 = s.startswith(("decode", "lm_head"))
        print(f"**{s}**\n")
        print("| format | threads | ms | GFLOP/s | GB/s | % FMA peak | % read BW | vs OpenBLAS |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|")
        for f in fmts:
            for t in (1, 2):
                b = rows.get((s, f, t))
                if not b:
                    continue
                ob = rows.get((s, "openblas", t))
                ratio = f"{ob['real_time'] / b['real_time']:.2f}×" if ob and f != "openblas" else ""
                fma = 100.0 * b["GFLOP/s"] / limits[("FMA_f32", t)]
                bw = f"{100.0 * b['GB/s'] / limits[('ReadBW_1GiB', t)]:.0f}" if m1 else ""
                label = b.get("label", "")
                print(f"| {f} ({label}) | {t} | {b['real_time']:.3f} | {b['GFLOP/s']:.1f} | {b['GB/s']:.1f} | "
                      f"{fma:.0f} | {bw} | {ratio} |")
        print()

    small = {}
    for name, b in med.items():
        m = re.match(r"SmallM/(\w+)/([\w.]+)/(gemv|gemm)/shape:\d+/m:(\d+)/kernel:\d/threads:(\d)", name)
        if m:
            small[(m.group(2), m.group(1), m.group(3), int(m.group(4)))] = (b, int(m.group(5)))
    shapes = sorted({k[0] for k in small}, key=lambda s: (not s.startswith("qwen2"), s))
    ms_ = sorted({k[3] for k in small})
    for s in shapes:
        print(f"**small M: {s}** — ms per pass · GB/s of packed weights (% of the read bandwidth)\n")
        print("| format | kernel | " + " | ".join(f"M = {m}" for m in ms_) + " |\n|---|---|" + "---:|" * len(ms_))
        for f in fmts:
            for kern in ("gemv", "gemm"):
                cells = []
                for m in ms_:
                    v = small.get((s, f, kern, m))
                    if not v:
                        cells.append("")
                        continue
                    b, t = v
                    bw = 100.0 * b["GB/s"] / limits[("ReadBW_1GiB", t)]
                    cells.append(f"{b['real_time']:.2f} · {b['GB/s']:.1f} ({bw:.0f} %)")
                if any(cells):
                    print(f"| {f} | {kern} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main(sys.argv[1])
