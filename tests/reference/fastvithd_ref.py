#!/usr/bin/python3
"""Independent PyTorch reference of FastViTHD (spec fastvlm-model.md §1, §2, §7; model-dir.md vision_config).

Two forms of the same network, with the checkpoint's key names (no prefix):
  fused   : what FastVLM checkpoints hold (reparam_conv, lkb_reparam, ConvFFN BN unfused)
  unfused : training-time branches (rbr_conv/rbr_scale/rbr_skip, RepMixer mixer/norm/layer_scale,
            lkb_origin + small_conv, RepCPE pe)
reparameterize_state_dict() maps unfused -> fused tensors with the §1.4-1.8 formulas.

Usage as a script: validate against ../shared/golden (exit 0 = all checks pass, 77 = torch missing).
"""

import argparse
import json
import os
import sys

try:
    import numpy as np
except ImportError:  # ctest: exit code 77 = skipped
    if __name__ == "__main__":
        print("SKIP: numpy is not installed for", sys.executable)
        sys.exit(77)
    raise

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # the validation script reports a skip
    torch = None

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import read_safetensors  # noqa: E402

PREFIX = "model.vision_tower.vision_tower.model."

DEFAULT_VISION_CONFIG = {
    "image_size": 1024,
    "layers": [2, 12, 24, 4, 2],
    "embed_dims": [96, 192, 384, 768, 1536],
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


def resolve_config(vision_config=None):
    """Defaults (mobileclip_l_1024) overridden by every key present; validated."""
    cfg = dict(DEFAULT_VISION_CONFIG)
    cfg.update(vision_config or {})
    n = len(cfg["layers"])
    for key in ("embed_dims", "mlp_ratios", "token_mixers", "pos_emb_kernel_sizes"):
        if len(cfg[key]) != n:
            raise ValueError(f"vision_config.{key} has {len(cfg[key])} entries, layers has {n}")
    dims = cfg["embed_dims"]
    for i in range(n - 1):
        if dims[i + 1] % dims[i]:
            raise ValueError(f"embed_dims[{i + 1}]={dims[i + 1]} is not a multiple of embed_dims[{i}]={dims[i]}")
    for i, mixer in enumerate(cfg["token_mixers"]):
        if mixer not in ("repmixer", "attention"):
            raise ValueError(f"token_mixers[{i}] = {mixer!r}")
        if mixer == "attention" and dims[i] % cfg["head_dim"]:
            raise ValueError(f"embed_dims[{i}]={dims[i]} not divisible by head_dim {cfg['head_dim']}")
    return cfg


def conv_exp_channels(cfg):
    return int(cfg["embed_dims"][-1] * cfg["cls_ratio"])


def fused_specs(vision_config=None, projection_dim=768):
    """[(name, shape, dtype)] of the fused (checkpoint) state dict in module order, without torch.
    Equals fastvithd_manifest.txt for the default config (checked in validate())."""
    cfg = resolve_config(vision_config)
    dims = cfg["embed_dims"]
    specs = []

    def add(name, *shape, dtype="float32"):
        specs.append((name, tuple(shape), dtype))

    def conv(p, cout, cin_per_group, k):
        add(p + ".weight", cout, cin_per_group, k, k)
        add(p + ".bias", cout)

    def convffn(p, c, hidden):
        add(p + "conv.conv.weight", c, 1, 7, 7)
        for s in ("weight", "bias", "running_mean", "running_var"):
            add(p + "conv.bn." + s, c)
        add(p + "conv.bn.num_batches_tracked", dtype="int64")
        conv(p + "fc1", hidden, c, 1)
        conv(p + "fc2", c, hidden, 1)

    e0 = dims[0]
    conv("patch_embed.0.reparam_conv", e0, 3, 3)
    conv("patch_embed.1.reparam_conv", e0, 1, 3)
    conv("patch_embed.2.reparam_conv", e0, e0, 1)
    j = 0
    n = len(cfg["layers"])
    for i in range(n):
        c = dims[i]
        hidden = int(c * cfg["mlp_ratios"][i])
        if cfg["pos_emb_kernel_sizes"][i]:
            conv(f"network.{j}.reparam_conv", c, 1, cfg["pos_emb_kernel_sizes"][i])
            j += 1
        for b in range(cfg["layers"][i]):
            p = f"network.{j}.{b}."
            if cfg["token_mixers"][i] == "repmixer":
                add(p + "layer_scale", c, 1, 1)
                conv(p + "token_mixer.reparam_conv", c, 1, cfg["repmixer_kernel_size"])
            else:
                add(p + "layer_scale_1", c, 1, 1)
                add(p + "layer_scale_2", c, 1, 1)
                add(p + "norm.weight", c)
                add(p + "norm.bias", c)
                add(p + "token_mixer.qkv.weight", 3 * c, c)
                add(p + "token_mixer.proj.weight", c, c)
                add(p + "token_mixer.proj.bias", c)
            convffn(p + "convffn.", c, hidden)
        j += 1
        if i + 1 < n:
            conv(f"network.{j}.proj.0.lkb_reparam", dims[i + 1], 1, cfg["down_patch_size"])
            conv(f"network.{j}.proj.1.reparam_conv", dims[i + 1], dims[i + 1], 1)
            j += 1
    cx = conv_exp_channels(cfg)
    r = int(cx * cfg["se_reduction_ratio"])
    conv("conv_exp.se.reduce", r, cx, 1)
    conv("conv_exp.se.expand", cx, r, 1)
    conv("conv_exp.reparam_conv", cx, 1, 3)
    if projection_dim:
        add("head.proj", cx, projection_dim)
    return specs


if torch is not None:

    def _bn(c, eps):
        return nn.BatchNorm2d(c, eps=eps)

    class ConvBN(nn.Module):
        """conv (no bias) -> BN: keys conv.weight, bn.*"""

        def __init__(self, cin, cout, k, stride, groups, eps):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
            self.bn = _bn(cout, eps)

        def forward(self, x):
            return self.bn(self.conv(x))

    class SE(nn.Module):
        """s = sigmoid(expand(relu(reduce(mean_hw(x))))); out = x * s (true global mean)."""

        def __init__(self, c, ratio):
            super().__init__()
            hidden = int(c * ratio)
            self.reduce = nn.Conv2d(c, hidden, 1)
            self.expand = nn.Conv2d(hidden, c, 1)

        def forward(self, x):
            s = x.mean(dim=(2, 3), keepdim=True)
            s = torch.sigmoid(self.expand(F.relu(self.reduce(s))))
            return x * s

    class MobileOne(nn.Module):
        """act(SE(conv)) fused; unfused = sum of skip BN, conv-BN branches, 1x1 scale conv-BN."""

        def __init__(self, cin, cout, k, stride, groups, fused, eps, act=True, se_ratio=None,
                     conv_branches=1, scale_branch=True):
            super().__init__()
            self.cin, self.cout, self.k, self.stride, self.groups = cin, cout, k, stride, groups
            self.act = act
            if se_ratio is not None:
                self.se = SE(cout, se_ratio)
            else:
                self.se = None
            if fused:
                self.reparam_conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=True)
            else:
                self.reparam_conv = None
                self.rbr_skip = _bn(cin, eps) if (cin == cout and stride == 1) else None
                self.rbr_conv = (nn.ModuleList([ConvBN(cin, cout, k, stride, groups, eps)
                                                for _ in range(conv_branches)])
                                 if conv_branches > 0 else None)
                self.rbr_scale = ConvBN(cin, cout, 1, stride, groups, eps) if (k > 1 and scale_branch) else None

        def forward(self, x):
            if self.reparam_conv is not None:
                y = self.reparam_conv(x)
            else:
                y = 0
                if self.rbr_skip is not None:
                    y = y + self.rbr_skip(x)
                if self.rbr_scale is not None:
                    y = y + self.rbr_scale(x)
                if self.rbr_conv is not None:
                    for b in self.rbr_conv:
                        y = y + b(x)
            if self.se is not None:
                y = self.se(y)
            return F.gelu(y) if self.act else y

    class LargeKernel(nn.Module):
        """GELU(conv7x7 s2 grouped); unfused = lkb_origin (7x7 conv-BN) + small_conv (3x3 conv-BN)."""

        def __init__(self, cin, cout, k, stride, fused, eps, small=3):
            super().__init__()
            if fused:
                self.lkb_reparam = nn.Conv2d(cin, cout, k, stride, k // 2, groups=cin, bias=True)
            else:
                self.lkb_reparam = None
                self.lkb_origin = ConvBN(cin, cout, k, stride, cin, eps)
                self.small_conv = ConvBN(cin, cout, small, stride, cin, eps)

        def forward(self, x):
            if self.lkb_reparam is not None:
                y = self.lkb_reparam(x)
            else:
                y = self.lkb_origin(x) + self.small_conv(x)
            return F.gelu(y)

    class PatchEmbed(nn.Module):
        def __init__(self, cin, cout, k, stride, fused, eps):
            super().__init__()
            self.proj = nn.Sequential(LargeKernel(cin, cout, k, stride, fused, eps),
                                      MobileOne(cout, cout, 1, 1, 1, fused, eps))

        def forward(self, x):
            return self.proj(x)

    class RepMixer(nn.Module):
        """fused: dwconv(x) (identity folded in); unfused: x + ls*(mixer(x) - norm(x))."""

        def __init__(self, c, k, fused, eps):
            super().__init__()
            if fused:
                self.reparam_conv = nn.Conv2d(c, c, k, 1, k // 2, groups=c, bias=True)
            else:
                self.reparam_conv = None
                self.layer_scale = nn.Parameter(torch.ones(c, 1, 1))
                self.norm = MobileOne(c, c, k, 1, c, False, eps, act=False, conv_branches=0, scale_branch=False)
                self.mixer = MobileOne(c, c, k, 1, c, False, eps, act=False)

        def forward(self, x):
            if self.reparam_conv is not None:
                return self.reparam_conv(x)
            return x + self.layer_scale * (self.mixer(x) - self.norm(x))

    class ConvFFN(nn.Module):
        """dw7x7 (no bias) -> BN -> fc1 1x1 -> GELU -> fc2 1x1."""

        def __init__(self, c, hidden, eps):
            super().__init__()
            self.conv = nn.Sequential()
            self.conv.add_module("conv", nn.Conv2d(c, c, 7, 1, 3, groups=c, bias=False))
            self.conv.add_module("bn", _bn(c, eps))
            self.fc1 = nn.Conv2d(c, hidden, 1)
            self.fc2 = nn.Conv2d(hidden, c, 1)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(self.conv(x))))

    class RepMixerBlock(nn.Module):
        def __init__(self, c, ratio, k, fused, eps):
            super().__init__()
            self.layer_scale = nn.Parameter(torch.ones(c, 1, 1))
            self.token_mixer = RepMixer(c, k, fused, eps)
            self.convffn = ConvFFN(c, int(c * ratio), eps)

        def forward(self, x):
            x = self.token_mixer(x)
            return x + self.layer_scale * self.convffn(x)

    class LayerNormChannel(nn.Module):
        def __init__(self, c, eps):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(c))
            self.bias = nn.Parameter(torch.zeros(c))
            self.eps = eps

        def forward(self, x):
            u = x.mean(1, keepdim=True)
            s = ((x - u) ** 2).mean(1, keepdim=True)
            y = (x - u) / torch.sqrt(s + self.eps)
            return self.weight[:, None, None] * y + self.bias[:, None, None]

    class MHSA(nn.Module):
        def __init__(self, c, head_dim):
            super().__init__()
            self.heads = c // head_dim
            self.head_dim = head_dim
            self.qkv = nn.Linear(c, 3 * c, bias=False)
            self.proj = nn.Linear(c, c, bias=True)

        def forward(self, x):
            b, c, h, w = x.shape
            n = h * w
            t = x.reshape(b, c, n).transpose(1, 2)  # token n = row*W + col
            qkv = self.qkv(t).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            a = torch.softmax((q * self.head_dim ** -0.5) @ k.transpose(-2, -1), dim=-1)
            o = (a @ v).transpose(1, 2).reshape(b, n, c)
            return self.proj(o).transpose(1, 2).reshape(b, c, h, w)

    class AttentionBlock(nn.Module):
        def __init__(self, c, ratio, head_dim, eps_bn, eps_ln):
            super().__init__()
            self.layer_scale_1 = nn.Parameter(torch.ones(c, 1, 1))
            self.layer_scale_2 = nn.Parameter(torch.ones(c, 1, 1))
            self.norm = LayerNormChannel(c, eps_ln)
            self.token_mixer = MHSA(c, head_dim)
            self.convffn = ConvFFN(c, int(c * ratio), eps_bn)

        def forward(self, x):
            x = x + self.layer_scale_1 * self.token_mixer(self.norm(x))
            return x + self.layer_scale_2 * self.convffn(x)

    class RepCPE(nn.Module):
        """fused: dwconv_kxk(x) (identity folded in); unfused: x + pe(x)."""

        def __init__(self, c, k, fused):
            super().__init__()
            if fused:
                self.reparam_conv = nn.Conv2d(c, c, k, 1, k // 2, groups=c, bias=True)
            else:
                self.reparam_conv = None
                self.pe = nn.Conv2d(c, c, k, 1, k // 2, groups=c, bias=True)

        def forward(self, x):
            if self.reparam_conv is not None:
                return self.reparam_conv(x)
            return x + self.pe(x)

    class GlobalPool2D(nn.Module):
        def __init__(self, c, out):
            super().__init__()
            self.proj = nn.Parameter(torch.zeros(c, out))

        def forward(self, x):
            return x.mean(dim=(2, 3)) @ self.proj

    class FastViTHD(nn.Module):
        """FastViT as FastVLM's MCi('fastvithd') builds it, any vision_config."""

        def __init__(self, vision_config=None, fused=True, projection_dim=768, with_head=True):
            super().__init__()
            cfg = resolve_config(vision_config)
            self.cfg = cfg
            self.fused = fused
            bn, ln = cfg["batch_norm_eps"], cfg["layer_norm_eps"]
            dims = cfg["embed_dims"]
            e0 = dims[0]
            self.patch_embed = nn.Sequential(
                MobileOne(3, e0, 3, 2, 1, fused, bn, scale_branch=False),
                MobileOne(e0, e0, 3, 2, e0, fused, bn, scale_branch=False),
                MobileOne(e0, e0, 1, 1, 1, fused, bn, scale_branch=False))
            net = []
            self.stage_index = []  # network index of stage i
            for i, depth in enumerate(cfg["layers"]):
                c = dims[i]
                if cfg["pos_emb_kernel_sizes"][i]:
                    net.append(RepCPE(c, cfg["pos_emb_kernel_sizes"][i], fused))
                if cfg["token_mixers"][i] == "repmixer":
                    blocks = [RepMixerBlock(c, cfg["mlp_ratios"][i], cfg["repmixer_kernel_size"], fused, bn)
                              for _ in range(depth)]
                else:
                    blocks = [AttentionBlock(c, cfg["mlp_ratios"][i], cfg["head_dim"], bn, ln)
                              for _ in range(depth)]
                self.stage_index.append(len(net))
                net.append(nn.Sequential(*blocks))
                if i + 1 < len(cfg["layers"]):
                    net.append(PatchEmbed(c, dims[i + 1], cfg["down_patch_size"], cfg["down_stride"], fused, bn))
            self.network = nn.ModuleList(net)
            cx = conv_exp_channels(cfg)
            self.conv_exp = MobileOne(dims[-1], cx, 3, 1, dims[-1], fused, bn,
                                      se_ratio=cfg["se_reduction_ratio"])
            self.head = GlobalPool2D(cx, projection_dim) if with_head else None
            self.eval()

        def forward(self, x, collect=False):
            """Returns image_features [B, N, C]; with collect=True also a dict of intermediates
            named like ../shared/golden/README.md (stem, network{j}, stage{i}, stage{i}.block{k}, conv_exp, ...)."""
            out = {}
            x = self.patch_embed(x)
            out["stem"] = x
            for j, m in enumerate(self.network):
                if j in self.stage_index:
                    i = self.stage_index.index(j)
                    for k, blk in enumerate(m):
                        x = blk(x)
                        out[f"stage{i}.block{k}"] = x
                    out[f"stage{i}"] = x
                else:
                    x = m(x)
                out[f"network{j}"] = x
            x = self.conv_exp(x)
            out["conv_exp"] = x
            out["image_embeddings"] = x
            b, c, h, w = x.shape
            feats = x.reshape(b, c, h * w).transpose(1, 2)
            out["image_features"] = feats
            if self.head is not None:
                out["head_logits"] = self.head(x)
            return (feats, out) if collect else feats

    def build(vision_config=None, fused=True, dtype=torch.float64, projection_dim=768, with_head=True):
        return FastViTHD(vision_config, fused, projection_dim, with_head).to(dtype)

    def load_weights(model, tensors, prefix="", strict=True):
        """Copy numpy/torch tensors into model. strict: names, order-insensitive set and shapes must match.
        head.proj may be absent (with_head=False) or of any projection width (the head is rebuilt)."""
        src = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if model.head is not None and "head.proj" in src:
            shape = tuple(np.shape(src["head.proj"]))
            if tuple(model.head.proj.shape) != shape:
                model.head = GlobalPool2D(shape[0], shape[1]).to(next(model.parameters()).dtype)
        sd = model.state_dict()
        missing = [k for k in sd if k not in src]
        extra = [k for k in src if k not in sd and not (k == "head.proj" and model.head is None)]
        if strict and (missing or extra):
            raise KeyError(f"weights mismatch: missing {missing[:5]} ({len(missing)}), unexpected {extra[:5]} ({len(extra)})")
        with torch.no_grad():
            for k, dst in sd.items():
                if k not in src:
                    continue
                v = torch.as_tensor(np.asarray(src[k]))
                if tuple(v.shape) != tuple(dst.shape):
                    raise ValueError(f"{k}: shape {tuple(v.shape)} != expected {tuple(dst.shape)}")
                dst.copy_(v.to(dst.dtype))
        return model

    def reparameterize(model):
        """Unfused FastViTHD module -> new fused module (same dtype) via reparameterize_state_dict()."""
        dtype = next(model.parameters()).dtype
        sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        fused = reparameterize_state_dict(sd, model.cfg, out_dtype=np.float64)
        proj = sd["head.proj"].shape[1] if "head.proj" in sd else 768
        return load_weights(build(model.cfg, True, dtype, proj, model.head is not None), fused)


# ---------------------------------------------------------------- reparameterization (numpy, float64)

def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _fuse_bn(weight, sd, bn, eps):
    """conv weight W, BN -> (W * g/s per out channel, beta - mean*g/s), s = sqrt(var+eps)."""
    t = _f64(sd[bn + ".weight"]) / np.sqrt(_f64(sd[bn + ".running_var"]) + eps)
    return _f64(weight) * t.reshape(-1, 1, 1, 1), _f64(sd[bn + ".bias"]) - _f64(sd[bn + ".running_mean"]) * t


def identity_kernel(c, groups, k):
    """[c, c/groups, k, k] with 1 at [i, i mod (c/groups), k//2, k//2]."""
    per = c // groups
    w = np.zeros((c, per, k, k))
    w[np.arange(c), np.arange(c) % per, k // 2, k // 2] = 1.0
    return w


def _pad_to(w, k):
    p = (k - w.shape[-1]) // 2
    return np.pad(w, ((0, 0), (0, 0), (p, p), (p, p)))


def fuse_mobileone(sd, p, cin, groups, k, eps):
    """Sum of present branches (§1.4). Returns (W, b)."""
    w, b = 0.0, 0.0
    j = 0
    while f"{p}rbr_conv.{j}.conv.weight" in sd:
        kw, kb = _fuse_bn(sd[f"{p}rbr_conv.{j}.conv.weight"], sd, f"{p}rbr_conv.{j}.bn", eps)
        w, b = w + kw, b + kb
        j += 1
    if f"{p}rbr_scale.conv.weight" in sd:
        kw, kb = _fuse_bn(sd[f"{p}rbr_scale.conv.weight"], sd, f"{p}rbr_scale.bn", eps)
        w, b = w + _pad_to(kw, k), b + kb
    if f"{p}rbr_skip.weight" in sd:
        kw, kb = _fuse_bn(identity_kernel(cin, groups, k), sd, f"{p}rbr_skip", eps)
        w, b = w + kw, b + kb
    return w, b


def reparameterize_state_dict(sd, vision_config=None, out_dtype=np.float32):
    """Unfused (training-form) tensors -> fused tensors, names in the fused model's order.
    Formulas: spec §1.4 (MobileOne), §1.5 (large kernel), §1.6 (RepMixer), §1.8 (RepCPE)."""
    cfg = resolve_config(vision_config)
    eps = cfg["batch_norm_eps"]
    dims = cfg["embed_dims"]
    fused = {}

    def put(name, value):
        arr = np.asarray(value)
        fused[name] = arr.astype(out_dtype) if arr.dtype.kind == "f" else arr.copy()

    def copy(prefix):
        for name, value in sd.items():
            if name.startswith(prefix):
                put(name, value)

    def mobileone(p, cin, groups, k):
        w, b = fuse_mobileone(sd, p, cin, groups, k, eps)
        put(p + "reparam_conv.weight", w)
        put(p + "reparam_conv.bias", b)

    e0 = dims[0]
    mobileone("patch_embed.0.", 3, 1, 3)
    mobileone("patch_embed.1.", e0, e0, 3)
    mobileone("patch_embed.2.", e0, 1, 1)
    j = 0
    n = len(cfg["layers"])
    for i in range(n):
        c = dims[i]
        kpe = cfg["pos_emb_kernel_sizes"][i]
        if kpe:
            put(f"network.{j}.reparam_conv.weight", identity_kernel(c, c, kpe) + _f64(sd[f"network.{j}.pe.weight"]))
            put(f"network.{j}.reparam_conv.bias", sd[f"network.{j}.pe.bias"])
            j += 1
        for blk in range(cfg["layers"][i]):
            p = f"network.{j}.{blk}."
            if cfg["token_mixers"][i] == "repmixer":
                k = cfg["repmixer_kernel_size"]
                put(p + "layer_scale", sd[p + "layer_scale"])
                wm, bm = fuse_mobileone(sd, p + "token_mixer.mixer.", c, c, k, eps)
                wn, bn = fuse_mobileone(sd, p + "token_mixer.norm.", c, c, k, eps)
                ls = _f64(sd[p + "token_mixer.layer_scale"])  # [C,1,1]
                put(p + "token_mixer.reparam_conv.weight", identity_kernel(c, c, k) + ls[:, None] * (wm - wn))
                put(p + "token_mixer.reparam_conv.bias", ls.reshape(-1) * (bm - bn))
                copy(p + "convffn.")
            else:
                for name in ("layer_scale_1", "layer_scale_2", "norm.weight", "norm.bias",
                             "token_mixer.qkv.weight", "token_mixer.proj.weight", "token_mixer.proj.bias"):
                    put(p + name, sd[p + name])
                copy(p + "convffn.")
        j += 1
        if i + 1 < n:
            p = f"network.{j}.proj."
            k = cfg["down_patch_size"]
            wl, bl = _fuse_bn(sd[p + "0.lkb_origin.conv.weight"], sd, p + "0.lkb_origin.bn", eps)
            ws, bs = _fuse_bn(sd[p + "0.small_conv.conv.weight"], sd, p + "0.small_conv.bn", eps)
            put(p + "0.lkb_reparam.weight", wl + _pad_to(ws, k))
            put(p + "0.lkb_reparam.bias", bl + bs)
            mobileone(p + "1.", dims[i + 1], 1, 1)
            j += 1
    copy("conv_exp.se.")
    mobileone("conv_exp.", dims[-1], dims[-1], 3)
    if "head.proj" in sd:
        put("head.proj", sd["head.proj"])
    return fused


# ---------------------------------------------------------------- manifests and validation

def read_manifest(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, shape, dtype = line.split()
            dims = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
            rows.append((name, dims, dtype))
    return rows


def model_manifest(model):
    return [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]


def _maxdiff(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def validate(golden_dir, tol=1e-6, verbose=True):
    """Check this reference against the golden data of the original implementation.
    Returns (ok, report dict)."""
    report = {}
    ok = True

    def log(msg):
        if verbose:
            print(msg)

    # 1. full-size manifests: same names, shapes, dtypes, order
    for fused, fname in ((True, "fastvithd_manifest.txt"), (False, "fastvithd_manifest_unfused.txt")):
        want = read_manifest(os.path.join(golden_dir, fname))
        got = model_manifest(FastViTHD(None, fused=fused))
        same = want == got
        report[f"manifest_{'fused' if fused else 'unfused'}"] = {"entries": len(got), "identical": same}
        log(f"manifest {fname}: {len(got)} entries, identical={same}")
        if not same:
            ok = False
            for a, b in zip(want, got):
                if a != b:
                    log(f"  first difference: golden {a} vs ours {b}")
                    break
        if fused:
            specs_same = fused_specs() == want
            report["fused_specs_equal_manifest"] = specs_same
            log(f"fused_specs() (torch-free, used by tools/make_synthetic_checkpoint.py) == manifest: {specs_same}")
            ok &= specs_same

    with open(os.path.join(golden_dir, "fastvithd_small_config.json")) as f:
        vcfg = json.load(f)["vision_config"]
    io = read_safetensors(os.path.join(golden_dir, "fastvithd_small_io.safetensors"))
    unf = read_safetensors(os.path.join(golden_dir, "fastvithd_small_weights.safetensors"))
    fus = read_safetensors(os.path.join(golden_dir, "fastvithd_small_weights_fused.safetensors"))
    px = torch.from_numpy(io["pixel_values"].astype(np.float64))
    scale = float(np.max(np.abs(io["image_features"])))

    # 2. our reparameterization of the golden unfused weights vs the original's fused weights
    ours = reparameterize_state_dict(unf, vcfg, out_dtype=np.float64)
    names_ok = list(ours) == list(fus)
    wdiff = {k: _maxdiff(ours[k], fus[k]) / max(1.0, float(np.max(np.abs(fus[k])))) for k in fus if k in ours}
    worst = max(wdiff, key=wdiff.get)
    report["reparam_weights"] = {"same_names_in_order": names_ok, "max_rel_diff": wdiff[worst], "worst": worst}
    log(f"reparameterize(golden unfused) vs golden fused: names/order identical={names_ok}, "
        f"max diff {wdiff[worst]:.3e} ({worst})")
    ok &= names_ok and wdiff[worst] < 1e-6

    # 3. forward passes in float64
    runs = {
        "unfused": (False, unf, "image_features"),
        "fused": (True, fus, "image_features_fused"),
        "reparam_ours": (True, ours, "image_features"),
    }
    with torch.no_grad():
        for label, (fused, weights, feat_key) in runs.items():
            model = load_weights(build(vcfg, fused=fused), weights)
            feats, inter = model(px, collect=True)
            diffs = {}
            for name, ref in io.items():
                if name in ("pixel_values", "image_features", "image_features_fused"):
                    continue
                diffs[name] = _maxdiff(inter[name].numpy(), ref)
            diffs["image_features"] = _maxdiff(feats.numpy(), io[feat_key])
            worst = max(diffs.values())
            report[label] = {"max_abs_diff": worst, "per_tensor": diffs, "features_ref": feat_key}
            log(f"forward {label} (float64) vs golden: max |diff| over {len(diffs)} tensors = {worst:.3e} "
                f"(image_features vs {feat_key}: {diffs['image_features']:.3e}, |max| {scale:.3f})")
            for name, d in diffs.items():
                log(f"    {name:16s} {d:.3e}")
            # intermediates come from the unfused original; fused weights were rounded to f32 -> ~3e-7
            ok &= worst < tol
    report["ok"] = bool(ok)
    return ok, report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--golden", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                     "..", "..", "..", "shared", "golden"))
    ap.add_argument("--tol", type=float, default=1e-6, help="max abs diff allowed on every intermediate")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args(argv)
    if torch is None:
        print("SKIP: torch is not installed for", sys.executable)
        return 77
    if not os.path.isdir(args.golden):
        print("SKIP: golden directory not found:", args.golden)
        return 77
    torch.set_num_threads(min(2, torch.get_num_threads()))
    ok, report = validate(args.golden, args.tol)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
