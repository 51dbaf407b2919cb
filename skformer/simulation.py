"""Simulate training data in parallel: prior draws, a user's simulator, chunks through joblib.

:func:`simulate` draws parameters from a prior, runs the simulator over them in chunks through
:class:`joblib.Parallel` (so any joblib backend fans it out: local processes by default, a dask
or ray cluster inside ``joblib.parallel_config(backend=...)``), and returns the joint rows
``[theta, x]`` that :meth:`skformer.SimformerEstimator.fit` takes. Every chunk has its own seed,
fixed by ``random_state`` and the chunk's position, so the result is the same for any
``n_jobs`` and backend. Simulations that raise or return non-finite values are reported and, by
default, kept with their ``x`` entries missing (NaN), which ``fit`` treats as missing data.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from numbers import Integral

import joblib
import numpy as np
import torch

from skformer._utils import check_fits_in_memory, int_seed, seed_from, warn

__all__ = ["simulate"]

ON_FAILURE = ("nan", "drop", "raise")


class _BadOutput(ValueError):
    """The simulator returned something of the wrong shape: a bug to report, not a failure."""


def simulate(simulator: Callable, prior, n_simulations: int, *, n_jobs: int | None = None,
             chunk_size: int = 1000, random_state=None, on_failure: str = "nan",
             verbose: int = 0) -> np.ndarray:
    """Draw ``theta`` from ``prior``, simulate ``x = simulator(theta)`` in parallel chunks, and
    return the joint rows ``[theta, x]``.

    Parameters
    ----------
    simulator : callable
        Takes a batch of parameters, an array of shape (n, n_theta), and returns the batch of
        simulations, an array-like of shape (n, ...) (flattened to (n, n_x)). It may accept a
        keyword argument ``rng``, a :class:`numpy.random.Generator` to draw its noise from;
        otherwise numpy's and torch's global generators are seeded for each chunk (and
        restored after). It must be picklable for process backends (loky pickles lambdas
        and closures too).
    prior : torch distribution, scipy distribution or callable
        An object with ``sample(sample_shape)`` (``torch.distributions``, e.g. sbi's
        ``BoxUniform``), an object with ``rvs(size, random_state)`` (a frozen
        ``scipy.stats`` distribution), or a callable ``prior(n, rng)`` that returns n draws.
    n_simulations : int
        Number of rows.
    n_jobs : int or None, default=None
        Parallel workers, as in scikit-learn: None means 1 unless inside a
        ``joblib.parallel_config`` context, -1 means all cores.
    chunk_size : int, default=1000
        Simulations per task sent to a worker. Results depend on ``chunk_size`` (each chunk is
        seeded), never on ``n_jobs`` or the backend.
    random_state : int, RandomState or Generator instance, or None, default=None
        Seeds the prior draws and every chunk.
    on_failure : {"nan", "drop", "raise"}, default="nan"
        What becomes of a simulation that raises or returns NaN or infinity. "nan": the row is
        kept, its failed ``x`` entries (all of them when the simulator raised) set to NaN, which
        ``fit`` treats as missing; sound when failures do not depend on what is missing, and it
        keeps ``theta`` distributed as the prior. "drop": the row is left out. "raise": the first
        failure raises. A chunk whose call raises is simulated again row by row, so only the
        rows that fail are affected. A warning reports how many failed.
    verbose : int, default=0
        Show a progress bar over chunks when positive.

    Returns
    -------
    ndarray of shape (n_rows, n_theta + n_x)
        Joint rows ``[theta, x]`` (float64); n_rows is ``n_simulations`` unless failed rows
        were dropped.

    Examples
    --------
    >>> import numpy as np
    >>> from skformer.simulation import simulate
    >>> def prior(n, rng):
    ...     return rng.uniform(-1, 1, size=(n, 2))
    >>> def simulator(theta, rng):
    ...     return theta + 0.1 * rng.standard_normal(theta.shape)
    >>> X = simulate(simulator, prior, 500, chunk_size=100, random_state=0)
    >>> X.shape
    (500, 4)
    >>> bool(np.array_equal(X, simulate(simulator, prior, 500, chunk_size=100, n_jobs=2,
    ...                                 random_state=0)))
    True
    """
    if not isinstance(n_simulations, Integral) or n_simulations < 1:
        raise ValueError(f"n_simulations must be a positive int, got {n_simulations!r}.")
    check_parallel(n_jobs, chunk_size)
    check_fits_in_memory(int(n_simulations) * 16, "cpu",  # a theta and an x each, float64
                         f"n_simulations={n_simulations:,}")
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}.")
    if not callable(simulator):
        raise TypeError(f"simulator must be callable, got {type(simulator).__name__}.")
    root = np.random.SeedSequence(seed_from(random_state))
    prior_seed, chunks_seed = root.spawn(2)
    theta = _draw(prior, int(n_simulations), prior_seed)
    x, raised = simulate_at(simulator, theta, chunks_seed, n_jobs=n_jobs, chunk_size=chunk_size,
                            strict=on_failure == "raise", verbose=verbose)
    return _finish(theta, x, raised, on_failure)


def check_parallel(n_jobs, chunk_size) -> None:
    """``n_jobs`` None or a non-zero int (as joblib takes it), ``chunk_size`` a positive int."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, Integral)
                               or n_jobs == 0):
        raise ValueError(f"n_jobs must be None or a non-zero int (-1: all cores), got "
                         f"{n_jobs!r}.")


def simulate_at(simulator: Callable, theta: np.ndarray, seed: np.random.SeedSequence, *,
                n_jobs: int | None = None, chunk_size: int = 1000, strict: bool = False,
                verbose: int = 0) -> tuple[np.ndarray, int]:
    """Run ``simulator`` on given parameters ``theta`` (n, n_theta) in seeded chunks, as
    :func:`simulate` does after its prior draw; return ``x`` (n, n_x), NaN where a simulation
    raised or returned non-finite values, and the number of simulations that raised.
    ``strict``: the first simulation that raises raises. An error or interruption while the
    chunks run carries the finished ones as its ``simulated`` attribute: ``(theta, x)`` per
    chunk. Never more workers than chunks."""
    n_chunks = math.ceil(len(theta) / chunk_size)
    if n_jobs is not None and n_jobs > n_chunks:
        n_jobs = n_chunks  # a worker per chunk at most: idle ones only cost their start
    seeds = seed.spawn(n_chunks)
    jobs = (joblib.delayed(_run_chunk)(simulator, theta[i * chunk_size:(i + 1) * chunk_size],
                                       seeds[i], strict, i * chunk_size)
            for i in range(n_chunks))
    results = joblib.Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
    bar = None
    if verbose:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(theta), desc="simulating", unit="sim")
    pieces, raised, first = [], 0, None

    def finished() -> list[tuple[np.ndarray, np.ndarray]]:
        """The chunks that returned values, (theta, x) each, for a caller that keeps them."""
        return [(theta[i * chunk_size:(i + 1) * chunk_size], x)
                for i, x in enumerate(pieces) if x.shape[1]]

    try:
        for i, (x, n_raised, error) in enumerate(results):
            pieces.append(x)
            raised += n_raised
            first = first or error
            if bar is not None:
                bar.update(min(chunk_size, len(theta) - i * chunk_size))
    except BaseException as error:
        error.simulated = finished()
        raise
    finally:
        if bar is not None:
            bar.close()
    widths = {p.shape[1] for p in pieces if p.shape[1]}
    if len(widths) > 1:
        error = ValueError(f"the simulator returned different widths of x: {sorted(widths)}.")
        error.simulated = finished()
        raise error
    if not widths:
        raise RuntimeError(f"every one of the {len(theta)} simulations raised; the first "
                           f"error: {first!r} (its traceback is this error's cause).") from first
    width = widths.pop()
    x = np.vstack([p if p.shape[1] else np.full((len(p), width), np.nan) for p in pieces])
    return np.where(np.isfinite(x), x, np.nan), raised


def _finish(theta: np.ndarray, x: np.ndarray, raised: int, on_failure: str) -> np.ndarray:
    failed = ~np.isfinite(x)
    rows = failed.any(axis=1)
    if rows.any():
        if on_failure == "raise":
            first = int(np.flatnonzero(rows)[0])
            raise ValueError(f"simulation {first} returned non-finite values "
                             f"(theta = {theta[first].tolist()}).")
        whole = failed.all(axis=1)
        what = (f"{int(rows.sum())} of {len(x)} simulations failed ({raised} raised, "
                f"{int(rows.sum()) - raised} returned NaN or infinity"
                + (f", {int(rows.sum() - whole.sum())} of them in some entries only" if
                   (rows & ~whole).any() else "") + ")")
        if on_failure == "drop":
            warn(f"{what}; their rows were dropped.", RuntimeWarning)
            theta, x = theta[~rows], x[~rows]
        else:
            warn(f"{what}; their failed x entries are NaN, which fit treats as missing "
                 "(on_failure='drop' leaves the rows out).", RuntimeWarning)
            x = np.where(failed, np.nan, x)
    return np.hstack([theta, x])


def _draw(prior, n: int, seed: np.random.SeedSequence, width: int | None = None) -> np.ndarray:
    """n draws from ``prior`` as a float64 array of shape (n, n_theta); ``width``: the n_theta
    that earlier draws had."""
    if hasattr(prior, "sample") and not callable(getattr(prior, "rvs", None)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int_seed(seed))
            draws = prior.sample((n,))
    elif callable(getattr(prior, "rvs", None)):
        # a frozen scipy distribution with vector parameters (uniform(loc=[-2, -2], ...))
        # draws (n, k) only when asked for that shape
        shape = _scipy_batch_shape(prior)
        draws = prior.rvs(size=(n, *shape), random_state=np.random.default_rng(seed))
    elif callable(prior):
        draws = prior(n, np.random.default_rng(seed))
    else:
        raise TypeError("prior must have sample(shape) (torch), rvs(size, random_state) "
                        f"(scipy) or be a callable prior(n, rng); got {type(prior).__name__}.")
    draws = draws.detach().cpu().numpy() if isinstance(draws, torch.Tensor) else draws
    if np.ma.isMaskedArray(draws):  # masked draws are no parameters: refused below as NaN
        draws = np.ma.filled(draws.astype(np.float64), np.nan)
    if np.iscomplexobj(draws):
        raise ValueError("the prior returned complex numbers; parameters are real.")
    try:
        theta = np.asarray(draws, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"the prior returned {type(draws).__name__} {_short(draws)}, which is "
                         f"not an array of numbers of shape ({n}, n_theta).") from err
    if theta.ndim == 0 or theta.shape[0] != n:
        raise ValueError(f"the prior returned shape {theta.shape} for {n} draws; it must "
                         f"return ({n}, n_theta).")
    theta = theta.reshape(n, -1)
    if theta.shape[1] == 0:
        raise ValueError(f"the prior returned shape {theta.shape}: no parameters per draw.")
    if width is not None and theta.shape[1] != width:
        raise ValueError(f"the prior returned {theta.shape[1]} parameters per draw; its "
                         f"earlier draws had {width}.")
    if not np.isfinite(theta).all():
        raise ValueError("the prior returned non-finite parameters.")
    return theta


def _scipy_batch_shape(prior) -> tuple[int, ...]:
    """The shape of a frozen scipy distribution's parameters (() for scalars and for
    multivariate distributions, whose ``rvs(size=n)`` already gives (n, k))."""
    if not (hasattr(prior, "args") and hasattr(prior, "kwds")):  # univariate frozen only
        return ()
    try:
        return np.broadcast(*(np.asarray(a) for a in (*prior.args, *prior.kwds.values()))).shape
    except (ValueError, TypeError, AttributeError):
        return ()


def prior_box(prior, n_theta: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The box ``(low, high)`` (each of shape (n_theta,)) that holds a prior's support, when
    the prior says: a torch distribution's ``support`` (an interval, a one-sided bound, or
    ``independent`` of one) or a scipy distribution's ``support()``. None when it says nothing
    (a callable, an unbounded or unknown support)."""
    low = high = None
    if hasattr(prior, "sample") and not callable(getattr(prior, "rvs", None)):
        try:
            c = prior.support
        except (NotImplementedError, AttributeError):
            return None
        while hasattr(c, "base_constraint"):
            c = c.base_constraint
        low, high = getattr(c, "lower_bound", None), getattr(c, "upper_bound", None)
    elif callable(getattr(prior, "support", None)):
        try:
            low, high = prior.support()
        except (TypeError, ValueError):
            return None
    if low is None and high is None:
        return None

    def side(v, fill):
        v = fill if v is None else v
        v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
        try:
            return np.broadcast_to(np.asarray(v, dtype=np.float64).ravel(), (n_theta,)).copy()
        except ValueError:
            return None

    low, high = side(low, -np.inf), side(high, np.inf)
    if low is None or high is None or not (np.isfinite(low).any() or np.isfinite(high).any()):
        return None
    return low, high


def prior_bounds(prior, n_theta: int) -> dict[int, tuple[float, float]] | None:
    """:func:`prior_box` as ``SimformerEstimator(bounds=...)`` over the first ``n_theta``
    columns (theta's, in ``[theta, x]`` rows), leaving out columns unbounded on both sides;
    None when the prior states no box."""
    box = prior_box(prior, n_theta)
    if box is None:
        return None
    return {j: (float(lo), float(hi)) for j, (lo, hi) in enumerate(zip(*box, strict=True))
            if np.isfinite(lo) or np.isfinite(hi)}


def _takes_rng(simulator: Callable) -> bool:
    try:
        return "rng" in inspect.signature(simulator).parameters
    except (TypeError, ValueError):
        return False


def _call(simulator: Callable, theta: np.ndarray, seed: np.random.SeedSequence) -> np.ndarray:
    """One seeded call of the simulator, as a float64 array of shape (len(theta), n_x)."""
    if _takes_rng(simulator):
        out = simulator(theta, rng=np.random.default_rng(seed))
    else:
        seed_int = int_seed(seed)
        state = np.random.get_state()
        try:
            np.random.seed(seed_int % 2**32)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_int)
                out = simulator(theta)
        finally:
            np.random.set_state(state)
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu().numpy()
    if np.ma.isMaskedArray(out):  # masked entries failed: NaN
        out = np.ma.filled(out.astype(np.float64), np.nan)
    if np.iscomplexobj(out):
        raise _BadOutput("the simulator returned complex numbers; simulations are real (split "
                         "them into real and imaginary parts).")
    try:
        out = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as err:
        # what came back is not numbers at all: a bug in the simulator, not a failed run
        raise _BadOutput(f"the simulator returned {type(out).__name__} {_short(out)}, which "
                         "is not an array of numbers of shape (n, ...) for the n parameter "
                         "sets.") from err
    if out.ndim == 0 or out.shape[0] != len(theta):
        raise _BadOutput(f"the simulator returned shape {out.shape} for {len(theta)} "
                         "parameter sets; it must return one simulation per row.")
    if out.size == 0:
        raise _BadOutput(f"the simulator returned shape {out.shape}: no values per "
                         "simulation.")
    return out.reshape(len(theta), -1)


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _run_chunk(simulator: Callable, theta: np.ndarray, seed: np.random.SeedSequence,
               strict: bool, offset: int) -> tuple[np.ndarray, int, BaseException | None]:
    """Simulate one chunk; when the batched call raises, each row alone. Returns x (rows that
    raised are NaN; width 0 when all did), the count of rows that raised and the first
    exception a row raised (None when none did)."""
    whole_seed, rows_seed = seed.spawn(2)
    try:
        return _call(simulator, theta, whole_seed), 0, None
    except _BadOutput:
        raise
    except Exception as error:
        if strict:
            raise RuntimeError(f"the simulator raised on the chunk starting at row {offset}: "
                               f"{error!r}") from error
    rows, raised, first = [], 0, None
    for i, row_seed in enumerate(rows_seed.spawn(len(theta))):
        try:
            rows.append(_call(simulator, theta[i:i + 1], row_seed)[0])
        except _BadOutput:
            raise
        except Exception as error:
            rows.append(None)
            raised += 1
            first = first or error
    width = next((len(r) for r in rows if r is not None), 0)
    x = np.full((len(theta), width), np.nan)
    for i, r in enumerate(rows):
        if r is not None:
            if len(r) != width:
                raise ValueError("the simulator returned different widths of x: "
                                 f"{sorted({width, len(r)})}.")
            x[i] = r
    return x, raised, first
