#!/usr/bin/python3
"""Writes the small FastViTHD goldens of tests/data/vision_*/ with fastvithd_ref.py.

Per case directory:
  config.json               model-folder config (FastVLM schema, tiny dummy decoder) with the vision_config
  weights_unfused.safetensors  training-time form, keys without prefix, F32 (+ I64 num_batches_tracked);
                            only where the case says write_unfused (vision_small), to keep tests/data small
  weights_fused.safetensors    reparameterize_state_dict() of the above, keys without prefix, F32
  checks.json               seed, value ranges, fused-vs-unfused and fp32-vs-fp64 differences
  io.safetensors            pixel_values, stem, network{j}, conv_exp, image_features (unfused model),
                            image_features_fused (fused F32 weights); all computed in float64, stored F32

Init (numpy default_rng(seed), unfused state-dict order): BN/LayerNorm weights 1 + 0.1 N(0,1),
running_mean 0.1 N(0,1), running_var U(0.5, 1.5), num_batches_tracked 0, MHSA qkv weights 0.4 N(0,1)
(so attention is far from uniform), everything else 0.1 N(0,1);
pixel values = integers 0..255 / 255 (rng seeded seed + 100).

Usage: /usr/bin/python3 tests/reference/make_vision_goldens.py [--out tests/data]
       /usr/bin/python3 tests/reference/make_vision_goldens.py --check tests/data
         (regenerate into a temporary folder; fail if a committed tensor differs by more than 1e-6)
"""

import argparse
import json
import os
import sys
import tempfile

try:
    import numpy as np
except ImportError:  # ctest: exit code 77 = skipped
    if __name__ == "__main__":
        print("SKIP: numpy is not installed for", sys.executable)
        sys.exit(77)
    raise

try:
    import torch
except ImportError:
    print("SKIP: torch is not installed for", sys.executable)
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastvithd_ref as ref  # noqa: E402
from safetensors_io import read_safetensors, write_safetensors  # noqa: E402

QKV_SCALE = 0.4
PROJECTION_DIM = 16  # head.proj width (unused by FastVLM; present like in real checkpoints)

CASES = {
    # 128x128 -> 2x2 tokens. Width multipliers x2, x1, x2, x1; mlp ratios vary per stage; head_dim 32.
    "vision_small": {
        "seed": 3,
        "vision_config": {
            "image_size": 128,
            "layers": [1, 2, 1, 2, 1],
            "embed_dims": [8, 16, 16, 32, 32],
            "mlp_ratios": [3, 4, 2, 2, 3],
            "token_mixers": ["repmixer", "repmixer", "repmixer", "attention", "attention"],
            "pos_emb_kernel_sizes": [0, 0, 0, 7, 7],
            "down_patch_size": 7,
            "down_stride": 2,
            "repmixer_kernel_size": 3,
            "head_dim": 32,
            "cls_ratio": 2.0,
            "se_reduction_ratio": 0.0625,
            "layer_norm_eps": 1e-5,
            "batch_norm_eps": 1e-5,
        },
    },
    # 192x192 -> 3x3 tokens (odd maps: 48, 24, 12, 6, 3). Multipliers x3, x2, x1, x1; head_dim 8
    # (3 heads); RepCPE kernels 7 and 5. Fused weights only (size).
    "vision_192": {
        "seed": 4,
        "write_unfused": False,
        "vision_config": {
            "image_size": 192,
            "layers": [1, 1, 1, 1, 1],
            "embed_dims": [4, 12, 24, 24, 24],
            "mlp_ratios": [2, 2, 3, 2, 2],
            "token_mixers": ["repmixer", "repmixer", "repmixer", "attention", "attention"],
            "pos_emb_kernel_sizes": [0, 0, 0, 7, 5],
            "down_patch_size": 7,
            "down_stride": 2,
            "repmixer_kernel_size": 3,
            "head_dim": 8,
            "cls_ratio": 2.0,
            "se_reduction_ratio": 0.0625,
            "layer_norm_eps": 1e-5,
            "batch_norm_eps": 1e-5,
        },
    },
}


def random_unfused(model, rng):
    """Draw every state-dict tensor in order (recipe in the module docstring); returns name -> np array."""
    out = {}
    for name, t in model.state_dict().items():
        shape = tuple(t.shape)
        if name.endswith("num_batches_tracked"):
            out[name] = np.zeros(shape, dtype=np.int64)
            continue
        if name.endswith("running_var"):
            v = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("running_mean"):
            v = 0.1 * rng.standard_normal(shape)
        elif name.endswith(".weight") and len(shape) == 1:  # BatchNorm / LayerNormChannel gamma
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith("qkv.weight"):  # sharper attention (logit std ~1-2) so head layout matters
            v = QKV_SCALE * rng.standard_normal(shape)
        else:
            v = 0.1 * rng.standard_normal(shape)
        out[name] = v.astype(np.float32)
    return out


def model_config(vcfg):
    """config.json in FastVLM's schema; decoder fields are tiny dummies (no decoder weights shipped)."""
    s = vcfg["image_size"]
    return {
        "architectures": ["LlavaQwen2ForCausalLM"],
        "model_type": "llava_qwen2",
        "hidden_act": "silu",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "vocab_size": 300,
        "torch_dtype": "float32",
        "mm_hidden_size": ref.conv_exp_channels(ref.resolve_config(vcfg)),
        "mm_projector_type": "mlp2x_gelu",
        "mm_patch_merge_type": "flat",
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": f"mobileclip_refsmall_{s}",
        "image_aspect_ratio": "pad",
        "image_token_index": -200,
        "vision_config": vcfg,
    }


def make_case(out_dir, name, case):
    vcfg = case["vision_config"]
    seed = case["seed"]
    cfg = ref.resolve_config(vcfg)
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)

    rng = np.random.default_rng(seed)
    unf_model = ref.build(vcfg, fused=False, projection_dim=PROJECTION_DIM)
    unf = random_unfused(unf_model, rng)
    fus = ref.reparameterize_state_dict(unf, vcfg, out_dtype=np.float32)

    s = cfg["image_size"]
    prng = np.random.default_rng(seed + 100)
    pixels = (prng.integers(0, 256, (1, 3, s, s)) / 255.0).astype(np.float32)
    px = torch.from_numpy(pixels.astype(np.float64))

    with torch.no_grad():
        ref.load_weights(unf_model, unf)
        feats, inter = unf_model(px, collect=True)
        fmodel = ref.load_weights(ref.build(vcfg, fused=True, projection_dim=PROJECTION_DIM), fus)
        ffeats, finter = fmodel(px, collect=True)
        f32 = ref.load_weights(ref.build(vcfg, fused=True, dtype=torch.float32, projection_dim=PROJECTION_DIM), fus)
        feats32 = f32(px.float())

    io = {"pixel_values": pixels, "stem": inter["stem"].numpy()}
    n_net = len(unf_model.network)
    for j in range(n_net):
        io[f"network{j}"] = inter[f"network{j}"].numpy()
    io["conv_exp"] = inter["conv_exp"].numpy()
    io["image_features"] = feats.numpy()
    io["image_features_fused"] = ffeats.numpy()
    io = {k: v.astype(np.float32) for k, v in io.items()}

    fused_vs_unfused = max(float(np.max(np.abs(finter[k].numpy() - inter[k].numpy())))
                           for k in ["stem", "conv_exp"] + [f"network{j}" for j in range(n_net)])
    checks = {
        "seed": seed,
        "projection_dim": PROJECTION_DIM,
        "tokens": list(feats.shape[1:]),
        "image_features_abs_max": float(np.max(np.abs(io["image_features"]))),
        "image_features_std": float(np.std(io["image_features"])),
        "fused_vs_unfused_fp64_max_abs_diff_all_intermediates": fused_vs_unfused,
        "fused_fp32_vs_fp64_image_features_max_abs_diff": float(np.max(np.abs(feats32.numpy() - ffeats.numpy()))),
        "activation_std": {k: float(np.std(v)) for k, v in io.items()},
    }
    meta = {"computed_in": "float64, stored float32", "generator": "tests/reference/make_vision_goldens.py",
            "seed": str(seed)}
    written = [("weights_fused", fus), ("io", io)]
    if case.get("write_unfused", True):
        write_safetensors(os.path.join(d, "weights_unfused.safetensors"), unf, meta)
        written.append(("weights_unfused", unf))
    write_safetensors(os.path.join(d, "weights_fused.safetensors"), fus, meta)
    write_safetensors(os.path.join(d, "io.safetensors"), io, meta)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(model_config(vcfg), f, indent=1)
        f.write("\n")
    with open(os.path.join(d, "checks.json"), "w") as f:
        json.dump(checks, f, indent=1)
        f.write("\n")

    # round trip: what we wrote reads back bit-exact
    for fname, src in written:
        back = read_safetensors(os.path.join(d, fname + ".safetensors"))
        assert list(back) == list(src) and all(np.array_equal(back[k], src[k]) for k in src), fname
    return d, checks


def check(committed_dir, tol=1e-6):
    """Regenerate and compare with the committed files: same names, shapes, dtypes; values within tol."""
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in CASES.items():
            d, _ = make_case(tmp, name, case)
            for fname in sorted(os.listdir(d)):
                if not fname.endswith(".safetensors"):
                    continue
                path = os.path.join(committed_dir, name, fname)
                if not os.path.exists(path):
                    print(f"MISSING {path}")
                    ok = False
                    continue
                new = read_safetensors(os.path.join(d, fname))
                old = read_safetensors(path)
                if list(new) != list(old) or any(new[k].shape != old[k].shape or new[k].dtype != old[k].dtype
                                                 for k in new):
                    print(f"DIFFERENT LAYOUT {path}")
                    ok = False
                    continue
                worst = max(float(np.max(np.abs(new[k].astype(np.float64) - old[k]))) if new[k].size else 0.0
                            for k in new)
                print(f"{name}/{fname}: {len(new)} tensors, max |regenerated - committed| = {worst:.2e}")
                ok &= worst <= tol
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description="write tests/data/vision_* goldens")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
    ap.add_argument("--check", metavar="DIR", help="compare a regeneration with the goldens under DIR")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    if args.check:
        ok = check(args.check)
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    total = 0
    for name, case in CASES.items():
        d, checks = make_case(args.out, name, case)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        total += size
        print(f"{name}: {size / 1024:.0f} KiB, tokens {checks['tokens']}, |features| max "
              f"{checks['image_features_abs_max']:.3f} std {checks['image_features_std']:.4f}, "
              f"fused-vs-unfused {checks['fused_vs_unfused_fp64_max_abs_diff_all_intermediates']:.2e}, "
              f"fp32-vs-fp64 {checks['fused_fp32_vs_fp64_image_features_max_abs_diff']:.2e}")
    print(f"total {total / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
