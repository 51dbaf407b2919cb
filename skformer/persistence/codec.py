"""Python values <-> JSON, for the pickle-free file format; knows nothing of skformer's classes.

:func:`encode` turns parameter and attribute values into JSON values, tagging what JSON cannot
say itself (tuples, sets, dicts with non-string keys, numpy arrays and scalars, torch devices,
numpy random states) as ``{"__type__": ..., "value": ...}``; :func:`decode` gives back an equal
value of the same type and refuses anything :func:`encode` would not have written. Nothing is
ever executed or imported by name.

Limits of its own, the same on every Python version: :func:`loads` refuses JSON nested deeper
than :data:`MAX_DEPTH` before parsing it, and integers longer than :data:`MAX_INT_DIGITS`
digits; :func:`encode` refuses values nested deeper than :data:`MAX_DEPTH`, so what it writes
can always be read back.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

__all__ = ["MAX_DEPTH", "MAX_VALUE_DEPTH", "MAX_INT_DIGITS", "encode", "decode", "loads", "dumps",
           "json_depth", "PICKLE_HINT"]

MAX_DEPTH = 64
"""Deepest nesting of JSON arrays and objects accepted (a model's own header needs about 10)."""
MAX_VALUE_DEPTH = (MAX_DEPTH - 8) // 2
"""Deepest nesting of a value :func:`encode` writes (a tagged value takes two JSON levels; a
header wraps values in a few more)."""
MAX_INT_DIGITS = 40
"""Longest integer accepted, in digits (a 128-bit random-generator state has 39)."""

PICKLE_HINT = (
    "To store it anyway, use joblib.dump (a pickle: only load it from a trusted source), or "
    "set the parameter to a value that save() supports before saving."
)

_ARRAY_DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
     "float16", "float32", "float64"]
)
_BIT_GENERATORS = frozenset(["PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"])


# ---------------------------------------------------------------------------------- JSON text
def json_depth(raw: bytes | str) -> int:
    """Deepest nesting of arrays and objects in JSON text, without parsing it (linear scan)."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(digits.lstrip('-'))} digits is longer than the "
                         f"{MAX_INT_DIGITS} digits allowed")
    return int(digits)


def loads(raw: bytes) -> Any:
    """Parse UTF-8 JSON text within :data:`MAX_DEPTH` and :data:`MAX_INT_DIGITS`.

    Raises ValueError (never RecursionError), whatever the Python version.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 ({err})") from err
    depth = json_depth(text)
    if depth > MAX_DEPTH:
        raise ValueError(f"JSON nested {depth} levels deep; at most {MAX_DEPTH} are allowed")
    try:
        return json.loads(text, parse_int=_parse_int)
    except RecursionError as err:  # pragma: no cover - MAX_DEPTH is far below the limit
        raise ValueError("JSON nested too deeply") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err})") from err


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------- values
def encode(value: Any, where: str, _depth: int = 0) -> Any:
    """A parameter or attribute value -> JSON, tagging what JSON cannot say itself.

    Lists, str, int, float, bool and None are themselves; tuples, sets, dicts, numpy arrays and
    scalars, torch devices and numpy random states become ``{"__type__": ..., "value": ...}``
    so that :func:`decode` gives back an equal value of the same type. Anything else (a
    callable, a tensor, an arbitrary object) raises ValueError naming ``where``, as does a
    value nested more than :data:`MAX_VALUE_DEPTH` levels deep.
    """
    if _depth > MAX_VALUE_DEPTH:
        raise ValueError(f"{where} is nested more than {MAX_VALUE_DEPTH} levels deep.")
    d = _depth + 1
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, list):
        return [encode(v, f"{where}[{i}]", d) for i, v in enumerate(value)]
    if isinstance(value, tuple) and type(value) is tuple:
        return {"__type__": "tuple",
                "value": [encode(v, f"{where}[{i}]", d) for i, v in enumerate(value)]}
    if isinstance(value, (set, frozenset)):
        items = [encode(v, f"{where} element", d) for v in value]
        return {"__type__": type(value).__name__, "value": items}
    if isinstance(value, dict) and type(value) is dict:
        return {"__type__": "dict",
                "value": [[encode(k, f"{where} key", d), encode(v, f"{where}[{k!r}]", d)]
                          for k, v in value.items()]}
    if isinstance(value, np.ndarray):
        return _encode_array(value, where)
    if isinstance(value, np.generic) and value.dtype.name in _ARRAY_DTYPES:
        return {"__type__": "numpy_scalar", "dtype": value.dtype.name, "value": value.item()}
    if isinstance(value, np.str_):
        return {"__type__": "numpy_scalar", "dtype": "str", "value": str(value)}
    if isinstance(value, str):  # another str subclass: stored as its text
        return str(value)
    if isinstance(value, torch.device):
        return {"__type__": "torch.device", "value": str(value)}
    if isinstance(value, np.random.RandomState):
        _, keys, pos, has_gauss, cached = value.get_state(legacy=True)
        return {"__type__": "RandomState",
                "value": {"keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                          "cached_gaussian": float(cached)}}
    if isinstance(value, np.random.Generator):
        state = value.bit_generator.state
        if state.get("bit_generator") not in _BIT_GENERATORS:
            raise ValueError(
                f"{where} is a numpy Generator on {state.get('bit_generator')!r}; save() "
                f"stores Generators on {sorted(_BIT_GENERATORS)}. {PICKLE_HINT}"
            )
        return {"__type__": "Generator", "value": encode(state, where, d)}
    if callable(value):
        name = getattr(value, "__qualname__", type(value).__name__)
        raise ValueError(
            f"{where} is a callable ({name}), which a pickle-free file cannot hold: save() "
            f"stores data, not code. {PICKLE_HINT}"
        )
    raise ValueError(
        f"{where} holds a {type(value).__module__}.{type(value).__qualname__}, which save() "
        "cannot store: expected None, bool, int, float, str, lists, tuples, sets, dicts, numpy "
        f"arrays or scalars, a torch.device or a numpy random state. {PICKLE_HINT}"
    )


def _encode_array(arr: np.ndarray, where: str) -> dict[str, Any]:
    if arr.dtype.name in _ARRAY_DTYPES:
        dtype = arr.dtype.name
    elif arr.dtype.kind == "U":
        dtype = "str"
    elif arr.dtype == object and all(isinstance(v, str) for v in arr.flat):
        dtype = "object-str"
    else:
        raise ValueError(
            f"{where} is a numpy array of dtype {arr.dtype}; save() stores arrays of "
            f"{sorted(_ARRAY_DTYPES)} or of strings. {PICKLE_HINT}"
        )
    values = [str(v) for v in arr.flat] if dtype in ("str", "object-str") else arr.ravel().tolist()
    return {"__type__": "ndarray", "dtype": dtype, "shape": list(arr.shape), "value": values}


def decode(value: Any, where: str) -> Any:
    """Inverse of :func:`encode`; raises ValueError for anything it would not have written."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [decode(v, where) for v in value]
    if not isinstance(value, dict) or "__type__" not in value:
        raise ValueError(f"{where}: expected a JSON value written by save(); got {value!r}.")
    kind, v = value["__type__"], value.get("value")
    if kind == "tuple" and isinstance(v, list):
        return tuple(decode(x, where) for x in v)
    if kind in ("set", "frozenset") and isinstance(v, list):
        items = [decode(x, where) for x in v]
        try:
            return set(items) if kind == "set" else frozenset(items)
        except TypeError as err:
            raise ValueError(f"{where}: a set holds unhashable values.") from err
    if kind == "dict" and isinstance(v, list):
        if not all(isinstance(p, list) and len(p) == 2 for p in v):
            raise ValueError(f"{where}: a dict must be a list of [key, value] pairs.")
        try:
            return {decode(k, where): decode(x, where) for k, x in v}
        except TypeError as err:
            raise ValueError(f"{where}: a dict has an unhashable key.") from err
    if kind == "ndarray":
        return _decode_array(value, where)
    if kind == "numpy_scalar":
        dtype = value.get("dtype")
        if dtype == "str" and isinstance(v, str):
            return np.str_(v)
        if dtype in _ARRAY_DTYPES and isinstance(v, (bool, int, float)):
            return np.dtype(dtype).type(v)
    if kind == "torch.device" and isinstance(v, str):
        try:
            return torch.device(v)
        except (RuntimeError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: {v!r} is not a torch device.") from err
    if kind == "RandomState" and isinstance(v, dict):
        keys = v.get("keys")
        if not isinstance(keys, list) or len(keys) != 624:
            raise ValueError(f"{where}: a RandomState needs 624 MT19937 keys.")
        rs = np.random.RandomState()
        try:
            rs.set_state(("MT19937", np.array(keys, dtype=np.uint32), int(v["pos"]),
                          int(v["has_gauss"]), float(v["cached_gaussian"])))
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            raise ValueError(f"{where}: invalid RandomState state ({err}).") from err
        return rs
    if kind == "Generator":
        state = decode(v, where)
        name = state.get("bit_generator") if isinstance(state, dict) else None
        if name not in _BIT_GENERATORS:
            raise ValueError(
                f"{where}: a Generator needs a bit generator among {sorted(_BIT_GENERATORS)}; "
                f"got {name!r}."
            )
        bit_generator = getattr(np.random, name)()
        try:
            bit_generator.state = state
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            raise ValueError(f"{where}: invalid {name} state ({err}).") from err
        return np.random.Generator(bit_generator)
    raise ValueError(f"{where}: unknown or malformed tagged value {value!r}.")


def _decode_array(value: dict[str, Any], where: str) -> np.ndarray:
    dtype, shape, data = value.get("dtype"), value.get("shape"), value.get("value")
    if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
        raise ValueError(f"{where}: an array shape must be a list of sizes; got {shape!r}.")
    if not isinstance(data, list) or len(data) != math.prod(shape):
        raise ValueError(
            f"{where}: an array of shape {tuple(shape)} needs {math.prod(shape)} values."
        )
    if dtype in ("str", "object-str"):
        if not all(isinstance(x, str) for x in data):
            raise ValueError(f"{where}: a string array holds non-strings.")
        if dtype == "str":
            return np.array(data, dtype=str).reshape(shape)
        out = np.empty(len(data), dtype=object)
        out[:] = data
        return out.reshape(shape)
    if dtype not in _ARRAY_DTYPES:
        raise ValueError(
            f"{where}: array dtype must be one of {sorted(_ARRAY_DTYPES)} or a string array; "
            f"got {dtype!r}."
        )
    if not all(isinstance(x, (bool, int, float)) for x in data):
        raise ValueError(f"{where}: a numeric array holds non-numbers.")
    try:
        return np.array(data, dtype=dtype).reshape(shape)
    except (OverflowError, ValueError) as err:
        raise ValueError(f"{where}: values do not fit dtype {dtype} ({err}).") from err

