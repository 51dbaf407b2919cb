"""Persistence: pickle / joblib support, and a pickle-free file format.

Two ways to store a fitted :class:`~skformer.SimformerEstimator`:

``joblib.dump`` / ``pickle``
    :class:`PersistenceMixin` gives the estimator ``__getstate__`` / ``__setstate__``: the
    network is stored as a state dict of CPU tensors plus its architecture, the dynamics as its
    class name and constructor arguments, ``device_`` as a string, and the state is stamped
    with the skformer version. Unpickling rebuilds the network on ``resolve_device(device)``
    (a GPU when ``device="auto"`` and one is present; the CPU, with a ``RuntimeWarning``, when
    the saved CUDA device is absent) and warns with :class:`SkformerVersionWarning` when the
    version differs. Unpickling runs code from the file: only load pickles you trust.

:func:`save` / :func:`load`
    A small container that holds no pickle: magic bytes, a format version, a length-prefixed
    UTF-8 JSON header (parameters, fitted metadata and a tensor index) and the raw little-endian
    tensor bytes, then a SHA-256 of everything before it. Loading checks the magic, version,
    checksum, JSON, tensor dtypes (an allow-list) and shapes, and builds tensors with
    ``numpy.frombuffer``; nothing from the file is ever executed.

Layout of a file (all integers little-endian)::

    offset  size  content
    0       8     MAGIC = b"SKFORMER"
    8       4     format version (uint32)
    12      8     header length H (uint64)
    20      H     header: UTF-8 JSON
    20+H    P     payload: the tensors' bytes, back to back, in header order
    20+H+P  32    SHA-256 of bytes [0, 20+H+P)

Neither format stores training data or optimiser state: the estimator keeps neither.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import struct
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from skformer._utils import resolve_device
from skformer.layout import Layout
from skformer.network import MaskedTransformer

if TYPE_CHECKING:  # pragma: no cover - import cycle: estimator imports this module
    from skformer.estimator import SimformerEstimator

__all__ = [
    "PersistenceMixin",
    "SkformerVersionWarning",
    "save",
    "load",
    "MAGIC",
    "FORMAT_VERSION",
]

MAGIC = b"SKFORMER"
"""First bytes of every file :func:`save` writes."""

FORMAT_VERSION = 1
"""Version of the container :func:`save` writes; :func:`load` reads this one and older."""

_PREAMBLE = struct.Struct("<8sIQ")  # magic, format version, header length
_DIGEST_SIZE = hashlib.sha256().digest_size  # 32

# dtypes a tensor in a file may have: name -> little-endian numpy dtype
_TENSOR_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
    "bool": np.dtype("|b1"),
}
_TORCH_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.int64: "int64",
    torch.bool: "bool",
}

# dtypes a numpy array or scalar in the JSON header may have
_ARRAY_DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
     "float16", "float32", "float64"]
)
_BIT_GENERATORS = frozenset(["PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"])

# fitted attributes with their own representation; every other attribute goes through _encode
_SPECIAL_ATTRIBUTES = ("network_", "dynamics_", "layout_", "device_")
_ARCHITECTURE_KEYS = ("n_tokens", "d_model", "n_layers", "n_heads")
_NETWORK_PREFIX = "network."
_JOBLIB_HINT = (
    "To store it anyway, use joblib.dump (a pickle: only load it from a trusted source), or "
    "set the parameter to a value that save() supports before saving."
)


# ---------------------------------------------------------------------------------- versions
class SkformerVersionWarning(UserWarning):
    """A model saved by one skformer version is loaded by another.

    Like scikit-learn's ``InconsistentVersionWarning``: the model may still work, but nothing
    guarantees it.

    Parameters
    ----------
    estimator_name : str
        Class name of the loaded estimator.
    current_version : str
        The running skformer version.
    original_version : str
        The version that saved the model (``"unknown"`` when the file does not say).
    """

    def __init__(self, *, estimator_name: str, current_version: str, original_version: str):
        super().__init__(estimator_name, current_version, original_version)
        self.estimator_name = estimator_name
        self.current_version = current_version
        self.original_version = original_version

    def __str__(self) -> str:
        return (
            f"Loading {self.estimator_name} saved with skformer {self.original_version} while "
            f"running skformer {self.current_version}. This might fail or give different "
            "results; refit or save it again with this version to be sure."
        )


def _skformer_version() -> str:
    import skformer  # deferred: skformer/__init__ imports the estimator, which imports us

    return str(skformer.__version__)


def _check_version(original: Any, estimator_name: str) -> None:
    current = _skformer_version()
    if original != current:
        warnings.warn(
            SkformerVersionWarning(
                estimator_name=estimator_name,
                current_version=current,
                original_version="unknown" if original is None else str(original),
            ),
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------- pieces
def _architecture(network: torch.nn.Module, params: Mapping[str, Any]) -> dict[str, int]:
    """The MaskedTransformer constructor arguments, read from the module (params as fallback)."""
    blocks = getattr(network, "blocks", None)
    value = getattr(network, "value", None)
    return {
        "n_tokens": int(network.n_tokens),
        "d_model": int(value.out_features if value is not None else params["d_model"]),
        "n_layers": int(len(blocks) if blocks is not None else params["n_layers"]),
        "n_heads": int(blocks[0].n_heads if blocks else params["n_heads"]),
    }


def _cpu_state_dict(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The network's weights as CPU tensors that share nothing with the live module."""
    return {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}


def _build_network(
    architecture: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], device: torch.device
) -> MaskedTransformer:
    """Rebuild a MaskedTransformer, load its weights, move it to ``device``, eval mode.

    The architecture is checked against the tensors on the ``meta`` device first, so a file
    asking for a network larger than the weights it holds allocates nothing. The global torch
    RNG is left untouched.
    """
    if not isinstance(architecture, Mapping):
        raise ValueError(f"network architecture must be a mapping; got {architecture!r}.")
    arch = {}
    for key in _ARCHITECTURE_KEYS:
        v = architecture.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(
                f"network architecture needs a positive integer {key!r}; got {v!r}."
            )
        arch[key] = v
    with torch.device("meta"):
        skeleton = MaskedTransformer(**arch)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))
        unexpected = sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        raise ValueError(
            f"network weights do not fit a MaskedTransformer{tuple(arch.values())} "
            f"(n_tokens, d_model, n_layers, n_heads): missing {missing}, unexpected "
            f"{unexpected}, wrong shape {[(k, expected[k], got[k]) for k in wrong]}."
        )
    with torch.random.fork_rng(devices=[]):
        network = MaskedTransformer(**arch)
    network.load_state_dict(dict(state_dict))
    return network.to(device).requires_grad_(False).eval()


def _dynamics_classes() -> dict[str, type]:
    """Dynamics classes by class name and by ``name`` ("score", "flow")."""
    import skformer.dynamics as dynamics_module

    out: dict[str, type] = {}
    for export in getattr(dynamics_module, "__all__", []):
        cls = getattr(dynamics_module, export, None)
        if isinstance(cls, type) and hasattr(cls, "to_dict"):
            out[cls.__name__] = cls
            if isinstance(getattr(cls, "name", None), str):
                out.setdefault(cls.name, cls)
    return out


def _dynamics_spec(dynamics: Any) -> dict[str, Any]:
    return {
        "class": type(dynamics).__name__,
        "method": getattr(dynamics, "name", None),
        "kwargs": dict(dynamics.to_dict()),
    }


def _build_dynamics(spec: Any) -> Any:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("kwargs"), Mapping):
        raise ValueError(
            f"dynamics must be a mapping with 'class' and 'kwargs'; got {spec!r}."
        )
    classes = _dynamics_classes()
    cls = classes.get(spec.get("class")) or classes.get(spec.get("method"))
    if cls is None:
        known = sorted(k for k in classes if k[0].isupper())
        raise ValueError(
            f"unknown dynamics {spec.get('class')!r} (method {spec.get('method')!r}); this "
            f"skformer knows {known}."
        )
    kwargs = dict(spec["kwargs"])
    if not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"dynamics kwargs must have string keys; got {list(kwargs)}.")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(
            f"dynamics {cls.__name__} does not accept the stored arguments {kwargs}: {err}"
        ) from err


def _is_network_state(value: Any) -> bool:
    return isinstance(value, dict) and value.get("__skformer__") == "network"


# ---------------------------------------------------------------------------------- pickling
class PersistenceMixin:
    """Pickle / joblib support for :class:`~skformer.SimformerEstimator`.

    ``__getstate__`` returns a copy of the instance dict in which the network is a state dict
    of CPU tensors (with the architecture to rebuild it), the dynamics its class name and
    ``to_dict()``, ``device_`` a string, stamped with ``_skformer_version``. ``__setstate__``
    rebuilds the network on ``resolve_device(self.device)`` in eval mode, sets ``device_`` to
    where it landed, and warns with :class:`SkformerVersionWarning` when the stamped version is
    not the running one. Unfitted estimators pickle as their parameters.

    Examples
    --------
    >>> import pickle
    >>> import numpy as np
    >>> from skformer import SimformerEstimator
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 2))
    >>> est = SimformerEstimator(d_model=16, n_layers=1, n_heads=2, max_epochs=2,
    ...                          device="cpu", random_state=0).fit(X)
    >>> copy = pickle.loads(pickle.dumps(est))
    >>> bool(np.array_equal(copy.sample(3, random_state=0), est.sample(3, random_state=0)))
    True
    """

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # BaseEstimator's: the live __dict__ on Python >= 3.11
        state = dict(self.__dict__ if state is None else state)  # a copy: never edit the live one
        network = state.get("network_")
        if isinstance(network, torch.nn.Module):
            state["network_"] = {
                "__skformer__": "network",
                "architecture": _architecture(network, state),
                "state_dict": _cpu_state_dict(network),
            }
        dynamics = state.get("dynamics_")
        if dynamics is not None and hasattr(dynamics, "to_dict"):
            state["dynamics_"] = {"__skformer__": "dynamics", **_dynamics_spec(dynamics)}
        if isinstance(state.get("device_"), torch.device):
            state["device_"] = str(state["device_"])
        state["_skformer_version"] = _skformer_version()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        _check_version(state.pop("_skformer_version", None), type(self).__name__)
        network = state.pop("network_", None)
        dynamics = state.pop("dynamics_", None)
        device = state.pop("device_", None)  # recomputed below when there is a network
        parent = getattr(super(), "__setstate__", None)
        if parent is not None:
            parent(state)  # BaseEstimator's: checks _sklearn_version, fills __dict__
        else:
            self.__dict__.update(state)
        if isinstance(dynamics, dict) and dynamics.get("__skformer__") == "dynamics":
            dynamics = _build_dynamics(dynamics)
        if dynamics is not None:
            self.dynamics_ = dynamics
        if network is not None:
            device = resolve_device(getattr(self, "device", "auto"))
            if _is_network_state(network):
                network = _build_network(network["architecture"], network["state_dict"], device)
            else:  # a module pickled as is (by an older skformer): just move it
                network = network.to(device).eval()
            self.network_ = network
        if device is not None:
            self.device_ = torch.device(device)


# ---------------------------------------------------------------------------------- JSON values
def _encode(value: Any, where: str) -> Any:
    """A parameter or attribute value -> JSON, tagging what JSON cannot say itself.

    Lists, str, int, float, bool and None are themselves; tuples, sets, dicts, numpy arrays and
    scalars, torch devices and numpy random states become ``{"__type__": ..., "value": ...}``
    so that :func:`_decode` gives back an equal value of the same type. Anything else (a
    callable, a tensor, an arbitrary object) raises ValueError naming ``where``.
    """
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple) and type(value) is tuple:
        return {"__type__": "tuple",
                "value": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, (set, frozenset)):
        items = [_encode(v, f"{where} element") for v in value]
        return {"__type__": type(value).__name__, "value": items}
    if isinstance(value, dict) and type(value) is dict:
        return {"__type__": "dict",
                "value": [[_encode(k, f"{where} key"), _encode(v, f"{where}[{k!r}]")]
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
                f"stores Generators on {sorted(_BIT_GENERATORS)}. {_JOBLIB_HINT}"
            )
        return {"__type__": "Generator", "value": _encode(state, where)}
    if callable(value):
        name = getattr(value, "__qualname__", type(value).__name__)
        raise ValueError(
            f"{where} is a callable ({name}), which a pickle-free file cannot hold: save() "
            f"stores data, not code. {_JOBLIB_HINT}"
        )
    raise ValueError(
        f"{where} holds a {type(value).__module__}.{type(value).__qualname__}, which save() "
        "cannot store: expected None, bool, int, float, str, lists, tuples, sets, dicts, numpy "
        f"arrays or scalars, a torch.device or a numpy random state. {_JOBLIB_HINT}"
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
            f"{sorted(_ARRAY_DTYPES)} or of strings. {_JOBLIB_HINT}"
        )
    values = [str(v) for v in arr.flat] if dtype in ("str", "object-str") else arr.ravel().tolist()
    return {"__type__": "ndarray", "dtype": dtype, "shape": list(arr.shape), "value": values}


def _decode(value: Any, where: str) -> Any:
    """Inverse of :func:`_encode`; raises ValueError for anything it would not have written."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v, where) for v in value]
    if not isinstance(value, dict) or "__type__" not in value:
        raise ValueError(f"{where}: expected a JSON value written by save(); got {value!r}.")
    kind, v = value["__type__"], value.get("value")
    if kind == "tuple" and isinstance(v, list):
        return tuple(_decode(x, where) for x in v)
    if kind in ("set", "frozenset") and isinstance(v, list):
        items = [_decode(x, where) for x in v]
        try:
            return set(items) if kind == "set" else frozenset(items)
        except TypeError as err:
            raise ValueError(f"{where}: a set holds unhashable values.") from err
    if kind == "dict" and isinstance(v, list):
        if not all(isinstance(p, list) and len(p) == 2 for p in v):
            raise ValueError(f"{where}: a dict must be a list of [key, value] pairs.")
        try:
            return {_decode(k, where): _decode(x, where) for k, x in v}
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
        state = _decode(v, where)
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


# ---------------------------------------------------------------------------------- save
def _tensor_entry(name: str, tensor: torch.Tensor) -> tuple[dict[str, Any], bytes]:
    dtype = _TORCH_DTYPE_NAMES.get(tensor.dtype)
    if dtype is None:
        raise ValueError(
            f"tensor {name!r} has dtype {tensor.dtype}; save() stores "
            f"{sorted(_TENSOR_DTYPES)}. {_JOBLIB_HINT}"
        )
    arr = tensor.detach().cpu().contiguous().numpy().astype(_TENSOR_DTYPES[dtype], copy=False)
    data = arr.tobytes(order="C")
    return {"name": name, "dtype": dtype, "shape": list(arr.shape), "length": len(data)}, data


def _to_bytes(estimator: SimformerEstimator) -> bytes:
    """Serialise a fitted estimator to the container, in memory (the file is written later)."""
    params = estimator.get_params(deep=False)
    attributes = {k: v for k, v in vars(estimator).items() if k not in params}
    header_params = {k: _encode(v, f"parameter {k!r}") for k, v in params.items()}

    network = attributes["network_"]
    if not isinstance(network, MaskedTransformer):
        raise ValueError(
            f"network_ must be a MaskedTransformer to be saved; got {type(network).__name__}. "
            f"{_JOBLIB_HINT}"
        )
    layout = attributes["layout_"]
    if not isinstance(layout, Layout):
        raise ValueError(f"layout_ must be a Layout to be saved; got {type(layout).__name__}.")
    fitted = {
        k: _encode(v, f"fitted attribute {k!r}")
        for k, v in attributes.items()
        if k not in _SPECIAL_ATTRIBUTES
    }
    index, chunks, offset = [], [], 0
    for key, tensor in network.state_dict().items():
        entry, data = _tensor_entry(_NETWORK_PREFIX + key, tensor)
        entry["offset"] = offset
        offset += len(data)
        index.append(entry)
        chunks.append(data)
    header = {
        "format": "skformer",
        "skformer_version": _skformer_version(),
        "estimator": type(estimator).__name__,
        "params": header_params,
        "layout": layout.to_dict(),
        "device": str(attributes.get("device_", "cpu")),
        "dynamics": _dynamics_spec(attributes["dynamics_"]),
        "network": _architecture(network, params),
        "fitted": fitted,
        "tensors": index,
    }
    try:
        header_bytes = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as err:  # a dynamics kwarg that is no JSON value
        raise ValueError(f"the model's metadata is not JSON-serialisable: {err}") from err
    body = b"".join(
        [_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header_bytes)), header_bytes, *chunks]
    )
    return body + hashlib.sha256(body).digest()


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``."""
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


def _check_path(path: str | os.PathLike[str]) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}.")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"expected a file path; got {path!r}, which is a directory.")
    return path


def save(estimator: SimformerEstimator, path: str | os.PathLike[str]) -> None:
    """Save a fitted estimator to ``path`` in skformer's pickle-free format.

    The file holds the parameters, the fitted metadata and the network weights; no code, no
    training data and no optimiser state. It is written to a temporary file first and renamed
    into place, so a failed save leaves ``path`` as it was.

    Parameters
    ----------
    estimator : SimformerEstimator
        A fitted estimator.
    path : str or os.PathLike
        Where to write (conventionally ``*.skf``); an existing file is replaced.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        When the estimator is not fitted.
    ValueError
        When a parameter or attribute cannot be stored without pickle (a callable
        ``condition_masks`` or ``edge_masks``, say), or ``path`` is a directory.

    See Also
    --------
    load : read the file back.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skformer import SimformerEstimator
    >>> from skformer.persistence import load, save
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 2))
    >>> est = SimformerEstimator(d_model=16, n_layers=1, n_heads=2, max_epochs=2,
    ...                          device="cpu", random_state=0).fit(X)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     save(est, os.path.join(tmp, "model.skf"))
    ...     loaded = load(os.path.join(tmp, "model.skf"))
    >>> bool(np.array_equal(loaded.sample(3, random_state=0), est.sample(3, random_state=0)))
    True
    """
    from sklearn.utils.validation import check_is_fitted

    from skformer.estimator import SimformerEstimator

    if not isinstance(estimator, SimformerEstimator):
        raise TypeError(f"save() stores a SimformerEstimator; got {type(estimator).__name__}.")
    check_is_fitted(estimator, "network_")
    path = _check_path(path)
    data = _to_bytes(estimator)  # everything that can fail on the model fails before any I/O
    _write_atomic(path, data)


# ---------------------------------------------------------------------------------- load
def _corrupt(detail: str) -> ValueError:
    return ValueError(f"the skformer file is corrupt or truncated: {detail}.")


def _parse(data: bytes, path: str) -> tuple[dict[str, Any], memoryview]:
    """Check magic, version and checksum; return the header and the payload."""
    head = data[: len(MAGIC)]
    if head != MAGIC:
        hint = ""
        if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            hint = (" It looks like a pickle (e.g. from joblib.dump): read it with joblib.load, "
                    "and only if you trust its source.")
        raise ValueError(
            f"{path!r} is not a skformer file: expected it to start with {MAGIC!r}, got "
            f"{head!r} ({len(data)} bytes in all).{hint}"
        )
    if len(data) < _PREAMBLE.size:
        raise _corrupt(f"{len(data)} bytes is shorter than the {_PREAMBLE.size}-byte preamble")
    _, version, header_len = _PREAMBLE.unpack_from(data)
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} uses skformer file format version {version}, but this skformer "
            f"({_skformer_version()}) reads versions up to {FORMAT_VERSION}: upgrade skformer to "
            "load it."
        )
    if version < 1:
        raise ValueError(f"{path!r} has file format version {version}; expected 1 to "
                         f"{FORMAT_VERSION}.")
    if len(data) < _PREAMBLE.size + _DIGEST_SIZE:
        raise _corrupt(f"{len(data)} bytes leaves no room for the checksum")
    view = memoryview(data)
    body, digest = view[:-_DIGEST_SIZE], view[-_DIGEST_SIZE:]
    if hashlib.sha256(body).digest() != digest:
        raise _corrupt("its SHA-256 checksum does not match its content")
    if _PREAMBLE.size + header_len > len(body):
        raise _corrupt(f"the header length {header_len} runs past the end of the file")
    try:
        header = json.loads(bytes(body[_PREAMBLE.size : _PREAMBLE.size + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path!r}: the header is not valid UTF-8 JSON ({err}).") from err
    if not isinstance(header, dict) or header.get("format") != "skformer":
        raise ValueError(f"{path!r}: the header is not a skformer header.")
    return header, body[_PREAMBLE.size + header_len :]


def _read_tensors(index: Any, payload: memoryview) -> dict[str, torch.Tensor]:
    """Tensors from the payload, checked against the index; a copy, never a view."""
    if not isinstance(index, list):
        raise ValueError(f"the tensor index must be a list; got {type(index).__name__}.")
    tensors: dict[str, torch.Tensor] = {}
    end = 0
    for entry in index:
        if not isinstance(entry, dict):
            raise ValueError(f"a tensor index entry must be an object; got {entry!r}.")
        name, dtype = entry.get("name"), entry.get("dtype")
        shape, offset, length = entry.get("shape"), entry.get("offset"), entry.get("length")
        if not isinstance(name, str) or name in tensors:
            raise ValueError(f"tensor names must be distinct strings; got {name!r}.")
        if dtype not in _TENSOR_DTYPES:
            raise ValueError(
                f"tensor {name!r} has dtype {dtype!r}; expected one of {sorted(_TENSOR_DTYPES)}."
            )
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
            raise ValueError(f"tensor {name!r}: shape must be a list of sizes; got {shape!r}.")
        np_dtype = _TENSOR_DTYPES[dtype]
        count = math.prod(shape)
        if type(length) is not int or length != count * np_dtype.itemsize:
            raise ValueError(
                f"tensor {name!r}: shape {tuple(shape)} of {dtype} needs "
                f"{count * np_dtype.itemsize} bytes; the index says {length!r}."
            )
        if offset != end:
            raise ValueError(
                f"tensor {name!r}: expected it at payload offset {end}; the index says {offset!r}."
            )
        if offset + length > len(payload):
            raise ValueError(
                f"tensor {name!r}: bytes [{offset}, {offset + length}) run past the "
                f"{len(payload)}-byte payload."
            )
        arr = np.frombuffer(payload, dtype=np_dtype, count=count, offset=offset)
        if dtype == "bool" and arr.view(np.uint8).max(initial=0) > 1:
            raise ValueError(f"tensor {name!r}: bool bytes must be 0 or 1.")
        tensors[name] = torch.from_numpy(arr.astype(np_dtype.newbyteorder("="), copy=True)
                                          .reshape(shape))
        end = offset + length
    if end != len(payload):
        raise ValueError(
            f"the tensor index covers {end} bytes but the payload has {len(payload)}."
        )
    return tensors


def load(path: str | os.PathLike[str]) -> SimformerEstimator:
    """Load an estimator written by :func:`save`, without pickle.

    The file is checked before anything is built: magic bytes, format version, SHA-256
    checksum, JSON header, tensor dtypes (float32, float64, int64, bool) and shapes. Tensors are
    read with ``numpy.frombuffer``; nothing in the file is executed. The network goes to
    ``resolve_device(device)`` of the saved parameters: ``"auto"`` picks a GPU when present,
    and a CUDA device that is not available falls back to the CPU with a ``RuntimeWarning``.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save`.

    Returns
    -------
    SimformerEstimator
        The fitted estimator, in eval mode, ``device_`` set to where the network is.

    Raises
    ------
    ValueError
        For a file that is not a skformer file, uses a newer format version, is corrupt or
        truncated, or holds values outside what :func:`save` writes; for a directory path.

    Warns
    -----
    SkformerVersionWarning
        When the file was written by another skformer version.

    See Also
    --------
    save : write such a file.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skformer import SimformerEstimator
    >>> from skformer.persistence import load, save
    >>> X = np.random.default_rng(0).normal(size=(200, 3))
    >>> est = SimformerEstimator(d_model=16, n_layers=1, n_heads=2, max_epochs=2,
    ...                          device="cpu", random_state=0).fit(X)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     save(est, os.path.join(tmp, "model.skf"))
    ...     loaded = load(os.path.join(tmp, "model.skf"))
    >>> loaded.condition([True, False, False]).sample(4, observed=[0.5]).shape
    (4, 2)
    """
    from skformer.estimator import SimformerEstimator

    path = _check_path(path)
    with open(path, "rb") as f:
        data = f.read()
    header, payload = _parse(data, path)
    if header.get("estimator") != SimformerEstimator.__name__:
        raise ValueError(
            f"{path!r} holds a {header.get('estimator')!r}; expected a "
            f"{SimformerEstimator.__name__}."
        )
    _check_version(header.get("skformer_version"), SimformerEstimator.__name__)

    est = SimformerEstimator()
    known = est.get_params(deep=False)
    params = header.get("params")
    if not isinstance(params, dict):
        raise ValueError(f"{path!r}: 'params' must be an object; got {params!r}.")
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"{path!r} sets parameters {unknown} that this skformer's SimformerEstimator does "
            f"not have (it has {sorted(known)}); it was written by skformer "
            f"{header.get('skformer_version')}."
        )
    fitted = header.get("fitted")
    if not isinstance(fitted, dict):
        raise ValueError(f"{path!r}: 'fitted' must be an object; got {fitted!r}.")
    bad = sorted(
        str(k) for k in fitted
        if not k.isidentifier() or k.startswith("__") or k in known
        or k in _SPECIAL_ATTRIBUTES or hasattr(SimformerEstimator, k)
    )
    if bad:
        raise ValueError(
            f"{path!r}: fitted attribute names must be new identifiers that shadow no parameter "
            f"or method; got {bad}."
        )
    try:
        params = {k: _decode(v, f"parameter {k!r}") for k, v in params.items()}
        attributes = {k: _decode(v, f"fitted attribute {k!r}") for k, v in fitted.items()}
    except RecursionError as err:
        raise ValueError(f"{path!r}: the header nests values too deeply.") from err
    est.set_params(**params)

    try:
        layout = Layout.from_dict(header["layout"])
        # from_dict trusts its input; from_spec checks the groups partition the columns
        Layout.from_spec(layout.n_columns, [list(g) for g in layout.groups], layout.names)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path!r}: invalid layout {header.get('layout')!r}.") from err
    dynamics = _build_dynamics(header.get("dynamics"))
    tensors = _read_tensors(header.get("tensors"), payload)
    extra = sorted(k for k in tensors if not k.startswith(_NETWORK_PREFIX))
    if extra:
        raise ValueError(f"{path!r}: unexpected tensors {extra}.")
    state_dict = {k[len(_NETWORK_PREFIX) :]: v for k, v in tensors.items()}
    architecture = header.get("network")
    if not isinstance(architecture, dict) or architecture.get("n_tokens") != layout.n_columns:
        raise ValueError(
            f"{path!r}: the network's n_tokens ({architecture!r}) does not match the layout's "
            f"{layout.n_columns} columns."
        )
    for name in ("mean_", "scale_"):
        arr = attributes.get(name)
        if not isinstance(arr, np.ndarray) or arr.shape != (layout.n_columns,):
            raise ValueError(
                f"{path!r}: {name} must be an array of shape ({layout.n_columns},); got "
                f"{getattr(arr, 'shape', arr)!r}."
            )

    device = resolve_device(est.device)
    network = _build_network(architecture, state_dict, device)
    vars(est).update(attributes)
    est.layout_ = layout
    est.dynamics_ = dynamics
    est.network_ = network
    est.device_ = device
    return est
