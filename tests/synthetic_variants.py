#!/usr/bin/python3
"""Checks tools/make_synthetic_checkpoint.py's --variant and --shards without writing gigabytes.

  tests/synthetic_variants.py --cli build/release/examples/fastvlm-cli --tiny ../shared/golden/tiny-vlm \
                              --tokenizer tests/data/tokenizer_tiny --image tests/data/images/a61x47.png \
                              --work DIR

1. Every variant's tensor list against the spec (fastvlm-model.md §4, §7, §8): 924 tensors for 0.5B
   and 972 for 1.5B and 7B, the 629 vision tensors identical across variants, the decoder shapes of
   the spec's table (hidden, layers, heads via k_proj rows, intermediate, vocab, untied lm_head), the
   projector 3072 -> H -> H, and the config.json fields the loader reads.
2. The shard plan: 7B's default is 4 non-empty files in name order that together hold every tensor
   once, each within 1.5x of an equal share; --shards 1..n for the small variants too.
3. The sharded layout the tool writes loads in fastvlm: the golden tiny VLM is rewritten through the
   tool's own writer as model-0000k-of-00003.safetensors + model.safetensors.index.json, and
   `fastvlm-cli run --json` gives the same token ids from it as from the single file.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
sys.path.insert(0, os.path.join(HERE, "reference"))
import make_synthetic_checkpoint as synth  # noqa: E402
from fastvithd_ref import fused_specs  # noqa: E402
from safetensors_io import read_header  # noqa: E402

# spec fastvlm-model.md §4
SPEC = {
    "0.5b": dict(H=896, layers=24, heads=14, kv=2, I=4864, V=151936, tensors=924),
    "1.5b": dict(H=1536, layers=28, heads=12, kv=2, I=8960, V=151936, tensors=972),
    "7b": dict(H=3584, layers=28, heads=28, kv=4, I=18944, V=152064, tensors=972),
}

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def specs_of(variant):
    """name -> (shape, dtype) of every tensor the tool writes, without generating any data."""
    config = synth.VARIANTS[variant]
    vcfg = dict(synth.VISION_DEFAULTS)
    vcfg.update(config.get("vision_config", {}))
    out = {}
    for name, shape, dtype in fused_specs(vcfg):
        out[synth.VISION_PREFIX + name] = (tuple(shape), dtype)
    for name, shape, _ in synth.decoder_specs(config):
        out[name] = (tuple(shape), "bf16")
    return out


def check_variants():
    vision = None
    for variant, s in SPEC.items():
        config = synth.VARIANTS[variant]
        t = specs_of(variant)
        H, hd = s["H"], s["H"] // s["heads"]
        check(len(t) == s["tensors"], "%s: %d tensors, spec %d" % (variant, len(t), s["tensors"]))
        v = {k: x for k, x in t.items() if k.startswith("model.vision_tower.")}
        check(len(v) == 629, "%s: %d vision tensors, spec 629" % (variant, len(v)))
        vision = vision or v
        check(v == vision, "%s: vision tensors differ from 0.5B's" % variant)
        for key, want in [("hidden_size", H), ("num_hidden_layers", s["layers"]), ("num_attention_heads", s["heads"]),
                          ("num_key_value_heads", s["kv"]), ("intermediate_size", s["I"]), ("vocab_size", s["V"]),
                          ("tie_word_embeddings", False), ("mm_hidden_size", 3072)]:
            check(config.get(key) == want, "%s: config %s = %r, spec %r" % (variant, key, config.get(key), want))
        want = {"model.embed_tokens.weight": (s["V"], H), "lm_head.weight": (s["V"], H), "model.norm.weight": (H,),
                "model.mm_projector.0.weight": (H, 3072), "model.mm_projector.2.weight": (H, H)}
        last = s["layers"] - 1
        for i in (0, last):
            p = "model.layers.%d." % i
            want.update({p + "self_attn.q_proj.weight": (H, H), p + "self_attn.k_proj.weight": (s["kv"] * hd, H),
                         p + "self_attn.v_proj.bias": (s["kv"] * hd,), p + "self_attn.o_proj.weight": (H, H),
                         p + "mlp.gate_proj.weight": (s["I"], H), p + "mlp.down_proj.weight": (H, s["I"])})
        for name, shape in want.items():
            got = t.get(name, (None,))[0]
            check(got == shape, "%s: %s shape %s, spec %s" % (variant, name, got, shape))
        check("model.layers.%d.input_layernorm.weight" % s["layers"] not in t, "%s: too many layers" % variant)
        check(not any(k.endswith("o_proj.bias") for k in t), "%s: o_proj has no bias in Qwen2" % variant)
    print("variants: tensor lists match the spec")


def fake_entries(variant):
    """Entries with the tool's names, shapes and dtypes (no data), in the tool's order."""
    entries = []
    for name, (shape, dtype) in specs_of(variant).items():
        entries.append((name, shape, "I64" if dtype == "int64" else "BF16", None))
    entries.sort(key=lambda e: e[0])
    return entries


def check_shards():
    for variant in SPEC:
        entries = fake_entries(variant)
        total = sum(synth.entry_bytes(e) for e in entries)
        for n in sorted({1, 2, 3, synth.DEFAULT_SHARDS[variant], 4}):
            groups = synth.plan_shards(entries, n)
            flat = [e[0] for g in groups for e in g]
            check(len(groups) == n and all(groups), "%s --shards %d: %d groups" % (variant, n, len(groups)))
            check(flat == [e[0] for e in entries], "%s --shards %d: not every tensor once, in order" % (variant, n))
            biggest = max(sum(synth.entry_bytes(e) for e in g) for g in groups)
            # A shard can exceed its share by at most one tensor (the lm_head / embedding is ~1 GB at 7B).
            largest_tensor = max(synth.entry_bytes(e) for e in entries)
            check(biggest <= total / n + largest_tensor, "%s --shards %d: a shard of %d bytes (total %d)" % (
                variant, n, biggest, total))
        try:
            synth.plan_shards(entries, len(entries) + 1)
            check(False, "%s: more shards than tensors accepted" % variant)
        except ValueError:
            pass
    check(synth.DEFAULT_SHARDS["7b"] == 4, "7b: default shards %d, the official folder has 4" % synth.DEFAULT_SHARDS["7b"])
    print("shards: plans cover every tensor once, balanced")


def run_cli(cli, model, image):
    r = subprocess.run([cli, "run", "--model", model, "--image", image, "--prompt", "What is it?", "--max-tokens", "8",
                        "--threads", "2", "--json"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise SystemExit("fastvlm-cli run on %s failed:\n%s" % (model, r.stderr))
    return json.loads(r.stdout.strip().splitlines()[-1])


def check_sharded_load(args):
    single = os.path.join(args.work, "single")
    sharded = os.path.join(args.work, "sharded")
    for d in (single, sharded):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        shutil.copy(os.path.join(args.tiny, "config.json"), d)
        for f in ("vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(args.tokenizer, f), d)
    shutil.copy(os.path.join(args.tiny, "model.safetensors"), single)
    src = os.path.join(args.tiny, "model.safetensors")
    header, _, start = read_header(src)
    with open(src, "rb") as f:
        blob = f.read()

    def produce(b, e):
        return lambda: [blob[start + b:start + e]]

    entries = sorted(((name, tuple(h["shape"]), h["dtype"], produce(*h["data_offsets"])) for name, h in header.items()),
                     key=lambda e: e[0])
    files, _ = synth.write_folder_weights(sharded, entries, 3, {"format": "pt"})
    check(files == ["model-%05d-of-00003.safetensors" % k for k in (1, 2, 3)], "shard names %s" % files)
    index = json.load(open(os.path.join(sharded, "model.safetensors.index.json")))
    check(sorted(index["weight_map"]) == sorted(header), "index weight_map does not list every tensor")
    check(index["metadata"]["total_size"] == sum(h["data_offsets"][1] - h["data_offsets"][0] for h in header.values()),
          "index total_size")
    check(not os.path.exists(os.path.join(sharded, "model.safetensors")), "sharded folder has model.safetensors")
    a = run_cli(args.cli, single, args.image)
    b = run_cli(args.cli, sharded, args.image)
    check(a["ids"] == b["ids"] and len(a["ids"]) > 0, "ids differ: single %s, sharded %s" % (a["ids"], b["ids"]))
    print("sharded load: %d tensors in 3 files, same ids as one file: %s" % (len(entries), b["ids"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--tiny", required=True, help="the golden tiny VLM folder (config.json, model.safetensors)")
    ap.add_argument("--tokenizer", required=True, help="a folder of Qwen2 tokenizer files")
    ap.add_argument("--image", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    check_variants()
    check_shards()
    check_sharded_load(args)
    if failures:
        print("%d failure(s)" % len(failures))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
