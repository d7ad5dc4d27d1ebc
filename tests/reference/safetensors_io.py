"""Minimal safetensors reader/writer on numpy (no torch, no safetensors package).

Format: u64 little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
then the raw little-endian C-order data; offsets are relative to the data start.

Supported dtypes: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL.
BF16 is read as float32 (bits << 16) and written from float32 with round-to-nearest-even.
"""

import json
import os
import struct

import numpy as np

_NP_OF = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_ST_OF = {v: k for k, v in _NP_OF.items()}


def float32_to_bf16_bits(x):
    """float32 array -> uint16 bf16 bit patterns, round to nearest even, NaN kept quiet."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = np.where(nan, (u >> np.uint32(16)) | np.uint32(0x0040), rounded)
    return rounded.astype(np.uint16)


def bf16_bits_to_float32(bits):
    """uint16 bf16 bit patterns -> float32 array."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def read_header(path):
    """Returns (header dict without __metadata__, metadata dict, data start offset)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: file shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        hdr = f.read(n)
        if len(hdr) != n:
            raise ValueError(f"{path}: header length {n} exceeds the file")
    header = json.loads(hdr.decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    return header, meta, 8 + n


def read_safetensors(path, with_metadata=False, names=None):
    """dict name -> np.ndarray in file order (BF16 returned as float32).

    names: optional predicate (str -> bool) or collection selecting which tensors to read; the file is
    memory-mapped, so unselected tensors are never read.
    with_metadata=True returns (tensors, metadata, dtypes) where dtypes maps name -> file dtype string.
    """
    header, meta, start = read_header(path)
    size = os.path.getsize(path) - start
    if names is not None and not callable(names):
        wanted = set(names)
        names = wanted.__contains__
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(size,)) if size else np.zeros(0, np.uint8)
    out = {}
    dtypes = {}
    for name, info in header.items():
        if names is not None and not names(name):
            continue
        dt = info["dtype"]
        shape = tuple(int(s) for s in info["shape"])
        b, e = (int(v) for v in info["data_offsets"])
        if not (0 <= b <= e <= size):
            raise ValueError(f"{path}: tensor {name}: data_offsets {b},{e} out of range")
        count = int(np.prod(shape, dtype=np.int64))
        raw = data[b:e]
        if dt == "BF16":
            if e - b != 2 * count:
                raise ValueError(f"{path}: tensor {name}: byte size {e - b} != 2*{count}")
            arr = bf16_bits_to_float32(raw.view("<u2"))
        elif dt in _NP_OF:
            npdt = _NP_OF[dt]
            if e - b != npdt.itemsize * count:
                raise ValueError(f"{path}: tensor {name}: byte size {e - b} != {npdt.itemsize}*{count}")
            arr = np.array(raw.view(npdt))
        else:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dt}")
        out[name] = arr.reshape(shape)
        dtypes[name] = dt
    del data
    if with_metadata:
        return out, meta, dtypes
    return out


def write_safetensors(path, tensors, metadata=None, bf16_names=()):
    """Write dict name -> array in dict order. Names in bf16_names (or all, if bf16_names is True)
    whose arrays are floating are stored as BF16; others keep their numpy dtype (float64 stays F64)."""
    all_bf16 = bf16_names is True
    bf16_set = set() if all_bf16 else set(bf16_names)
    header = {}
    blobs = []
    offset = 0
    for name, value in tensors.items():
        arr = np.asarray(value)
        if (all_bf16 or name in bf16_set) and arr.dtype.kind == "f":
            dt = "BF16"
            blob = float32_to_bf16_bits(arr.astype(np.float32)).astype("<u2").tobytes()
        else:
            npdt = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
            if npdt not in _ST_OF:
                raise ValueError(f"tensor {name}: unsupported numpy dtype {arr.dtype}")
            dt = _ST_OF[npdt]
            blob = np.ascontiguousarray(arr, dtype=npdt).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    if metadata:
        header = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}, **header}
    hdr = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hdr += b" " * ((8 - len(hdr) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)))
        f.write(hdr)
        for blob in blobs:
            f.write(blob)
