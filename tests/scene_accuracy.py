#!/usr/bin/python3
"""Held-out exact-match accuracy of the scene model through `fastvlm-cli eval --json`.

  tests/scene_accuracy.py --scenes DIR --make [--seed 500000] [--count 200]     (write the scenes)
  tests/scene_accuracy.py --scenes DIR --cli fastvlm-cli --model DIR --precision P --min-accuracy A
                          [--threads 1] [--summary FILE]

Seeds 500000+ were never used in training (training: 0..7999, README eval: 900000+, demo: 990000+).
Fails (exit 1) when the command fails, its JSON is malformed, or accuracy < --min-accuracy.
Exit 77 when numpy / Pillow (needed by tools/make_scenes.py) are missing.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", required=True)
    ap.add_argument("--make", action="store_true")
    ap.add_argument("--seed", type=int, default=500000)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--cli")
    ap.add_argument("--model")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--min-accuracy", type=float, default=0.95)
    ap.add_argument("--threads", default="1")
    ap.add_argument("--summary", help="also write the JSON summary here")
    a = ap.parse_args()

    try:
        import numpy  # noqa: F401
        import PIL  # noqa: F401
    except ImportError as e:
        print(f"SKIP: {e} (tools/make_scenes.py needs Debian's python3-numpy and python3-pil)")
        return 77

    jsonl = os.path.join(a.scenes, "answers.jsonl")
    if a.make:
        shutil.rmtree(a.scenes, ignore_errors=True)
        cmd = [sys.executable, os.path.join(ROOT, "tools", "make_scenes.py"), "--seed", str(a.seed), "--count",
               str(a.count), "--out", a.scenes]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(jsonl) as f:
            n = sum(1 for ln in f if ln.strip())
        print(f"{a.count} scenes (seeds {a.seed}..{a.seed + a.count - 1}), {n} prompts -> {jsonl}")
        return 0

    if not (a.cli and a.model):
        ap.error("--cli and --model are required unless --make")
    if not os.path.exists(jsonl):
        print(f"FAIL: {jsonl} missing (run with --make first)")
        return 1
    cmd = [a.cli, "eval", "--model", a.model, "--jsonl", jsonl, "--precision", a.precision, "--threads", a.threads,
           "--max-tokens", "64", "--json"]
    print(" ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(p.stderr)  # mismatches
    if p.returncode != 0:
        print(f"FAIL: fastvlm-cli eval exited {p.returncode}")
        return 1
    try:
        r = json.loads(p.stdout)
        acc, count, correct = float(r["accuracy"]), int(r["count"]), int(r["correct"])
        ttft, tok_s, prec = float(r["ttft_ms"]), float(r["decode_tok_s"]), r["precision"]
    except (ValueError, KeyError, TypeError) as e:
        print(f"FAIL: cannot read the eval summary ({e}): {p.stdout!r}")
        return 1
    if a.summary:
        with open(a.summary, "w") as f:
            f.write(p.stdout)
    ok = prec == a.precision and count > 0 and abs(acc - correct / count) < 1e-12 and acc >= a.min_accuracy
    print(f"{prec}: accuracy {acc:.4f} ({correct}/{count}), min {a.min_accuracy}; mean TTFT {ttft:.2f} ms; "
          f"decode {tok_s:.0f} tok/s")
    for prompt, g in r.get("by_prompt", {}).items():
        print(f"  {g['correct']:4d}/{g['count']:<4d} {prompt}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
