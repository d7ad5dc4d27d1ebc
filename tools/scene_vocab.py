#!/usr/bin/python3
"""Small byte-level BPE tokenizer in the Qwen2 file format (vocab.json, merges.txt, added_tokens.json,
tokenizer_config.json, special_tokens_map.json), learned on the scene prompts/answers (issue 5).

Encoding = Qwen2's: split on the special tokens, pre-tokenize every other chunk with the Qwen2 regex,
map bytes to the GPT-2 byte->unicode alphabet, then merge pairs by rank (lowest rank first).

Pre-tokenizer: Qwen2's pattern is
  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+
Python's `re` has no \\p{L}/\\p{N}; the corpus is ASCII only (checked), where \\p{L} = [A-Za-z] and
\\p{N} = [0-9], so PRETOKENIZE below is exact for it. Non-ASCII text is rejected.
"""
import json
import os
import re

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SYSTEM_PROMPT = "You are a helpful assistant."
PRETOKENIZE = re.compile(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]| ?[^\sA-Za-z0-9]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")


def bytes_to_unicode():
    """GPT-2 / Qwen2 byte -> printable unicode character table."""
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


def check_ascii(text):
    if any(ord(c) > 127 for c in text):
        raise ValueError(f"non-ASCII text (the Python pre-tokenizer is ASCII-only): {text!r}")


def pretokenize(text):
    check_ascii(text)
    return [B2U_word(w) for w in PRETOKENIZE.findall(text)]


def B2U_word(word):
    return "".join(B2U[b] for b in word.encode("utf-8"))


def chat_prompt(question):
    """Spec §5.2 ChatML prompt, the image placeholder written as <image>."""
    return ("<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\n<image>\n" + question
            + "<|im_end|>\n<|im_start|>assistant\n")


def learn_merges(texts, max_merges=1000, min_count=2):
    """Classic BPE training on word frequencies; ties broken by the lexicographically smallest pair."""
    freq = {}
    for text in texts:
        for chunk in _SPECIAL_SPLIT.split(text):
            if chunk in SPECIALS or not chunk:
                continue
            for w in pretokenize(chunk):
                freq[w] = freq.get(w, 0) + 1
    words = {w: list(w) for w in freq}
    merges = []
    while len(merges) < max_merges:
        pairs = {}
        for w, syms in words.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + freq[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < min_count:
            break
        merges.append(best)
        a, b = best
        for w, syms in words.items():
            i, out = 0, []
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out
    return merges


class Tokenizer:
    def __init__(self, vocab, merges):
        self.vocab = vocab  # token string -> id (base vocab + specials)
        self.inv = {i: t for t, i in vocab.items()}
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}
        self.merges = [tuple(m) for m in merges]
        self.u2b = {u: b for b, u in B2U.items()}
        self.cache = {}

    @classmethod
    def build(cls, merges):
        vocab = {B2U[b]: b for b in range(256)}  # id == byte value
        for a, b in merges:
            vocab.setdefault(a + b, len(vocab))
        n = len(vocab)
        for i, s in enumerate(SPECIALS):
            vocab[s] = n + i
        return cls(vocab, merges)

    @classmethod
    def load(cls, folder):
        with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
            vocab = json.load(f)
        with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
            lines = [ln.rstrip("\n") for ln in f if ln.strip() and not ln.startswith("#version")]
        with open(os.path.join(folder, "added_tokens.json"), encoding="utf-8") as f:
            vocab.update(json.load(f))
        return cls(vocab, [tuple(ln.split(" ")) for ln in lines])

    def special_id(self, s):
        return self.vocab[s]

    def base_size(self):
        return len(self.vocab) - len(SPECIALS)

    def __len__(self):
        return len(self.vocab)

    def _bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        syms = list(word)
        while len(syms) > 1:
            best, best_rank = None, None
            for i in range(len(syms) - 1):
                r = self.ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best is None:
                break
            a, b = syms[best], syms[best + 1]
            out, i = [], 0
            while i < len(syms):  # merge every occurrence of the best pair, left to right
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            syms = out
        ids = [self.vocab[s] for s in syms]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        """Specials are matched literally (split_special_tokens = false)."""
        ids = []
        for chunk in _SPECIAL_SPLIT.split(text):
            if not chunk:
                continue
            if chunk in SPECIALS:
                ids.append(self.vocab[chunk])
                continue
            for w in pretokenize(chunk):
                ids.extend(self._bpe(w))
        return ids

    def encode_prompt(self, question):
        """tokenizer_image_token (spec §5.2): chunks around <image> joined by -200."""
        pre, post = chat_prompt(question).split("<image>")
        return self.encode(pre) + [-200] + self.encode(post)

    def decode(self, ids, skip_special=True):
        out = bytearray()
        for i in ids:
            t = self.inv[int(i)]
            if t in SPECIALS:
                if not skip_special:
                    out += t.encode()
                continue
            out += bytes(self.u2b[c] for c in t)
        return out.decode("utf-8", errors="replace")

    def save(self, folder, model_max_length=2048):
        os.makedirs(folder, exist_ok=True)
        base = {t: i for t, i in self.vocab.items() if t not in SPECIALS}
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(base, f, ensure_ascii=False)
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges))
        added = {s: self.vocab[s] for s in SPECIALS}
        with open(os.path.join(folder, "added_tokens.json"), "w", encoding="utf-8") as f:
            json.dump(added, f, indent=2)
        entry = lambda s: {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": True}
        cfg = {
            "add_prefix_space": False,
            "added_tokens_decoder": {str(self.vocab[s]): entry(s) for s in SPECIALS},
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "bos_token": None,
            "chat_template": ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                              "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
                              "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
                              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|endoftext|>",
            "errors": "replace",
            "model_max_length": model_max_length,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        }
        with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
        stm = {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
               "eos_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False,
                             "rstrip": False, "single_word": False},
               "pad_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False,
                             "rstrip": False, "single_word": False}}
        with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
            json.dump(stm, f, indent=2)
