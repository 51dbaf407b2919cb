"""Persistence: pickle / joblib round trips and the pickle-free skformer file format."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import struct
import time
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils.validation import check_is_fitted

import skformer
from skformer import SimformerEstimator, SkformerVersionWarning, load, save
from skformer.layout import Layout
from skformer.persistence import FORMAT_VERSION, MAGIC

from _data import seed_task

DATA = os.path.join(os.path.dirname(__file__), "data")

SMALL = dict(d_model=16, n_layers=1, n_heads=2, max_epochs=2, batch_size=64)
OBSERVED = np.ones(3)
N_ROWS = 300


def small(dev, **kw) -> SimformerEstimator:
    params = dict(SMALL, random_state=0, device=str(dev))
    params.update(kw)
    return SimformerEstimator(**params)


def fit_quietly(est: SimformerEstimator, X) -> SimformerEstimator:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X)


def draw(est: SimformerEstimator) -> np.ndarray:
    return est.condition([False, True]).sample(20, observed=OBSERVED, random_state=0, steps=5)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return seed_task(N_ROWS, seed=1)


@pytest.fixture(scope="module")
def fitted(data, device) -> SimformerEstimator:
    """A small score model fitted on the test device (``--device``)."""
    return fit_quietly(small(device), data)


@pytest.fixture(scope="module")
def cpu_fitted(fitted, data, device) -> SimformerEstimator:
    """The same model on the CPU (the fixture above when the tests run on the CPU)."""
    return fitted if device.type == "cpu" else fit_quietly(small("cpu"), data)


# ---------------------------------------------------------------------------------- helpers
def assert_same(a, b, where: str = "value") -> None:
    """Equal values of the same type, recursively; arrays, tensors, modules, RNGs included."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape}"
        assert a.tolist() == b.tolist(), where
    elif isinstance(a, np.random.RandomState):
        sa, sb = a.get_state(legacy=True), b.get_state(legacy=True)
        assert sa[0] == sb[0] and np.array_equal(sa[1], sb[1]) and sa[2:] == sb[2:], where
    elif isinstance(a, np.random.Generator):
        assert_same(a.bit_generator.state, b.bit_generator.state, where)
    elif isinstance(a, torch.nn.Module):
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb), where
        for k in sa:
            assert sa[k].dtype == sb[k].dtype, f"{where}.{k}"
            assert torch.equal(sa[k].cpu(), sb[k].cpu()), f"{where}.{k}"
        assert a.training == b.training, f"{where}: training mode"
        assert [p.requires_grad for p in a.parameters()] == [
            p.requires_grad for p in b.parameters()
        ], f"{where}: requires_grad"
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, Layout) or not hasattr(a, "__dict__") or isinstance(a, torch.device):
        assert a == b, f"{where}: {a!r} != {b!r}"
    else:  # dynamics and other plain objects: same attributes
        assert_same(vars(a), vars(b), where)


def assert_same_estimator(a: SimformerEstimator, b: SimformerEstimator) -> None:
    pa, pb = a.get_params(deep=False), b.get_params(deep=False)
    assert_same(pa, pb, "params")
    assert sorted(vars(a)) == sorted(vars(b))
    for k in vars(a):
        if k not in pa:
            assert_same(getattr(a, k), getattr(b, k), k)


def file_bytes(est: SimformerEstimator, fmt: str, tmp_path) -> bytes:
    path = tmp_path / f"model.{fmt}"
    if fmt == "pickle":
        path.write_bytes(pickle.dumps(est))
    elif fmt == "joblib":
        joblib.dump(est, path)
    else:
        save(est, path)
    return path.read_bytes()


def round_trip(est: SimformerEstimator, fmt: str, tmp_path) -> SimformerEstimator:
    path = tmp_path / f"round_trip.{fmt}"
    if fmt == "pickle":
        return pickle.loads(pickle.dumps(est))
    if fmt == "joblib":
        joblib.dump(est, path)
        return joblib.load(path)
    save(est, path)
    return load(path)


def split_file(data: bytes) -> tuple[int, dict, bytes]:
    """(format version, header, payload) of a skformer file, parsed independently of skformer."""
    magic, version, header_len = struct.unpack_from("<8sIQ", data)
    assert magic == MAGIC
    header = json.loads(data[20 : 20 + header_len])
    return version, header, data[20 + header_len : -32]


def build_file(version: int, header: dict | bytes, payload: bytes) -> bytes:
    """A skformer file with a valid checksum around whatever header and payload are given."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = struct.pack("<8sIQ", MAGIC, version, len(raw)) + raw + payload
    return body + hashlib.sha256(body).digest()


def replace_tensor(header: dict, payload: bytes, name: str, values: np.ndarray) -> bytes:
    """Swap one tensor's bytes (and shape) in a parsed file; later offsets follow."""
    chunks, offset = [], 0
    for entry in header["tensors"]:
        data = payload[entry["offset"] : entry["offset"] + entry["length"]]
        if entry["name"] == name:
            data = values.astype(values.dtype.newbyteorder("<")).tobytes()
            entry.update(shape=list(values.shape), length=len(data),
                         dtype=values.dtype.name)
        entry["offset"] = offset
        offset += len(data)
        chunks.append(data)
    return b"".join(chunks)


FORMATS = ["pickle", "joblib", "skf"]


# ---------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_gives_identical_samples_params_and_attributes(fitted, fmt, tmp_path):
    expected = draw(fitted)
    loaded = round_trip(fitted, fmt, tmp_path)
    np.testing.assert_array_equal(draw(loaded), expected)
    assert_same_estimator(fitted, loaded)
    assert not loaded.network_.training
    assert loaded.device_ == fitted.device_
    assert next(loaded.network_.parameters()).device.type == fitted.device_.type
    # the original is untouched (BaseEstimator's state is the live __dict__)
    assert isinstance(fitted.network_, torch.nn.Module)
    assert isinstance(fitted.device_, torch.device)
    np.testing.assert_array_equal(draw(fitted), expected)


@pytest.fixture(scope="module", params=[dict(method="flow"), dict(method="score", sde="vp")],
                ids=["flow", "score-vp"])
def other_dynamics(request, data, device) -> SimformerEstimator:
    return fit_quietly(small(device, max_epochs=1, **request.param), data[:200])


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_other_dynamics(other_dynamics, fmt, tmp_path):
    est = other_dynamics
    loaded = round_trip(est, fmt, tmp_path)
    assert type(loaded.dynamics_) is type(est.dynamics_)
    assert loaded.dynamics_.config() == est.dynamics_.config()
    np.testing.assert_array_equal(draw(loaded), draw(est))


@pytest.fixture(scope="module")
def exotic(device, data) -> SimformerEstimator:
    """Parameters of every type the estimator accepts, fitted on a DataFrame."""
    columns = ["t0", "t1", "t2", "x0", "x1", "x2"]
    df = pd.DataFrame(data.reshape(len(data), -1), columns=columns)
    est = small(
        device,
        device=torch.device(device),
        variables={"theta": ["t0", "t1", "t2"], "x": ["x0", "x1", "x2"]},
        condition_masks={(False, True), (True, False), (False, False)},
        edge_masks=np.ones((2, 2), dtype=bool),
        posterior_latent=(0,),
        posterior_observed=[1],
        learning_rate=np.float64(3e-3),
        random_state=np.random.RandomState(3),
        max_epochs=1,
    )
    return fit_quietly(est, df)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keeps_every_kind_of_parameter(exotic, fmt, tmp_path):
    est = exotic
    assert est.feature_names_in_.dtype == object
    assert isinstance(est.random_state, np.random.RandomState)
    loaded = round_trip(est, fmt, tmp_path)
    assert_same_estimator(est, loaded)
    assert loaded.layout_.names == ("theta", "x")
    np.testing.assert_array_equal(
        loaded.posterior().sample(5, observed=OBSERVED, random_state=0),
        est.posterior().sample(5, observed=OBSERVED, random_state=0),
    )


def test_loaded_model_fits_again(exotic, data, tmp_path):
    save(exotic, tmp_path / "m.skf")
    loaded = load(tmp_path / "m.skf").set_params(max_epochs=1, random_state=0)
    df = pd.DataFrame(data.reshape(len(data), -1), columns=list(exotic.feature_names_in_))
    before = loaded.network_
    fit_quietly(loaded, df.iloc[:150])
    assert loaded.network_ is not before and loaded.n_iter_ == 1
    assert draw(loaded).shape == (20, 3)


@pytest.mark.parametrize(
    "random_state",
    [None, 7, np.random.RandomState(0), np.random.default_rng(1),
     np.random.Generator(np.random.MT19937(2)), np.random.Generator(np.random.Philox(3))],
    ids=["None", "int", "RandomState", "PCG64", "MT19937", "Philox"],
)
def test_safe_format_keeps_random_state(fitted, random_state, tmp_path):
    est = copy.deepcopy(fitted).set_params(random_state=random_state)
    save(est, tmp_path / "m.skf")
    assert_same(load(tmp_path / "m.skf").random_state, est.random_state)


def test_getstate_is_a_cpu_copy_without_modules(fitted):
    state = fitted.__getstate__()
    description = state["description"]
    assert description["skformer_version"] == skformer.__version__
    assert description["model"]["network"] == dict(n_tokens=6, d_model=16, n_layers=1,
                                                   n_heads=2)
    assert description["model"]["dynamics"]["method"] == "score"
    assert "model_" not in description["fitted"]

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from walk(v)
        else:
            yield value

    leaves = list(walk(state))
    assert not [v for v in leaves if isinstance(v, (torch.nn.Module, torch.optim.Optimizer))]
    tensors = [v for v in leaves if isinstance(v, torch.Tensor)]
    assert all(t.device.type == "cpu" for t in tensors)
    # only the model's weights and standardisation: no optimiser moments, no data
    live = fitted.model_.state_dict()
    assert sum(t.numel() for t in tensors) == sum(t.numel() for t in live.values())
    # a copy that shares no memory with the live network
    before = live["network.norm.bias"].detach().cpu().clone()
    state["tensors"]["network.norm.bias"].add_(1.0)
    assert isinstance(fitted.network_, torch.nn.Module)
    assert torch.equal(fitted.network_.state_dict()["norm.bias"].cpu(), before)


@pytest.mark.parametrize("fmt", ["pickle", "joblib"])
def test_unfitted_estimator_pickles_as_its_parameters(fmt, tmp_path):
    est = SimformerEstimator(d_model=16, n_layers=1, n_heads=2, device="cpu", random_state=0)
    state = est.__getstate__()
    assert set(state["description"]["params"]) == set(est.get_params())
    assert state["description"]["fitted"] == {} and state["tensors"] == {}
    assert "model" not in state["description"]
    loaded = round_trip(est, fmt, tmp_path)
    assert_same(loaded.get_params(), est.get_params())
    assert sorted(vars(loaded)) == sorted(vars(est))
    with pytest.raises(NotFittedError):
        check_is_fitted(loaded)


def test_a_pickle_comes_back_as_it_went_even_with_parameters_fit_would_refuse():
    est = SimformerEstimator(method="magic", d_model=-3, condition_masks=lambda rng, n: None)
    again = pickle.loads(pickle.dumps(SimformerEstimator(method="magic", d_model=-3)))
    assert again.method == "magic" and again.d_model == -3
    assert copy.deepcopy(est).condition_masks is est.condition_masks


def test_save_refuses_an_unfitted_estimator(tmp_path):
    with pytest.raises(NotFittedError):
        save(SimformerEstimator(), tmp_path / "m.skf")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------- no data
def test_files_hold_no_training_rows(fitted, data, tmp_path):
    X = data.reshape(len(data), -1)
    rows = X[[0, 1, 17, 123, N_ROWS - 1]]
    standardised = (rows - fitted.mean_) / fitted.scale_
    patterns = (
        [r.astype("<f8").tobytes() for r in rows]
        + [r.astype("<f4").tobytes() for r in rows]
        + [r.astype("<f4").tobytes() for r in standardised]
        + [repr(float(v)).encode() for v in rows[:, :2].ravel()]  # as JSON would write them
    )

    def leaks(blob: bytes) -> list[bytes]:
        return [p for p in patterns if p in blob]

    for fmt in FORMATS:
        assert leaks(file_bytes(fitted, fmt, tmp_path)) == [], fmt
    # the search finds rows when an estimator does hold them, in every format
    leaky = copy.deepcopy(fitted)
    leaky.training_rows_ = X[:200]
    for fmt in FORMATS:
        assert len(leaks(file_bytes(leaky, fmt, tmp_path))) >= 4, fmt


# ---------------------------------------------------------------------------------- versions
def test_version_mismatch_warns_when_unpickling(fitted):
    state = fitted.__getstate__()
    state["description"]["skformer_version"] = "0.0.1"
    new = SimformerEstimator.__new__(SimformerEstimator)
    with pytest.warns(SkformerVersionWarning, match=r"saved with skformer 0\.0\.1"):
        new.__setstate__(state)
    np.testing.assert_array_equal(draw(new), draw(fitted))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkformerVersionWarning)
        pickle.loads(pickle.dumps(fitted))  # same version: no warning


def test_version_mismatch_warns_when_loading(fitted, tmp_path, monkeypatch):
    monkeypatch.setattr(skformer._version, "__version__", "0.0.1")
    save(fitted, tmp_path / "old.skf")
    blob = pickle.dumps(fitted)
    monkeypatch.undo()
    with pytest.warns(SkformerVersionWarning) as record:
        load(tmp_path / "old.skf")
    w = next(r.message for r in record if isinstance(r.message, SkformerVersionWarning))
    assert (w.original_version, w.current_version) == ("0.0.1", skformer.__version__)
    with pytest.warns(SkformerVersionWarning, match="0.0.1"):
        pickle.loads(blob)
    save(fitted, tmp_path / "new.skf")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkformerVersionWarning)
        load(tmp_path / "new.skf")


# ---------------------------------------------------------------------------------- devices
@pytest.mark.parametrize("fmt", FORMATS)
def test_model_saved_on_gpu_loads_on_cpu_without_cuda(cpu_fitted, fmt, tmp_path, monkeypatch):
    est = copy.deepcopy(cpu_fitted).set_params(device="cuda")  # as after a fit on a GPU
    path = tmp_path / "gpu.bin"
    if fmt == "skf":
        save(est, path)
    elif fmt == "joblib":
        joblib.dump(est, path)
    else:
        path.write_bytes(pickle.dumps(est))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reader = {"skf": load, "joblib": joblib.load, "pickle": lambda p: pickle.loads(p.read_bytes())}
    with pytest.warns(RuntimeWarning, match="not available"):
        loaded = reader[fmt](path)
    assert loaded.device == "cuda"
    assert loaded.device_ == torch.device("cpu")
    assert next(loaded.network_.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(draw(loaded), draw(cpu_fitted))


@pytest.mark.parametrize("fmt", FORMATS)
def test_auto_device_loads_where_a_fit_would_run(cpu_fitted, fmt, tmp_path):
    est = copy.deepcopy(cpu_fitted).set_params(device="auto")
    loaded = round_trip(est, fmt, tmp_path)
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert loaded.device_.type == expected.type
    assert next(loaded.network_.parameters()).device.type == expected.type
    assert draw(loaded).shape == (20, 3)


@pytest.mark.parametrize("fmt", ["joblib", "skf"])
def test_loading_leaves_the_global_torch_rng_alone(fitted, fmt, tmp_path):
    path = tmp_path / "m.bin"
    writer, reader = (save, load) if fmt == "skf" else (joblib.dump, joblib.load)
    writer(fitted, path)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    reader(path)
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------------------- refusals
@pytest.fixture
def good_file(fitted, tmp_path) -> bytes:
    save(fitted, tmp_path / "good.skf")
    return (tmp_path / "good.skf").read_bytes()


def _edit(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


REFUSED = {
    "pickle": (lambda d, est: pickle.dumps(est), "not a skformer file.*pickle"),
    "empty": (lambda d, est: b"", "not a skformer file"),
    "text": (lambda d, est: b"theta,x\n0.1,1.1\n", "not a skformer file"),
    "magic only": (lambda d, est: MAGIC, "corrupt or truncated"),
    "truncated half": (lambda d, est: d[: len(d) // 2], "corrupt or truncated"),
    "truncated one byte": (lambda d, est: d[:-1], "corrupt or truncated"),
    "header byte edited": (lambda d, est: _edit(d, 40), "corrupt or truncated"),
    "payload byte edited": (lambda d, est: _edit(d, len(d) - 100), "corrupt or truncated"),
    "checksum edited": (lambda d, est: _edit(d, len(d) - 1), "corrupt or truncated"),
    "header length edited": (lambda d, est: _edit(d, 12), "corrupt or truncated"),
    "newer format version": (
        lambda d, est: build_file(FORMAT_VERSION + 1, *split_file(d)[1:]),
        rf"format version {FORMAT_VERSION + 1}.* up to {FORMAT_VERSION}",
    ),
    "format version 0": (lambda d, est: build_file(0, *split_file(d)[1:]), "version 0"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_load_refuses_bad_files(case, good_file, fitted, tmp_path):
    make, message = REFUSED[case]
    path = tmp_path / "bad.skf"
    path.write_bytes(make(good_file, fitted))
    with pytest.raises(ValueError, match=message):
        load(path)


def test_load_refuses_a_joblib_file(fitted, tmp_path):
    joblib.dump(fitted, tmp_path / "m.joblib")
    with pytest.raises(ValueError, match="not a skformer file"):
        load(tmp_path / "m.joblib")


def test_directory_paths_are_refused(fitted, tmp_path):
    with pytest.raises(ValueError, match="directory"):
        load(tmp_path)
    with pytest.raises(ValueError, match="directory"):
        save(fitted, tmp_path)
    assert os.listdir(tmp_path) == []


def test_rebuilt_file_helper_makes_valid_files(good_file, fitted, tmp_path):
    """The crafted-header tests below start from a file this helper makes valid again."""
    rebuilt = build_file(*split_file(good_file))
    (tmp_path / "rebuilt.skf").write_bytes(rebuilt)
    np.testing.assert_array_equal(draw(load(tmp_path / "rebuilt.skf")), draw(fitted))


BIG = "__5000 digits__"  # replaced in the JSON text: json.dumps refuses such an int itself


def _nested_tuples(depth: int) -> dict:
    value: dict | list = []
    for _ in range(depth):
        value = {"__type__": "tuple", "value": [value]}
    return value


def _tensor(header: dict, i: int = 0) -> dict:
    return header["tensors"][i]


CRAFTED = {
    "dtype not allowed": (lambda h, p: (_tensor(h).update(dtype="float16"), p)[1], "dtype"),
    "object dtype": (lambda h, p: (_tensor(h).update(dtype="object"), p)[1], "dtype"),
    "shape larger than bytes": (lambda h, p: (_tensor(h).update(shape=[16, 2]), p)[1], "needs"),
    "negative size": (lambda h, p: (_tensor(h).update(shape=[-16, -1]), p)[1], "shape"),
    "wrong offset": (lambda h, p: (_tensor(h, 1).update(offset=0), p)[1], "offset"),
    "extra payload bytes": (lambda h, p: p + b"\x00" * 8, "covers"),
    "payload short": (lambda h, p: p[:-8], "run past|covers"),
    "unknown parameter": (
        lambda h, p: (h["params"].update(exec_me="__import__('os')"), p)[1], "exec_me"
    ),
    "unknown tagged value": (
        lambda h, p: (h["params"].update(random_state={"__type__": "pickle", "value": "x"}),
                      p)[1],
        "unknown or malformed",
    ),
    "unknown dynamics": (
        lambda h, p: (h["model"]["dynamics"].update(method="os.system"), p)[1],
        "method must be one of",
    ),
    "dynamics argument not taken": (
        lambda h, p: (h["model"]["dynamics"]["config"].update(cmd="rm"), p)[1],
        "does not take",
    ),
    "dynamics argument out of range": (
        lambda h, p: (h["model"]["dynamics"]["config"].update(sigma_min=-1.0), p)[1],
        "sigma_min",
    ),
    "huge network": (
        lambda h, p: (h["model"]["network"].update(d_model=2**20, n_heads=1), p)[1],
        "beyond the limits",
    ),
    "network of 10**9 width": (
        lambda h, p: (h["model"]["network"].update(d_model=10**9), p)[1], "beyond the limits",
    ),
    "network larger than its weights": (
        lambda h, p: (h["model"]["network"].update(d_model=64, n_heads=2), p)[1], "do not fit",
    ),
    "parameters that do not describe the model": (
        lambda h, p: (h["params"].update(d_model=32), p)[1], "do not describe the model",
    ),
    "n_features_in_ off": (
        lambda h, p: (h["fitted"].update(n_features_in_=7), p)[1], "n_features_in_",
    ),
    "sampling_steps 10**10": (
        lambda h, p: (h["params"].update(sampling_steps=10**10), p)[1], "sampling_steps",
    ),
    "sampling_steps 10**6": (
        lambda h, p: (h["params"].update(sampling_steps=10**6), p)[1], "sampling_steps",
    ),
    "sampling_steps a string": (
        lambda h, p: (h["params"].update(sampling_steps="abc"), p)[1], "sampling_steps",
    ),
    "unknown solver": (lambda h, p: (h["params"].update(solver="rk99"), p)[1], "solver"),
    "tol NaN": (lambda h, p: (h["params"].update(tol=float("nan")), p)[1], "tol"),
    "device meta": (lambda h, p: (h["params"].update(device="meta"), p)[1], "device"),
    "scales zero and negative": (
        lambda h, p: replace_tensor(h, p, "standardiser.scale",
                                    np.array([0.0, -1.0, 1e30, 1.0, 1.0, 1.0])),
        "positive",
    ),
    "5000-digit integer": (
        lambda h, p: (h["params"].update(max_epochs=BIG), p)[1],
        "longer than the 40 digits",
    ),
    "tuples 450 deep": (
        lambda h, p: (h["params"].update(variables=_nested_tuples(450)), p)[1],
        "nested .* levels deep",
    ),
    "network tokens do not match layout": (
        lambda h, p: (h["model"]["network"].update(n_tokens=7), p)[1], "7 tokens",
    ),
    "mean of wrong length": (
        lambda h, p: replace_tensor(h, p, "standardiser.mean", np.zeros(2)), "standardiser.mean",
    ),
    "scale not positive": (
        lambda h, p: replace_tensor(h, p, "standardiser.scale", np.array([1, 0, 1, 1, -1, 1.0])),
        "positive",
    ),
    "weights not finite": (
        lambda h, p: replace_tensor(h, p, "network.norm.bias",
                                    np.full(16, np.nan, dtype=np.float32)),
        "non-finite",
    ),
    "layout not a partition": (
        lambda h, p: (h["model"]["layout"].update(groups=[[0, 1, 2], [2, 4, 5]]), p)[1],
        "cover each",
    ),
    "huge integer": (
        lambda h, p: (h["params"].update(d_model=10**400), p)[1], "digits",
    ),
    "attribute shadows a method": (
        lambda h, p: (h["fitted"].update(sample=1), p)[1], "shadow"
    ),
    "deeply nested value": (
        lambda h, p: (h["params"].update(variables=json.loads("[" * 900 + "]" * 900)), p)[1],
        "too deeply|JSON",
    ),
    "not an estimator": (lambda h, p: (h.update(estimator="Popen"), p)[1], "Popen"),
    # fit's own checks against the layout, which load now runs too
    "inverted bounds": (
        lambda h, p: (h["params"].update(bounds={"__type__": "dict", "value": [
            [0, {"__type__": "tuple", "value": [1.0, 0.0]}]]}), p)[1], "need low < high",
    ),
    "bounds of an unknown column": (
        lambda h, p: (h["params"].update(bounds={"__type__": "dict", "value": [
            ["nope", {"__type__": "tuple", "value": [0.0, 1.0]}]]}), p)[1], "unknown column",
    ),
    "variables that do not match the layout": (
        lambda h, p: (h["params"].update(variables=[2, 4]), p)[1], "do not lay out",
    ),
    "posterior_latent beyond the variables": (
        lambda h, p: (h["params"].update(posterior_latent=[5]), p)[1], "outside the 2",
    ),
    "a training mask of the wrong length": (
        lambda h, p: (h["params"].update(condition_masks=[[False, True, True]]), p)[1],
        "must have length 2 .* got length 3",
    ),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_load_checks_headers_with_valid_checksums(case, good_file, tmp_path):
    mutate, message = CRAFTED[case]
    version, header, payload = split_file(good_file)
    payload = mutate(header, payload)
    raw = json.dumps(header).replace(json.dumps(BIG), "9" * 5000).encode()
    (tmp_path / "crafted.skf").write_bytes(build_file(version, raw, payload))
    with pytest.raises(ValueError, match=message) as info:
        load(tmp_path / "crafted.skf")
    assert "crafted.skf" in str(info.value)  # every refusal names the file


@pytest.mark.parametrize("case", ["/dev/zero", "fifo"])
def test_load_reads_only_regular_files(case, tmp_path):
    path = case
    if case == "fifo":
        path = tmp_path / "pipe.skf"
        os.mkfifo(path)  # opening it for reading would block until a writer comes
    with pytest.raises(ValueError, match="not a regular file"):
        load(path)


def test_every_refusal_names_the_file(good_file, tmp_path):
    version, header, payload = split_file(good_file)
    header["model"]["network"]["d_model"] = 7
    path = tmp_path / "named.skf"
    path.write_bytes(build_file(version, header, payload))
    with pytest.raises(ValueError, match="named.skf"):
        load(path)


# ---------------------------------------------------------------------------------- skformer 0.1
@pytest.mark.parametrize("fmt", ["skf", "pkl"])
def test_models_written_by_skformer_0_1_still_load(fmt):
    """A file (format 1) and a pickle from skformer 0.1 (tests/data/make_legacy_files.py)."""
    path = os.path.join(DATA, f"skformer-0.1.{fmt}")
    with pytest.warns(SkformerVersionWarning, match="0.1.0"):
        if fmt == "skf":
            est = load(path)
        else:
            with open(path, "rb") as fh:
                est = pickle.load(fh)
    expected = np.load(os.path.join(DATA, "skformer-0.1.npz"))
    assert est.get_params()["solver"] == "heun"  # 0.1 called it sampler
    assert est.sampling_steps == 7
    np.testing.assert_array_equal(est.mean_, expected["mean"])
    np.testing.assert_array_equal(est.scale_, expected["scale"])
    # log densities are a deterministic function of the weights: the same model; 0.1
    # standardised in float32, 0.2 in float64, so equal to float32 rounding
    np.testing.assert_allclose(est.score_samples(expected["rows"]), expected["log_prob"],
                               atol=1e-3)
    assert est.condition([False, True]).sample(20, observed=np.ones(3)).shape == (20, 3)
    assert not hasattr(est, "network") and isinstance(est.model_, skformer.SimformerModel)


def test_load_refuses_a_header_that_is_not_json(good_file, tmp_path):
    version, _, payload = split_file(good_file)
    (tmp_path / "bad.skf").write_bytes(build_file(version, b"{'not': json}", payload))
    with pytest.raises(ValueError, match="JSON"):
        load(tmp_path / "bad.skf")


def test_load_never_unpickles(fitted, tmp_path, monkeypatch):
    save(fitted, tmp_path / "m.skf")

    def forbidden(*args, **kwargs):
        raise AssertionError("load() must not unpickle")

    for module, name in [(pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"),
                         (torch, "load")]:
        monkeypatch.setattr(module, name, forbidden)
    np.testing.assert_array_equal(draw(load(tmp_path / "m.skf")), draw(fitted))


# ---------------------------------------------------------------------------------- failed saves
@pytest.mark.parametrize("param", ["condition_masks", "edge_masks"])
def test_save_refuses_callables_and_writes_nothing(fitted, param, tmp_path):
    est = copy.deepcopy(fitted).set_params(**{param: lambda *args: None})
    with pytest.raises(ValueError, match=rf"parameter '{param}'.*callable.*joblib"):
        save(est, tmp_path / "m.skf")
    assert os.listdir(tmp_path) == []


def test_save_refuses_other_objects(fitted, tmp_path):
    est = copy.deepcopy(fitted).set_params(edge_masks=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"parameter 'edge_masks'.*torch.Tensor.*joblib"):
        save(est, tmp_path / "m.skf")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_save_leaves_the_old_file_and_no_temporary(fitted, failing, tmp_path,
                                                          monkeypatch):
    target = tmp_path / "m.skf"
    target.write_bytes(b"old content")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="disk full"):
        save(fitted, target)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.skf"]
    assert target.read_bytes() == b"old content"
    save(fitted, target)  # and a save that works replaces it
    assert os.listdir(tmp_path) == ["m.skf"]
    assert target.read_bytes().startswith(MAGIC)


# ---------------------------------------------------------------------------------- sizes
def test_default_size_model_file_sizes_and_load_times(tmp_path, capsys):
    """Measure (print, not assert) both formats on a default-size model; check they load."""
    est = fit_quietly(SimformerEstimator(max_epochs=1, device="cpu", random_state=0),
                      seed_task(2000))
    assert (est.d_model, est.n_layers, est.n_heads) == (64, 4, 4)
    paths = {"joblib": tmp_path / "model.joblib", "skf": tmp_path / "model.skf"}
    joblib.dump(est, paths["joblib"])
    save(est, paths["skf"])
    readers = {"joblib": joblib.load, "skf": load}
    expected = draw(est)
    report = []
    for fmt, path in paths.items():
        times = []
        for _ in range(5):
            start = time.perf_counter()
            loaded = readers[fmt](path)
            times.append(time.perf_counter() - start)
        np.testing.assert_array_equal(draw(loaded), expected)
        report.append(f"{fmt:>6}: {path.stat().st_size / 1024:7.1f} KiB, load "
                      f"{1000 * np.median(times):6.1f} ms (median of 5)")
    n_weights = sum(t.numel() for t in est.network_.state_dict().values())
    with capsys.disabled():
        print(f"\ndefault-size model ({n_weights} float32 weights, "
              f"{4 * n_weights / 1024:.1f} KiB raw):")
        print("\n".join(report))


# ---------------------------------------------------------------------------------- fuzzing
JUNK = [None, True, -1, 0, 2**62, 1e308, -0.5, float("nan"), "x", [], {}, [[]], {"__type__": 1}]


def _leaves(value, path=()):
    """Paths to every leaf (and every container) of a JSON value."""
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):  # long arrays: their first entries are enough
            yield from _leaves(v, (*path, i))


def test_any_edited_header_value_is_loaded_or_refused_with_a_value_error(good_file, tmp_path):
    """Replace each value of a valid header (tensor index aside) with junk of every JSON type:
    load either succeeds or raises ValueError naming the file; nothing else escapes."""
    version, header, payload = split_file(good_file)
    paths = [p for p in _leaves(header) if p and p[0] not in ("tensors", "format")]
    outcomes = {"loaded": 0, "refused": 0}
    rng = np.random.default_rng(0)
    for path in paths:
        for junk in rng.choice(np.array(JUNK, dtype=object), size=4, replace=False):
            edited = json.loads(json.dumps(header))
            target = edited
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = junk
            file = tmp_path / "fuzzed.skf"
            file.write_bytes(build_file(version, edited, payload))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    load(file)
                outcomes["loaded"] += 1
            except ValueError as err:
                assert "fuzzed.skf" in str(err), (path, junk, err)
                outcomes["refused"] += 1
    assert outcomes["refused"] > outcomes["loaded"] > 0, outcomes
