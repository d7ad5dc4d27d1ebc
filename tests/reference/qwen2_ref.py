#!/usr/bin/python3
"""Independent reference of the FastVLM projector and Qwen2 decoder, written from
../shared/spec/fastvlm-model.md (§3 projector, §4 Qwen2, §5.3 image splice, §5.5 vocab mask).

Computes in float64 by default. Usage:

  qwen2_ref.py validate --model DIR --io IO.safetensors [--tol-rel 1e-6]
      Runs the stored image_features + input_ids of IO through the decoder of DIR and compares
      every reference tensor IO holds (image_features_projected, prefill_hidden_layer{i},
      prefill_final_norm, prefill_logits, generated_ids, step_logits). Exit 1 on mismatch.
  qwen2_ref.py prefill --model DIR --ids 151644,872,198 [--dtype float32]
      Text-only prefill; prints logit statistics (finite check for big synthetic folders).
"""
import argparse
import json
import math
import os
import sys

try:
    import numpy as np
    import torch
except ImportError:  # ctest treats exit code 77 as "skipped" (tests/decoder_reference.cmake)
    print("numpy/torch not available: skipping (use Debian's /usr/bin/python3 with python3-torch)")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

IMAGE_TOKEN_INDEX = -200  # spec §5.1

from safetensors_io import read_safetensors  # noqa: E402  (tests/reference/safetensors_io.py)


def load_model_dir(model_dir):
    """config.json + model.safetensors (single file or sharded index) -> (config, {name: ndarray})."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return config, read_safetensors(single)
    with open(os.path.join(model_dir, "model.safetensors.index.json")) as f:
        index = json.load(f)
    weights = {}
    for shard in sorted(set(index["weight_map"].values())):
        weights.update(read_safetensors(os.path.join(model_dir, shard)))
    return config, weights


class Qwen2Ref:
    """mlp2x_gelu projector + Qwen2ForCausalLM (spec §3, §4). Weights use the checkpoint names."""

    def __init__(self, config, weights, dtype=torch.float64):
        self.dtype = dtype
        self.hidden = config["hidden_size"]
        self.n_layers = config["num_hidden_layers"]
        self.n_heads = config["num_attention_heads"]
        self.n_kv = config.get("num_key_value_heads", self.n_heads)
        self.head_dim = self.hidden // self.n_heads
        self.eps = float(config.get("rms_norm_eps", 1e-6))
        self.theta = float(config.get("rope_theta", 10000.0))
        assert self.n_heads % self.n_kv == 0

        def t(name):
            if name not in weights:
                raise KeyError("missing tensor " + name)
            return torch.from_numpy(np.asarray(weights[name])).to(dtype)

        self.embed = t("model.embed_tokens.weight")
        # Untied when lm_head.weight is stored (spec §4), tied to the embedding otherwise.
        self.tied = "lm_head.weight" not in weights
        self.lm_head = self.embed if self.tied else t("lm_head.weight")
        self.final_norm = t("model.norm.weight")
        self.layers = []
        for i in range(self.n_layers):
            p = "model.layers.%d." % i
            self.layers.append({k: t(p + k) for k in (
                "input_layernorm.weight", "post_attention_layernorm.weight",
                "self_attn.q_proj.weight", "self_attn.q_proj.bias",
                "self_attn.k_proj.weight", "self_attn.k_proj.bias",
                "self_attn.v_proj.weight", "self_attn.v_proj.bias",
                "self_attn.o_proj.weight",
                "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")})
        self.projector = None
        if "model.mm_projector.0.weight" in weights:
            assert config.get("mm_projector_type", "mlp2x_gelu") == "mlp2x_gelu"
            self.projector = [t("model.mm_projector.%s" % k) for k in
                              ("0.weight", "0.bias", "2.weight", "2.bias")]
        # RoPE, rotate_half form: inv_freq[j] = theta^(-2j/d), j < d/2 (spec §4).
        d = self.head_dim
        self.inv_freq = 1.0 / (self.theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))

    # ---- building blocks --------------------------------------------------------------------
    def rms_norm(self, x, w):
        # x * rsqrt(mean(x^2) + eps) * w
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x, positions):
        # x [heads, T, d]; angles [T, d/2] duplicated to [T, d]; q' = q cos + rotate_half(q) sin.
        ang = positions.to(torch.float64)[:, None] * self.inv_freq[None, :]
        ang = torch.cat([ang, ang], dim=-1)
        cos, sin = ang.cos().to(self.dtype), ang.sin().to(self.dtype)
        h = x.shape[-1] // 2
        rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
        return x * cos + rot * sin

    def project(self, image_features):
        """mlp2x_gelu (spec §3): Linear -> exact erf GELU -> Linear. [N, mm] -> [N, H]."""
        w0, b0, w2, b2 = self.projector
        x = torch.as_tensor(image_features).to(self.dtype)
        h = x @ w0.T + b0
        h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
        return h @ w2.T + b2

    def merge(self, input_ids, projected):
        """Spec §5.3: embed the text segments, put the image tokens where -200 stands. With a list
        of projected images, the k-th -200 takes the k-th (several images, as mlx-vlm does)."""
        parts = []
        ids = [int(v) for v in input_ids]
        images = list(projected) if isinstance(projected, (list, tuple)) else None
        seg = []
        for v in ids:
            if v == IMAGE_TOKEN_INDEX:
                if seg:
                    parts.append(self.embed[torch.tensor(seg)])
                    seg = []
                assert projected is not None and (images is None or images), "prompt has more image slots than images"
                parts.append((images.pop(0) if images is not None else projected).to(self.dtype))
            else:
                seg.append(v)
        assert not images, "more images than image slots"
        if seg:
            parts.append(self.embed[torch.tensor(seg)])
        return torch.cat(parts, dim=0)

    def new_cache(self):
        return [{"k": None, "v": None} for _ in range(self.n_layers)]

    def forward(self, x, start, cache, collect=False):
        """x [T, H] embeddings at positions start..start+T-1; cache holds rotated K and V
        [n_kv, P, d] per layer. Returns logits [T, V] (and per-layer residuals, final norm)."""
        T = x.shape[0]
        nh, nkv, d = self.n_heads, self.n_kv, self.head_dim
        pos = torch.arange(start, start + T)
        hidden = []
        for li, L in enumerate(self.layers):
            h = self.rms_norm(x, L["input_layernorm.weight"])
            q = (h @ L["self_attn.q_proj.weight"].T + L["self_attn.q_proj.bias"]).view(T, nh, d).transpose(0, 1)
            k = (h @ L["self_attn.k_proj.weight"].T + L["self_attn.k_proj.bias"]).view(T, nkv, d).transpose(0, 1)
            v = (h @ L["self_attn.v_proj.weight"].T + L["self_attn.v_proj.bias"]).view(T, nkv, d).transpose(0, 1)
            q, k = self.rope(q, pos), self.rope(k, pos)
            c = cache[li]
            c["k"] = k if c["k"] is None else torch.cat([c["k"], k], dim=1)
            c["v"] = v if c["v"] is None else torch.cat([c["v"], v], dim=1)
            P = c["k"].shape[1]
            # GQA: query head hq reads KV head hq // (nh / nkv).
            rep = nh // nkv
            kk = c["k"].repeat_interleave(rep, dim=0)
            vv = c["v"].repeat_interleave(rep, dim=0)
            s = q @ kk.transpose(1, 2) / math.sqrt(d)  # [nh, T, P]
            kpos = torch.arange(P)
            s = s.masked_fill(kpos[None, :] > pos[:, None], float("-inf"))
            a = torch.softmax(s, dim=-1) @ vv  # [nh, T, d]
            a = a.transpose(0, 1).reshape(T, nh * d)
            x = x + a @ L["self_attn.o_proj.weight"].T
            h = self.rms_norm(x, L["post_attention_layernorm.weight"])
            g = h @ L["mlp.gate_proj.weight"].T
            u = h @ L["mlp.up_proj.weight"].T
            x = x + (torch.nn.functional.silu(g) * u) @ L["mlp.down_proj.weight"].T
            if collect:
                hidden.append(x.clone())
        xn = self.rms_norm(x, self.final_norm)
        logits = xn @ self.lm_head.T
        if collect:
            return logits, hidden, xn
        return logits

    def generate(self, input_ids, image_features=None, max_new_tokens=8, vocab_limit=None,
                 stop_ids=()):
        """Greedy decoding with a KV cache (spec §5.3 step 4). Logits of ids >= vocab_limit are
        masked before argmax (spec §5.5); stored step logits are unmasked.
        Returns dict with projected, embeds, prefill_logits, hidden, final_norm, ids, step_logits."""
        if isinstance(image_features, (list, tuple)):
            projected = [self.project(f) for f in image_features]
        else:
            projected = self.project(image_features) if image_features is not None else None
        embeds = self.merge(input_ids, projected)
        cache = self.new_cache()
        with torch.no_grad():
            logits, hidden, fn = self.forward(embeds, 0, cache, collect=True)
        out = {"projected": projected, "embeds": embeds, "prefill_logits": logits,
               "hidden": hidden, "final_norm": fn, "ids": [], "step_logits": [], "margins": []}
        last = logits[-1]
        pos = embeds.shape[0]
        for step in range(max_new_tokens):
            masked = last.clone()
            if vocab_limit is not None and vocab_limit < masked.shape[0]:
                masked[vocab_limit:] = float("-inf")
            top2 = torch.topk(masked, 2)
            tok = int(top2.indices[0])
            out["ids"].append(tok)
            out["step_logits"].append(last)
            out["margins"].append(float(top2.values[0] - top2.values[1]))
            if tok in stop_ids or step + 1 == max_new_tokens:
                break
            with torch.no_grad():
                last = self.forward(self.embed[tok][None, :], pos, cache)[0]
            pos += 1
        out["step_logits"] = torch.stack(out["step_logits"])
        return out


def tokenizer_length(model_dir):
    """len(tokenizer) as predict.py sees it: BPE vocabulary + added tokens (151646 for 0.5B)."""
    with open(os.path.join(model_dir, "vocab.json"), encoding="utf-8") as f:
        ids = set(json.load(f).values())
    path = os.path.join(model_dir, "added_tokens.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            ids |= set(json.load(f).values())
    return len(ids)


def _maxdiff(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("shape mismatch %s vs %s" % (a.shape, b.shape))
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def validate(model_dir, io_path, tol_rel=1e-6, dtype=torch.float64):
    config, weights = load_model_dir(model_dir)
    ref = read_safetensors(io_path)
    m = Qwen2Ref(config, weights, dtype)
    ids = ref["input_ids"].reshape(-1)
    feats = ref["image_features"].reshape(-1, ref["image_features"].shape[-1])
    n_new = ref["generated_ids"].size if "generated_ids" in ref else 8
    out = m.generate(ids, feats, max_new_tokens=n_new)
    ok = True
    report = {}

    def cmp(name, ours):
        nonlocal ok
        if name not in ref:
            return
        want = ref[name].reshape(np.asarray(ours).shape)
        d = _maxdiff(ours, want)
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        good = d <= tol_rel * max(scale, 1.0)
        ok = ok and good
        report[name] = {"max_abs_diff": d, "max_abs_ref": scale, "ok": good}

    cmp("image_features_projected", out["projected"].numpy())
    cmp("inputs_embeds", out["embeds"].numpy())
    for i, h in enumerate(out["hidden"]):
        cmp("prefill_hidden_layer%d" % i, h.numpy())
    cmp("prefill_final_norm", out["final_norm"].numpy())
    cmp("prefill_logits", out["prefill_logits"].numpy())
    cmp("step_logits", out["step_logits"].numpy())
    if "generated_ids" in ref:
        same = [int(v) for v in ref["generated_ids"].reshape(-1)] == out["ids"]
        ok = ok and same
        report["generated_ids"] = {"ours": out["ids"], "ok": same}
    report["min_greedy_margin"] = min(out["margins"])
    # Self-check: the KV-cache steps equal one full forward over prompt + generated ids.
    full = torch.cat([out["embeds"], m.embed[torch.tensor(out["ids"][:-1], dtype=torch.long)]])
    with torch.no_grad():
        rec = m.forward(full, 0, m.new_cache())[out["embeds"].shape[0] - 1:]
    report["kv_cache_vs_recompute_max_abs_diff"] = _maxdiff(rec.numpy(), out["step_logits"].numpy())
    return ok, report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate")
    v.add_argument("--model", required=True)
    v.add_argument("--io", required=True)
    v.add_argument("--tol-rel", type=float, default=1e-6,
                   help="max |diff| <= tol * max(max|ref|, 1); golden stored as float32 -> ~1e-7 rel")
    p = sub.add_parser("prefill")
    p.add_argument("--model", required=True)
    p.add_argument("--ids", required=True, help="comma-separated token ids (no image slot)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--generate", type=int, default=1)
    p.add_argument("--vocab-limit", default=None,
                   help="mask logits of ids >= N before argmax (spec §5.5); 'auto' = len(tokenizer) "
                        "from vocab.json + added_tokens.json of the folder")
    args = ap.parse_args()
    if args.cmd == "validate":
        ok, report = validate(args.model, args.io, args.tol_rel)
        print(json.dumps(report, indent=1))
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    config, weights = load_model_dir(args.model)
    weights = {k: w for k, w in weights.items() if not k.startswith("model.vision_tower.")}
    m = Qwen2Ref(config, weights, dtype)
    del weights
    ids = [int(s) for s in args.ids.split(",")]
    limit = None
    if args.vocab_limit == "auto":
        limit = tokenizer_length(args.model)
    elif args.vocab_limit is not None:
        limit = int(args.vocab_limit)
    out = m.generate(ids, None, max_new_tokens=args.generate, vocab_limit=limit)
    lg = out["prefill_logits"]
    finite = bool(torch.isfinite(lg).all()) and bool(torch.isfinite(out["step_logits"]).all())
    print(json.dumps({"positions": lg.shape[0], "vocab": lg.shape[1], "finite": finite,
                      "logit_std": float(lg.std()), "logit_max_abs": float(lg.abs().max()),
                      "generated_ids": out["ids"], "vocab_limit": limit, "tied": m.tied}, indent=1))
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
