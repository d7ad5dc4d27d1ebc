#!/usr/bin/python3
"""Runs `fastvlm-cli embed` and compares its output file with a golden io file.

  vision_cli_check.py --cli BIN --out FILE --ref IO.safetensors --ref-name NAME [--tol 1e-4] -- <embed args>

Passes when max|out - ref| <= tol * max|ref| for image_features and, when --dump-stages is among the
embed args, for every dumped tensor whose name is also in the io file (golden names: stem,
network0..10, stage{i}, stage{i}.block{k}, conv_exp).
"""
import argparse
import json
import struct
import subprocess
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        out[name] = np.frombuffer(blob[base + b:base + end], dtype=DTYPES[e["dtype"]]).reshape(e["shape"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--ref-name", required=True, help="golden tensor to compare image_features with")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("embed_args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    extra = [x for x in a.embed_args if x != "--"]
    cmd = [a.cli, "embed", "--out", a.out] + extra
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    got = read_safetensors(a.out)
    ref = read_safetensors(a.ref)
    pairs = [("image_features", a.ref_name)]
    if "--dump-stages" in extra:
        pairs += [(k, k) for k in sorted(got) if k != "image_features" and k in ref]
        if len(pairs) < 10:
            print("FAIL: only %d dumped tensors match golden names" % (len(pairs) - 1))
            return 1
    bad = 0
    for g, r in pairs:
        x, y = got[g].astype(np.float64), ref[r].astype(np.float64)
        if x.shape != y.shape:
            print("FAIL %s: shape %s, golden %s %s" % (g, x.shape, r, y.shape))
            bad += 1
            continue
        err, amax = float(np.max(np.abs(x - y))), float(np.max(np.abs(y)))
        ok = np.isfinite(err) and err <= a.tol * amax
        bad += not ok
        print("%s %-18s vs %-22s max|err| %.3g  max|ref| %.3g  rel %.3g" % ("ok  " if ok else "FAIL", g, r, err, amax,
                                                                            err / amax if amax else err))
    print("%d of %d tensors within %.1g x max|ref|" % (len(pairs) - bad, len(pairs), a.tol))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
