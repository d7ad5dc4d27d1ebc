#!/usr/bin/python3
"""Synthetic scenes with ground-truth answers (issue 5), deterministic from a seed.

  tools/make_scenes.py --seed S --count N --out DIR

Scene k (k = S .. S+N-1) is drawn from numpy.random.default_rng(k) alone, so a scene is identified by
its seed and any seed range can be regenerated bit-exactly (numpy + Pillow from Debian).

A scene: 1-3 shapes (SHAPES) in COLORS on a light plain / noisy / gradient / striped background.
The image is cut into three equal columns (left, center, right); each shape sits inside its own
column (no two shapes share a column), so "position" is the column of the shape's center.
Images are PNG or JPEG, 160-400 px wide, aspect ratio 0.6-1.6 (exercises pad-to-square + bicubic).

DIR/answers.jsonl, one object per line: {"image", "prompt", "answer"}:
  "Describe the image."          -> "A red circle on the left, a blue square in the center and a green
                                     triangle on the right."   (shapes ordered left to right)
  "How many shapes are there?"   -> "One." | "Two." | "Three."
  "What color is the <shape>?"   -> "Red."  (only for shapes that occur exactly once)
To add shapes or colors: extend SHAPES / COLORS (and draw_shape), regenerate, retrain.
"""
import argparse
import io
import json
import os

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle"]
COLORS = {  # name -> nominal RGB (jittered by +-18 per channel)
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 70, 215),
    "yellow": (235, 200, 25),
}
COLUMN_PHRASE = ["on the left", "in the center", "on the right"]
NUMBERS = ["One", "Two", "Three"]
PROMPT_DESCRIBE = "Describe the image."
PROMPT_COUNT = "How many shapes are there?"
PROMPT_COLOR = "What color is the {}?"


def describe(objs):
    """objs sorted by column: [(shape, color, column)] -> canonical sentence."""
    parts = [f"a {color} {shape} {COLUMN_PHRASE[col]}" for shape, color, col in objs]
    if len(parts) == 1:
        s = parts[0]
    else:
        s = ", ".join(parts[:-1]) + " and " + parts[-1]
    return s[0].upper() + s[1:] + "."


def qa_pairs(objs):
    """[(prompt, answer)] for one scene, fixed order: describe, count, colors in SHAPES order."""
    out = [(PROMPT_DESCRIBE, describe(objs)), (PROMPT_COUNT, NUMBERS[len(objs) - 1] + ".")]
    for shape in SHAPES:
        hits = [o for o in objs if o[0] == shape]
        if len(hits) == 1:
            out.append((PROMPT_COLOR.format(shape), hits[0][1].capitalize() + "."))
    return out


def background(rng, w, h):
    base = rng.integers(175, 250, size=3).astype(np.float64)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    kind = rng.integers(0, 4)
    if kind == 1:  # light noise
        img += rng.normal(0, 6, size=(h, w, 3))
    elif kind == 2:  # gradient
        d = rng.uniform(-25, 25, size=3)
        t = np.linspace(0, 1, w if rng.integers(0, 2) else h)
        g = t[None, :, None] if len(t) == w else t[:, None, None]
        img += g * d
    elif kind == 3:  # faint stripes
        period = int(rng.integers(6, 20))
        amp = rng.uniform(4, 10)
        yy = np.arange(h)[:, None, None]
        img += amp * ((yy // period) % 2)
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_shape(draw, shape, cx, cy, size, rgb):
    r = size / 2
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=rgb)
    else:
        raise ValueError(shape)


def render(seed):
    """-> (PIL RGB image, 'png'|'jpeg', jpeg quality, objs sorted left to right)."""
    rng = np.random.default_rng(seed)
    w = int(rng.integers(160, 401))
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))  # w / h
    h = int(np.clip(round(w / aspect), 120, 480))
    img = Image.fromarray(background(rng, w, h))
    draw = ImageDraw.Draw(img)
    n = int(rng.integers(1, 4))
    cols = sorted(rng.choice(3, size=n, replace=False).tolist())
    colw = w / 3
    objs = []
    for col in cols:
        shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
        color = list(COLORS)[int(rng.integers(0, len(COLORS)))]
        rgb = tuple(int(np.clip(c + rng.integers(-18, 19), 0, 255)) for c in COLORS[color])
        size = rng.uniform(0.45, 0.85) * min(colw, h * 0.8)
        margin = colw * 0.04
        lo, hi = col * colw + margin + size / 2, (col + 1) * colw - margin - size / 2
        cx = rng.uniform(lo, max(lo, hi))
        cy = rng.uniform(size / 2 + 2, h - size / 2 - 2)
        draw_shape(draw, shape, cx, cy, size, rgb)
        objs.append((shape, color, col))
    fmt = "jpeg" if rng.integers(0, 2) else "png"
    quality = int(rng.integers(80, 96))
    return img, fmt, quality, objs


def encode(img, fmt, quality):
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def file_name(seed, fmt):
    return f"scene_{seed:07d}." + ("jpg" if fmt == "jpeg" else "png")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, required=True, help="first scene seed")
    ap.add_argument("--count", type=int, required=True, help="number of scenes")
    ap.add_argument("--out", required=True, help="output folder (created)")
    args = ap.parse_args()
    if args.seed < 0 or args.count < 0:
        ap.error("--seed and --count must be >= 0")
    os.makedirs(args.out, exist_ok=True)
    lines = []
    for seed in range(args.seed, args.seed + args.count):
        img, fmt, quality, objs = render(seed)
        name = file_name(seed, fmt)
        with open(os.path.join(args.out, name), "wb") as f:
            f.write(encode(img, fmt, quality))
        for prompt, answer in qa_pairs(objs):
            lines.append(json.dumps({"image": name, "prompt": prompt, "answer": answer}))
    with open(os.path.join(args.out, "answers.jsonl"), "w") as f:
        f.write("".join(line + "\n" for line in lines))
    print(f"{args.count} scenes, {len(lines)} prompts -> {args.out}")


if __name__ == "__main__":
    main()
