#!/usr/bin/python3
"""Writes the generated seed inputs of the fuzz targets: OUT/<target>/<name> (each < 8 KB).

    /usr/bin/python3 tests/fuzz/make_corpus.py OUT

The binary seeds (safetensors files, images, frame streams) and the seeds derived from the test
fixtures (tests/data, models/fastvlm-scenes) are made here instead of being committed; hand-written
text seeds are committed in tests/fuzz/corpus/<target>/. tests/fuzz/run.sh merges both into a
writable corpus. Standard library only; deterministic output.
"""
import base64
import json
import os
import struct
import sys
import zlib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "tests", "data")
FORMATS = os.path.join(DATA, "images", "formats")
TINY_TOK = os.path.join(DATA, "tokenizer_tiny")
SCENES = os.path.join(ROOT, "models", "fastvlm-scenes")
MAX_SEED = 8 * 1024


def read(path):
    with open(path, "rb") as f:
        return f.read()


class Out:
    def __init__(self, root):
        self.root = root
        self.count = 0

    def put(self, target, name, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        if len(data) >= MAX_SEED:
            raise SystemExit(f"make_corpus.py: seed {target}/{name} is {len(data)} bytes (limit {MAX_SEED})")
        d = os.path.join(self.root, target)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        self.count += 1


# ---- safetensors ----------------------------------------------------------------------------------
def safetensors(tensors, metadata=None, align=True, header_override=None, tail=b""):
    """tensors: [(name, dtype, shape, raw bytes)] laid out in order."""
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    text = header_override if header_override is not None else json.dumps(header, separators=(",", ":"))
    text = text.encode() if isinstance(text, str) else text
    if align:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs) + tail


def gen_safetensors(out):
    f32 = struct.pack("<6f", 1.0, -2.0, 0.5, 3.0, 0.0, float("inf"))
    bf16 = struct.pack("<4H", 0x3F80, 0xBF80, 0x7FC0, 0x0001)
    i64 = struct.pack("<3q", 0, -1, 1 << 40)
    t = "safetensors"
    out.put(t, "valid_mixed", safetensors(
        [("model.embed_tokens.weight", "F32", [2, 3], f32), ("model.norm.weight", "BF16", [4], bf16),
         ("lm_head.weight", "F16", [2, 2], bf16), ("position_ids", "I64", [1, 3], i64),
         ("mask", "BOOL", [4], b"\x00\x01\x01\x00"), ("bytes", "U8", [2, 2], b"\x00\x7f\x80\xff"),
         ("i32", "I32", [1], struct.pack("<i", -7)), ("i16", "I16", [2], struct.pack("<2h", 1, -1)),
         ("i8", "I8", [2], b"\x80\x7f"), ("f64", "F64", [1], struct.pack("<d", 1e300)),
         ("empty", "F32", [0, 4], b""), ("scalar", "F32", [], struct.pack("<f", 2.5))],
        metadata={"format": "pt"}))
    out.put(t, "valid_unaligned", safetensors(
        [("a", "U8", [3], b"abc"), ("b", "F32", [2], struct.pack("<2f", 1, 2)), ("c", "BF16", [1], b"\x80\x3f")],
        align=False))
    out.put(t, "empty_header", safetensors([], header_override="{}"))
    out.put(t, "metadata_only", safetensors([], metadata={"format": "pt", "note": "x"}))
    out.put(t, "overlap", safetensors([], header_override=json.dumps(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}), tail=b"\x00" * 12))
    out.put(t, "past_end", safetensors([], header_override=json.dumps(
        {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}), tail=b"\x00" * 8))
    out.put(t, "bad_dtype", safetensors([], header_override=json.dumps(
        {"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}), tail=b"\x00"))
    out.put(t, "huge_shape", safetensors([], header_override=json.dumps(
        {"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})))
    out.put(t, "duplicate_key", safetensors([], header_override=
        '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
        tail=b"\x00"))
    out.put(t, "header_too_long", struct.pack("<Q", 1 << 40) + b"{}")
    out.put(t, "short", b"\x02\x00\x00")
    out.put(t, "gap_between", safetensors([], header_override=json.dumps(
        {"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
         "b": {"dtype": "U8", "shape": [2], "data_offsets": [6, 8]}}), tail=b"\x01" * 8))


# ---- images and frame streams -----------------------------------------------------------------------
def png(width, height, color_type=2, bit_depth=8, rows=None, compress=9):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    if rows is None:
        row = b"\x00" + bytes((x * 37) & 0xFF for x in range(width * channels * bit_depth // 8))
        rows = row * height
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, compress)) + chunk(b"IEND", b"")


def gen_images(out):
    t = "image"
    for name in sorted(os.listdir(FORMATS)):
        data = read(os.path.join(FORMATS, name))
        if len(data) < MAX_SEED:
            out.put(t, "fmt_" + name, data)
    for name in ["px2x3.png", "col1x9.png", "row9x1.png", "pre_w31x18.png", "a61x47.png"]:
        out.put(t, name, read(os.path.join(DATA, "images", name)))
    jpg = read(os.path.join(FORMATS, "rgb.jpg"))
    out.put(t, "jpeg_truncated", jpg[: len(jpg) // 2])
    out.put(t, "jpeg_fill_bytes", b"\xff\xff\xff" + jpg[1:])
    out.put(t, "jpeg_no_eoi", jpg[:-2])
    prog = read(os.path.join(FORMATS, "progressive.jpg"))
    out.put(t, "progressive_truncated", prog[: len(prog) * 3 // 4])
    # Headers that ask for much: decoding is refused from the header, before allocating.
    out.put(t, "png_huge_header", png(100000, 100000, rows=b"\x00" * 16))
    out.put(t, "png_thin_strip", png(1, 3000, color_type=0))  # pads to a 3000² square
    out.put(t, "png_palette_no_plte", png(4, 4, color_type=3))
    out.put(t, "png_gray16", png(3, 2, color_type=0, bit_depth=16))
    out.put(t, "pnm_huge", b"P6\n65535 65535\n255\n\x00\x00\x00")
    out.put(t, "bmp_truncated", read(os.path.join(FORMATS, "rgb.bmp"))[:60])
    out.put(t, "gif_truncated", read(os.path.join(FORMATS, "palette.gif"))[:100])


def gen_frames(out):
    t = "frames"
    jpg = read(os.path.join(FORMATS, "rgb.jpg"))
    gray = read(os.path.join(FORMATS, "gray.jpg"))
    pngb = read(os.path.join(FORMATS, "rgb.png"))
    pal = read(os.path.join(FORMATS, "palette.png"))
    seed = b"\x00" + struct.pack("<I", 0x9E3779B9)  # flags 0 (64 MiB limit), piece-size seed
    out.put(t, "jpeg_png_mix", seed + jpg + pngb + gray + pal)
    out.put(t, "garbage_between", seed + b"garbage" + jpg + b"\x00\x01\x02" * 5 + pngb + b"tail")
    out.put(t, "truncated_last", seed + jpg + pngb[:-7])
    out.put(t, "broken_marker", seed + jpg[:20] + b"\x00\x00" + jpg[22:] + gray)
    out.put(t, "nested_soi", seed + jpg[:40] + gray + jpg[40:])
    out.put(t, "png_bad_chunk", seed + pngb[:12] + b"I\x00DR" + pngb[16:] + pal)
    out.put(t, "png_long_chunk", seed + pngb[:8] + b"\x00\x10\x00\x00IDAT" + pngb[16:] + jpg)
    out.put(t, "small_limit", b"\x21" + struct.pack("<I", 12345) + jpg + pngb + gray)  # limit 1 + 16*32 bytes
    out.put(t, "one_byte_pieces", b"\x00" + struct.pack("<I", 0x10) + pngb + jpg)


# ---- text seeds derived from fixtures ------------------------------------------------------------------
def gen_tokenizer(out):
    t = "tokenizer"
    sep = b"\n#text#\n"
    text = "Hello world <|im_end|> I'm here\n\n  你好 <tool> 1,000.5 'll".encode()
    # mode byte: '1' tokenizer.json, '2' vocab.json, '3' merges.txt, '4' added_tokens.json,
    # '5' tokenizer_config.json, '6' special_tokens_map.json, '7' text only (tiny tokenizer)
    files = [("1", os.path.join(TINY_TOK, "json", "tokenizer.json")), ("2", os.path.join(TINY_TOK, "vocab.json")),
             ("3", os.path.join(TINY_TOK, "merges.txt")), ("4", os.path.join(TINY_TOK, "added_tokens.json")),
             ("5", os.path.join(TINY_TOK, "tokenizer_config.json")),
             ("6", os.path.join(SCENES, "special_tokens_map.json"))]
    for mode, path in files:
        out.put(t, f"mode{mode}_{os.path.basename(path)}", mode.encode() + read(path) + sep + text)
    out.put(t, "mode2_scenes_vocab.json", b"2" + read(os.path.join(SCENES, "vocab.json")) + sep + b"a red circle")
    out.put(t, "mode3_scenes_merges.txt", b"3" + read(os.path.join(SCENES, "merges.txt")) + sep + b"the square")
    out.put(t, "mode7_invalid_utf8", b"7abc\xff\xfe def \xe4\xbd\n\xc0\xaf")
    out.put(t, "mode7_combining", "7e\u0301 A\u030a \u1e9b\u0323 >\u0338 <|im_start|>\u0301".encode())
    out.put(t, "mode7_ids", b"7" + struct.pack("<8i", 0, 1, 271, 272, 273, 274, -1, 1 << 30))


def gen_config(out):
    t = "config"
    for name, path in [("tiny_vlm2", os.path.join(DATA, "tiny_vlm2", "config.json")),
                       ("vision_small", os.path.join(DATA, "vision_small", "config.json")),
                       ("vision_192", os.path.join(DATA, "vision_192", "config.json")),
                       ("scenes", os.path.join(SCENES, "config.json"))]:
        out.put(t, name + ".json", read(path))


def gen_openai(out):
    t = "openai_request"
    for name in ["px2x3.png", "col1x9.png"]:
        b64 = base64.b64encode(read(os.path.join(DATA, "images", name))).decode()
        body = {"model": "fastvlm", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64}},
                                         {"type": "text", "text": "Describe the image."}]}],
                "max_tokens": 16, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "seed": 7, "stop": ["\n\n"],
                "stream": True, "stream_options": {"include_usage": True}}
        out.put(t, "image_" + name + ".json", json.dumps(body))
    jpg = base64.urlsafe_b64encode(read(os.path.join(FORMATS, "gray.jpg"))).decode().rstrip("=")
    out.put(t, "image_jpeg_urlsafe.json", json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": "data:image/jpeg;base64," + jpg}]}]}))
    out.put(t, "image_bad_png.json", json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," +
                                            base64.b64encode(png(100000, 100000, rows=b"\x00")).decode()}}]}]}))


def gen_batch(out):
    out.put("batch_jsonl", "scenes_answers.jsonl", read(os.path.join(SCENES, "images", "answers.jsonl")))


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = Out(sys.argv[1])
    gen_safetensors(out)
    gen_images(out)
    gen_frames(out)
    gen_tokenizer(out)
    gen_config(out)
    gen_openai(out)
    gen_batch(out)
    print(f"make_corpus.py: {out.count} seeds in {out.root}")


if __name__ == "__main__":
    main()
