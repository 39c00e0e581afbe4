"""A small pure-Python reader and writer of the safetensors format for PyTorch.

For machines without the `safetensors` package (Debian ships none): the same
calls as `safetensors.torch` for what normlab's scripts need,

    load_file(path) -> {name: torch.Tensor}      save_file(tensors, path, metadata=None)
    load(data: bytes) -> {name: torch.Tensor}    save(tensors, metadata=None) -> bytes
    read_metadata(path) -> {str: str}

and the same checks of the layout: an 8-byte little-endian header length, a JSON
header starting with '{', offsets relative to the data section that tile it
exactly. Tensors come back as contiguous CPU tensors that own their memory.
"""
import json
import struct

import torch

_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
    "I32": torch.int32, "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16,
    "F32": torch.float32, "F64": torch.float64,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100_000_000  # as the reference implementation


class SafetensorError(ValueError):
    pass


def _header(data: bytes):
    if len(data) < 8:
        raise SafetensorError(f"file has only {len(data)} bytes, no header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or n > len(data) - 8:
        raise SafetensorError(f"header length {n} does not fit a file of {len(data)} bytes")
    text = data[8:8 + n]
    if not text.startswith(b"{"):
        raise SafetensorError("header does not start with '{'")

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise SafetensorError(f"duplicate keys in the header: {keys}")
        return dict(pairs)

    return json.loads(text.decode("utf-8"), object_pairs_hook=no_duplicates), 8 + n


def load(data: bytes):
    header, start = _header(data)
    body = memoryview(data)[start:]
    entries = sorted(((v["data_offsets"], k, v) for k, v in header.items()
                      if k != "__metadata__"), key=lambda e: tuple(e[0]))
    out, expected = {}, 0
    for (begin, end), name, info in entries:
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise SafetensorError(f"tensor {name!r}: unsupported dtype {info['dtype']!r}")
        shape = list(info["shape"])
        numel = 1
        for d in shape:
            numel *= d
        itemsize = torch.empty((), dtype=dtype).element_size()
        if begin != expected or end - begin != numel * itemsize or end > len(body):
            raise SafetensorError(f"tensor {name!r}: bad data_offsets [{begin}, {end}]")
        expected = end
        t = torch.empty(shape, dtype=dtype)
        if numel:
            t.view(-1).view(torch.uint8)[:] = torch.frombuffer(
                bytearray(body[begin:end]), dtype=torch.uint8)
        out[name] = t
    if expected != len(body):
        raise SafetensorError(f"data section has {len(body)} bytes, tensors cover {expected}")
    return out


def load_file(path, device="cpu"):
    with open(path, "rb") as f:
        tensors = load(f.read())
    return {k: v.to(device) for k, v in tensors.items()}


def read_metadata(path):
    with open(path, "rb") as f:
        header, _ = _header(f.read())
    return header.get("__metadata__", {})


def save(tensors, metadata=None):
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def save_file(tensors, path, metadata=None):
    with open(path, "wb") as f:
        f.write(save(tensors, metadata))
