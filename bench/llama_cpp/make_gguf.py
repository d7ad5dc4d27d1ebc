#!/usr/bin/python3
"""Writes the Qwen2 decoder of a FastVLM folder (official or tools/make_synthetic_checkpoint.py) as a
BF16 GGUF file for llama.cpp: the same weights, shapes and tokenizer fastvlm runs, so llama-bench and
fastvlm-cli time the same decoder. The vision tower and projector are left out (llama.cpp has no
FastViTHD). Other types (F16, Q8_0, Q4_0) are made from this file with llama-quantize (compare.sh).

    /usr/bin/python3 bench/llama_cpp/make_gguf.py --model /work/synth-0.5b --gguf-py SRC/gguf-py --out m.bf16.gguf

Needs numpy and llama.cpp's own gguf-py (in its source tree: nothing is fetched).
"""
import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np


def safetensors_files(model: Path):
    index = model / "model.safetensors.index.json"
    if index.exists():
        return sorted({model / f for f in json.loads(index.read_text())["weight_map"].values()})
    return [model / "model.safetensors"]


def tensors(model: Path):
    """Yields (name, dtype, shape, memoryview of the raw bytes) for every tensor of the folder."""
    for path in safetensors_files(model):
        data = np.memmap(path, dtype=np.uint8, mode="r")
        (n,) = struct.unpack("<Q", bytes(data[:8]))
        header = json.loads(bytes(data[8 : 8 + n]))
        base = 8 + n
        for name, t in header.items():
            if name == "__metadata__":
                continue
            b, e = t["data_offsets"]
            yield name, t["dtype"], t["shape"], data[base + b : base + e]


def as_f32(dtype: str, raw) -> np.ndarray:
    if dtype == "BF16":
        return (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    if dtype == "F16":
        return np.frombuffer(raw, dtype=np.float16).astype(np.float32)
    if dtype == "F32":
        return np.frombuffer(raw, dtype=np.float32).copy()
    raise SystemExit(f"make_gguf.py: unsupported tensor dtype {dtype}")


def as_bf16(dtype: str, raw) -> np.ndarray:
    if dtype == "BF16":
        return np.frombuffer(raw, dtype=np.uint16)
    f = as_f32(dtype, raw).view(np.uint32)
    return ((f + 0x7FFF + ((f >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


NAMES = {  # HF Qwen2 → llama.cpp
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def gguf_name(name: str):
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    if name.startswith("model.layers."):
        _, _, layer, rest = name.split(".", 3)
        part, kind = rest.rsplit(".", 1)
        if part in NAMES:
            return f"blk.{layer}.{NAMES[part]}.{kind}"
    return None  # vision tower, projector


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="FastVLM folder (config.json, safetensors, vocab.json, merges.txt)")
    ap.add_argument("--gguf-py", required=True, type=Path, help="gguf-py folder of the llama.cpp source tree")
    ap.add_argument("--out", required=True, type=Path, help="output .gguf (BF16 matrices, F32 norms and biases)")
    a = ap.parse_args()
    sys.path.insert(0, str(a.gguf_py))
    import gguf  # noqa: E402  (llama.cpp's own writer)

    cfg = json.loads((a.model / "config.json").read_text())
    vocab = json.loads((a.model / "vocab.json").read_text())
    added = json.loads((a.model / "added_tokens.json").read_text()) if (a.model / "added_tokens.json").exists() else {}
    merges = [l for l in (a.model / "merges.txt").read_text(encoding="utf-8").splitlines() if l and not l.startswith("#version")]
    V = cfg["vocab_size"]
    tokens = [f"[PAD{i}]" for i in range(V)]
    types = [gguf.TokenType.UNUSED] * V
    for t, i in vocab.items():
        tokens[i], types[i] = t, gguf.TokenType.NORMAL
    for t, i in added.items():
        tokens[i], types[i] = t, gguf.TokenType.CONTROL

    w = gguf.GGUFWriter(a.out, "qwen2")
    w.add_name(cfg.get("_name_or_path", a.model.name))
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg.get("rope_theta", 1e6))
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg.get("bos_token_id", 151643))
    w.add_eos_token_id(added.get("<|im_end|>", cfg.get("eos_token_id", 151645)))

    count = 0
    for name, dtype, shape, raw in tensors(a.model):
        g = gguf_name(name)
        if g is None:
            continue
        if len(shape) == 1:  # norms and biases stay f32
            w.add_tensor(g, as_f32(dtype, raw).reshape(shape))
        else:
            w.add_tensor(g, as_bf16(dtype, raw).reshape(shape), raw_dtype=gguf.GGMLQuantizationType.BF16)
        count += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=sys.stderr.isatty())
    w.close()
    print(f"make_gguf.py: {a.out}: {count} tensors, vocab {V}, {cfg['num_hidden_layers']} layers", file=sys.stderr)


if __name__ == "__main__":
    main()
