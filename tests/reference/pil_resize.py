#!/usr/bin/python3
"""Pillow reference data for tests/test_image.cpp (fastvlm/io/image.hpp).

  pil_resize.py --golden tests/data/images   small committed goldens (resize, preprocess, decode)
  pil_resize.py --live DIR                    larger cases, written at test time when Pillow exists

Each run writes DIR/manifest.json:
  resize:      [{input, outputs: [{width, height, file}]}]   Image.resize((w, h), Image.BICUBIC)
  preprocess:  [{input, image_size, expected}]               expand2square(black) + resize, uint8
  rescale_f32_bits: 256 ints                                  float32 bits of (v float64 * (1/255))
  decode:      [{file, width, height, rgb_hex, exact}]         Image.open(file).convert('RGB')
  jpeg (live): [{file, decoded, image_size, preprocessed}]     Pillow's decode and preprocessing of a JPEG
  sweep (live): {file, cases: [{in_w, in_h, out_w, out_h, input_offset, output_offset}]}  random sizes
Inputs are synthetic and seeded: gradients, hard edges, saturated areas (bicubic overshoot) and noise.
Needs Debian's /usr/bin/python3 (python3-pil, python3-numpy).
"""
import argparse
import io
import json
import pathlib
import struct
import zlib

import numpy as np
from PIL import Image


def synthetic(w, h, seed):
    """RGB uint8 test image: smooth ramps, a sinusoid, saturated blocks, a noise patch."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(w - 1, 1)
    g = 127.5 + 127.5 * np.sin(x * 0.37 + y * 0.21 + seed)
    b = 255 * y / max(h - 1, 1)
    img = np.stack([r, g, b], axis=-1)
    img[(x // 5 + y // 4) % 2 == 0] *= 0.5
    img[(x > w * 0.6) & (y < h * 0.3)] = (255, 255, 255)
    img[(x < w * 0.2) & (y > h * 0.7)] = (0, 0, 0)
    nx, ny = max(1, w // 4), max(1, h // 4)
    img[h // 3:h // 3 + ny, w // 3:w // 3 + nx] = rng.integers(0, 256, (min(ny, h - h // 3), min(nx, w - w // 3), 3))
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def expand2square(img, background=(0, 0, 0)):
    """ml-fastvlm llava/mm_utils.py expand2square (spec §6.1)."""
    width, height = img.size
    if width == height:
        return img
    if width > height:
        result = Image.new(img.mode, (width, width), background)
        result.paste(img, (0, (width - height) // 2))
        return result
    result = Image.new(img.mode, (height, height), background)
    result.paste(img, ((height - width) // 2, 0))
    return result


def save_png(img, path, level=9):
    img.save(path, format="PNG", compress_level=level)


def resize_cases(out, inputs, level):
    cases = []
    for name, img, sizes in inputs:
        save_png(img, out / f"{name}.png", level)
        outs = []
        for (w, h) in sizes:
            f = f"{name}_to_{w}x{h}.png"
            save_png(img.resize((w, h), Image.BICUBIC), out / f, level)
            outs.append({"width": w, "height": h, "file": f})
        cases.append({"input": f"{name}.png", "outputs": outs})
    return cases


def preprocess_cases(out, inputs, level):
    cases = []
    for name, img, size in inputs:
        save_png(img, out / f"{name}.png", level)
        f = f"{name}_pre{size}.png"
        save_png(expand2square(img).resize((size, size), Image.BICUBIC), out / f, level)
        cases.append({"input": f"{name}.png", "image_size": size, "expected": f})
    return cases


def rescale_bits():
    v = (np.arange(256, dtype=np.uint8).astype(np.float64) * (1 / 255)).astype(np.float32)
    return [int(b) for b in v.view(np.uint32)]


def png_bytes(w, h, bit_depth, color_type, rows, extra=b""):
    """A minimal PNG (filter 0 on every row) for bit depths Pillow cannot write."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
            + extra + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def decode_cases(out):
    """Small files in every supported format and mode, with PIL's convert('RGB') of each."""
    d = out / "formats"
    d.mkdir(parents=True, exist_ok=True)
    base = synthetic(7, 5, 11)
    arr = np.asarray(base)
    gray = base.convert("L")
    rgba = Image.fromarray(np.dstack([arr, (np.arange(35).reshape(5, 7) * 7).astype(np.uint8)]), "RGBA")
    la = Image.merge("LA", (gray, rgba.getchannel("A")))
    pal = base.quantize(colors=6)
    files = {}

    def put(name, img, fmt, **kw):
        b = io.BytesIO()
        img.save(b, format=fmt, **kw)
        files[name] = b.getvalue()

    put("rgb.png", base, "PNG")
    put("gray.png", gray, "PNG")
    put("gray_alpha.png", la, "PNG")
    put("rgba.png", rgba, "PNG")
    put("palette.png", pal, "PNG")
    put("palette_trns.png", pal, "PNG", transparency=2)
    put("bilevel.png", gray.convert("1"), "PNG")
    put("rgb.bmp", base, "BMP")
    put("gray.bmp", gray, "BMP")
    put("palette.bmp", pal, "BMP")
    put("rgb.tga", base, "TGA")
    put("rgb_rle.tga", base, "TGA", compression="tga_rle")
    put("rgba.tga", rgba, "TGA")
    put("palette.gif", pal, "GIF")
    put("rgb.ppm", base, "PPM")
    put("gray.pgm", gray, "PPM")
    put("rgb.jpg", base, "JPEG", quality=95)
    put("gray.jpg", gray, "JPEG", quality=95)
    put("progressive.jpg", base, "JPEG", quality=90, progressive=True)
    put("cmyk.jpg", base.convert("CMYK"), "JPEG", quality=95)  # Adobe-inverted CMYK
    # Bit depths / maxvals where PIL's mode is not plain 8-bit (docs/preprocessing.md).
    g16 = (np.arange(35, dtype=np.uint32).reshape(5, 7) * 1901 % 65536).astype(">u2")
    files["gray16.png"] = png_bytes(7, 5, 16, 0, [r.tobytes() for r in g16])
    rgb16 = (np.arange(105, dtype=np.uint32).reshape(5, 21) * 631 % 65536).astype(">u2")
    files["rgb16.png"] = png_bytes(7, 5, 16, 2, [r.tobytes() for r in rgb16])
    la16 = (np.arange(70, dtype=np.uint32).reshape(5, 14) * 947 % 65536).astype(">u2")
    files["gray_alpha16.png"] = png_bytes(7, 5, 16, 4, [r.tobytes() for r in la16])
    files["gray_maxval15.pgm"] = b"P5\n# comment\n7 5\n15\n" + bytes(i % 16 for i in range(35))
    files["rgb_maxval1000.ppm"] = b"P6 7 5 1000\n" + struct.pack(">105H", *[(i * 97) % 1001 for i in range(105)])
    files["rgb_maxval65535.ppm"] = b"P6\n7 5\n65535\n" + rgb16.tobytes()
    files["gray_maxval65535.pgm"] = b"P5\n7 5\n65535\n" + g16.tobytes()
    files["gray_maxval4000.pgm"] = b"P5\n7 5\n4000\n" + struct.pack(">35H", *[(i * 7) for i in range(35)])

    cases = []
    for name, data in files.items():
        (d / name).write_bytes(data)
        rgb = Image.open(io.BytesIO(data)).convert("RGB")
        cases.append({"file": f"formats/{name}", "width": rgb.size[0], "height": rgb.size[1],
                      "rgb_hex": np.asarray(rgb).tobytes().hex(),
                      # JPEG: stb_image's IDCT/upsampling is not libjpeg-turbo's; compared with a tolerance
                      "exact": not name.endswith(".jpg")})
    return cases


def jpeg_cases(out, inputs):
    """JPEG decoded by Pillow (libjpeg-turbo) and preprocessed; stb_image decodes JPEG differently."""
    cases = []
    for name, img, quality, subsampling, size in inputs:
        img.save(out / f"{name}.jpg", format="JPEG", quality=quality, subsampling=subsampling)
        dec = Image.open(out / f"{name}.jpg").convert("RGB")
        save_png(dec, out / f"{name}_pil.png", 1)
        save_png(expand2square(dec).resize((size, size), Image.BICUBIC), out / f"{name}_pre{size}.png", 1)
        cases.append({"file": f"{name}.jpg", "decoded": f"{name}_pil.png", "image_size": size,
                      "preprocessed": f"{name}_pre{size}.png"})
    return cases


def golden(out):
    a = synthetic(61, 47, 1)
    inputs = [
        ("a61x47", a, [(32, 32), (17, 23), (128, 96), (61, 100), (150, 47), (61, 20), (1, 1), (7, 130), (300, 5)]),
        ("px1x1", synthetic(1, 1, 2), [(5, 5), (1, 3), (4, 1)]),
        ("col1x9", synthetic(1, 9, 3), [(3, 40), (9, 9), (1, 4)]),
        ("row9x1", synthetic(9, 1, 4), [(40, 3), (2, 2)]),
        ("px2x3", synthetic(2, 3, 5), [(64, 64), (3, 2)]),
        ("wide240x6", synthetic(240, 6, 6), [(24, 24), (8, 8), (240, 1)]),
    ]
    manifest = {
        "resize": resize_cases(out, inputs, 9),
        "preprocess": preprocess_cases(out, [("pre_w31x18", synthetic(31, 18, 7), 40),
                                             ("pre_h18x31", synthetic(18, 31, 8), 24),
                                             ("pre_w30x17", synthetic(30, 17, 9), 30)], 9),
        "rescale_f32_bits": rescale_bits(),
        "decode": decode_cases(out),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def sweep_cases(out, count, seed):
    """Many small random images and sizes (ratios near 1, extreme up/down scales), in one raw file:
    sweep.bin holds each input then its Pillow output, RGB8 row-major."""
    rng = np.random.default_rng(seed)
    sides = [1, 2, 3, 4, 5, 7, 8, 13, 16, 31, 64, 99, 127, 255, 256, 333, 511, 1000, 1023, 1024, 1025, 2047]
    blob, cases = bytearray(), []
    for _ in range(count):
        iw, ow = int(rng.choice(sides)), int(rng.choice(sides))
        if rng.random() < 0.3:
            ow = max(1, iw + int(rng.integers(-3, 4)))
        ih, oh = int(rng.integers(1, 6)), int(rng.integers(1, 9))
        img = Image.fromarray(rng.integers(0, 256, (ih, iw, 3), dtype=np.uint8), "RGB")
        res = img.resize((ow, oh), Image.BICUBIC)
        cases.append({"in_w": iw, "in_h": ih, "out_w": ow, "out_h": oh, "input_offset": len(blob),
                      "output_offset": len(blob) + iw * ih * 3})
        blob += np.asarray(img).tobytes() + np.asarray(res).tobytes()
    (out / "sweep.bin").write_bytes(bytes(blob))
    return {"file": "sweep.bin", "cases": cases}


def live(out):
    inputs = [
        ("l1280x960", synthetic(1280, 960, 21), [(1024, 1024), (336, 336), (1000, 700)]),
        ("l336", synthetic(336, 336, 22), [(1024, 1024), (512, 300)]),
        ("l3000x200", synthetic(3000, 200, 23), [(1024, 1024), (64, 64)]),
        ("l77x1", synthetic(77, 1, 24), [(1024, 1024)]),
        ("l1x2", synthetic(1, 2, 25), [(1024, 1024)]),
    ]
    manifest = {
        "resize": resize_cases(out, inputs, 1),
        "preprocess": preprocess_cases(out, [("lpre800x533", synthetic(800, 533, 26), 1024),
                                             ("lpre401x1000", synthetic(401, 1000, 27), 1024)], 1),
        "rescale_f32_bits": rescale_bits(),
        "decode": [],
        "sweep": sweep_cases(out, 600, 30),
        "jpeg": jpeg_cases(out, [("ljpg640x480_q90_420", synthetic(640, 480, 28), 90, 2, 1024),
                                 ("ljpg500x700_q95_444", synthetic(500, 700, 29), 95, 0, 1024)]),
    }
    (out / "manifest.json").write_text(json.dumps(manifest) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--golden", type=pathlib.Path)
    g.add_argument("--live", type=pathlib.Path)
    a = p.parse_args()
    out = a.golden or a.live
    out.mkdir(parents=True, exist_ok=True)
    golden(out) if a.golden else live(out)


if __name__ == "__main__":
    main()
