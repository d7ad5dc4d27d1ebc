#!/usr/bin/python3
"""`fastvlm-cli batch` (the Engine, continuous batching) gives line for line the same greedy text
with --parallel 8 and both caches on (image-feature cache, prefix KV reuse: the set asks several
questions about each image) as with --parallel 1 and both caches off, and as `fastvlm-cli run` (a
Session), on the first --scenes-count scenes of a held-out scene set (tests/scene_model.cmake writes it).

  tests/batch_equality.py --cli fastvlm-cli --model DIR --scenes DIR --precision P
                          [--scenes-count 100] [--run-lines 12]
Exit 1 on any difference, a failed line, or a malformed output.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--scenes", required=True)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--scenes-count", type=int, default=100)
    ap.add_argument("--run-lines", type=int, default=12, help="lines also checked against `run` (one process each)")
    a = ap.parse_args()
    src = os.path.join(a.scenes, "answers.jsonl")
    if not os.path.exists(src):
        print(f"FAIL: {src} missing")
        return 1
    lines, images = [], []
    with open(src) as f:
        for ln in f:
            if not ln.strip():
                continue
            j = json.loads(ln)
            if j["image"] not in images:
                images.append(j["image"])
            if len(images) > a.scenes_count:
                break
            lines.append(j)
    with tempfile.TemporaryDirectory() as tmp:
        jl = os.path.join(a.scenes, f"batch_{a.precision}.jsonl")
        with open(jl, "w") as f:
            for i, j in enumerate(lines):
                f.write(json.dumps({"id": i, "image": j["image"], "prompt": j["prompt"], "answer": j["answer"]}) + "\n")
        outs = {}
        for p in (8, 1):
            out = os.path.join(tmp, f"out{p}.jsonl")
            caches = [] if p == 8 else ["--image-cache-mb", "0", "--prefix-cache-mb", "0"]
            r = subprocess.run([a.cli, "batch", "--model", a.model, "--jsonl", jl, "--parallel", str(p), "--precision",
                                a.precision, "--threads", "2", "--max-tokens", "64", "--out", out, "--json"] + caches,
                               capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                print(f"FAIL: batch --parallel {p} exited {r.returncode}: {r.stderr}")
                return 1
            summary = json.loads(r.stdout)
            with open(out) as f:
                outs[p] = [json.loads(ln) for ln in f]
            counters = summary["metrics"]["counters"]
            hits = counters.get("prefix_cache_hits_total", 0)
            reused = counters.get("prefix_cache_positions_total", 0)
            print(f"--parallel {p} (caches {'on' if p == 8 else 'off'}): {summary['requests']} requests, wall {summary['wall_s']:.2f} s, "
                  f"aggregate decode {summary['aggregate_decode_tok_s']:.0f} tok/s, accuracy {summary['accuracy']}, errors "
                  f"{summary['errors']}; prefix cache: {hits} hits, {reused} positions reused")
            if (p == 8) != (hits > 0):
                print(f"FAIL: prefix cache hits {hits} with caches {'on' if p == 8 else 'off'}")
                return 1
            if summary["errors"] or len(outs[p]) != len(lines):
                print("FAIL: errors or missing lines")
                return 1
        bad = 0
        for i, (x, y) in enumerate(zip(outs[8], outs[1])):
            if x["id"] != i or y["id"] != i or x["text"] != y["text"]:
                bad += 1
                if bad <= 5:
                    print(f"line {i}: parallel 8, caches on {x.get('text')!r} vs parallel 1, caches off {y.get('text')!r}")
        step = max(1, len(lines) // max(1, a.run_lines))
        checked = 0
        for i in range(0, len(lines), step)[: a.run_lines]:
            j = lines[i]
            r = subprocess.run([a.cli, "run", "--model", a.model, "--image", os.path.join(a.scenes, j["image"]), "--prompt", j["prompt"],
                                "--precision", a.precision, "--threads", "2", "--max-tokens", "64", "--json"],
                               capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                print(f"FAIL: run exited {r.returncode}: {r.stderr}")
                return 1
            t = json.loads(r.stdout)["text"]
            checked += 1
            if t != outs[8][i]["text"]:
                bad += 1
                print(f"line {i}: run {t!r} vs batch {outs[8][i]['text']!r}")
        print(f"{len(lines)} lines ({a.scenes_count} scenes), {a.precision}: parallel 8 with caches == parallel 1 without on "
              f"{len(lines) - min(bad, len(lines))} lines; {checked} lines also against run; differences {bad}")
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
