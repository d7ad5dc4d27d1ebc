#!/usr/bin/python3
"""Compares a `fastvlm-cli dump` output with golden tensors (same names).

  compare_dump.py OUT.safetensors GOLDEN.safetensors [--rel 1e-4] [--ids-equal] [--names a,b,...]

Float tensors must agree within rel * max|golden| (per tensor); with --ids-equal, generated_ids must
be identical. Prints one line per tensor; exit 1 on a mismatch.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import read_safetensors  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("golden")
    ap.add_argument("--rel", type=float, default=1e-4)
    ap.add_argument("--ids-equal", action="store_true")
    ap.add_argument("--names", default="image_features,image_features_projected,prefill_logits,step_logits")
    a = ap.parse_args()
    out, ref = read_safetensors(a.out), read_safetensors(a.golden)
    ok = True
    for name in a.names.split(","):
        if name not in out:
            print(f"{name}: missing from {a.out}")
            ok = False
            continue
        x, y = np.asarray(out[name], np.float64), np.asarray(ref[name], np.float64)
        if x.shape != y.shape:
            print(f"{name}: shape {x.shape} != golden {y.shape}")
            ok = False
            continue
        err, scale = float(np.abs(x - y).max()), float(np.abs(y).max())
        good = err <= a.rel * scale
        ok = ok and good
        print(f"{name}: max abs err {err:.3g}, max|ref| {scale:.3g}, rel {err / scale:.3g} {'ok' if good else 'FAIL'}")
    if a.ids_equal:
        got, want = out.get("generated_ids"), ref["generated_ids"]
        same = got is not None and got.shape == want.shape and (got == want).all()
        print(f"generated_ids: {None if got is None else got.tolist()} vs golden {want.tolist()} {'ok' if same else 'FAIL'}")
        ok = ok and same
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
