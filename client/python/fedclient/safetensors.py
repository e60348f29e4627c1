"""fedclient.safetensors: read and write small safetensors files with numpy.

It owns the file format only (docs/safetensors.md): 8-byte little-endian header length, a JSON
header, the tensors' little-endian bytes back to back. It is used to write a daemon's initial
model and to read an exported one. It never talks to the SDK, and it reads whole files into
memory (meant for models, not for data sets).
"""

import json
import os
import struct

import numpy as np

_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"),
           "BF16": np.dtype("<u2")}  # bf16: raw bits as uint16
_NAMES = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<f8"): "F64"}
MAX_HEADER = 100_000_000


def save(path, tensors, metadata=None):
    """Writes tensors (a mapping name -> array or a sequence of (name, array) pairs, in order)
    as float32/float16/float64 safetensors; other float or integer arrays are stored as F32.
    The header is padded with blanks to a multiple of 8 so the data is aligned. The file is
    written beside path and renamed into place."""
    items = list(tensors.items()) if hasattr(tensors, "items") else list(tensors)
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, arr in items:
        a = np.asarray(arr)
        dt = a.dtype.newbyteorder("<") if a.dtype.kind == "f" else a.dtype
        if dt not in _NAMES:
            dt = np.dtype("<f4")
        a = np.ascontiguousarray(a, dtype=dt)
        if name in header:
            raise ValueError("safetensors: tensor '%s' given twice" % name)
        header[name] = {"dtype": _NAMES[dt], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(len(text)) % 8)
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path):
    """Reads a safetensors file; returns [(name, array)] ordered by data offset (the file's
    layout). Raises ValueError naming the file and what is wrong."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError("%s: %d bytes, shorter than the 8-byte header length" % (path, len(raw)))
    (n,) = struct.unpack_from("<Q", raw, 0)
    if n > MAX_HEADER or 8 + n > len(raw):
        raise ValueError("%s: header length %d does not fit the file (%d bytes)"
                         % (path, n, len(raw)))
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError("%s: header is not JSON: %s" % (path, e)) from None
    if not isinstance(header, dict):
        raise ValueError("%s: header is not a JSON object" % path)
    data = memoryview(raw)[8 + n:]
    out, end = [], 0
    entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                     key=lambda kv: (kv[1]["data_offsets"][0], kv[1]["data_offsets"][1], kv[0]))
    for name, spec in entries:
        dt = _DTYPES.get(spec.get("dtype"))
        if dt is None:
            raise ValueError("%s: tensor '%s' has unsupported dtype %r"
                             % (path, name, spec.get("dtype")))
        begin, stop = spec["data_offsets"]
        shape = tuple(int(d) for d in spec["shape"])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if begin != end or stop - begin != count * dt.itemsize or stop > len(data):
            raise ValueError("%s: tensor '%s' data_offsets [%d, %d] do not tile the data "
                             "(%d bytes) for shape %s" % (path, name, begin, stop, len(data),
                                                          list(shape)))
        out.append((name, np.frombuffer(data[begin:stop], dtype=dt).reshape(shape).copy()))
        end = stop
    if end != len(data):
        raise ValueError("%s: %d bytes after the last tensor" % (path, len(data) - end))
    return out
