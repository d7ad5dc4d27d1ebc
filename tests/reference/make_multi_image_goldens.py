#!/usr/bin/python3
"""Writes tests/data/multi_image_io.safetensors: prompts with two and three images on the model
folder tests/data/tiny_vlm2 (128x128 images -> 4 tokens each), computed in float64 with the own
references fastvithd_ref.py (vision, fused form) and qwen2_ref.py (projector + Qwen2, the k-th
-200 slot taking the k-th image).

Tensors: pixel_values [3, 3, 128, 128] (seed PIXEL_SEED, integers 0..255 / 255), and per case c:
  c_images          int64 indices into pixel_values, in slot order
  c_input_ids       int64, -200 = an image slot
  c_prefill_logits  [V] logits of the last prompt position
  c_generated_ids   greedy ids (N_GENERATE)
  c_step_logits     [N_GENERATE, V]
Greedy margins are checked (> MIN_MARGIN) so the ids do not hinge on rounding.

Usage: /usr/bin/python3 tests/reference/make_multi_image_goldens.py [--out tests/data]
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastvithd_ref  # noqa: E402
import qwen2_ref  # noqa: E402
from safetensors_io import write_safetensors  # noqa: E402

PIXEL_SEED = 5
N_GENERATE = 8
MIN_MARGIN = 0.05
CASES = {
    "two": ([0, 1], [5, 17, -200, 33, -200, 9, 12]),
    "three": ([2, 0, 1], [-200, 3, 44, -200, 7, -200, 81, 2]),
}


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="write tests/data/multi_image_io.safetensors")
    ap.add_argument("--out", default=os.path.join(here, "..", "data"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    folder = os.path.join(args.out, "tiny_vlm2")
    config, w = qwen2_ref.load_model_dir(folder)
    vis = fastvithd_ref.build(config["vision_config"], fused=True, dtype=torch.float64, projection_dim=32)
    fastvithd_ref.load_weights(vis, w, prefix=fastvithd_ref.PREFIX)
    dec = qwen2_ref.Qwen2Ref(config, w, torch.float64)
    S = config["vision_config"]["image_size"]
    rng = np.random.default_rng(PIXEL_SEED)
    pixels = (rng.integers(0, 256, size=(3, 3, S, S)) / 255.0).astype(np.float32)
    with torch.no_grad():
        feats = vis(torch.from_numpy(pixels).to(torch.float64))  # [3, N, C]
        if isinstance(feats, tuple):
            feats = feats[0]
    io = {"pixel_values": pixels}
    for name, (imgs, ids) in CASES.items():
        out = dec.generate(ids, [feats[i] for i in imgs], max_new_tokens=N_GENERATE)
        margin = min(out["margins"])
        print(f"{name}: {len(imgs)} images, {out['embeds'].shape[0]} positions, ids {out['ids']}, min margin {margin:.3f}")
        assert margin > MIN_MARGIN, f"{name}: greedy margin {margin} too small"
        io[f"{name}_images"] = np.array(imgs, dtype=np.int64)
        io[f"{name}_input_ids"] = np.array(ids, dtype=np.int64)
        io[f"{name}_prefill_logits"] = out["prefill_logits"][-1].numpy().astype(np.float32)
        io[f"{name}_generated_ids"] = np.array(out["ids"], dtype=np.int64)
        io[f"{name}_step_logits"] = out["step_logits"].numpy().astype(np.float32)
    path = os.path.join(args.out, "multi_image_io.safetensors")
    write_safetensors(path, io, {"computed_in": "float64, stored float32", "model": "tests/data/tiny_vlm2"})
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
