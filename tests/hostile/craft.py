"""Byte-level builders of hostile inputs for tests/hostile/hostile.py (stdlib + numpy + Pillow).

Everything here returns bytes (or writes a file) at run time; nothing is committed as a blob.
  images       png(), interlaced PNGs, jpeg_* (Pillow output re-cut at the marker level), bmp(),
               gif_*(), tga(), pnm()
  safetensors  st_bytes() (any header text and length field), TinyModel (the parsed tiny_vlm2 file)
  JSON         nest(), json_mutate() (structure-aware), dumps()
  mutation     mutate(): bit flips, interesting bytes/ints, truncation, insertion, deletion, duplication,
               splices of two valid files; every choice comes from the random.Random it is given.
"""
import io
import json
import struct
import zlib

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------------------------------
# PNG

PNG_SIG = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png_chunk(typ, data, crc=None):
    if crc is None:
        crc = zlib.crc32(typ + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + typ + data + struct.pack(">I", crc)


def ihdr(w, h, bit_depth=8, color_type=2, interlace=0, compression=0, filt=0):
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", w & 0xFFFFFFFF, h & 0xFFFFFFFF, bit_depth, color_type,
                                          compression, filt, interlace))


def png_rowbytes(w, bit_depth, color_type):
    return (w * _CHANNELS.get(color_type, 3) * bit_depth + 7) // 8


def png_idat_stream(w, h, bit_depth=8, color_type=2, fill=None, level=9):
    """zlib stream of h filtered rows (filter 0); generated row by row (large images cost no memory)."""
    rb = png_rowbytes(w, bit_depth, color_type)
    c = zlib.compressobj(level)
    parts = []
    for y in range(h):
        if fill is None:
            row = bytes(((x * 7 + y * 13) & 0xFF) for x in range(rb)) if rb <= 4096 else bytes(rb)
        else:
            row = fill(y, rb)
        parts.append(c.compress(b"\x00" + row))
    parts.append(c.flush())
    return b"".join(parts)


def png(w, h, bit_depth=8, color_type=2, idat=None, before_idat=(), after_idat=(), header=None, interlace=0,
        fill=None, iend=True):
    """A PNG; `idat` (zlib bytes) defaults to w x h rows of a pattern; `header` replaces the IHDR chunk."""
    out = PNG_SIG + (header if header is not None else ihdr(w, h, bit_depth, color_type, interlace))
    out += b"".join(before_idat)
    if idat is None:
        idat = png_idat_stream(w, h, bit_depth, color_type, fill)
    if isinstance(idat, (list, tuple)):
        out += b"".join(png_chunk(b"IDAT", d) for d in idat)
    elif idat:
        out += png_chunk(b"IDAT", idat)
    out += b"".join(after_idat)
    if iend:
        out += png_chunk(b"IEND", b"")
    return out


def zlib_zeros(total, piece=1 << 20):
    """A zlib stream of `total` zero bytes, fast for any size: after a full flush the deflater forgets its
    history, so compressing the same 1 MB piece again gives the same bytes, which are repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    n, rem = divmod(total, piece)
    chunk = bytes(piece)
    body = []
    adler = 1
    if n:
        first = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
        body.append(first)
        if n > 1:
            rep = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
            assert rep == c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
            body.append(rep * (n - 1))
        for _ in range(n):
            adler = zlib.adler32(chunk, adler)
    if rem:
        body.append(c.compress(bytes(rem)))
        adler = zlib.adler32(bytes(rem), adler)
    body.append(c.flush())
    return b"\x78\xda" + b"".join(body) + struct.pack(">I", adler & 0xFFFFFFFF)


def png_blank(w, h, color_type=2, bit_depth=8):
    """A w x h PNG of zero rows (a decompression bomb when large: a few hundred KB per 100 M pixels): the
    filtered stream is all zero bytes (filter 0 + zero samples)."""
    return png(w, h, bit_depth, color_type, idat=zlib_zeros(h * (png_rowbytes(w, bit_depth, color_type) + 1)))


def png_adam7(w, h):
    """A valid interlaced (Adam7) 8-bit RGB PNG."""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = bytearray()
    for x0, y0, dx, dy in passes:
        pw = (w - x0 + dx - 1) // dx if w > x0 else 0
        ph = (h - y0 + dy - 1) // dy if h > y0 else 0
        if pw == 0 or ph == 0:
            continue
        for yy in range(ph):
            raw += b"\x00"
            for xx in range(pw):
                x, y = x0 + xx * dx, y0 + yy * dy
                raw += bytes(((x * 9) & 255, (y * 5) & 255, ((x + y) * 3) & 255))
    return png(w, h, 8, 2, idat=zlib.compress(bytes(raw)), interlace=1)


# ---------------------------------------------------------------------------------------------------
# Pillow-made valid files of every format (the seeds of mutations and splices)

def pattern_image(w, h, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 5 + y * 3) % 256, (x * 2 + 40) % 256, (y * 7 + 90) % 256], axis=-1)
    noise = rng.integers(0, 24, size=(h, w, 3))
    img = Image.fromarray(((base + noise) % 256).astype(np.uint8), "RGB")
    return img.convert(mode) if mode != "RGB" else img


def encode(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, format=fmt, **kw)
    return b.getvalue()


def valid_images():
    """name -> bytes of small valid images in every format the loader reads."""
    rgb = pattern_image(61, 47)
    out = {
        "png": encode(rgb, "PNG"),
        "png_rgba": encode(rgb.convert("RGBA"), "PNG"),
        "png_palette": encode(rgb.convert("P"), "PNG"),
        "png_gray16": encode(rgb.convert("I").point(lambda v: v * 200), "PNG"),
        "png_adam7": png_adam7(37, 29),
        "jpeg": encode(rgb, "JPEG", quality=90),
        "jpeg_progressive": encode(rgb, "JPEG", quality=80, progressive=True),
        "jpeg_gray": encode(rgb.convert("L"), "JPEG"),
        "jpeg_cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "bmp": encode(rgb, "BMP"),
        "bmp_palette": encode(rgb.convert("P"), "BMP"),
        "gif": encode(rgb.convert("P"), "GIF"),
        "tga": encode(rgb, "TGA"),
        "tga_rle": encode(rgb, "TGA", compression="tga_rle"),
        "ppm": encode(rgb, "PPM"),
        "pgm": encode(rgb.convert("L"), "PPM"),
    }
    return out


# ---------------------------------------------------------------------------------------------------
# JPEG (marker-level surgery on Pillow's output)

def jpeg_segments(data):
    """[(marker, bytes)]: each marker segment with its FF xx and length; scan data as (None, bytes)."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    segs = [(0xD8, data[:2])]
    i = 2
    n = len(data)
    while i < n:
        if data[i] != 0xFF:
            raise ValueError("JPEG parse: expected a marker at %d" % i)
        m = data[i + 1]
        if m == 0xD9:
            segs.append((0xD9, data[i:i + 2]))
            i += 2
            if i < n:
                segs.append((None, data[i:]))
            break
        if m == 0xFF:
            i += 1
            continue
        if m == 0x01 or 0xD0 <= m <= 0xD7:
            segs.append((m, data[i:i + 2]))
            i += 2
            continue
        ln = struct.unpack(">H", data[i + 2:i + 4])[0]
        segs.append((m, data[i:i + 2 + ln]))
        i += 2 + ln
        if m == 0xDA:  # entropy-coded data up to the next marker that is not FF00 / RSTn
            j = i
            while j < n - 1:
                if data[j] == 0xFF and data[j + 1] != 0x00 and not (0xD0 <= data[j + 1] <= 0xD7):
                    break
                j += 1
            if j >= n - 1:
                j = n
            segs.append((None, data[i:j]))
            i = j
    return segs


def jpeg_join(segs):
    return b"".join(b for _, b in segs)


def jpeg_set_size(data, w, h):
    """The first SOFn's height/width replaced (the scan data still describes the old size)."""
    segs = jpeg_segments(data)
    for k, (m, b) in enumerate(segs):
        if m is not None and 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            b = bytearray(b)
            b[5:7] = struct.pack(">H", h & 0xFFFF)
            b[7:9] = struct.pack(">H", w & 0xFFFF)
            segs[k] = (m, bytes(b))
            break
    return jpeg_join(segs)


def jpeg_patch_sof(data, fn):
    """fn(bytearray of the first SOF segment) edits it in place (marker byte at [1], payload from [4])."""
    segs = jpeg_segments(data)
    for k, (m, b) in enumerate(segs):
        if m is not None and 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            b = bytearray(b)
            fn(b)
            segs[k] = (b[1], bytes(b))
            break
    return jpeg_join(segs)


def jpeg_insert_before(data, marker, new):
    """`new` bytes inserted before the first segment with `marker`."""
    segs = jpeg_segments(data)
    for k, (m, _) in enumerate(segs):
        if m == marker:
            segs.insert(k, (-1, new))
            break
    return jpeg_join(segs)


def segment(marker, payload):
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def dht_with_codes(ncodes, table_class=0, table_id=0):
    """A DHT segment whose table declares `ncodes` codes (> 256 overflows stb_image 2.27's tables)."""
    counts = [0] * 16
    left = ncodes
    for k in range(15, -1, -1):  # longest lengths first: the Kraft inequality is not what stb checks
        c = min(255, left)
        counts[k] = c
        left -= c
        if left == 0:
            break
    payload = bytes([(table_class << 4) | table_id]) + bytes(counts) + bytes(i % 256 for i in range(ncodes))
    return segment(0xC4, payload[:65533])


def jpeg_scan_bomb(size, scans, quality=50):
    """A progressive gray JPEG of size x size plus `scans` empty AC scans before EOI. Each empty scan
    makes libjpeg sweep every block of the image once (the classic progressive-JPEG CPU DoS)."""
    img = Image.new("L", (size, size), 128)
    data = encode(img, "JPEG", quality=quality, progressive=True)
    segs = jpeg_segments(data)
    ac = None
    for m, b in segs:
        if m == 0xDA:
            ns = b[4]
            ss, ahal = b[5 + 2 * ns], b[7 + 2 * ns]
            if ss > 0 and (ahal >> 4) == 0:
                ac = b
    if ac is None:  # no AC-first scan: repeat the last scan header
        ac = [b for m, b in segs if m == 0xDA][-1]
    body = jpeg_join(segs)
    assert body.endswith(b"\xff\xd9")
    return body[:-2] + ac * scans + b"\xff\xd9"


def jpeg_many_segments(data, marker, count, payload_len):
    """`count` APPn/COM segments of `payload_len` bytes after SOI."""
    seg = segment(marker, bytes(payload_len))
    return data[:2] + seg * count + data[2:]


# ---------------------------------------------------------------------------------------------------
# BMP / GIF / TGA / PNM

def bmp(w, h, bpp=24, compression=0, clr_used=0, offbits=None, pixels=None, header_size=40, planes=1,
        palette=None, masks=None, file_size=None):
    """A BMP with BITMAPINFOHEADER-style fields as given (w, h as signed 32-bit, may lie)."""
    if palette is None:
        palette = b"" if bpp > 8 else bytes(4 * (clr_used or (1 << bpp)))
    info = struct.pack("<IiiHHIIiiII", header_size, w, h, planes, bpp, compression, 0, 2835, 2835,
                       clr_used & 0xFFFFFFFF, 0)
    if header_size > 40:  # pad up to a plausible size only: a lying size stays a lie
        extra = masks if masks is not None else b""
        want = min(header_size, 124) - 40
        info += (extra + bytes(max(0, want - len(extra))))[:max(want, len(extra))]
    if pixels is None:
        rowb = ((abs(w) * bpp + 31) // 32) * 4 if abs(w) < 100000 else 0
        pixels = bytes(rowb * min(abs(h), 64)) if rowb else b""
    off = 14 + len(info) + len(palette) if offbits is None else offbits
    size = 14 + len(info) + len(palette) + len(pixels) if file_size is None else file_size
    return b"BM" + struct.pack("<IHHI", size & 0xFFFFFFFF, 0, 0, off & 0xFFFFFFFF) + info + palette + pixels


def _pil_gif_parts():
    """(global colour table, LZW minimum code size, LZW sub-blocks) of a Pillow-made 4x4 GIF."""
    g = encode(pattern_image(4, 4).convert("P"), "GIF")
    flags = g[10]
    i = 13
    gct = b""
    if flags & 0x80:
        gct = g[13:13 + 3 * (2 << (flags & 7))]
        i += len(gct)
    while g[i] == 0x21:  # extensions
        i += 2
        while g[i]:
            i += 1 + g[i]
        i += 1
    assert g[i] == 0x2C
    i += 10
    lzw_min = g[i]
    j = i + 1
    while g[j]:
        j += 1 + g[j]
    return gct, lzw_min, g[i + 1:j + 1], flags


def gif(screen_w, screen_h, img_w=None, img_h=None, lzw_min=None, blocks=None, gct=True, frames=1, trailer=True,
        img_x=0, img_y=0, flags=0, ext=b""):
    """A GIF89a with real LZW data (of a 4x4 image) under any logical-screen / descriptor sizes."""
    pgct, plzw, pblocks, pflags = _pil_gif_parts()
    img_w = screen_w if img_w is None else img_w
    img_h = screen_h if img_h is None else img_h
    out = b"GIF89a" + struct.pack("<HHBBB", screen_w & 0xFFFF, screen_h & 0xFFFF, (pflags if gct else 0) & 0xFF, 0, 0)
    if gct:
        out += pgct
    out += ext
    desc = b"," + struct.pack("<HHHHB", img_x & 0xFFFF, img_y & 0xFFFF, img_w & 0xFFFF, img_h & 0xFFFF, flags)
    out += (desc + bytes([plzw if lzw_min is None else lzw_min]) + (pblocks if blocks is None else blocks)) * frames
    if trailer:
        out += b";"
    return out


def tga(w, h, image_type=2, bpp=24, cmap_type=0, cmap_len=0, cmap_bits=0, id_len=0, data=None, descriptor=0):
    head = struct.pack("<BBBHHBHHHHBB", id_len, cmap_type, image_type, 0, cmap_len & 0xFFFF, cmap_bits, 0, 0,
                       w & 0xFFFF, h & 0xFFFF, bpp, descriptor)
    if data is None:
        data = bytes(min(w * h, 1 << 16) * max(1, bpp // 8))
    return head + bytes(id_len) + bytes(cmap_len * ((cmap_bits + 7) // 8) if cmap_type else 0) + data


def pnm(magic, w, h, maxval, data=None, sep=b"\n"):
    head = magic + sep + str(w).encode() + b" " + str(h).encode() + sep + str(maxval).encode() + b"\n"
    if data is None:
        ch = 3 if magic == b"P6" else 1
        try:
            bp = 2 if int(maxval) > 255 else 1
            n = int(w) * int(h) * ch * bp
        except ValueError:
            n = 64
        data = bytes((i * 7) & 0xFF for i in range(min(n, 1 << 20)))
    return head + data


# ---------------------------------------------------------------------------------------------------
# safetensors

def st_bytes(header, data=b"", length=None):
    """u64 length | header | data; `header` is a dict (JSON-encoded), str or bytes; `length` may lie."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode("utf-8", "surrogatepass")
    n = len(header) if length is None else length
    return struct.pack("<Q", n & 0xFFFFFFFFFFFFFFFF) + header + data


class TinyModel:
    """tests/data/tiny_vlm2/model.safetensors split into its header (dict, insertion-ordered) and data."""

    def __init__(self, path):
        raw = open(path, "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        self.raw = raw
        self.header = json.loads(raw[8:8 + n])
        self.data = raw[8 + n:]
        self.tensors = [k for k in self.header if k != "__metadata__"]

    def header_copy(self):
        return json.loads(json.dumps(self.header))

    def build(self, header=None, data=None, length=None):
        return st_bytes(self.header if header is None else header, self.data if data is None else data, length)

    def largest(self):
        return max(self.tensors, key=lambda k: self.header[k]["data_offsets"][1] - self.header[k]["data_offsets"][0])

    def shard(self, names, rebase=True):
        """A safetensors file holding only `names` (offsets rebased into a compact data section)."""
        h, d = {}, bytearray()
        for k in names:
            e = dict(self.header[k])
            b, en = e["data_offsets"]
            e["data_offsets"] = [len(d), len(d) + en - b]
            d += self.data[b:en]
            h[k] = e
        return st_bytes(h, bytes(d))


# ---------------------------------------------------------------------------------------------------
# JSON

def nest(depth, open_="[", close="]", inner="0"):
    """depth levels of nesting as text (built without recursion)."""
    return open_ * depth + inner + close * depth


def nest_obj(depth, key="a", inner="0"):
    return '{"%s":' % key * depth + inner + "}" * depth


def dumps(obj):
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


HOSTILE_VALUES = [0, -1, 1, 2, 3, 63, 64, 65, 2 ** 31 - 1, 2 ** 31, 2 ** 32 + 1, 2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63,
                  2 ** 64 - 1, 2 ** 64, -2 ** 63, -2 ** 31, 1e308, -1e308, 1.5, -0.0, 1e-320, 0.5, "", "x", "0",
                  "\u0000", "A" * 5000, None, True, False, [], {}, [0], [[]], {"a": {}}, [-1, -1, -1, -1, -1],
                  [1] * 1000, ["attention"] * 7]


def _paths(obj, max_depth=300):
    """Every path (tuple of keys / indexes) into obj, without recursion; none deeper than max_depth."""
    out, stack = [], [((), obj)]
    while stack:
        prefix, v = stack.pop()
        out.append(prefix)
        if len(prefix) >= max_depth:
            continue
        if isinstance(v, dict):
            stack.extend((prefix + (k,), x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((prefix + (i,), x) for i, x in enumerate(v))
    out.sort(key=repr)  # a deterministic order
    return out


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def _copy(v):
    return json.loads(json.dumps(v))


def json_mutate(obj, rng, n=None):
    """Structure-aware mutation of a JSON value (a deep copy is mutated and returned): values replaced by
    hostile ones, keys deleted, arrays grown or emptied, nesting added. Depth stays below what Python's json
    module can encode (about 900 levels)."""
    obj = _copy(obj)
    for _ in range(n or rng.randint(1, 3)):
        paths = [p for p in _paths(obj) if p]
        if not paths:
            return obj
        path = rng.choice(paths)
        parent = _get(obj, path[:-1])
        key = path[-1]
        op = rng.random()
        if op < 0.55:
            parent[key] = _copy(rng.choice(HOSTILE_VALUES))
        elif op < 0.7:
            if isinstance(parent, dict):
                del parent[key]
            else:
                parent.pop(key)
        elif op < 0.8:
            v = parent[key]
            if isinstance(v, list):
                parent[key] = _copy(v * rng.choice([0, 2, 50]))
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                parent[key] = v * rng.choice([-1, 1000, 2 ** 20]) + rng.choice([0, 1])
            else:
                parent[key] = [v]
        elif op < 0.9:
            if len(path) < 300:
                v = 0
                for _ in range(rng.choice([10, 50, 150])):
                    v = [v]
                parent[key] = v
        else:
            v = parent[key]
            parent[key] = str(v) if not isinstance(v, str) else (len(v) or 1)
    return obj


# ---------------------------------------------------------------------------------------------------
# mutation of bytes

MUTATIONS = ["bitflip", "byteset", "int", "truncate", "insert", "delete", "dup", "splice"]
_INTERESTING8 = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]
_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
                0xFFFFFFFF, 0x100000000, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF]


def _pos(rng, n, head):
    """A position, biased toward the first `head` bytes (the headers) half of the time."""
    if n <= 0:
        return 0
    if head and rng.random() < 0.5:
        return rng.randrange(min(n, head))
    return rng.randrange(n)


def mutate(data, rng, op, other=None, head=256):
    """One mutation `op` (one of MUTATIONS) of `data`; `other` is a second valid file for splices."""
    d = bytearray(data)
    n = len(d)
    if n == 0:
        return rng.randbytes(rng.randint(1, 16))
    if op == "bitflip":
        for _ in range(rng.choice([1, 1, 2, 4, 8, 16])):
            p = _pos(rng, n, head)
            d[p] ^= 1 << rng.randrange(8)
    elif op == "byteset":
        for _ in range(rng.randint(1, 8)):
            d[_pos(rng, n, head)] = rng.choice(_INTERESTING8)
    elif op == "int":
        width = rng.choice([2, 4, 8])
        v = rng.choice(_INTERESTING) & ((1 << (8 * width)) - 1)
        p = _pos(rng, max(1, n - width), head)
        d[p:p + width] = v.to_bytes(width, rng.choice(["little", "big"]))
    elif op == "truncate":
        d = d[:_pos(rng, n, head)]
    elif op == "insert":
        p = _pos(rng, n, head)
        if rng.random() < 0.5:
            ins = rng.randbytes(rng.randint(1, 64))
        else:
            a = rng.randrange(n)
            ins = bytes(d[a:a + rng.randint(1, 256)]) * rng.choice([1, 4, 64])
        d[p:p] = ins
    elif op == "delete":
        p = _pos(rng, n, head)
        del d[p:p + rng.randint(1, max(1, min(4096, n // 4)))]
    elif op == "dup":
        a = _pos(rng, n, head)
        ln = rng.randint(1, max(1, min(8192, n - a)))
        d[a:a] = d[a:a + ln] * rng.choice([1, 2, 16])
    elif op == "splice":
        o = other if other else data
        a = rng.randrange(n)
        b = rng.randrange(len(o)) if o else 0
        d = d[:a] + bytearray(o[b:])
    else:
        raise ValueError(op)
    return bytes(d)
