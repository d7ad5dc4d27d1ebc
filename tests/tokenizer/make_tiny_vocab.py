#!/usr/bin/env python3
"""Writes the tiny hand-made Qwen2-style tokenizer under tests/data/tokenizer_tiny/ (unit tests).

Ids 0..255 are the 256 byte tokens (id == byte value), then one token per merge below, then the
added tokens. json/tokenizer.json holds the same tokenizer in the single-file form, with two extra
added tokens that exercise lstrip/rstrip and longest-match.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data", "tokenizer_tiny")


def bytes_to_unicode():
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


B2U = bytes_to_unicode()


def bl(s):  # byte-level form of a raw string
    return "".join(B2U[b] for b in s.encode("utf-8"))


MERGES = [  # rank order
    ("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"),
    (bl(" "), "w"), ("o", "r"), (bl(" w"), "or"), ("l", "d"), (bl(" wor"), "ld"),
    (bl(" "), bl(" ")), ("a", "a"), ("'", "s"),
    (bl("你")[0], bl("你")[1]), (bl("你")[:2], bl("你")[2]),
    (bl("\n"), bl("\n")), ("e", "l"),
]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def main():
    vocab = {B2U[b]: b for b in range(256)}
    for a, b in MERGES:
        assert a in vocab and b in vocab, (a, b)
        vocab.setdefault(a + b, len(vocab))
    n = len(vocab)
    added = [(t, n + i, True) for i, t in enumerate(SPECIAL)] + [("<tool>", n + len(SPECIAL), False)]
    os.makedirs(os.path.join(OUT, "json"), exist_ok=True)
    with open(os.path.join(OUT, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(OUT, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    with open(os.path.join(OUT, "added_tokens.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for t, i, _ in added}, f, indent=2)
    entry = lambda t, s: {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False, "special": s}
    with open(os.path.join(OUT, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|endoftext|>",
                   "added_tokens_decoder": {str(i): entry(t, s) for t, i, s in added}}, f, indent=2)
    extra = [("<mask>", n + len(added), True, True, True), ("<tool>!", n + len(added) + 1, False, False, False)]
    tj = {
        "version": "1.0",
        "added_tokens": [dict(id=i, **entry(t, s)) for t, i, s in added] +
                        [dict(id=i, **{**entry(t, s), "lstrip": l, "rstrip": r}) for t, i, s, l, r in extra],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
             "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [[a, b] for a, b in MERGES]},
    }
    with open(os.path.join(OUT, "json", "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
