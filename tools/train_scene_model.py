#!/usr/bin/python3
"""Train + export the small scene FastVLM (issue 5): FastViTHD (training form of
tests/reference/fastvithd_ref.py) -> mlp2x_gelu projector -> Qwen2 decoder, CPU, Debian's PyTorch.

  tools/train_scene_model.py --out models/fastvlm-scenes [--minutes 20] [--seed 1] [--train-count 8000] [--lr 2e-3]
  tools/train_scene_model.py --eval-only --bf16 --out models/fastvlm-scenes   (re-export from /tmp/scene_ckpt.pt, eval)

Loss: LM cross-entropy on the answer + final <|im_end|>, plus an auxiliary (training-only, not exported)
per-column (shape, color) classifier on the vision features, which gets the vision tower learning fast.
Training scenes: seeds [0, --train-count) of tools/make_scenes.py (rendered in memory, same JPEG/PNG
round trip, same preprocessing as the runtime: convert('RGB') -> pad to square black -> PIL bicubic
-> /255, spec §6.1). Schedule: linear warmup then
cosine decay over a wall-clock budget. Export: vision tower reparameterized to the fused form
(ConvFFN BN kept, eval statistics), official key names, then the exported folder is re-loaded into the
independent references (fastvithd_ref fused + qwen2_ref) and evaluated greedily on held-out seeds.
"""
import argparse
import json
import math
import os
import re
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import make_scenes as scenes  # noqa: E402
import scene_vocab  # noqa: E402
import fastvithd_ref as vref  # noqa: E402
import qwen2_ref  # noqa: E402
from safetensors_io import write_safetensors, read_safetensors  # noqa: E402

VPREFIX = "model.vision_tower.vision_tower.model."
VISION_CONFIG = {
    "image_size": 192,
    "layers": [1, 1, 1, 1, 1],
    "embed_dims": [8, 16, 32, 64, 128],
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
TEXT = {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 256, "rope_theta": 10000.0, "rms_norm_eps": 1e-6}


# ------------------------------------------------------------------ data

def preprocess(img, size):
    """Spec §6.1: RGB, expand2square with black, PIL bicubic to size x size, uint8 HWC."""
    img = img.convert("RGB")
    w, h = img.size
    if w != h:
        s = max(w, h)
        canvas = Image.new("RGB", (s, s), (0, 0, 0))
        canvas.paste(img, ((s - w) // 2, (s - h) // 2))
        img = canvas
    return np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.uint8)


def to_tensor(u8):
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W]; x * (1/255) in float64 then float32."""
    x = torch.from_numpy(np.ascontiguousarray(u8)).to(torch.float64) * (1.0 / 255.0)
    return x.to(torch.float32).movedim(-1, -3).contiguous()


def render_scene(seed, size):
    """Same bytes as make_scenes writes, decoded again."""
    import io
    img, fmt, quality, objs = scenes.render(seed)
    decoded = Image.open(io.BytesIO(scenes.encode(img, fmt, quality)))
    return preprocess(decoded, size), scenes.qa_pairs(objs)


def make_dataset(seeds, size, log=True):
    imgs = np.zeros((len(seeds), size, size, 3), dtype=np.uint8)
    qas = []
    t0 = time.time()
    for i, s in enumerate(seeds):
        imgs[i], qa = render_scene(s, size)
        qas.append(qa)
        if log and (i + 1) % 2000 == 0:
            print(f"  rendered {i + 1}/{len(seeds)} ({time.time() - t0:.0f} s)", flush=True)
    return imgs, qas


def corpus_texts(n=3000):
    texts = []
    for s in range(n):
        _, _, _, objs = scenes.render(s)
        for q, a in scenes.qa_pairs(objs):
            texts.append(scene_vocab.chat_prompt(q).replace("<image>", "") + a + "<|im_end|>")
    return texts


# ------------------------------------------------------------------ model

class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attn(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, nh, nkv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
        self.nh, self.nkv, self.d = nh, nkv, h // nh
        self.q_proj = nn.Linear(h, nh * self.d, bias=True)
        self.k_proj = nn.Linear(h, nkv * self.d, bias=True)
        self.v_proj = nn.Linear(h, nkv * self.d, bias=True)
        self.o_proj = nn.Linear(nh * self.d, h, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.d).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nkv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.d).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        rep = self.nh // self.nkv  # GQA: query head h reads kv head h // rep
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(self.d) + mask
        o = torch.softmax(s, dim=-1) @ v
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.nh * self.d))


def rope(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], dim=-1) * sin


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c["hidden_size"]
        self.input_layernorm = RMSNorm(h, c["rms_norm_eps"])
        self.self_attn = Attn(c)
        self.post_attention_layernorm = RMSNorm(h, c["rms_norm_eps"])
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(h, c["intermediate_size"], bias=False)
        self.mlp.up_proj = nn.Linear(h, c["intermediate_size"], bias=False)
        self.mlp.down_proj = nn.Linear(c["intermediate_size"], h, bias=False)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        h = self.post_attention_layernorm(x)
        return x + self.mlp.down_proj(F.silu(self.mlp.gate_proj(h)) * self.mlp.up_proj(h))


class SceneVLM(nn.Module):
    """Key names = official ones after prefixing (see export_tensors)."""

    def __init__(self, vocab_size, text=TEXT, vision=VISION_CONFIG):
        super().__init__()
        self.text = text
        self.vision = vref.build(vision, fused=False, dtype=torch.float32, with_head=False)
        mm = vref.conv_exp_channels(vref.resolve_config(vision))
        h = text["hidden_size"]
        self.mm_projector = nn.Sequential(nn.Linear(mm, h), nn.GELU(), nn.Linear(h, h))
        self.embed_tokens = nn.Embedding(vocab_size, h)
        self.layers = nn.ModuleList([Layer(text) for _ in range(text["num_hidden_layers"])])
        self.norm = RMSNorm(h, text["rms_norm_eps"])
        d = h // text["num_attention_heads"]
        self.inv_freq = 1.0 / (text["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        # Training-only auxiliary head (not exported): per image column, none or (shape, color).
        ntok = (vision["image_size"] // 64) ** 2
        self.aux = nn.Linear(ntok * mm, 3 * AUX_CLASSES)

    def image_tokens(self, pixels, with_aux=False):
        f = self.vision(pixels)
        if f.requires_grad:  # torch 1.13 CPU conv backward gives NaN on non-contiguous grads
            f.register_hook(lambda g: g.contiguous())
        if with_aux:
            return self.mm_projector(f), self.aux(f.reshape(f.shape[0], -1)).view(-1, 3, AUX_CLASSES)
        return self.mm_projector(f)

    def decode(self, x):
        """x [B, T, H] embeddings at positions 0..T-1 -> logits [B, T, V] (lm_head tied)."""
        T = x.shape[1]
        ang = torch.arange(T, dtype=torch.float64)[:, None] * self.inv_freq[None, :]
        ang = torch.cat([ang, ang], dim=-1)
        cos, sin = ang.cos().float(), ang.sin().float()
        mask = torch.full((T, T), float("-inf")).triu(1)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x) @ self.embed_tokens.weight.T

    def forward_batch(self, pre_ids, pixels, img_index, tails):
        """pre_ids [P] shared prefix; pixels [Bi,3,S,S]; img_index [B] image of every sequence;
        tails [B, L] ids after the image. Returns logits over the tail positions [B, L, V]."""
        img, aux = self.image_tokens(pixels, with_aux=True)
        img = img[img_index]  # [B, N, H]
        B = tails.shape[0]
        pre = self.embed_tokens(pre_ids)[None].expand(B, -1, -1)
        x = torch.cat([pre, img, self.embed_tokens(tails)], dim=1)
        logits = self.decode(x)
        return logits[:, pre.shape[1] + img.shape[1] - 1:-1], aux  # predictions of tail tokens


# ------------------------------------------------------------------ batches

AUX_CLASSES = 1 + len(scenes.SHAPES) * len(scenes.COLORS)
_OBJ = re.compile(r"(%s) (%s) (%s)" % ("|".join(scenes.COLORS), "|".join(scenes.SHAPES),
                                       "|".join(scenes.COLUMN_PHRASE)))


def aux_labels(qas):
    """[N, 3] per column: 0 = empty, 1 + shape * n_colors + color (parsed from the description)."""
    out = np.zeros((len(qas), 3), dtype=np.int64)
    colors = list(scenes.COLORS)
    for i, qa in enumerate(qas):
        for color, shape, where in _OBJ.findall(qa[0][1].lower()):
            out[i, scenes.COLUMN_PHRASE.index(where)] = 1 + scenes.SHAPES.index(shape) * len(colors) + colors.index(color)
    return out


def encode_samples(tok, qas):
    """-> list per image of [(tail ids, n_question_tokens)] where tail = chunk2 + answer + <|im_end|>."""
    im_end = tok.special_id("<|im_end|>")
    out = []
    cache = {}
    for qa in qas:
        row = []
        for q, a in qa:
            if q not in cache:
                ids = tok.encode_prompt(q)
                cache[q] = ids[ids.index(-200) + 1:]
            post = cache[q]
            row.append((post + tok.encode(a) + [im_end], len(post)))
        out.append(row)
    return out


def make_batch(samples, img_ids, rng, pad_id):
    """Every image: the describe prompt + one other prompt at random."""
    seqs, idx = [], []
    for j, i in enumerate(img_ids):
        row = samples[i]
        seqs.append(row[0])
        idx.append(j)
        other = row[1 + rng.integers(0, len(row) - 1)]
        seqs.append(other)
        idx.append(j)
    L = max(len(s) for s, _ in seqs)
    tails = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    target_mask = torch.zeros((len(seqs), L), dtype=torch.bool)
    for b, (s, nq) in enumerate(seqs):
        tails[b, :len(s)] = torch.tensor(s)
        target_mask[b, nq:len(s)] = True
    return tails, target_mask, torch.tensor(idx)


# ------------------------------------------------------------------ export

def export_tensors(model, dtype_bf16):
    """-> (ordered dict name -> numpy array, names to store as bf16)."""
    vsd = {k: v.detach().cpu().numpy() for k, v in model.vision.state_dict().items()}
    fused = vref.reparameterize_state_dict(vsd, VISION_CONFIG, out_dtype=np.float32)
    out = {VPREFIX + k: v for k, v in fused.items()}
    p = model.mm_projector
    out["model.mm_projector.0.weight"] = p[0].weight
    out["model.mm_projector.0.bias"] = p[0].bias
    out["model.mm_projector.2.weight"] = p[2].weight
    out["model.mm_projector.2.bias"] = p[2].bias
    out["model.embed_tokens.weight"] = model.embed_tokens.weight
    for i, layer in enumerate(model.layers):
        for k, v in layer.state_dict().items():
            out[f"model.layers.{i}.{k}"] = v
    out["model.norm.weight"] = model.norm.weight
    out = {k: (v.detach().cpu().numpy().astype(np.float32) if torch.is_tensor(v) else v) for k, v in out.items()}
    bf16 = [k for k, v in out.items() if v.dtype == np.float32] if dtype_bf16 else []
    return out, bf16


def write_folder(folder, model, tok, dtype_bf16, meta):
    os.makedirs(folder, exist_ok=True)
    tensors, bf16 = export_tensors(model, dtype_bf16)
    write_safetensors(os.path.join(folder, "model.safetensors"), tensors, {"format": "pt"}, bf16_names=bf16)
    tok.save(folder)
    im_end, eot = tok.special_id("<|im_end|>"), tok.special_id("<|endoftext|>")
    mm = vref.conv_exp_channels(vref.resolve_config(VISION_CONFIG))
    config = {
        "architectures": ["LlavaQwen2ForCausalLM"],
        "model_type": "llava_qwen2",
        "hidden_act": "silu",
        "hidden_size": TEXT["hidden_size"],
        "intermediate_size": TEXT["intermediate_size"],
        "num_hidden_layers": TEXT["num_hidden_layers"],
        "num_attention_heads": TEXT["num_attention_heads"],
        "num_key_value_heads": TEXT["num_key_value_heads"],
        "max_position_embeddings": 2048,
        "max_window_layers": TEXT["num_hidden_layers"],
        "rms_norm_eps": TEXT["rms_norm_eps"],
        "rope_theta": TEXT["rope_theta"],
        "sliding_window": 2048,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
        "vocab_size": len(tok),
        "bos_token_id": eot,
        "eos_token_id": im_end,
        "torch_dtype": "bfloat16" if dtype_bf16 else "float32",
        "use_cache": True,
        "mm_hidden_size": mm,
        "mm_projector_type": "mlp2x_gelu",
        "mm_patch_merge_type": "flat",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": f"mobileclip_scenes_{VISION_CONFIG['image_size']}",
        "image_aspect_ratio": "pad",
        "image_token_index": -200,
        "use_mm_proj": True,
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
        "vision_config": VISION_CONFIG,
    }
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    gen = {"bos_token_id": eot, "eos_token_id": [im_end, eot], "pad_token_id": eot, "do_sample": False,
           "max_new_tokens": 64}
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=1)
    with open(os.path.join(folder, "training_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


# ------------------------------------------------------------------ evaluation

def kind_of(prompt):
    if prompt == scenes.PROMPT_DESCRIBE:
        return "describe"
    if prompt == scenes.PROMPT_COUNT:
        return "count"
    return "color"


@torch.no_grad()
def eval_torch(model, tok, imgs, qas, max_new=40):
    """Batched greedy decoding without cache (recompute), fp32 training model in eval mode."""
    model.eval()
    im_end = tok.special_id("<|im_end|>")
    pre = tok.encode_prompt(scenes.PROMPT_DESCRIBE)
    pre_ids = torch.tensor(pre[:pre.index(-200)])
    feats = torch.cat([model.image_tokens(to_tensor(imgs[i:i + 64])) for i in range(0, len(imgs), 64)])
    jobs = [(i, q, a) for i, qa in enumerate(qas) for q, a in qa]
    results = []
    for start in range(0, len(jobs), 256):
        chunk = jobs[start:start + 256]
        seqs = []
        for i, q, a in chunk:
            ids = tok.encode_prompt(q)
            seqs.append(ids[ids.index(-200) + 1:])
        gen = [[] for _ in chunk]
        done = [False] * len(chunk)
        for _ in range(max_new):
            cur = [s + g for s, g in zip(seqs, gen)]
            L = max(len(c) for c in cur)
            tails = torch.zeros((len(cur), L), dtype=torch.long)
            for b, c in enumerate(cur):
                tails[b, :len(c)] = torch.tensor(c)
            x = torch.cat([model.embed_tokens(pre_ids)[None].expand(len(cur), -1, -1),
                           feats[[i for i, _, _ in chunk]], model.embed_tokens(tails)], dim=1)
            logits = model.decode(x)
            base = len(pre_ids) + feats.shape[1]
            for b, c in enumerate(cur):
                if done[b]:
                    continue
                t = int(logits[b, base + len(c) - 1].argmax())
                gen[b].append(t)
                if t == im_end:
                    done[b] = True
            if all(done):
                break
        for (i, q, a), g in zip(chunk, gen):
            results.append((i, q, a, tok.decode(g)))
    return results


def eval_reference(folder, image_paths, qas, dtype=torch.float64, max_new=40):
    """Exported folder through the independent references: fastvithd_ref (fused) + qwen2_ref."""
    config, weights = qwen2_ref.load_model_dir(folder)
    tok = scene_vocab.Tokenizer.load(folder)
    vis = vref.build(config["vision_config"], fused=True, dtype=dtype, with_head=False)
    vref.load_weights(vis, weights, prefix=VPREFIX)
    dec = qwen2_ref.Qwen2Ref(config, weights, dtype=dtype)
    stops = (config["eos_token_id"], tok.special_id("<|endoftext|>"))
    S = config["vision_config"]["image_size"]
    results = []
    for i, (path, qa) in enumerate(zip(image_paths, qas)):
        px = to_tensor(preprocess(Image.open(path), S))[None].to(dtype)
        with torch.no_grad():
            feats = vis(px)[0]
        for q, a in qa:
            out = dec.generate(tok.encode_prompt(q), feats, max_new_tokens=max_new, stop_ids=stops)
            results.append((i, q, a, tok.decode(out["ids"])))
    return results


def summarize(results):
    per = {}
    for _, q, a, got in results:
        k = kind_of(q)
        c, n = per.get(k, (0, 0))
        per[k] = (c + (got.strip() == a), n + 1)
    total = sum(c for c, _ in per.values()), sum(n for _, n in per.values())
    out = {k: {"correct": c, "count": n, "accuracy": c / n} for k, (c, n) in sorted(per.items())}
    out["all"] = {"correct": total[0], "count": total[1], "accuracy": total[0] / max(total[1], 1)}
    return out


def load_eval_dir(eval_dir):
    by_image = {}
    with open(os.path.join(eval_dir, "answers.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            by_image.setdefault(r["image"], []).append((r["prompt"], r["answer"]))
    names = sorted(by_image)
    return [os.path.join(eval_dir, n) for n in names], [by_image[n] for n in names]


# ------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=22.0, help="wall-clock training budget")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is much faster than 2 on a loaded 2-core machine)")
    ap.add_argument("--train-count", type=int, default=10000, help="training scenes: seeds [0, N)")
    ap.add_argument("--batch", type=int, default=32, help="images per step (2 prompts each)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--aux-weight", type=float, default=1.0,
                    help="weight of the auxiliary per-column (shape, color) loss on the vision features")
    ap.add_argument("--bf16", action="store_true", help="store the weights as bf16")
    ap.add_argument("--eval-dir", default="", help="make_scenes.py output to evaluate on")
    ap.add_argument("--eval-seed", type=int, default=900000)
    ap.add_argument("--eval-count", type=int, default=200)
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--checkpoint", default="/tmp/scene_ckpt.pt", help="torch training checkpoint (not shipped)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    ckpt = args.checkpoint
    S = VISION_CONFIG["image_size"]

    if not args.eval_only:
        t0 = time.time()
        merges = scene_vocab.learn_merges(corpus_texts())
        tok = scene_vocab.Tokenizer.build(merges)
        print(f"tokenizer: {len(merges)} merges, {len(tok)} ids", flush=True)
        print("rendering training scenes ...", flush=True)
        cache = f"/tmp/scene_train_cache_{args.train_count}_{S}.npz"
        if os.path.exists(cache):  # rendering is deterministic; the cache only saves time
            z = np.load(cache, allow_pickle=False)
            imgs, qas = z["imgs"], json.loads(str(z["qas"]))
        else:
            imgs, qas = make_dataset(list(range(args.train_count)), S)
            np.savez(cache, imgs=imgs, qas=json.dumps(qas))
        samples = encode_samples(tok, qas)
        labels = aux_labels(qas)
        print(f"data ready in {time.time() - t0:.0f} s", flush=True)
        model = SceneVLM(len(tok))
        nparams = sum(p.numel() for p in model.parameters())
        print(f"params: {nparams}", flush=True)
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
        pre = tok.encode_prompt(scenes.PROMPT_DESCRIBE)
        pre_ids = torch.tensor(pre[:pre.index(-200)])
        pad = tok.special_id("<|endoftext|>")
        budget = args.minutes * 60
        start = time.time()
        step, ema, skipped = 0, None, 0
        order = rng.permutation(len(imgs))
        pos = 0
        model.train()
        while True:
            el = time.time() - start
            if el >= budget:
                break
            frac = el / budget
            lr = args.lr * min(1.0, (step + 1) / 60) * (0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * frac)))
            for g in opt.param_groups:
                g["lr"] = lr
            if pos + args.batch > len(order):
                order, pos = rng.permutation(len(imgs)), 0
            ids = order[pos:pos + args.batch]
            pos += args.batch
            tails, tmask, idx = make_batch(samples, ids, rng, pad)
            torch.backends.mkldnn.enabled = True
            logits, aux = model.forward_batch(pre_ids, to_tensor(imgs[ids]), idx, tails)
            lm_loss = F.cross_entropy(logits[tmask], tails[tmask])
            aux_loss = F.cross_entropy(aux.reshape(-1, AUX_CLASSES), torch.from_numpy(labels[ids]).reshape(-1))
            loss = lm_loss + args.aux_weight * aux_loss
            opt.zero_grad(set_to_none=True)
            # Debian's torch 1.13 oneDNN conv backward returns nondeterministic garbage gradients
            # (norms 1e3..1e7, sometimes inf) for these shapes; the native backward is exact.
            torch.backends.mkldnn.enabled = False
            loss.backward()
            torch.backends.mkldnn.enabled = True
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            step += 1
            if not (torch.isfinite(loss) and torch.isfinite(gnorm)):
                skipped += 1  # rare non-finite backward (torch 1.13 CPU): drop the step
                print(f"step {step}: non-finite loss/grad, skipped ({skipped} so far)", flush=True)
                continue
            opt.step()
            ema = float(lm_loss) if ema is None else 0.98 * ema + 0.02 * float(lm_loss)
            if step % 25 == 0 or step <= 3:
                print(f"step {step} t={el:.0f}s lr={lr:.2e} lm={float(lm_loss):.4f} aux={float(aux_loss):.4f} lm_ema={ema:.4f}", flush=True)
            if step % 300 == 0:
                torch.save({"model": model.state_dict(), "merges": merges}, ckpt)
        train_s = time.time() - start
        torch.save({"model": model.state_dict(), "merges": merges}, ckpt)
        print(f"trained {step} steps in {train_s:.0f} s, final loss ema {ema:.4f}", flush=True)
        meta = {"seed": args.seed, "train_seconds": round(train_s), "steps": step, "batch_images": args.batch,
                "train_scene_seeds": [0, args.train_count], "final_loss_ema": ema, "params": nparams,
                "threads": args.threads, "lr": args.lr, "aux_weight": args.aux_weight, "skipped_steps": skipped}
    else:
        state = torch.load(ckpt)
        tok = scene_vocab.Tokenizer.build(state["merges"])
        model = SceneVLM(len(tok))
        model.load_state_dict(state["model"])
        meta_path = os.path.join(args.out, "training_meta.json")
        meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}

    model.eval()
    write_folder(args.out, model, tok, args.bf16, meta)
    # tokenizer round trip from the written files
    tok2 = scene_vocab.Tokenizer.load(args.out)
    assert tok2.encode_prompt(scenes.PROMPT_DESCRIBE) == tok.encode_prompt(scenes.PROMPT_DESCRIBE)

    eval_dir = args.eval_dir
    if not eval_dir:
        eval_dir = f"/tmp/scene_eval_{args.eval_seed}_{args.eval_count}"
        os.system(f"{sys.executable} {os.path.join(HERE, 'make_scenes.py')} --seed {args.eval_seed} "
                  f"--count {args.eval_count} --out {eval_dir}")
    paths, qas = load_eval_dir(eval_dir)
    imgs = np.stack([preprocess(Image.open(p), S) for p in paths])
    t = time.time()
    res_t = eval_torch(model, tok, imgs, qas)
    sum_t = summarize(res_t)
    print("torch (training form, fp32):", json.dumps(sum_t), f"{time.time() - t:.0f} s", flush=True)
    t = time.time()
    res_r = eval_reference(args.out, paths, qas)
    sum_r = summarize(res_r)
    print("reference (exported fused folder, f64):", json.dumps(sum_r), f"{time.time() - t:.0f} s", flush=True)
    agree = sum(a[3] == b[3] for a, b in zip(res_t, res_r)) / len(res_t)
    print(f"torch vs reference identical outputs: {agree:.4f}")
    for i, q, a, got in res_r:
        if got.strip() != a:
            print(f"  MISS {os.path.basename(paths[i])} | {q} | want {a!r} | got {got!r}")
    meta.update({"eval_dir": eval_dir, "eval_seed": args.eval_seed, "eval_count": args.eval_count,
                 "eval_torch": sum_t, "eval_reference": sum_r, "torch_reference_agreement": agree})
    with open(os.path.join(args.out, "training_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
