#!/usr/bin/python3
"""The precision trade-off table of issue 6: speed, memory and accuracy of every preset, one run.

    /usr/bin/python3 bench/precision_table.py --cli build/examples/fastvlm-cli --model /tmp/synth-0.5b \\
        --scene-model models/fastvlm-scenes [--threads 2] [--reps 3] [--json table.json]

Drives the built `fastvlm-cli` only (no C++ here). Per preset (--presets, default all six):

Speed (the 0.5B folder, a deterministic 1024x1024 PNG, default prompt "Describe the image."):
  `fastvlm-cli run --json --max-tokens N --threads T --precision P`, R repetitions, presets round-robin
  (repetition r starts at preset r mod n), medians. Decode GB/s = bytes of weights read per generated
  token (decoder q/k/v/o, gate/up/down and lm_head in the preset's formats; not the embedding table)
  x decode tok/s, against the best `bench_matmul` Limit/ReadBW_1GiB/threads:T (3 repetitions before
  and 3 after the preset loop).
Weight MB: `weight_mb` of the run JSON when the CLI reports it; otherwise computed here from the
  safetensors header and the policy table of include/fastvlm/core/policy.hpp (POLICIES below):
  F32 4 B, BF16/F16 2 B, Q8 34 B / 32, Q4 18 B / 32 per weight of a policy-controlled matrix; all
  other tensors (norms, biases, depthwise convs, layer scales, SE) f32; folded BN = one bias;
  panel padding of the packed layouts is ignored (FastVLM's shapes are multiples of 32).
Accuracy vs fp32 on the 0.5B (QUESTIONS x --images deterministic 1024x1024 PNGs, `fastvlm-cli dump`):
  fp32 `--generate G` gives the reference ids g[0..G); every preset (fp32 too) is dumped teacher-forced
  on prompt + g[0..G-1) -> prefill_logits [1, L, V]. Logits are cut to the first valid_vocab columns
  (len(tokenizer), spec 5.5: ids >= len(tokenizer) can never be produced) before the softmax.
  - KL(p_fp32 || p_preset) at every prompt position after the image (positions whose input is a text
    token after the image slot, the last one predicting g[0]); mean over all positions of all
    prompts, and max. The same over the G-1 teacher-forced positions is in the JSON (kl_gen_*).
  - greedy agreement: argmax of the last G positions vs g[0..G), % (mean over prompts);
    for fp32 itself this checks prefill against step-by-step decode.
  - free-run prefix: the preset's own `dump --generate G`, length of the common prefix with g
    (mean and min over prompts).
Scene accuracy: `fastvlm-cli eval --json --max-tokens 64` on the 200 held-out scenes (seeds
  500000..500199, tools/make_scenes.py), as tests/scene_model.cmake does (with --threads T).

Output: a markdown table on stdout, --json FILE with every raw number. A failing command is
reported with its stderr; the other presets still run and the exit code is 1.
"""
import argparse
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
from safetensors_io import read_header, read_safetensors  # noqa: E402

ALL_PRESETS = ["fp32", "bf16", "fp16", "int8", "int8_int4", "int4"]

# include/fastvlm/core/policy.hpp: weight format per layer class.
_CLASSES = ["vision_conv", "vision_attention", "projector", "decoder_attention", "decoder_mlp", "lm_head", "embeddings"]
POLICIES = {
    "fp32": dict.fromkeys(_CLASSES, "F32"),
    "bf16": dict.fromkeys(_CLASSES, "BF16"),
    "fp16": dict.fromkeys(_CLASSES, "F16"),
    "int8": dict.fromkeys(_CLASSES, "Q8"),
    "int8_int4": {**dict.fromkeys(_CLASSES, "Q8"), "decoder_mlp": "Q4"},
    "int4": dict.fromkeys(_CLASSES, "Q4"),
}
BYTES_PER_WEIGHT = {"F32": 4.0, "BF16": 2.0, "F16": 2.0, "Q8": 34 / 32, "Q4": 18 / 32}  # BlockQ8 34 B, BlockQ4 18 B
DECODE_CLASSES = ("decoder_attention", "decoder_mlp", "lm_head")  # weights read per generated token

QUESTIONS = [
    "Describe the image.",
    "What objects can you see in this picture?",
    "Which colors dominate the image?",
    "How many shapes are there, and where are they?",
    "Is there any text in the image? If so, what does it say?",
    "Write a short caption for this image.",
]
SCENE_SEED, SCENE_COUNT = 500000, 200  # held-out scenes of tests/scene_model.cmake
VISION_PREFIX = "model.vision_tower.vision_tower.model."


class CommandError(RuntimeError):
    pass


def run_cmd(cmd, timeout, what):
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CommandError(f"{what}: timed out after {timeout} s\n  $ {shlex.join(cmd)}")
    except OSError as e:
        raise CommandError(f"{what}: cannot run ({e})\n  $ {shlex.join(cmd)}")
    if p.returncode != 0:
        raise CommandError(f"{what}: exit code {p.returncode} after {time.time() - t0:.1f} s\n  $ {shlex.join(cmd)}\n"
                           f"  stderr:\n{_indent(p.stderr[-4000:])}")
    return p.stdout


def _indent(s, pad="    "):
    return "\n".join(pad + ln for ln in s.rstrip().splitlines()) or pad + "(empty)"


def log(msg):
    print(f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- inputs -----------------------------------------------------------------------------------------------
def make_image(path, seed, size=1024):
    """Deterministic RGB test image: two-axis color gradient + sinusoids + filled shapes + noise."""
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([x, y, 1 - 0.5 * (x + y)], axis=-1) * 200 + 30
    f = rng.uniform(2, 9, size=3)
    base += 25 * np.stack([np.sin(2 * np.pi * f[c] * (x + (c + 1) * y / 3)) for c in range(3)], axis=-1)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.integers(0, size - 200, size=2)
        w, h = rng.integers(80, 300, size=2)
        col = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=col)
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 6, size=(size, size, 3))
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").save(path)
    return path


def valid_vocab(model_dir, vocab_size):
    """len(tokenizer): distinct ids of vocab.json and added_tokens.json (spec 5.5), capped at vocab_size."""
    ids = set()
    for name in ("vocab.json", "added_tokens.json"):
        p = os.path.join(model_dir, name)
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                ids.update(int(v) for v in json.load(f).values())
    return min(len(ids), vocab_size) if ids else vocab_size


def warm_page_cache(path):
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass


# ---- weight bytes from the checkpoint header + policy table -----------------------------------------------
def layer_class(name):
    """Policy layer class of a tensor, or 'f32' (kept in f32), or None (not loaded by fastvlm)."""
    if name.startswith(VISION_PREFIX):
        n = name[len(VISION_PREFIX):]
        if n.startswith("head.") or n.endswith("num_batches_tracked") or ".bn.running_" in n or n.endswith(".bn.weight"):
            return None  # CLIP head unused; BN folded into the conv (bn.bias stands for the folded bias)
        if n.endswith(".weight") and (n.endswith("convffn.fc1.weight") or n.endswith("convffn.fc2.weight") or
                                      n == "patch_embed.2.reparam_conv.weight" or
                                      (".proj.1." in n and n.endswith("reparam_conv.weight"))):
            return "vision_conv"  # 1x1 convs as matmuls
        if n.endswith("token_mixer.qkv.weight") or n.endswith("token_mixer.proj.weight"):
            return "vision_attention"
        return "f32"
    if name.startswith("model.mm_projector."):
        return "projector" if name.endswith(".weight") else "f32"
    if name == "lm_head.weight":
        return "lm_head"
    if name == "model.embed_tokens.weight":
        return "embeddings"
    if ".self_attn." in name and name.endswith("_proj.weight"):
        return "decoder_attention"
    if ".mlp." in name and name.endswith("_proj.weight"):
        return "decoder_mlp"
    return "f32"


def weight_files(model_dir):
    """The folder's safetensors files: model.safetensors, or the shards model.safetensors.index.json lists."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            return [os.path.join(model_dir, n) for n in sorted(set(json.load(f)["weight_map"].values()))]
    return [os.path.join(model_dir, "model.safetensors")]


def model_size(model_dir):
    """FastVLM size from config.json's hidden_size (spec §4), or the hidden size itself."""
    try:
        with open(os.path.join(model_dir, "config.json")) as f:
            h = json.load(f).get("hidden_size")
    except (OSError, ValueError):
        return "?"
    return {896: "0.5B", 1536: "1.5B", 3584: "7B"}.get(h, f"hidden {h}")


def checkpoint_params(model_dir):
    header = {}
    for path in weight_files(model_dir):
        header.update(read_header(path)[0])
    counts = {}
    for name, info in header.items():
        cls = layer_class(name)
        if cls is not None:
            counts[cls] = counts.get(cls, 0) + int(np.prod(info["shape"], dtype=np.int64))
    if "lm_head" not in counts and "embeddings" in counts:  # tied: the head shares the embedding rows
        counts["lm_head"] = counts["embeddings"]
    vocab = int(header["model.embed_tokens.weight"]["shape"][0]) if "model.embed_tokens.weight" in header else 0
    return counts, vocab


def weight_bytes(counts, preset):
    pol = POLICIES[preset]
    by_class = {c: n * (4.0 if c == "f32" else BYTES_PER_WEIGHT[pol[c]]) for c, n in counts.items()}
    return {"total": sum(by_class.values()), "decode_per_token": sum(by_class.get(c, 0) for c in DECODE_CLASSES),
            "by_class": by_class}


# ---- read bandwidth ---------------------------------------------------------------------------------------
def read_bandwidth(bench, threads, timeout):
    t = min(max(threads, 1), 2)  # bench_matmul registers 1 and 2 threads
    cmd = [bench, f"--benchmark_filter=^Limit/ReadBW_1GiB/threads:{t}/", "--benchmark_repetitions=3",
           "--benchmark_format=json"]
    out = json.loads(run_cmd(cmd, timeout, "bench_matmul read bandwidth"))
    vals = [b["GB/s"] for b in out.get("benchmarks", []) if b.get("run_type", "iteration") == "iteration" and "GB/s" in b]
    if not vals:
        raise CommandError(f"bench_matmul printed no Limit/ReadBW_1GiB/threads:{t} result\n  $ {shlex.join(cmd)}")
    return {"threads": t, "gb_s": vals, "best": max(vals)}


# ---- speed ------------------------------------------------------------------------------------------------
SPEED_KEYS = ["load_ms", "preprocess_ms", "vision_ms", "projector_ms", "prefill_ms", "prefill_tokens", "prefill_tok_s",
              "ttft_ms", "decode_ms", "decode_tokens", "decode_tok_s", "peak_rss_mb"]


def speed_runs(a, presets, image, res, errors):
    for r in range(a.reps):
        k = r % len(presets)
        for p in presets[k:] + presets[:k]:
            if "speed_error" in res[p]:
                continue
            cmd = [a.cli, "run", "--model", a.model, "--image", image, "--json", "--max-tokens", str(a.max_tokens),
                   "--threads", str(a.threads), "--precision", p]
            try:
                j = json.loads(run_cmd(cmd, a.timeout, f"speed {p} rep {r + 1}"))
                if j.get("precision") != p:
                    raise CommandError(f"speed {p}: the CLI ran precision {j.get('precision')!r}")
            except (CommandError, ValueError) as e:
                res[p]["speed_error"] = str(e)
                errors.append(str(e))
                log(f"FAILED {e}")
                continue
            t = j["timings"]
            for extra in ("weight_mb", "weight_bytes"):  # if a CLI version reports packed weight memory
                if extra in j:
                    t[extra] = j[extra]
            res[p].setdefault("speed_runs", []).append(t)
            log(f"speed {p} rep {r + 1}/{a.reps}: vision {t['vision_ms']:.0f} ms, prefill {t['prefill_tok_s']:.1f} tok/s, "
                f"TTFT {t['ttft_ms']:.0f} ms, decode {t['decode_tok_s']:.2f} tok/s ({t['decode_tokens']} tok)")
    for p in presets:
        runs = res[p].get("speed_runs")
        if runs:
            res[p]["speed"] = {k: statistics.median(float(x[k]) for x in runs) for k in runs[0] if k in SPEED_KEYS or k.startswith("weight_")}


# ---- accuracy on the 0.5B ---------------------------------------------------------------------------------
def log_softmax64(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def kl_rows(ref_logits, logits):
    """KL(softmax(ref) || softmax(logits)) per row, float64."""
    lp, lq = log_softmax64(ref_logits), log_softmax64(logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def dump(a, ids, image, out, precision, generate=0):
    cmd = [a.cli, "dump", "--model", a.model, "--input-ids", ",".join(str(i) for i in ids), "--image", image, "--out", out,
           "--threads", str(a.threads), "--precision", precision]
    if generate:
        cmd += ["--generate", str(generate)]
    run_cmd(cmd, a.timeout, f"dump {precision}{' --generate %d' % generate if generate else ''} ({os.path.basename(out)})")
    names = ["prefill_logits", "image_features"] + (["generated_ids"] if generate else [])
    return read_safetensors(out, names=names)


def accuracy_runs(a, presets, images, vocab_valid, work, res, errors):
    G = a.generate
    prompts = []
    for q in QUESTIONS[:a.questions]:
        ids = json.loads(run_cmd([a.cli, "tokenize", "--model", a.model, "--chat", "--text", q], a.timeout, "tokenize"))
        if ids.count(-200) != 1:
            raise CommandError(f"tokenize --chat {q!r}: expected one image slot (-200), got ids {ids}")
        for i, img in enumerate(images):
            prompts.append({"question": q, "image": i, "ids": ids})
    per = {p: [] for p in presets}
    for n, pr in enumerate(prompts, 1):
        img, ids = images[pr["image"]], pr["ids"]
        tag = f"prompt {n}/{len(prompts)} (image {pr['image']}, {pr['question']!r})"
        f_free = os.path.join(work, "free.safetensors")
        f_tf = os.path.join(work, "tf.safetensors")
        try:
            ref_free = dump(a, ids, img, f_free, "fp32", G)
            gen = [int(v) for v in ref_free["generated_ids"].reshape(-1)]
            n_img = int(ref_free["image_features"].shape[1])
            del ref_free
            tf_ids = ids + gen[:G - 1]
            ref = dump(a, tf_ids, img, os.path.join(work, "ref_tf.safetensors"), "fp32")["prefill_logits"][0]
        except CommandError as e:
            errors.append(f"accuracy reference (fp32) for {tag}: {e}")
            log(f"FAILED fp32 reference for {tag}: {e}")
            continue
        L = ref.shape[0]
        slot = ids.index(-200)
        lp = len(ids) - 1 + n_img  # positions of the prompt
        if L != lp + G - 1:
            raise CommandError(f"{tag}: fp32 dump has {L} positions, expected {lp + G - 1}")
        prompt_rows = np.arange(slot + n_img, lp)  # inputs: text tokens after the image
        gen_rows = np.arange(lp, L)  # inputs: teacher-forced g[0..G-1)
        last_rows = np.arange(L - G, L)  # predict g[0..G)
        ref_v = ref[:, :vocab_valid]
        lp_ref = log_softmax64(ref_v[prompt_rows])  # context for the KL: how peaked fp32's distributions are
        top2 = np.sort(ref_v[last_rows], axis=-1)[:, -2:]
        ref_stats = {"entropy_nats": float(-(np.exp(lp_ref) * lp_ref).sum(axis=-1).mean()),
                     "top1_prob": float(np.exp(lp_ref.max(axis=-1)).mean()),
                     "top1_top2_margin_gen": float((top2[:, 1] - top2[:, 0]).mean())}
        del lp_ref
        log(f"accuracy {tag}: {L} positions, {len(prompt_rows)} after the image, fp32 ids {gen[:8]}...")
        for p in presets:
            if "accuracy_error" in res[p]:
                continue
            try:
                if p == "fp32":
                    lg = ref_v
                    own = gen
                else:
                    lg = dump(a, tf_ids, img, f_tf, p)["prefill_logits"][0]
                    if lg.shape != ref.shape:
                        raise CommandError(f"dump {p}: prefill_logits shape {lg.shape} != fp32 {ref.shape}")
                    lg = lg[:, :vocab_valid]
                    own = None if a.no_free_run else [int(v) for v in dump(a, ids, img, f_free, p, G)["generated_ids"].reshape(-1)]
            except CommandError as e:
                res[p]["accuracy_error"] = str(e)
                errors.append(str(e))
                log(f"FAILED {e}")
                continue
            kl_p = kl_rows(ref_v[prompt_rows], lg[prompt_rows]) if p != "fp32" else np.zeros(len(prompt_rows))
            kl_g = kl_rows(ref_v[gen_rows], lg[gen_rows]) if p != "fp32" else np.zeros(len(gen_rows))
            am = np.argmax(lg[last_rows], axis=-1)
            agree = float(np.mean(am == np.asarray(gen)))
            prefix = None
            if own is not None:
                prefix = next((i for i, (x, y) in enumerate(zip(own, gen)) if x != y), min(len(own), len(gen)))
            per[p].append({"question": pr["question"], "image": pr["image"], "prompt_positions": int(len(prompt_rows)),
                           "kl_prompt": kl_p.tolist(), "kl_gen": kl_g.tolist(), "agreement": agree,
                           "free_run_prefix": prefix, "free_run_ids": own if p != "fp32" else None})
            log(f"  {p}: KL prompt mean {kl_p.mean():.3e} max {kl_p.max():.3e}, KL gen mean {kl_g.mean():.3e}, "
                f"agreement {100 * agree:.1f} %, free-run prefix {prefix}")
        for f in (f_free, f_tf, os.path.join(work, "ref_tf.safetensors")):
            if os.path.exists(f):
                os.remove(f)
        res.setdefault("_reference_ids", []).append({"question": pr["question"], "image": pr["image"], "ids": gen, **ref_stats})
    for p in presets:
        rows = per[p]
        if not rows:
            continue
        klp = np.concatenate([r["kl_prompt"] for r in rows])
        klg = np.concatenate([r["kl_gen"] for r in rows])
        prefixes = [r["free_run_prefix"] for r in rows if r["free_run_prefix"] is not None]
        res[p]["accuracy"] = {
            "prompts": len(rows), "positions": int(klp.size), "kl_mean": float(klp.mean()), "kl_max": float(klp.max()),
            "kl_gen_mean": float(klg.mean()), "kl_gen_max": float(klg.max()),
            "agreement_pct": 100.0 * float(np.mean([r["agreement"] for r in rows])),
            "free_run_prefix_mean": float(np.mean(prefixes)) if prefixes else None,
            "free_run_prefix_min": int(min(prefixes)) if prefixes else None, "generate": G, "per_prompt": rows}


# ---- scene model ------------------------------------------------------------------------------------------
def scene_runs(a, presets, work, res, errors):
    scenes = a.scenes or os.path.join(work, "scenes_500000")
    jsonl = os.path.join(scenes, "answers.jsonl")
    if not os.path.exists(jsonl):
        log(f"writing {SCENE_COUNT} held-out scenes (seeds {SCENE_SEED}..) -> {scenes}")
        run_cmd([sys.executable, os.path.join(ROOT, "tools", "make_scenes.py"), "--seed", str(SCENE_SEED), "--count",
                 str(SCENE_COUNT), "--out", scenes], a.timeout, "tools/make_scenes.py")
    for p in presets:
        cmd = [a.cli, "eval", "--model", a.scene_model, "--jsonl", jsonl, "--precision", p, "--threads", str(a.threads),
               "--max-tokens", "64", "--json"]
        try:
            j = json.loads(run_cmd(cmd, a.timeout, f"scene eval {p}"))
        except (CommandError, ValueError) as e:
            res[p]["scene_error"] = str(e)
            errors.append(str(e))
            log(f"FAILED {e}")
            continue
        res[p]["scene"] = {k: j.get(k) for k in ("accuracy", "correct", "count", "ttft_ms", "decode_tok_s", "prefill_tok_s",
                                                 "load_ms", "wall_s", "by_prompt")}
        log(f"scene {p}: {j['correct']}/{j['count']} = {100 * j['accuracy']:.2f} %")


# ---- table ------------------------------------------------------------------------------------------------
def fmt(v, spec, na="n/a"):
    return na if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table(a, presets, res, bw_best):
    hdr = ["preset", "load ms", "vision ms", "prefill tok/s", "TTFT ms", "decode tok/s", "decode GB/s (% of read BW)",
           "weight MB", "peak RSS MB", "speed-up TTFT / decode vs fp32", "scene accuracy", "mean KL (max)",
           "greedy agreement % (free-run prefix)"]
    lines = ["| " + " | ".join(hdr) + " |", "|---|" + "---:|" * (len(hdr) - 1)]
    base = res.get("fp32", {}).get("speed")
    for p in presets:
        r = res[p]
        s = r.get("speed")
        w = r["weights"]
        cells = [f"**{p}**"]
        if s:
            gbs = w["decode_per_token"] * s["decode_tok_s"] / 1e9
            bw = f"{gbs:.1f}" + (f" ({100 * gbs / bw_best:.0f} %)" if bw_best else "")
            cells += [fmt(s["load_ms"], ".0f"), fmt(s["vision_ms"], ".0f"), fmt(s["prefill_tok_s"], ".1f"),
                      fmt(s["ttft_ms"], ".0f"), fmt(s["decode_tok_s"], ".2f"), bw]
        else:
            cells += ["FAIL" if "speed_error" in r else "–"] * 6
        wmb = s.get("weight_mb") if s else None
        cells.append(f"{wmb:.0f}" if wmb else f"{w['total'] / 2**20:.0f}")
        cells.append(fmt(s["peak_rss_mb"], ".0f") if s else "–")
        if s and base:
            cells.append(f"{base['ttft_ms'] / s['ttft_ms']:.2f}× / {s['decode_tok_s'] / base['decode_tok_s']:.2f}×")
        else:
            cells.append("–")
        sc = r.get("scene")
        cells.append(f"{100 * sc['accuracy']:.2f} % ({sc['correct']}/{sc['count']})" if sc else
                     ("FAIL" if "scene_error" in r else "–"))
        ac = r.get("accuracy")
        if ac:
            cells.append("0 (reference)" if p == "fp32" else f"{ac['kl_mean']:.2e} ({ac['kl_max']:.2e})")
            pre = "" if ac["free_run_prefix_mean"] is None else \
                f" ({ac['free_run_prefix_mean']:.1f}/{ac['generate']}, min {ac['free_run_prefix_min']})"
            cells.append(f"{ac['agreement_pct']:.1f}" + (" (self-check: prefill vs decode)" if p == "fp32" else pre))
        else:
            cells += ["FAIL" if "accuracy_error" in r else "–"] * 2
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return f"{model or platform.processor()}, {os.cpu_count()} logical CPUs, {platform.platform()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", default=os.path.join(ROOT, "build", "examples", "fastvlm-cli"))
    ap.add_argument("--model", required=True, help="full-size folder (tools/make_synthetic_checkpoint.py --variant "
                    "{0.5b,1.5b,7b} --out DIR); the accuracy part needs the 0.5B")
    ap.add_argument("--scene-model", default=os.path.join(ROOT, "models", "fastvlm-scenes"))
    ap.add_argument("--scenes", help="existing held-out scene folder (answers.jsonl); default: generated in the work dir")
    ap.add_argument("--bench-matmul", help="bench_matmul binary for the read bandwidth (default: CLI_DIR/../bench/bench_matmul, "
                    "else build/bench/bench_matmul; missing: the %% column is left out)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="speed repetitions per preset (medians)")
    ap.add_argument("--max-tokens", type=int, default=64, help="decode length of the speed run")
    ap.add_argument("--presets", default=",".join(ALL_PRESETS))
    ap.add_argument("--questions", type=int, default=len(QUESTIONS), help=f"first N of the {len(QUESTIONS)} fixed questions")
    ap.add_argument("--images", type=int, default=2, help="deterministic 1024x1024 images for the accuracy prompts")
    ap.add_argument("--generate", type=int, default=64, help="greedy tokens for the agreement")
    ap.add_argument("--no-free-run", action="store_true", help="skip the presets' own --generate dumps (free-run prefix)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true", help="skip the 0.5B KL / agreement and the scene accuracy")
    ap.add_argument("--skip-scenes", action="store_true", help="skip the scene accuracy only")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per CLI call")
    ap.add_argument("--workdir", help="keep images and scenes here (default: a temp dir, removed at the end)")
    ap.add_argument("--json", help="write every raw number here")
    a = ap.parse_args()

    presets = [p.strip() for p in a.presets.split(",") if p.strip()]
    bad = [p for p in presets if p not in POLICIES]
    if bad or not presets:
        ap.error(f"--presets: unknown {bad} (known: {', '.join(ALL_PRESETS)})")
    if a.reps < 1 or a.threads < 1 or a.max_tokens < 1 or a.generate < 2 or a.images < 1 or not 1 <= a.questions <= len(QUESTIONS):
        ap.error("--reps, --threads, --max-tokens, --images >= 1, --generate >= 2, --questions in 1..%d" % len(QUESTIONS))
    if not os.path.isdir(a.model):
        ap.error(f"--model: {a.model} is not a folder")
    for path, what in [(a.cli, "--cli")] + [(f, "--model") for f in weight_files(a.model)]:
        if not os.path.exists(path):
            ap.error(f"{what}: {path} not found")
    do_scenes = not a.skip_accuracy and not a.skip_scenes
    if do_scenes and not os.path.exists(os.path.join(a.scene_model, "model.safetensors")):
        ap.error(f"--scene-model: {a.scene_model}/model.safetensors not found")

    command = shlex.join([sys.executable] + sys.argv)
    start = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()
    work = a.workdir or tempfile.mkdtemp(prefix="precision_table_")
    os.makedirs(work, exist_ok=True)
    errors = []
    counts, vocab = checkpoint_params(a.model)
    vocab_valid = valid_vocab(a.model, vocab)
    res = {p: {"weights": weight_bytes(counts, p)} for p in presets}
    if not a.bench_matmul:
        cands = [os.path.join(os.path.dirname(os.path.abspath(a.cli)), "..", "bench", "bench_matmul"),
                 os.path.join(ROOT, "build", "bench", "bench_matmul")]
        a.bench_matmul = os.path.normpath(next((c for c in cands if os.path.exists(c)), cands[-1]))
    bw = {"before": None, "after": None, "errors": []}
    have_bench = os.path.exists(a.bench_matmul)
    if not have_bench:
        log(f"no bench_matmul at {a.bench_matmul}: decode bandwidth without % of read BW")
    def measure_bw(when):  # STREAM-like read of the machine, before and after the speed loop
        if not have_bench:
            return
        try:
            bw[when] = read_bandwidth(a.bench_matmul, a.threads, a.timeout)
            log(f"read bandwidth {when}: {bw[when]['gb_s']} GB/s")
        except (CommandError, ValueError) as e:
            bw["errors"].append(str(e))
            errors.append(str(e))

    try:
        images = [make_image(os.path.join(work, f"image_{i}.png"), 1000 + i) for i in range(max(1, a.images))]
        if not a.skip_speed:
            measure_bw("before")
            for f in weight_files(a.model):
                warm_page_cache(f)
            speed_runs(a, presets, images[0], res, errors)
            measure_bw("after")
        if not a.skip_accuracy:
            accuracy_runs(a, presets, images, vocab_valid, work, res, errors)
        if do_scenes:
            scene_runs(a, presets, work, res, errors)
    except CommandError as e:
        errors.append(str(e))
        log(f"FAILED {e}")
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    bw_vals = [x["best"] for x in (bw["before"], bw["after"]) if x]
    bw_best = max(bw_vals) if bw_vals else None
    end = datetime.datetime.now(datetime.timezone.utc)
    load_end = os.getloadavg()

    st = os.stat(a.cli)
    out = [
        "## Precision trade-off table",
        "",
        f"Command: `{command}`",
        "",
        f"- Run {start:%Y-%m-%d %H:%M:%S}–{end:%H:%M:%S} UTC; load average (1/5/15 min) at start "
        f"{' / '.join(f'{x:.2f}' for x in load_start)}, at end {' / '.join(f'{x:.2f}' for x in load_end)}.",
        f"- Machine: {machine()}. CLI: `{a.cli}` ({st.st_size} B, modified "
        f"{datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc):%Y-%m-%d %H:%M} UTC).",
        f"- Speed: `{os.path.basename(a.model.rstrip('/'))}` ({model_size(a.model)}), 1024² image, default prompt, --max-tokens {a.max_tokens}, "
        f"--threads {a.threads}, medians of {a.reps} run(s) per preset (round-robin)." if not a.skip_speed else "- Speed: skipped.",
    ]
    if not a.skip_speed:
        out.append("- Read bandwidth (bench_matmul Limit/ReadBW_1GiB, best of 3 before / 3 after): " +
                   (f"{bw_best:.1f} GB/s at {min(a.threads, 2)} thread(s)" if bw_best else "not measured") +
                   ". Decode GB/s = weight bytes read per token (decoder linears + lm_head, no embeddings) × decode tok/s.")
    if not a.skip_accuracy:
        out.append(f"- 0.5B accuracy vs fp32: {a.questions} questions × {a.images} images; KL over prompt positions after the "
                   f"image (logits cut to {vocab_valid} = len(tokenizer)); agreement: teacher-forced argmax vs fp32's "
                   f"{a.generate} greedy ids; free-run prefix: the preset's own greedy ids vs fp32's (mean/{a.generate}, min).")
    refs = res.get("_reference_ids")
    if refs:
        out.append(f"- fp32 next-token distributions at those positions: mean entropy "
                   f"{np.mean([r['entropy_nats'] for r in refs]):.2f} nats (uniform: {math.log(vocab_valid):.2f}), mean top-1 "
                   f"probability {np.mean([r['top1_prob'] for r in refs]):.2e}; mean top-1 − top-2 logit margin over the "
                   f"{a.generate} greedy steps {np.mean([r['top1_top2_margin_gen'] for r in refs]):.3f}.")
    if do_scenes:
        out.append(f"- Scene accuracy: `fastvlm-cli eval` on {SCENE_COUNT} held-out scenes (seeds {SCENE_SEED}.."
                   f"{SCENE_SEED + SCENE_COUNT - 1}), exact answers.")
    wsrc = "reported by the CLI" if any(res[p].get("speed", {}).get("weight_mb") for p in presets) else \
        "computed from the checkpoint header × policy formats (bench/precision_table.py)"
    out += [f"- Weight MB: {wsrc}; MB = 2^20 bytes.", "", table(a, presets, res, bw_best), ""]
    if errors:
        out += ["### Errors", ""] + [f"```\n{e}\n```" for e in errors]
    print("\n".join(out), flush=True)

    if a.json:
        doc = {"command": command, "start_utc": start.isoformat(), "end_utc": end.isoformat(),
               "loadavg_start": load_start, "loadavg_end": load_end, "machine": machine(),
               "cli": {"path": a.cli, "size": st.st_size, "mtime": st.st_mtime},
               "options": vars(a), "presets": presets, "valid_vocab": vocab_valid, "vocab_size": vocab,
               "param_counts": counts, "read_bw": {**bw, "best": bw_best},
               "reference_ids": res.pop("_reference_ids", None), "results": res, "errors": errors}
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
