#!/usr/bin/python3
"""Full-size FastViTHD without the real weights.

  vision_fullsize.py --dir DIR [--seed 0]                     write the synthetic vision-only folder
  vision_fullsize.py --dir DIR --cli BIN [--image FILE] [--precision P] [--pixels-from F --compare-to F]
      ... and run `fastvlm-cli embed` at 1024² (default image: a generated 1024×1024 PNG)

The folder holds the real 0.5B config.json (tools/make_synthetic_checkpoint.py VARIANTS["0.5b"]) and a
model.safetensors with the 629 vision tensors only (names/shapes of ../shared/golden/fastvithd_manifest.txt
under model.vision_tower.vision_tower.model., BF16 + I64 num_batches_tracked), values from
make_synthetic_checkpoint.vision_tensors(default_rng([seed, 1])) — the same weights as that tool's full
folder and as bench/pytorch_vision.py --seed. Reused when its stamp matches.
The run checks image_features is [1, 256, 3072] and finite; with --compare-to (a safetensors holding
image_features, e.g. bench/pytorch_vision.py --save-features, fed the same pixels through --pixels-from)
also max|err| <= --tol x max|ref|.
"""
import argparse
import json
import os
import struct
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
from safetensors_io import float32_to_bf16_bits  # noqa: E402
import make_synthetic_checkpoint as synth  # noqa: E402

STAMP = "fastvlm vision-only synthetic v1 seed %d"


def write_folder(out, seed):
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "model.safetensors")
    stamp = STAMP % seed
    if os.path.exists(path):
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if json.loads(f.read(n)).get("__metadata__", {}).get("synthetic") == stamp:
                print("reusing", path)
                return
    config = dict(synth.VARIANTS["0.5b"])
    vcfg = dict(synth.VISION_DEFAULTS)
    vcfg.update(config.get("vision_config", {}))
    tensors = synth.vision_tensors(np.random.default_rng([seed, 1]), vcfg)
    header, blobs, off = {"__metadata__": {"format": "pt", "synthetic": stamp}}, [], 0
    for name in sorted(tensors):
        a = tensors[name]
        if a.dtype.kind == "f":
            b, dt = float32_to_bf16_bits(a).astype("<u2").tobytes(), "BF16"
        else:
            b, dt = np.ascontiguousarray(a, dtype="<i8").tobytes(), "I64"
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hdr = json.dumps(header, separators=(",", ":")).encode()
    hdr += b" " * ((8 - len(hdr) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(hdr)))
        f.write(hdr)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print("wrote %s: %d tensors, %.1f MB" % (path, len(tensors), off / 1e6))


def read_tensor(path, name):
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    e = json.loads(blob[8:8 + n])[name]
    b, end = e["data_offsets"]
    assert e["dtype"] == "F32", e["dtype"]
    return np.frombuffer(blob[8 + n + b:8 + n + end], dtype=np.float32).reshape(e["shape"])


def make_image(path):
    """1024×1024 RGB: smooth gradients plus noise (deterministic)."""
    from PIL import Image
    yy, xx = np.mgrid[0:1024, 0:1024].astype(np.float32) / 1023.0
    noise = np.random.default_rng(5).random((1024, 1024, 3), dtype=np.float32)
    rgb = np.stack([xx, yy, 0.5 + 0.5 * np.sin(12 * xx * yy)], axis=-1) * 0.7 + 0.3 * noise
    Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)).save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cli")
    ap.add_argument("--image")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--pixels-from", help="safetensors with pixel_values [1,3,1024,1024] (instead of --image)")
    ap.add_argument("--compare-to", help="safetensors with reference image_features")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--image-size", type=int, default=0, help="fastvlm-cli embed --image-size (default: the config's 1024)")
    a = ap.parse_args()
    write_folder(a.dir, a.seed)
    if not a.cli:
        return 0
    out = os.path.join(a.dir, "features_%s%s%s.safetensors" % (a.precision, "_px" if a.pixels_from else "",
                                                              "_%d" % a.image_size if a.image_size else ""))
    cmd = [a.cli, "embed", "--model", a.dir, "--out", out, "--threads", a.threads, "--precision", a.precision]
    if a.image_size:
        cmd += ["--image-size", str(a.image_size)]
    if a.pixels_from:
        cmd += ["--pixels", a.pixels_from]
    else:
        image = a.image or os.path.join(a.dir, "image1024.png")
        if not a.image and not os.path.exists(image):
            make_image(image)
        cmd += ["--image", image]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    x = read_tensor(out, "image_features")
    finite = bool(np.all(np.isfinite(x)))
    tokens = ((a.image_size or 1024) // 64) ** 2  # (S/64)² tokens
    ok = list(x.shape) == [1, tokens, 3072] and finite and float(x.std()) > 0
    print("image_features %s: finite %s, std %.4g, max|x| %.4g" % (list(x.shape), finite, float(x.std()),
                                                                     float(np.abs(x).max())))
    if a.compare_to:
        r = read_tensor(a.compare_to, "image_features")
        err, amax = float(np.max(np.abs(x.astype(np.float64) - r))), float(np.max(np.abs(r)))
        good = r.shape == x.shape and err <= a.tol * amax
        print("vs %s: max|err| %.3g, max|ref| %.3g, rel %.3g (tol %.1g) -> %s" % (
            a.compare_to, err, amax, err / amax, a.tol, "ok" if good else "FAIL"))
        ok = ok and good
    print("ok" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
