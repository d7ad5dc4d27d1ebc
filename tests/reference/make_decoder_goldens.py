#!/usr/bin/python3
"""Writes tests/data/tiny_vlm2/ (a complete small FastVLM model folder) and
tests/data/tiny_vlm2_io.safetensors + tiny_vlm2_notes.json, computed with the own references
fastvithd_ref.py (vision, fused form) and qwen2_ref.py (projector + Qwen2) in float64.

The model differs from ../shared/golden/tiny-vlm on every decoder knob: hidden 96, 3 layers,
6 heads / 2 KV heads (head_dim 16, 3 query heads per KV head), intermediate 160, vocab 400,
rope_theta 1e4, rms_norm_eps 1e-5, UNTIED lm_head; image 128x128 -> 2x2 = 4 tokens of width 128
(vision embed_dims [8, 16, 32, 64, 64]: the last downsample is a plain depthwise conv, groups = Cin = Cout).
model.safetensors stores every float tensor as BF16 (like real checkpoints; the 5 ConvFFN
BatchNorm num_batches_tracked are I64 scalars); the goldens are computed from the BF16 values as
read back from the file, so an fp32 implementation sees exactly the same weights.

Init (numpy default_rng):
  vision   seed VISION_SEED, unfused training form drawn in state-dict order (BN/LayerNorm weights
           1 + 0.1 N, running_mean 0.1 N, running_var U(0.5, 1.5), rest 0.1 N), then reparameterized
           with fastvithd_ref.reparameterize_state_dict (what a checkpoint holds).
  decoder  seed DECODER_SEED, in decoder_names() order: embed_tokens and lm_head 0.5 N, every Linear
           weight matrix (projector and decoder) 0.2 N, biases 0.1 N, RMSNorm weights 1 + 0.1 N
           (scales of the shared golden: varied greedy tokens with clear margins).
  pixels   seed VISION_SEED + 100: integers 0..255 / 255.
  text ids seed DECODER_SEED + 300: 10 ids in [0, 400), -200 at position 3.

Usage: /usr/bin/python3 tests/reference/make_decoder_goldens.py [--out tests/data]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastvithd_ref  # noqa: E402
import qwen2_ref  # noqa: E402
from safetensors_io import read_safetensors, write_safetensors  # noqa: E402

VISION_SEED = 11
DECODER_SEED = 22  # seeds 12..39 tried: largest smallest greedy margin (0.78)
MIN_MARGIN = 0.1  # fp32 vs fp64 logits differ by ~5e-5; ids must not depend on it
IMAGE_POS = 3
N_TEXT = 10
N_GENERATE = 10
PROJECTION_DIM = 32  # head.proj width (unused by FastVLM, present like in real checkpoints)

VISION_CONFIG = {
    "image_size": 128,
    "layers": [1, 1, 1, 1, 1],
    "embed_dims": [8, 16, 32, 64, 64],
    "mlp_ratios": [4, 4, 4, 4, 4],
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
}

CONFIG = {
    "architectures": ["LlavaQwen2ForCausalLM"],
    "model_type": "llava_qwen2",
    "hidden_act": "silu",
    "hidden_size": 96,
    "intermediate_size": 160,
    "num_hidden_layers": 3,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "max_window_layers": 3,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "use_sliding_window": False,
    "attention_dropout": 0.0,
    "tie_word_embeddings": False,
    "vocab_size": 400,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "mm_hidden_size": 128,
    "mm_projector_type": "mlp2x_gelu",
    "mm_patch_merge_type": "flat",
    "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False,
    "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2,
    "mm_vision_tower": "mobileclip_refvlm2_128",
    "image_aspect_ratio": "pad",
    "image_token_index": -200,
    "tokenizer_model_max_length": 8192,
    "tokenizer_padding_side": "right",
    "use_mm_proj": True,
    "vision_config": VISION_CONFIG,
}


def decoder_names(cfg):
    """[(name, shape, kind)], kind in embed / linear / bias / norm."""
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kvd = H // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    mm = cfg["mm_hidden_size"]
    out = [("model.embed_tokens.weight", (V, H), "embed")]
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        out += [(p + "input_layernorm.weight", (H,), "norm"),
                (p + "self_attn.q_proj.weight", (H, H), "linear"), (p + "self_attn.q_proj.bias", (H,), "bias"),
                (p + "self_attn.k_proj.weight", (kvd, H), "linear"), (p + "self_attn.k_proj.bias", (kvd,), "bias"),
                (p + "self_attn.v_proj.weight", (kvd, H), "linear"), (p + "self_attn.v_proj.bias", (kvd,), "bias"),
                (p + "self_attn.o_proj.weight", (H, H), "linear"),
                (p + "post_attention_layernorm.weight", (H,), "norm"),
                (p + "mlp.gate_proj.weight", (I, H), "linear"),
                (p + "mlp.up_proj.weight", (I, H), "linear"),
                (p + "mlp.down_proj.weight", (H, I), "linear")]
    out += [("model.norm.weight", (H,), "norm"),
            ("model.mm_projector.0.weight", (H, mm), "linear"), ("model.mm_projector.0.bias", (H,), "bias"),
            ("model.mm_projector.2.weight", (H, H), "linear"), ("model.mm_projector.2.bias", (H,), "bias"),
            ("lm_head.weight", (V, H), "embed")]
    return out


def random_decoder(cfg, seed):
    rng = np.random.default_rng(seed)
    scale = {"embed": 0.5, "linear": 0.2, "bias": 0.1, "norm": 0.1}
    out = {}
    for name, shape, kind in decoder_names(cfg):
        v = scale[kind] * rng.standard_normal(shape)
        if kind == "norm":
            v = 1.0 + v
        out[name] = v.astype(np.float32)
    return out


def random_vision_fused(vcfg, seed):
    rng = np.random.default_rng(seed)
    model = fastvithd_ref.build(vcfg, fused=False, projection_dim=PROJECTION_DIM)
    unf = {}
    for name, t in model.state_dict().items():
        shape = tuple(t.shape)
        if name.endswith("num_batches_tracked"):
            unf[name] = np.zeros(shape, dtype=np.int64)
            continue
        if name.endswith("running_var"):
            v = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("running_mean"):
            v = 0.1 * rng.standard_normal(shape)
        elif name.endswith(".weight") and len(shape) == 1:  # BN / LayerNormChannel gamma
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            v = 0.1 * rng.standard_normal(shape)
        unf[name] = v.astype(np.float32)
    return fastvithd_ref.reparameterize_state_dict(unf, vcfg, out_dtype=np.float32)


def run(model_dir, ids, pixels, dtype):
    """Everything from the folder as read back (BF16 -> float32 exact)."""
    config, w = qwen2_ref.load_model_dir(model_dir)
    vis = fastvithd_ref.build(config["vision_config"], fused=True, dtype=dtype, projection_dim=PROJECTION_DIM)
    fastvithd_ref.load_weights(vis, w, prefix=fastvithd_ref.PREFIX)
    with torch.no_grad():
        feats = vis(torch.from_numpy(pixels).to(dtype))[0]
    dec = qwen2_ref.Qwen2Ref(config, w, dtype)
    out = dec.generate(ids, feats, max_new_tokens=N_GENERATE)
    out["image_features"] = feats
    out["model"] = dec
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="write tests/data/tiny_vlm2 goldens")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    folder = os.path.join(args.out, "tiny_vlm2")
    os.makedirs(folder, exist_ok=True)

    vision = random_vision_fused(VISION_CONFIG, VISION_SEED)
    decoder = random_decoder(CONFIG, DECODER_SEED)
    tensors = dict(decoder)
    for k, v in vision.items():
        tensors[fastvithd_ref.PREFIX + k] = v
    meta = {"format": "pt", "generator": "tests/reference/make_decoder_goldens.py",
            "vision_seed": str(VISION_SEED), "decoder_seed": str(DECODER_SEED)}
    write_safetensors(os.path.join(folder, "model.safetensors"), tensors, meta, bf16_names=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=1)
        f.write("\n")

    s = VISION_CONFIG["image_size"]
    pixels = (np.random.default_rng(VISION_SEED + 100).integers(0, 256, (1, 3, s, s)) / 255.0).astype(np.float32)
    ids = np.random.default_rng(DECODER_SEED + 300).integers(0, CONFIG["vocab_size"], N_TEXT).astype(np.int64)
    ids[IMAGE_POS] = qwen2_ref.IMAGE_TOKEN_INDEX

    o64 = run(folder, ids, pixels, torch.float64)
    o32 = run(folder, ids, pixels, torch.float32)
    L = o64["embeds"].shape[0]

    io = {
        "pixel_values": pixels,
        "input_ids": ids[None, :],
        "image_token_pos": np.array([IMAGE_POS], dtype=np.int64),
        "image_features": o64["image_features"].numpy()[None],
        "image_features_projected": o64["projected"].numpy()[None],
        "inputs_embeds": o64["embeds"].numpy()[None],
        "position_ids": np.arange(L, dtype=np.int64)[None],
    }
    for i, h in enumerate(o64["hidden"]):
        io["prefill_hidden_layer%d" % i] = h.numpy()[None]
    io["prefill_final_norm"] = o64["final_norm"].numpy()[None]
    io["prefill_logits"] = o64["prefill_logits"].numpy()[None]
    io["generated_ids"] = np.array(o64["ids"], dtype=np.int64)[None]
    io["step_logits"] = o64["step_logits"].numpy()[None]
    io = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in io.items()}
    io_path = os.path.join(args.out, "tiny_vlm2_io.safetensors")
    write_safetensors(io_path, io, {"computed_in": "float64, stored float32",
                                    "generator": "tests/reference/make_decoder_goldens.py"})

    # Checks recorded for the C++ tests' tolerances.
    m = o64["model"]
    full = torch.cat([o64["embeds"], m.embed[torch.tensor(o64["ids"][:-1])]])
    with torch.no_grad():
        rec = m.forward(full, 0, m.new_cache())[L - 1:]
    zero = o64["model"].generate(ids, torch.zeros_like(o64["image_features"]), max_new_tokens=N_GENERATE)

    def mx(a, b):
        return float((a.double() - b.double()).abs().max())

    notes = {
        "model": "tests/data/tiny_vlm2 (config.json + model.safetensors, BF16 floats, I64 num_batches_tracked)",
        "seeds": {"vision": VISION_SEED, "decoder": DECODER_SEED, "pixels": VISION_SEED + 100,
                  "input_ids": DECODER_SEED + 300},
        "init": __doc__.split("Init (numpy default_rng):")[1].split("Usage:")[0].strip(),
        "image_token_pos": IMAGE_POS,
        "merged_sequence_length": L,
        "num_image_tokens": int(o64["image_features"].shape[0]),
        "generated_ids": o64["ids"],
        "generated_ids_fp32_run": o32["ids"],
        "greedy_top1_minus_top2_margin_per_step": o64["margins"],
        "fp32_vs_fp64_image_features_max_abs_diff": mx(o32["image_features"], o64["image_features"]),
        "fp32_vs_fp64_prefill_logits_max_abs_diff": mx(o32["prefill_logits"], o64["prefill_logits"]),
        "fp32_vs_fp64_step_logits_max_abs_diff": mx(o32["step_logits"], o64["step_logits"]),
        "kv_cache_vs_full_recompute_max_abs_diff_fp64": mx(rec, o64["step_logits"]),
        "prefill_logits_std": float(o64["prefill_logits"].std()),
        "prefill_logits_max_abs": float(o64["prefill_logits"].abs().max()),
        "image_features_std": float(o64["image_features"].std()),
        "image_features_max_abs": float(o64["image_features"].abs().max()),
        "projected_image_tokens_rms": float(o64["projected"].pow(2).mean().sqrt()),
        "sensitivity_last_prefill_logits_max_abs_change_if_image_features_zeroed":
            mx(zero["prefill_logits"][-1], o64["prefill_logits"][-1]),
        "generated_ids_if_image_features_zeroed": zero["ids"],
        "io_tensors": {k: [list(v.shape), str(v.dtype)] for k, v in io.items()},
    }
    with open(os.path.join(args.out, "tiny_vlm2_notes.json"), "w") as f:
        json.dump(notes, f, indent=1)
        f.write("\n")

    # Self-checks: files read back; the stored goldens validate with qwen2_ref; fp32 ids agree.
    back = read_safetensors(io_path)
    assert all(np.array_equal(back[k], io[k]) for k in io)
    ok, report = qwen2_ref.validate(folder, io_path)
    assert ok, report
    assert o32["ids"] == o64["ids"], (o32["ids"], o64["ids"])
    assert min(o64["margins"]) >= MIN_MARGIN, o64["margins"]
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print("tiny_vlm2/: %d bytes; io: %d bytes; L=%d; ids %s; min margin %.3f; fp32-vs-fp64 logits %.2e"
          % (size, os.path.getsize(io_path), L, o64["ids"], min(o64["margins"]),
             notes["fp32_vs_fp64_prefill_logits_max_abs_diff"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
