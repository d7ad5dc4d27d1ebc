#!/usr/bin/python3
"""C++ prefill (and greedy step) logits of the scene model vs the independent PyTorch references.

  tests/scene_logits.py --cli fastvlm-cli --model models/fastvlm-scenes --out DIR [--seed 500000] [--count 5]
                        [--rel 1e-4] [--precision fp32]

For every prompt of `--count` scenes from tools/make_scenes.py:
  pixels  : PIL preprocessing of spec §6.1 (tools/train_scene_model.preprocess / to_tensor) -> pixel_values
  ids     : tools/scene_vocab.py on the ChatML prompt (spec §5.2), checked equal to `fastvlm-cli tokenize --chat`
  C++     : `fastvlm-cli dump --pixels` (and `--image`, the C++ decode + preprocessing) --generate N
  ref     : fastvithd_ref (fused) + qwen2_ref (projector + decoder), float64, same folder
Pass: every prefill_logits and step_logits within rel * max|ref| (per prompt), identical greedy ids.
Exit 0 pass, 1 fail, 77 when torch / PIL / numpy are missing.
"""
import argparse
import json
import os
import subprocess
import sys

try:
    import numpy as np
    import torch
    from PIL import Image
except ImportError as e:  # noqa: F841
    print(f"SKIP: {e} (needs Debian's python3-torch, python3-pil, python3-numpy)")
    sys.exit(77)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import fastvithd_ref as vref  # noqa: E402
import qwen2_ref  # noqa: E402
import scene_vocab  # noqa: E402
from safetensors_io import read_safetensors, write_safetensors  # noqa: E402
from train_scene_model import VPREFIX, preprocess, to_tensor  # noqa: E402


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"FAIL: command exited {p.returncode}: {' '.join(cmd)}")
    return p.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=500005)  # 500005..9: 3 JPEG + 2 PNG, wide and tall
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("--rel", type=float, default=1e-4)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", default="1")
    a = ap.parse_args()

    scenes_dir = os.path.join(a.out, "scenes")
    run([sys.executable, os.path.join(ROOT, "tools", "make_scenes.py"), "--seed", str(a.seed), "--count", str(a.count),
         "--out", scenes_dir])
    with open(os.path.join(scenes_dir, "answers.jsonl")) as f:
        lines = [json.loads(ln) for ln in f if ln.strip()]

    torch.set_num_threads(1)
    dt = torch.float64
    config, weights = qwen2_ref.load_model_dir(a.model)
    tok = scene_vocab.Tokenizer.load(a.model)
    vis = vref.build(config["vision_config"], fused=True, dtype=dt, with_head=False)
    vref.load_weights(vis, weights, prefix=VPREFIX)
    dec = qwen2_ref.Qwen2Ref(config, weights, dtype=dt)
    stops = (config["eos_token_id"], tok.special_id("<|endoftext|>"))
    vocab_limit = qwen2_ref.tokenizer_length(a.model)
    S = config["vision_config"]["image_size"]

    ok = True
    worst = {"pixels": 0.0, "image": 0.0}
    worst_abs = 0.0
    feats_cache = {}
    for n, ln in enumerate(lines):
        img_path = os.path.join(scenes_dir, ln["image"])
        stem = os.path.splitext(ln["image"])[0]
        px_path = os.path.join(a.out, stem + "_pixels.safetensors")
        if ln["image"] not in feats_cache:
            px = to_tensor(preprocess(Image.open(img_path), S).copy())[None]  # float32 [1, 3, S, S]
            write_safetensors(px_path, {"pixel_values": px.numpy()})
            with torch.no_grad():
                feats_cache[ln["image"]] = vis(px.to(dt))[0]
        ids = tok.encode_prompt(ln["prompt"])
        cpp_ids = json.loads(run([a.cli, "tokenize", "--model", a.model, "--text", ln["prompt"], "--chat"]))
        if cpp_ids != ids:
            print(f"FAIL {ln['image']} {ln['prompt']!r}: C++ ids {cpp_ids} != Python {ids}")
            ok = False
            continue
        ref = dec.generate(ids, feats_cache[ln["image"]], max_new_tokens=40, vocab_limit=vocab_limit, stop_ids=stops)
        ref_prefill = ref["prefill_logits"].numpy()
        ref_steps = ref["step_logits"].numpy()
        n_steps = ref_steps.shape[0]
        answer = tok.decode([i for i in ref["ids"] if i not in stops])
        id_str = ",".join(str(i) for i in ids)
        for mode in ("pixels", "image"):
            out_path = os.path.join(a.out, f"{stem}_{n}_{mode}.safetensors")
            src = ["--pixels", px_path] if mode == "pixels" else ["--image", img_path]
            run([a.cli, "dump", "--model", a.model, *src, "--input-ids", id_str, "--generate", str(n_steps),
                 "--precision", a.precision, "--threads", a.threads, "--out", out_path])
            got = read_safetensors(out_path)
            line_ok = True
            msg = []
            for name, want in (("prefill_logits", ref_prefill), ("step_logits", ref_steps)):
                x = np.asarray(got[name], np.float64).reshape(want.shape)
                err, scale = float(np.abs(x - want).max()), float(np.abs(want).max())
                rel = err / scale
                worst[mode] = max(worst[mode], rel)
                worst_abs = max(worst_abs, err)
                good = err <= a.rel * scale
                line_ok = line_ok and good
                msg.append(f"{name} {tuple(want.shape)} max err {err:.3g} / max|ref| {scale:.3g} = {rel:.2e}")
            got_ids = [int(v) for v in np.asarray(got["generated_ids"]).reshape(-1)]
            same = got_ids == ref["ids"]
            line_ok = line_ok and same
            ok = ok and line_ok
            print(f"{'ok  ' if line_ok else 'FAIL'} {ln['image']} --{mode:6s} {ln['prompt']!r} -> {answer!r} "
                  f"(expected {ln['answer']!r}); " + "; ".join(msg) + ("" if same else f"; ids {got_ids} != ref {ref['ids']}"))
    print(f"worst rel error (max|C++ - ref| / max|ref|): --pixels {worst['pixels']:.3e}, --image {worst['image']:.3e}; "
          f"limit {a.rel:g}; worst abs error {worst_abs:.3g}; {len(lines)} prompts on {len(feats_cache)} scenes ({a.precision})")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
