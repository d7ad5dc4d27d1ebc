#!/usr/bin/python3
"""PyTorch CPU baseline for the FastViTHD vision encoder (fused form, as checkpoints hold it).

  bench/pytorch_vision.py [--model DIR] [--seed S] [--threads 2] [--runs 3] [--channels-last]
                          [--dtype fp32|bf16] [--bf16] [--image-size S] [--save-features OUT.safetensors]

--model DIR: a model folder (config.json + model.safetensors or a sharded index); only the vision
tensors are read. Without it the weights are tools/make_synthetic_checkpoint.py's vision tensors for
--seed (same generator, rounded to bf16), i.e. identical to the synthetic folder written with that seed.
Runs --warmup (1) + --runs timed forwards of one image (uniform [0,1) pixels, seed 7) and prints JSON:
median wall seconds, process CPU seconds (stabler when the machine is shared), GFLOP/s (2 × MACs of spec §1.10), and the per-part median breakdown (stem, network{j},
conv_exp). Weights are converted to fp32 (bf16 values are exact in fp32).

--dtype bf16: the timed number is PyTorch's bf16 (oneDNN). Two modes are timed, each under
torch.inference_mode + no_grad: "bf16 weights" (model.to(torch.bfloat16), input bf16) and "bf16 autocast"
(fp32 weights, torch.autocast('cpu', dtype=torch.bfloat16)); the faster median is the result
("primary" / "bf16_mode" in the JSON). Each is checked against one untimed fp32 forward:
rel_err_vs_fp32 = max|bf16 - fp32| / max|fp32|. A subprocess runs one bf16 conv with ONEDNN_VERBOSE=1
to report the oneDNN ISA and the conv implementation it picks. --bf16 (older option): time fp32 and
then both bf16 modes (primary stays fp32).
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

try:
    import numpy as np
except ImportError:  # ctest: exit code 77 = skipped
    if __name__ == "__main__":
        print("SKIP: numpy is not installed for", sys.executable)
        sys.exit(77)
    raise

try:
    import torch
except ImportError:
    print("SKIP: torch is not installed for", sys.executable)
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
import fastvithd_ref as ref  # noqa: E402
from safetensors_io import bf16_bits_to_float32, float32_to_bf16_bits, read_safetensors  # noqa: E402

PREFIX = ref.PREFIX


def load_folder(model_dir):
    """(vision_config, fused vision tensors without prefix) from a model folder."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    vcfg = config.get("vision_config", {})
    keep = lambda n: n.startswith(PREFIX)  # noqa: E731
    index = os.path.join(model_dir, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    for fname in files:
        tensors.update(read_safetensors(os.path.join(model_dir, fname), names=keep))
    return vcfg, {k[len(PREFIX):]: v for k, v in tensors.items()}


def synthetic(seed, vcfg):
    import make_synthetic_checkpoint as synth
    cfg = dict(synth.VISION_DEFAULTS)
    cfg.update(vcfg)
    raw = synth.vision_tensors(np.random.default_rng([seed, 1]), cfg)  # same rng as the tool's folder
    out = {}
    for k, v in raw.items():
        if v.dtype.kind == "f":
            v = bf16_bits_to_float32(float32_to_bf16_bits(v))
        out[k[len(PREFIX):]] = v
    return out


def part_macs(cfg):
    """MACs per part (spec §1.10 rules: convs, linears, QK^T and AV; element-wise ops not counted)."""
    dims = cfg["embed_dims"]
    s = cfg["image_size"] // 2
    macs = {"stem": 0}
    e0 = dims[0]
    macs["stem"] += e0 * 3 * 9 * s * s
    s //= 2
    macs["stem"] += e0 * 9 * s * s + e0 * e0 * s * s
    j = 0
    for i, depth in enumerate(cfg["layers"]):
        c = dims[i]
        hid = int(c * cfg["mlp_ratios"][i])
        n = s * s
        if cfg["pos_emb_kernel_sizes"][i]:
            macs[f"network{j}"] = c * cfg["pos_emb_kernel_sizes"][i] ** 2 * n
            j += 1
        ffn = c * 49 * n + 2 * c * hid * n
        if cfg["token_mixers"][i] == "repmixer":
            block = c * cfg["repmixer_kernel_size"] ** 2 * n + ffn
        else:
            block = 4 * c * c * n + 2 * n * n * c + ffn
        macs[f"network{j}"] = depth * block
        j += 1
        if i + 1 < len(cfg["layers"]):
            co = dims[i + 1]
            s //= cfg["down_stride"]
            macs[f"network{j}"] = co * cfg["down_patch_size"] ** 2 * s * s + co * co * s * s
            j += 1
    cx = ref.conv_exp_channels(cfg)
    r = int(cx * cfg["se_reduction_ratio"])
    macs["conv_exp"] = cx * 9 * s * s + 2 * cx * r
    return macs


def timed_forward(model, x):
    """One forward with per-part wall times (seconds)."""
    times = {}
    with torch.no_grad():
        c0 = time.process_time()
        t0 = time.perf_counter()
        y = model.patch_embed(x)
        t1 = time.perf_counter()
        times["stem"] = t1 - t0
        for j, m in enumerate(model.network):
            y = m(y)
            t2 = time.perf_counter()
            times[f"network{j}"] = t2 - t1
            t1 = t2
        y = model.conv_exp(y)
        t2 = time.perf_counter()
        times["conv_exp"] = t2 - t1
        times["total"] = t2 - t0
        times["cpu"] = time.process_time() - c0
    b, c, h, w = y.shape
    return y.reshape(b, c, h * w).transpose(1, 2), times


def no_grad_ctx():
    """inference_mode (torch >= 1.9) inside no_grad."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.no_grad())
    if hasattr(torch, "inference_mode"):
        stack.enter_context(torch.inference_mode())
    return stack


def bench(model, x, runs, macs, label, autocast=False, warmup=1, inference=False):
    def once():
        with no_grad_ctx() if inference else contextlib.nullcontext():
            if autocast:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return timed_forward(model, x)
            return timed_forward(model, x)

    for _ in range(max(1, warmup)):  # first call creates oneDNN primitives (seconds)
        feats, _ = once()
    all_times = [once()[1] for _ in range(runs)]
    parts = {k: statistics.median(t[k] for t in all_times) for k in all_times[0]}
    total = [t["total"] for t in all_times]
    med = statistics.median(total)
    gmac = sum(macs.values()) / 1e9
    res = {
        "label": label,
        "median_s": round(med, 4),
        "runs_s": [round(t, 4) for t in total],
        "cpu_s_median": round(statistics.median(t["cpu"] for t in all_times), 3),
        "gflop": round(2 * gmac, 2),
        "gflops_per_s": round(2 * gmac / med, 2),
        "parts_median_s": {k: round(v, 4) for k, v in parts.items() if k not in ("total", "cpu")},
        "parts_gflops_per_s": {k: round(2 * macs[k] / 1e9 / parts[k], 2) for k in macs if parts[k] > 0},
        "features_std": float(feats.float().std()),
        "features_finite": bool(torch.isfinite(feats.float()).all()),
        "features_dtype": str(feats.dtype).replace("torch.", ""),
    }
    print(f"# {label}: median {med:.3f} s over {runs} runs ({2 * gmac / med:.1f} GFLOP/s)", file=sys.stderr)
    return res, feats


_PROBE = """
import torch
torch.set_num_threads(1)
conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(torch.bfloat16)
with torch.no_grad():
    conv(torch.rand(1, 64, 32, 32).to(torch.bfloat16))
"""


def onednn_info():
    """oneDNN version, ISA and bf16 conv implementation, from ONEDNN_VERBOSE=1 on one bf16 3x3 conv."""
    env = dict(os.environ, ONEDNN_VERBOSE="1", DNNL_VERBOSE="1", OMP_NUM_THREADS="1")
    info = {"mkldnn_available": bool(torch.backends.mkldnn.is_available())}
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                             timeout=120).stdout
    except (OSError, subprocess.SubprocessError) as e:
        info["onednn_probe_error"] = str(e)
        return info
    for line in out.splitlines():
        f = line.split(",")
        if line.startswith(("onednn_verbose,info,cpu,isa:", "dnnl_verbose,info,cpu,isa:")):
            info["onednn_isa_line"] = line
            info["onednn_isa"] = line.split("isa:", 1)[1]
        elif len(f) > 2 and f[1] == "info" and f[2].startswith("oneDNN v"):
            info["onednn_version"] = f[2].split()[1]  # "oneDNN v2.6.3 (commit N/A)"
        elif len(f) > 5 and f[1] == "exec" and f[3] == "convolution" and "onednn_conv_impl" not in info:
            info["onednn_conv_impl"] = f[4]  # e.g. jit_bf16:avx512_core_bf16
    return info


def bf16_modes(model, x, ref_feats, args, macs):
    """Times "bf16 autocast" (fp32 weights) then "bf16 weights" (converts model in place)."""
    results = []
    for label in ("bf16 autocast", "bf16 weights"):
        try:
            if label == "bf16 autocast":
                res, f = bench(model, x, args.runs, macs, label, autocast=True, warmup=args.warmup, inference=True)
            else:
                model = model.to(torch.bfloat16)
                res, f = bench(model, x.to(torch.bfloat16), args.runs, macs, label, warmup=args.warmup,
                               inference=True)
            d = (f.float() - ref_feats.float()).abs().max()
            res["max_abs_diff_vs_fp32"] = float(d)
            res["rel_err_vs_fp32"] = float(d / ref_feats.float().abs().max())
            print(f"# {label}: output {res['features_dtype']}, max|err|/max|ref| vs fp32 = "
                  f"{res['rel_err_vs_fp32']:.3e}", file=sys.stderr)
            results.append(res)
        except RuntimeError as e:  # op not implemented for bf16 on this build
            results.append({"label": label, "error": str(e).splitlines()[0]})
            print(f"# {label}: error {results[-1]['error']}", file=sys.stderr)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model folder; default: synthetic weights")
    ap.add_argument("--seed", type=int, default=0, help="synthetic weights seed (as make_synthetic_checkpoint --seed)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--image-size", type=int, help="override vision_config.image_size")
    ap.add_argument("--channels-last", action="store_true", help="also time NHWC memory format")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                    help="precision of the reported number; bf16: faster of bf16 weights / autocast")
    ap.add_argument("--bf16", action="store_true", help="also time bf16 autocast and bf16 weights after fp32")
    ap.add_argument("--save-features", help="write fp32 image_features [1,N,C] here (safetensors)")
    ap.add_argument("--json", help="also write the JSON result here")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 unless the fp32 features are finite with std > 0.05 (ctest)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.model:
        vcfg, weights = load_folder(args.model)
    else:
        vcfg, weights = {}, synthetic(args.seed, {})
    if args.image_size:
        vcfg = dict(vcfg, image_size=args.image_size)
    cfg = ref.resolve_config(vcfg)
    model = ref.load_weights(ref.build(vcfg, fused=True, dtype=torch.float32, with_head="head.proj" in weights),
                             weights)
    load_s = time.perf_counter() - t0
    s = cfg["image_size"]
    x = torch.from_numpy(np.random.default_rng(7).random((1, 3, s, s), dtype=np.float32))
    macs = part_macs(cfg)

    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "image_size": s,
        "weights": args.model or f"synthetic seed {args.seed} (bf16-rounded)",
        "load_s": round(load_s, 2),
        "gmac": round(sum(macs.values()) / 1e9, 2),
        "dtype": args.dtype,
        "mkldnn_available": bool(torch.backends.mkldnn.is_available()),
        "loadavg_before": [round(v, 2) for v in os.getloadavg()],
        "primary": 0,
        "results": [],
    }
    print(f"# torch {torch.__version__}, mkldnn available: {result['mkldnn_available']}", file=sys.stderr)
    if args.dtype == "bf16" or args.bf16:
        result.update(onednn_info())
        print(f"# oneDNN {result.get('onednn_version', '?')}: {result.get('onednn_isa_line', 'no ISA line')}; "
              f"bf16 conv impl: {result.get('onednn_conv_impl', '?')}", file=sys.stderr)
    if args.dtype == "bf16":  # fp32 only as the accuracy reference: one untimed forward
        with no_grad_ctx():
            feats = timed_forward(model, x)[0].clone()
    else:
        res, feats = bench(model, x, args.runs, macs, "fp32", warmup=args.warmup)
        result["results"].append(res)
    if args.save_features:
        from safetensors_io import write_safetensors
        write_safetensors(args.save_features, {"pixel_values": x.numpy(), "image_features": feats.numpy()},
                          {"weights": result["weights"]})
    if args.channels_last:
        cl = model.to(memory_format=torch.channels_last)
        res, _ = bench(cl, x.to(memory_format=torch.channels_last), args.runs, macs, "fp32 channels_last",
                       warmup=args.warmup)
        result["results"].append(res)
        model = cl.to(memory_format=torch.contiguous_format)
    if args.dtype == "bf16" or args.bf16:
        result["results"] += bf16_modes(model, x, feats, args, macs)
    if args.dtype == "bf16":
        ok = [i for i, r in enumerate(result["results"]) if "median_s" in r]
        if not ok:
            print(json.dumps(result, indent=1))
            print("FAIL: no bf16 mode ran", file=sys.stderr)
            return 1
        result["primary"] = min(ok, key=lambda i: result["results"][i]["median_s"])
        best = result["results"][result["primary"]]
        result["bf16_mode"] = best["label"]
        print(f"# PyTorch bf16 result: {best['label']} (faster), median {best['median_s']:.3f} s, "
              f"rel err vs fp32 {best['rel_err_vs_fp32']:.3e}", file=sys.stderr)
    result["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    if args.check:
        first = result["results"][result["primary"]]
        ok = first["features_finite"] and first["features_std"] > 0.05
        print("PASS" if ok else "FAIL: features not finite or degenerate")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
