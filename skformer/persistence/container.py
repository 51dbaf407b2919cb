"""The skformer file container: a JSON header and raw tensors, with a checksum, no pickle.

Layout of a file (all integers little-endian)::

    offset  size  content
    0       8     MAGIC = b"SKFORMER"
    8       4     format version (uint32)
    12      8     header length H (uint64)
    20      H     header: UTF-8 JSON object, with a "tensors" index
    20+H    P     payload: the tensors' bytes, back to back, in index order
    20+H+P  32    SHA-256 of bytes [0, 20+H+P)

:func:`write` writes atomically (a temporary file renamed into place). :func:`read` opens only
regular files, checks the magic bytes and the declared sizes before reading the rest, never
reads more than the file's size, verifies the checksum before parsing the header (within the
limits of :mod:`skformer.persistence.codec`), and builds tensors with ``numpy.frombuffer`` from
an allow-list of dtypes. It knows nothing of what the header describes.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import stat
import struct
from typing import Any

import numpy as np
import torch

import skformer.persistence.codec as codec

__all__ = ["MAGIC", "FORMAT_VERSION", "write", "read", "check_path"]

MAGIC = b"SKFORMER"
"""First bytes of every skformer file."""

FORMAT_VERSION = 2
"""Version :func:`write` writes; :func:`read` reads this one and older (1: skformer 0.1)."""

_PREAMBLE = struct.Struct("<8sIQ")  # magic, format version, header length
_DIGEST_SIZE = hashlib.sha256().digest_size  # 32

# dtypes a tensor in a file may have: name -> little-endian numpy dtype
_TENSOR_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
    "bool": np.dtype("|b1"),
}
_TORCH_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64",
                      torch.int64: "int64", torch.bool: "bool"}


def check_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a str; TypeError for what is no path, ValueError for a directory."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}.")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"expected a file path; got {path!r}, which is a directory.")
    return path


# ---------------------------------------------------------------------------------- write
def _tensor_bytes(name: str, tensor: torch.Tensor) -> tuple[dict[str, Any], bytes]:
    dtype = _TORCH_DTYPE_NAMES.get(tensor.dtype)
    if dtype is None:
        raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}; the format stores "
                         f"{sorted(_TENSOR_DTYPES)}.")
    arr = tensor.detach().cpu().contiguous().numpy().astype(_TENSOR_DTYPES[dtype], copy=False)
    data = arr.tobytes(order="C")
    return {"name": name, "dtype": dtype, "shape": list(arr.shape), "length": len(data)}, data


def to_bytes(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    """The whole file, in memory: ``header`` (a JSON object without "tensors") and tensors."""
    index, chunks, offset = [], [], 0
    for name, tensor in tensors.items():
        entry, data = _tensor_bytes(name, tensor)
        entry["offset"] = offset
        offset += len(data)
        index.append(entry)
        chunks.append(data)
    try:
        raw = codec.dumps({**header, "tensors": index})
    except (TypeError, ValueError) as err:
        raise ValueError(f"the header is not JSON-serialisable: {err}") from err
    if codec.json_depth(raw) > codec.MAX_DEPTH:
        raise ValueError(f"the header nests values more than {codec.MAX_DEPTH} levels deep.")
    body = b"".join([_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(raw)), raw, *chunks])
    return body + hashlib.sha256(body).digest()


def write(path: str | os.PathLike[str], header: dict[str, Any],
          tensors: dict[str, torch.Tensor]) -> None:
    """Write a container to ``path`` atomically: a failed write leaves ``path`` as it was."""
    path = check_path(path)
    data = to_bytes(header, tensors)  # everything that can fail on the content fails first
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# ---------------------------------------------------------------------------------- read
class _Refusal(ValueError):
    pass


def _corrupt(detail: str) -> _Refusal:
    return _Refusal(f"the skformer file is corrupt or truncated: {detail}.")


def read(path: str | os.PathLike[str]) -> tuple[int, dict[str, Any], dict[str, torch.Tensor]]:
    """Read and check a container; return ``(format version, header, tensors)``.

    Every refusal is a ValueError that names the file and the reason.
    """
    path = check_path(path)
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path!r} is not a regular file; skformer files are read only from "
                         "regular files.")
    try:
        with open(path, "rb") as f:
            header, payload, version = _read_checked(f, info.st_size, path)
        return version, header, _tensors(header.pop("tensors", None), payload)
    except _Refusal as err:
        raise ValueError(f"{path!r}: {err}") from None


def _read_exactly(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _corrupt(f"expected {n} more bytes, found {len(data)}")
    return data


def _read_checked(f, size: int, path: str) -> tuple[dict[str, Any], memoryview, int]:
    head = f.read(len(MAGIC))
    if head != MAGIC:
        hint = ""
        if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            hint = (" It looks like a pickle (e.g. from joblib.dump): read it with joblib.load, "
                    "and only if you trust its source.")
        raise _Refusal(f"not a skformer file: expected it to start with {MAGIC!r}, got "
                       f"{head!r} ({size} bytes in all).{hint}")
    if size < _PREAMBLE.size:
        raise _corrupt(f"{size} bytes is shorter than the {_PREAMBLE.size}-byte preamble")
    version, header_len = struct.unpack("<IQ", _read_exactly(f, _PREAMBLE.size - len(MAGIC)))
    if version > FORMAT_VERSION:
        raise _Refusal(f"the file uses skformer file format version {version}, but this skformer "
                       f"reads versions up to {FORMAT_VERSION}: upgrade skformer to load it.")
    if version < 1:
        raise _Refusal(f"file format version {version}; expected 1 to {FORMAT_VERSION}.")
    if size < _PREAMBLE.size + _DIGEST_SIZE:
        raise _corrupt(f"{size} bytes leaves no room for the checksum")
    if _PREAMBLE.size + header_len + _DIGEST_SIZE > size:
        raise _corrupt(f"the header length {header_len} runs past the end of the file")
    rest = _read_exactly(f, size - _PREAMBLE.size)
    digest = hashlib.sha256()
    digest.update(_PREAMBLE.pack(MAGIC, version, header_len))
    view = memoryview(rest)
    digest.update(view[:-_DIGEST_SIZE])
    if digest.digest() != bytes(view[-_DIGEST_SIZE:]):
        raise _corrupt("its SHA-256 checksum does not match its content")
    try:
        header = codec.loads(bytes(view[:header_len]))
    except ValueError as err:
        raise _Refusal(f"the header is not valid JSON within skformer's limits: {err}.") from None
    if not isinstance(header, dict) or header.get("format") != "skformer":
        raise _Refusal("the header is not a skformer header.")
    return header, view[header_len:-_DIGEST_SIZE], version


def _tensors(index: Any, payload: memoryview) -> dict[str, torch.Tensor]:
    """Tensors from the payload, checked against the index; copies, never views."""
    if not isinstance(index, list):
        raise _Refusal(f"the tensor index must be a list; got {type(index).__name__}.")
    tensors: dict[str, torch.Tensor] = {}
    end = 0
    for entry in index:
        if not isinstance(entry, dict):
            raise _Refusal(f"a tensor index entry must be an object; got {entry!r}.")
        name, dtype = entry.get("name"), entry.get("dtype")
        shape, offset, length = entry.get("shape"), entry.get("offset"), entry.get("length")
        if not isinstance(name, str) or name in tensors:
            raise _Refusal(f"tensor names must be distinct strings; got {name!r}.")
        if dtype not in _TENSOR_DTYPES:
            raise _Refusal(
                f"tensor {name!r} has dtype {dtype!r}; expected one of {sorted(_TENSOR_DTYPES)}."
            )
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
            raise _Refusal(f"tensor {name!r}: shape must be a list of sizes; got {shape!r}.")
        np_dtype = _TENSOR_DTYPES[dtype]
        count = math.prod(shape)
        if type(length) is not int or length != count * np_dtype.itemsize:
            raise _Refusal(
                f"tensor {name!r}: shape {tuple(shape)} of {dtype} needs "
                f"{count * np_dtype.itemsize} bytes; the index says {length!r}."
            )
        if offset != end:
            raise _Refusal(
                f"tensor {name!r}: expected it at payload offset {end}; the index says {offset!r}."
            )
        if offset + length > len(payload):
            raise _Refusal(
                f"tensor {name!r}: bytes [{offset}, {offset + length}) run past the "
                f"{len(payload)}-byte payload."
            )
        arr = np.frombuffer(payload, dtype=np_dtype, count=count, offset=offset)
        if dtype == "bool" and arr.view(np.uint8).max(initial=0) > 1:
            raise _Refusal(f"tensor {name!r}: bool bytes must be 0 or 1.")
        tensors[name] = torch.from_numpy(arr.astype(np_dtype.newbyteorder("="), copy=True)
                                          .reshape(shape))
        end = offset + length
    if end != len(payload):
        raise _Refusal(
            f"the tensor index covers {end} bytes but the payload has {len(payload)}."
        )
    return tensors
