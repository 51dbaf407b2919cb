"""Shared pytest configuration: the ``--device`` option, the ``device`` fixture, markers."""

from __future__ import annotations

import os

import pytest
import torch

_DEVICE_KEY = pytest.StashKey[torch.device]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        action="store",
        default="cpu",
        help="torch device the tests run on: 'cpu' (default), 'cuda' or 'cuda:<index>'.",
    )


def _parse_device(spec: str) -> torch.device:
    """Turn the ``--device`` value into a usable device, or raise ``pytest.UsageError``."""
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError, ValueError) as err:
        raise pytest.UsageError(
            f"--device must be 'cpu', 'cuda' or 'cuda:<index>'; got {spec!r} ({err})."
        ) from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise pytest.UsageError(
                f"--device={spec} was requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}). "
                "Run with --device=cpu."
            )
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise pytest.UsageError(
                f"--device={spec} was requested but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible."
            )
        dev = torch.device("cuda", index)
    elif dev.type != "cpu":
        raise pytest.UsageError(f"--device must be 'cpu' or a CUDA device; got {spec!r}.")
    return dev


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a slow test (deselect with -m 'not slow').")
    config.stash[_DEVICE_KEY] = _parse_device(config.getoption("--device"))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # parallel workers (make test: one per core) share the cores: one thread each, or
        # torch's threads oversubscribe them many times over
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    """The torch device chosen with ``--device`` (default: the CPU)."""
    return pytestconfig.stash[_DEVICE_KEY]


# fitted models by (method, device), kept for the whole process: pytest keeps one instance of
# a parametrised fixture at a time and refits it whenever the parameter switches back (as with
# --dist loadfile, where every file that uses it switches score -> flow)
_FITTED: dict = {}


def _fingerprint(est) -> tuple:
    """The parameters and weights of a fitted estimator, to check that no test changed it."""
    params = repr(sorted(est.get_params().items()))
    return params, {k: v.detach().clone() for k, v in est.model_.state_dict().items()}


def _fit_seed_model(method: str, device: torch.device):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from skformer import SimformerEstimator

    from _data import TINY, seed_task

    est = SimformerEstimator(method=method, max_epochs=40, random_state=0, device=device,
                             **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(seed_task())
    return est


@pytest.fixture(scope="session")
def built_once(tmp_path_factory):
    """``built_once(name, build)``: ``build()``'s result, built once per test run. Parallel
    workers (make test) share it through the run's common temporary folder: the first worker
    to need it builds and pickles it, the others wait for it and load it (a pickled estimator
    samples and scores bit for bit the same), so a slow fit whose tests land on both workers
    is not fitted twice. Without workers, ``build()``. ``name`` must say everything ``build``
    depends on (e.g. the device)."""

    def get(name: str, build):
        if not os.environ.get("PYTEST_XDIST_WORKER"):
            return build()
        import pickle

        from filelock import FileLock

        path = tmp_path_factory.getbasetemp().parent / f"{name}.pkl".replace(":", "-")
        with FileLock(f"{path}.lock"):
            if path.exists():
                return pickle.loads(path.read_bytes())
            built = build()
            path.write_bytes(pickle.dumps(built))
            return built

    return get


@pytest.fixture(scope="session", params=["score", "flow"])
def fitted(request, device, built_once):
    """A small model of each method fitted once on the seed task, shared by the test files."""
    key = (request.param, str(device))
    if key in _FITTED:
        est, (params, state) = _FITTED[key]
        now_params, now_state = _fingerprint(est)
        assert now_params == params and now_state.keys() == state.keys() and all(
            torch.equal(now_state[k], state[k]) for k in state
        ), "a test changed the shared fitted fixture (copy it before changing it)"
        return est
    est = built_once(f"fitted-{request.param}-{device}",
                     lambda: _fit_seed_model(request.param, device))
    _FITTED[key] = est, _fingerprint(est)
    return est
