"""Truncated sequential rounds for one observation: spend simulations where its posterior lives.

:func:`rounds` runs truncated sequential inference (as TSNPE, Deistler et al. 2022, does for
NPE) around one observation ``x_o``. Round 0 simulates from the prior and fits. Every later
round draws parameters from the prior *restricted* to the current posterior's highest-density
region, simulates them (:func:`skformer.simulation.simulate_at`), and warm-starts the estimator
(``warm_start=True``) on every simulation so far; the last round fits afresh on all of them
(``refit``).

Why the answers stay right: each round's parameters are prior draws kept only inside a region,
so every proposal is the prior times a constant on that region. Where all regions cover the
posterior, the pooled proposal is the prior up to a constant, and the posterior at ``x_o`` that
the model learns is the true one. The likelihood ``p(x | theta)`` does not depend on the
proposal at all: it stays valid for every ``theta`` the proposals covered. What a truncated run
leaves biased is everything that integrates over the proposal instead of the prior: the
parameters' marginal (``sample()`` of the joint, the prior the model learnt), the evidence, the
posterior at observations far from ``x_o``, and conditionals that leave parameters latent
outside the regions.

Knows the estimator's public API (``fit``, ``condition``, ``set_params``), its checks before a
fit (``_check_before_fit``, so that bad settings fail before any simulation) and the simulation
helpers; nothing of torch or the network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
from sklearn.base import clone

from skformer._utils import check_fits_in_memory, real_array, seed_from, warn
from skformer.simulation import _draw, check_parallel, prior_bounds, simulate_at

__all__ = ["Round", "RoundsResult", "rounds"]

TRUNCATIONS = ("hpr", "box")
REFITS = ("last", "never", "always")
N_PILOT = 8
"""Prior simulations run before anything else, to check the simulator's output against
``observed`` before a round spends its budget (they join round 0)."""
MODEL_PARAMS = ("variables", "method", "sde", "dynamics_options", "tokens", "d_model",
                "n_layers", "n_heads", "bounds")
"""Parameters that describe the model: a warm-started fit cannot change them."""
SET_BY_ROUNDS = ("warm_start",)
"""Parameters that rounds sets itself on every fit (``refit`` decides them)."""


@dataclass
class Round:
    """What one round did."""

    round: int
    proposal: str
    """"prior" (round 0), "hpr" (prior restricted to the highest-density region, within the
    box of the posterior samples), "box" (prior restricted to that box), or "refit" (no new
    simulations: the fresh fit that ``refit="last"`` makes when the rounds stop early)."""
    n_simulations: int
    """Simulations run this round (failed ones included)."""
    n_failed: int
    """Simulations that raised or returned NaN or infinity: left out of training and kept in
    :attr:`RoundsResult.failed`."""
    acceptance: float
    """Share of the prior draws that the truncation accepted (1.0 for the prior)."""
    simulate_seconds: float
    fit_seconds: float
    epochs: int
    fresh: bool
    """Whether this round's fit started from scratch (round 0, and the rounds that ``refit``
    names) rather than from the previous round's model."""
    validation_loss: float
    """The best validation loss of this round's fit (NaN without a validation set)."""
    threshold: float | None = None
    """The log density above which the next round accepts (``truncation="hpr"``)."""
    box: np.ndarray | None = None
    """(n_theta, 2): the low and high bounds of the next round's box."""
    posterior_samples: np.ndarray | None = field(default=None, repr=False)
    """Samples of the posterior at ``x_o`` after this round's fit (they define the next
    round's region)."""


@dataclass
class RoundsResult:
    """The outcome of :func:`rounds`."""

    estimator: object
    """The fitted estimator (a clone of the one passed), trained on every simulation."""
    X: np.ndarray
    """(n, n_theta + n_x): every successful simulation of every round, ``[theta, x]``."""
    round_of_row: np.ndarray
    """(n,): the round each row of ``X`` comes from."""
    failed: np.ndarray
    """(n_failed, n_theta + n_x): the simulations that failed, ``x`` NaN where it failed."""
    history: list[Round]
    n_theta: int
    stopped: str | None = None
    """Why the rounds stopped before ``n_rounds`` (a sentence), or None."""
    pending: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)
    """Only on the ``rounds_result`` of an error: batches ``(theta, x)`` of simulations of
    the round that raised, as the simulator returned them, that had not joined ``X`` (e.g.
    ``x`` of the wrong width); empty otherwise."""

    def posterior(self):
        """The posterior conditional of the final estimator: ``theta`` given ``x``."""
        return _posterior(self.estimator, self.n_theta, self.X.shape[1])

    def plot(self, columns=None, labels=None, truth=None, figsize=None):
        """The posterior at ``x_o`` round by round: median, 50 % and 90 % intervals of each
        parameter, and the round's acceptance rate. Returns the matplotlib figure."""
        import matplotlib.pyplot as plt

        columns = list(range(self.n_theta)) if columns is None else list(columns)
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool)
                   and 0 <= c < self.n_theta for c in columns):
            raise ValueError(f"columns must be indexes of the {self.n_theta} parameters "
                             f"(0..{self.n_theta - 1}); got {columns!r}.")
        if labels is not None and len(labels) != self.n_theta:
            raise ValueError(f"labels must name the {self.n_theta} parameters; got "
                             f"{len(labels)}.")
        if truth is not None and np.size(truth) != self.n_theta:
            raise ValueError(f"truth must hold the {self.n_theta} parameters' values; got "
                             f"{np.size(truth)}.")
        done = [r for r in self.history if r.posterior_samples is not None]
        n = len(columns) + 1
        fig, axes = plt.subplots(1, n, figsize=figsize or (3.2 * n, 3.0), squeeze=False)
        axes = axes[0]
        idx = [r.round for r in done]
        for ax, c in zip(axes, columns, strict=False):
            q = np.array([np.quantile(r.posterior_samples[:, c], [0.05, 0.25, 0.5, 0.75, 0.95])
                          for r in done])
            ax.fill_between(idx, q[:, 0], q[:, 4], alpha=0.25, color="C0", label="90 %")
            ax.fill_between(idx, q[:, 1], q[:, 3], alpha=0.45, color="C0", label="50 %")
            ax.plot(idx, q[:, 2], color="C0", marker="o", label="median")
            if truth is not None:
                ax.axhline(np.asarray(truth, dtype=float).ravel()[c], color="k", ls="--",
                           lw=1, label="true")
            ax.set_title(labels[c] if labels is not None else f"theta[{c}]")
            ax.set_xlabel("round")
        axes[0].legend(fontsize="small")
        rounds_all = [r.round for r in self.history]
        axes[-1].semilogy(rounds_all, [max(r.acceptance, 1e-6) for r in self.history],
                          marker="o", color="C1")
        axes[-1].set_title("acceptance of the truncation")
        axes[-1].set_xlabel("round")
        fig.tight_layout()
        return fig


def _posterior(estimator, n_theta: int, n_columns: int):
    mask = np.zeros(n_columns, dtype=bool)
    mask[n_theta:] = True
    return estimator.condition(mask)


def _check_args(n_rounds, simulations_per_round, truncation, quantile, min_acceptance,
                box_margin, n_posterior_samples, refit) -> None:
    def integer(v, low):
        return isinstance(v, Integral) and not isinstance(v, bool) and v >= low

    def real(v, low, high):
        return isinstance(v, Real) and not isinstance(v, bool) and low < v < high

    checks = [
        ("n_rounds", integer(n_rounds, 1), "an int >= 1"),
        ("simulations_per_round", integer(simulations_per_round, 2), "an int >= 2"),
        ("truncation", truncation in TRUNCATIONS, f"one of {TRUNCATIONS}"),
        ("refit", refit in REFITS, f"one of {REFITS}"),
        ("quantile", real(quantile, 0, 0.5), "a number in (0, 0.5)"),
        ("min_acceptance", real(min_acceptance, 0, 1) or min_acceptance == 1,
         "a number in (0, 1]"),
        ("box_margin", isinstance(box_margin, Real) and 0 <= box_margin < np.inf,
         "a finite number >= 0"),
        ("n_posterior_samples", integer(n_posterior_samples, 10), "an int >= 10"),
    ]
    for name, good, expected in checks:
        if not good:
            value = {"n_rounds": n_rounds, "simulations_per_round": simulations_per_round,
                     "truncation": truncation, "quantile": quantile,
                     "min_acceptance": min_acceptance, "box_margin": box_margin,
                     "n_posterior_samples": n_posterior_samples, "refit": refit}[name]
            raise ValueError(f"{name} must be {expected}; got {value!r}.")


def rounds(estimator, simulator, prior, observed, n_rounds: int = 5,
           simulations_per_round: int = 2000, *, truncation: str = "hpr",
           quantile: float = 1e-3, box_margin: float = 0.1, min_acceptance: float = 1e-3,
           n_posterior_samples: int = 4000, refit: str = "last",
           warm_params: dict | None = None, initial=None,
           n_jobs: int | None = None,
           chunk_size: int = 1000, random_state=None, verbose: int = 1) -> RoundsResult:
    """Truncated sequential inference for one observation.

    Round 0 simulates ``simulations_per_round`` parameters from the prior and fits a clone of
    ``estimator``; every later round draws as many from the prior restricted to the posterior's
    highest-density region at ``observed``, simulates them and continues the fit
    (``warm_start=True``) on all simulations so far; by default (``refit="last"``) the last
    round fits afresh on all of them. The rows are ``[theta, x]``; the posterior is the
    conditional that observes the ``x`` columns.

    Parameters
    ----------
    estimator : SimformerEstimator
        Its settings (unfitted or fitted: it is cloned, never changed). When its
        ``variables``, ``posterior_latent`` and ``posterior_observed`` are None, the clone
        groups the columns into two variables, ``theta`` and ``x``, so that the training masks
        favour the posterior and the likelihood. When its ``bounds`` are None and the prior
        states a box support (a torch distribution's ``support``, e.g. ``BoxUniform``, or a
        scipy distribution's ``support()``), the clone's ``bounds`` become that box on the
        theta columns: every posterior, and so every round's region, is truncated to the
        prior's support, as sbi's are. A callable prior states none; set ``bounds`` on the
        estimator yourself then.
    simulator, prior
        As :func:`skformer.simulate` takes them: ``simulator(theta)`` (or
        ``simulator(theta, rng)``) on a batch; ``prior`` with ``sample(shape)`` (torch, e.g.
        ``BoxUniform``), ``rvs(size, random_state)`` (scipy) or ``prior(n, rng)``.
    observed : array-like of shape (n_x,)
        The observation ``x_o``.
    n_rounds : int, default=5
    simulations_per_round : int, default=2000
    truncation : {"hpr", "box"}, default="hpr"
        The region of the next round. "hpr": where the model's posterior log density at
        ``x_o`` is above its ``quantile`` quantile over ``n_posterior_samples`` posterior
        samples (TSNPE's highest-density region), looked for within the box of those samples
        (widened by ``box_margin`` of its width on each side), so that only prior draws in the
        box pay for a log density. "box": that box alone (cheaper; a looser region).
    quantile : float, default=1e-3
        Posterior mass left outside the highest-density region.
    box_margin : float, default=0.1
    min_acceptance : float, default=1e-3
        The floor of the acceptance rate. A round whose "hpr" region accepts fewer prior
        draws falls back to the box; when the box too accepts fewer, the rounds stop with a
        warning (``stopped`` says why) and return what they have.
    n_posterior_samples : int, default=4000
        Posterior samples per round that define the region (kept in ``history``).
    refit : {"last", "never", "always"}, default="last"
        Which rounds fit a new model from scratch on every simulation so far rather than
        continuing the previous round's (``warm_start=True``). "last": the rounds in between
        warm-start, cheaply, to find the regions, and the returned estimator is a fresh fit on
        all simulations (also when the rounds stop early: a last record with proposal
        "refit"). "never": every round after round 0 warm-starts (the cheapest); a warm fit
        keeps its start unless an epoch of its new schedule beats it on validation, and at
        10,000 simulations none did (docs/arriving.md), so the returned model may be round 0's.
        "always": every round fits from scratch (the dearest).
    warm_params : dict or None, default=None
        Parameters the estimator takes for the warm-started fits (fresh fits use the
        estimator's own), e.g.
        ``{"learning_rate": 4e-4, "n_iter_no_change": 40}`` (none may describe another
        model). None keeps the estimator's own: on two_moons a fifth of the learning rate took
        twice the time and scored no better (``benchmarks/sequential.py``).
    initial : array-like of shape (n, n_theta + n_x) or None, default=None
        Prior simulations you already have: round 0 uses them, with the pilot simulations
        (below) and no others.
    n_jobs, chunk_size
        Parallel simulation, as in :func:`skformer.simulate`.
    random_state : int, RandomState or Generator instance, or None, default=None
        Seeds the proposals, the simulations and the posterior samples. The estimator's own
        ``random_state`` seeds its fits.
    verbose : int, default=1
        A progress bar over rounds (acceptance and validation loss as it goes) when positive.

    Returns
    -------
    RoundsResult
        ``estimator`` (fitted), ``X`` (every successful simulation of every round),
        ``round_of_row``, ``failed`` (the failed simulations), ``history`` (a :class:`Round`
        per round), ``stopped``, and ``posterior()`` and ``plot()``.

    Every argument is checked before the rounds spend simulations: the estimator's
    parameters (``bounds`` and ``warm_params`` included) against the ``[theta, x]`` columns,
    ``initial``'s width, and the simulator's output on a pilot of ``N_PILOT`` (8) prior draws
    against ``observed`` (those simulations join round 0).

    Raises
    ------
    ValueError
        For bad arguments (before any simulation but the pilot), and when ``observed`` and the
        simulations do not have the same number of ``x`` columns. An error or an interruption
        after simulations ran re-raises with everything simulated so far attached as its
        ``rounds_result`` attribute (the finished rounds, and in ``pending`` a round's
        simulations that could not join them): no simulation is lost.
    RuntimeError
        When every pilot simulation raised (the simulator's own error is the cause).

    Warns
    -----
    RuntimeWarning
        When simulations fail (they are counted and left out), when ``observed`` lies outside
        the range of the simulated ``x``, and when the rounds stop early.

    Examples
    --------
    >>> import numpy as np
    >>> from skformer import SimformerEstimator
    >>> from skformer.sequential import rounds
    >>> def prior(n, rng):
    ...     return rng.uniform(-3, 3, size=(n, 1))
    >>> def simulator(theta, rng):
    ...     return theta + 0.1 * rng.standard_normal(theta.shape)
    >>> est = SimformerEstimator(d_model=16, n_layers=1, max_epochs=3, random_state=0)
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # 3 epochs: the short-training warning
    ...     result = rounds(est, simulator, prior, observed=[0.5], n_rounds=2,
    ...                     simulations_per_round=300, truncation="box",
    ...                     n_posterior_samples=200, random_state=0, verbose=0)
    >>> result.X.shape, [r.proposal for r in result.history]
    ((600, 2), ['prior', 'box'])
    >>> result.posterior().sample(4, observed=[0.5], random_state=0).shape
    (4, 1)
    """
    _check_args(n_rounds, simulations_per_round, truncation, quantile, min_acceptance,
                box_margin, n_posterior_samples, refit)
    if not callable(simulator):
        raise TypeError(f"simulator must be callable, got {type(simulator).__name__}.")
    check_parallel(n_jobs, chunk_size)
    est = clone(estimator)
    _check_warm_params(est, warm_params, refit)
    x_o = _observation(observed)
    root = np.random.SeedSequence(seed_from(random_state))
    seeds = root.spawn(n_rounds)
    pilot_draw, pilot_simulate = root.spawn(2)  # after the rounds': their streams stay
    state = _State(x_o)
    pilot_theta = _draw(prior, min(N_PILOT, simulations_per_round), pilot_draw)
    n_theta = state.n_theta = pilot_theta.shape[1]
    initial = _check_initial(initial, n_theta, x_o.size)
    n_columns = n_theta + x_o.size
    check_fits_in_memory(
        max(n_rounds * simulations_per_round, n_posterior_samples) * n_columns * 32,
        "cpu", f"n_rounds={n_rounds} of simulations_per_round="
        f"{simulations_per_round:,} (n_posterior_samples={n_posterior_samples:,}) over "
        f"{n_columns} columns")
    est = _prepare(est, n_theta, x_o.size, prior)
    _check_settings(est, warm_params, n_columns)
    own = {k: v for k, v in est.get_params().items() if k in (warm_params or {})}
    settings = (n_posterior_samples, x_o, truncation, quantile, box_margin)
    bar = None
    if verbose:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_rounds, desc="rounds", unit="round")
    region = None
    fresh_rounds = {0} | {"last": {n_rounds - 1}, "never": set(),
                          "always": set(range(n_rounds))}[refit]
    try:
        t0 = time.perf_counter()
        pilot_x = _pilot(simulator, pilot_theta, pilot_simulate, state)
        pilot_seconds = time.perf_counter() - t0
        for r in range(n_rounds):
            propose_seed, simulate_seed, sample_seed = seeds[r].spawn(3)
            t0 = time.perf_counter()
            if r == 0:
                theta, kind, acceptance, x = _first_round(
                    initial, prior, simulations_per_round, propose_seed, simulator,
                    simulate_seed, pilot_theta, pilot_x, n_jobs, chunk_size, state)
                t0 -= pilot_seconds
            else:
                theta, kind, acceptance = _restricted(
                    prior, simulations_per_round, region, propose_seed,
                    min_acceptance)
                x = None
                if theta is None:
                    state.stopped = kind
                    warn(f"the rounds stopped after round {r - 1}: {kind}", RuntimeWarning)
                    if refit == "last" and not state.history[-1].fresh:
                        # the promise of refit="last": the returned model is a fresh fit
                        region, record = _fit_round(est, state, r, "refit", 0, 0, float("nan"),
                                                    0.0, True, own, sample_seed, settings)
                        state.history.append(record)
                    break
            if x is None:
                x, _ = simulate_at(simulator, theta, simulate_seed, n_jobs=n_jobs,
                                   chunk_size=chunk_size)
            simulate_seconds = time.perf_counter() - t0
            n_failed = state.add(r, theta, x)
            fresh = r in fresh_rounds
            region, record = _fit_round(est, state, r, kind, len(theta), n_failed, acceptance,
                                        simulate_seconds, fresh,
                                        own if fresh else warm_params, sample_seed, settings)
            state.history.append(record)
            if bar is not None:
                bar.set_postfix(accept=f"{acceptance:.3g}", val=f"{record.validation_loss:.4f}")
                bar.update(1)
    except BaseException as error:
        state.pending.extend(getattr(error, "simulated", []))  # finished chunks of the round
        if state.X is not None or state.pending or state.failed:
            partial = state.result(est)
            error.rounds_result = partial
            n_pending = sum(len(theta) for theta, _ in partial.pending)
            pending = f" and {n_pending} more in its pending" if n_pending else ""
            if hasattr(error, "add_note"):
                error.add_note(f"skformer.sequential.rounds: the {len(partial.X)} simulations "
                               f"of {len(state.history)} finished rounds{pending} are kept in "
                               "this error's rounds_result attribute.")
        raise
    finally:
        if bar is not None:
            bar.close()
    return state.result(est)


def _fit_round(est, state, r, kind, n_simulations, n_failed, acceptance, simulate_seconds,
               fresh, params, sample_seed, settings):
    """Fit round r (from scratch when ``fresh``, else continuing the model) on every
    simulation so far, with ``params`` set first; return the next region and the record."""
    n_posterior_samples, x_o, truncation, quantile, box_margin = settings
    t0 = time.perf_counter()
    before = 0 if fresh else est.n_iter_
    if params:
        est.set_params(**params)
    est.set_params(warm_start=not fresh)
    est.fit(state.X)
    fit_seconds = time.perf_counter() - t0
    post = _posterior(est, state.n_theta, state.X.shape[1])
    samples = post.sample(n_posterior_samples, observed=x_o,
                          random_state=np.random.default_rng(sample_seed))
    region = _region(post, samples, x_o, truncation, quantile, box_margin)
    scores = est.validation_scores_[before:]
    record = Round(
        round=r, proposal=kind, n_simulations=n_simulations, n_failed=n_failed,
        acceptance=acceptance, simulate_seconds=simulate_seconds, fit_seconds=fit_seconds,
        epochs=est.n_iter_ - before, fresh=fresh,
        validation_loss=float(min(scores)) if len(scores) else float("nan"),
        threshold=region.get("threshold"), box=region["box"], posterior_samples=samples)
    return region, record


class _State:
    """Every simulation so far, by round, and the history."""

    def __init__(self, x_o: np.ndarray):
        self.x_o = x_o
        self.X: np.ndarray | None = None
        self.rows_round: list[np.ndarray] = []
        self.failed: list[np.ndarray] = []
        self.history: list[Round] = []
        self.n_theta = 0
        self.stopped: str | None = None
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []

    def check_width(self, x: np.ndarray) -> None:
        if x.shape[1] != self.x_o.size:
            raise ValueError(f"the simulator returns {x.shape[1]} values of x per simulation "
                             f"but observed has {self.x_o.size}.")

    def add(self, r: int, theta: np.ndarray, x: np.ndarray) -> int:
        """Keep a round's simulations; return how many failed (left out, kept aside)."""
        self.pending = [(theta, x)]  # until they join X, an error carries them as they are
        self.check_width(x)
        rows = np.hstack([theta, x])
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            warn(f"round {r}: {int(bad.sum())} of {len(x)} simulations failed (raised or "
                 "returned NaN or infinity); they are left out of training and kept in "
                 "the result's failed.", RuntimeWarning)
            self.failed.append(rows[bad])
        good = rows[~bad]
        if len(good) == 0:
            self.pending = []  # in failed: the result keeps them
            raise ValueError(f"every one of the {len(rows)} simulations of round {r} failed "
                             "(raised or returned NaN or infinity); see the result's failed.")
        if r == 0:
            _check_observed(good[:, self.n_theta:], self.x_o)
        self.X = good if self.X is None else np.vstack([self.X, good])
        self.rows_round.append(np.full(len(good), r))
        self.pending = []
        return int(bad.sum())

    def result(self, est) -> RoundsResult:
        width = self.n_theta + self.x_o.size if self.X is None else self.X.shape[1]
        X = np.empty((0, width)) if self.X is None else self.X
        rows_round = (np.concatenate(self.rows_round) if self.rows_round
                      else np.empty(0, dtype=np.int64))
        failed = np.vstack(self.failed) if self.failed else np.empty((0, width))
        return RoundsResult(estimator=est, X=X, round_of_row=rows_round, failed=failed,
                            history=list(self.history), n_theta=self.n_theta,
                            stopped=self.stopped, pending=list(self.pending))


def _observation(observed) -> np.ndarray:
    """``observed`` as a non-empty float64 vector of finite values."""
    if np.iscomplexobj(observed):
        raise ValueError("observed holds complex numbers; simulations are real.")
    try:
        x_o = np.asarray(observed, dtype=np.float64).ravel()
    except (TypeError, ValueError) as err:
        raise ValueError(f"observed must be a vector of numbers; got {observed!r}.") from err
    if x_o.size == 0 or not np.isfinite(x_o).all():
        raise ValueError("observed must be a non-empty vector of finite values.")
    return x_o


def _check_warm_params(est, warm_params, refit) -> None:
    """``warm_params`` name training parameters of ``est`` (their values are checked with
    the columns, by :func:`_check_settings`), whether or not a warm round will run."""
    if warm_params is None:
        return
    if not isinstance(warm_params, dict):
        raise ValueError(f"warm_params must be a dict or None; got {warm_params!r}.")
    if warm_params and refit == "always":
        raise ValueError("warm_params set the warm-started fits, and refit='always' makes "
                         "none: drop warm_params or choose refit='last' or 'never'.")
    known = est.get_params(deep=False)
    unknown = sorted(map(str, set(warm_params) - set(known)))
    if unknown:
        raise ValueError(f"warm_params names {unknown}, which are not parameters of "
                         f"{type(est).__name__}.")
    model = sorted(set(warm_params) & set(MODEL_PARAMS))
    if model:
        raise ValueError(f"warm_params may not change {model}: they describe the model, "
                         "which a warm-started fit continues. Set them on the estimator.")
    own = sorted(set(warm_params) & set(SET_BY_ROUNDS))
    if own:
        raise ValueError(f"warm_params may not set {own}: rounds sets it on every fit "
                         "(refit chooses which fits start afresh).")


def _check_settings(est, warm_params, n_columns: int) -> None:
    """The estimator's parameters, and with ``warm_params`` set, pass every check of ``fit``
    for ``n_columns`` columns."""
    est._check_before_fit(n_columns)
    if warm_params:
        try:
            clone(est).set_params(**warm_params)._check_before_fit(n_columns)
        except (ValueError, TypeError) as err:
            raise ValueError(f"warm_params: {err}") from err


def _check_initial(initial, n_theta: int, n_x: int) -> np.ndarray | None:
    """``initial`` as float64 rows of ``n_theta + n_x`` columns with finite parameters."""
    if initial is None:
        return None
    rows = real_array(initial, "initial")
    if rows.ndim != 2 or rows.shape[1] != n_theta + n_x or len(rows) == 0:
        raise ValueError(f"initial must have shape (n, {n_theta + n_x}): n_theta = {n_theta} "
                         f"(the prior's draws) and n_x = {n_x} (observed's length); got shape "
                         f"{rows.shape}.")
    if not np.isfinite(rows[:, :n_theta]).all():
        raise ValueError("initial holds non-finite parameters (its first "
                         f"{n_theta} columns); NaN may only mark a failed simulation's x.")
    return rows


def _pilot(simulator, theta: np.ndarray, seed, state: _State) -> np.ndarray:
    """The simulator's output on a few prior draws, checked against ``observed``'s width."""
    try:
        x, _ = simulate_at(simulator, theta, seed)
    except RuntimeError as err:
        raise RuntimeError(f"the simulator raised on every one of the {len(theta)} pilot "
                           "simulations that rounds runs first; its error is the cause."
                           ) from (err.__cause__ or err)
    state.pending = [(theta, x)]
    state.check_width(x)
    return x


def _first_round(initial, prior, n, propose_seed, simulator, simulate_seed, pilot_theta,
                 pilot_x, n_jobs, chunk_size, state):
    """Round 0's parameters and simulations: the pilot's, and ``initial`` or more prior
    draws simulated."""
    if initial is not None:
        n_theta = pilot_theta.shape[1]
        theta = np.vstack([initial[:, :n_theta], pilot_theta])
        return theta, "prior", 1.0, np.vstack([initial[:, n_theta:], pilot_x])
    theta = np.vstack([pilot_theta, _draw(prior, n - len(pilot_theta), propose_seed,
                                          pilot_theta.shape[1])]) \
        if n > len(pilot_theta) else pilot_theta
    x = pilot_x
    if n > len(pilot_theta):
        rest, _ = simulate_at(simulator, theta[len(pilot_theta):], simulate_seed,
                              n_jobs=n_jobs, chunk_size=chunk_size)
        state.pending.append((theta[len(pilot_theta):], rest))
        state.check_width(rest)
        x = np.vstack([pilot_x, rest])
    return theta, "prior", 1.0, x


def _prepare(est, n_theta: int, n_x: int, prior):
    """Group the columns into theta and x for the training masks, unless the user grouped
    them or named the posterior's variables; bound theta by the prior's support box unless
    the user set bounds."""
    params = est.get_params()
    if all(params.get(k) is None for k in ("variables", "posterior_latent",
                                             "posterior_observed")):
        est.set_params(variables={"theta": n_theta, "x": n_x})
    bounds = prior_bounds(prior, n_theta) if params.get("bounds") is None else None
    if bounds is not None:
        est.set_params(bounds=bounds)
    return est


def _check_observed(x: np.ndarray, x_o: np.ndarray) -> None:
    low, high = x.min(axis=0), x.max(axis=0)
    out = np.flatnonzero((x_o < low) | (x_o > high))
    if out.size:
        warn(f"observed lies outside the range of the prior simulations in x columns "
             f"{out[:10].tolist()} (e.g. {x_o[out[0]]:.4g} against [{low[out[0]]:.4g}, "
             f"{high[out[0]]:.4g}]): the posterior there is an extrapolation, and the rounds "
             "cannot find simulations like it; check the simulator and the observation.",
             RuntimeWarning)


def _region(post, samples, x_o, truncation, quantile, box_margin) -> dict:
    """The next round's region from this round's posterior samples."""
    low, high = samples.min(axis=0), samples.max(axis=0)
    pad = box_margin * (high - low)
    region = {"box": np.stack([low - pad, high + pad], axis=1), "kind": truncation,
              "post": post, "x_o": x_o}
    if truncation == "hpr":
        log_density = post.log_prob(samples, observed=x_o, normalise=False)  # one scale
        region["threshold"] = float(np.quantile(log_density, quantile))
    return region


def _restricted(prior, n, region, seed, min_acceptance):
    """n prior draws inside the region: ``(theta, kind, acceptance)``, or
    ``(None, reason, acceptance)`` when even the box accepts too few."""
    kinds = ["hpr", "box"] if region["kind"] == "hpr" else ["box"]
    reasons = []
    for kind in kinds:
        theta, acceptance = _rejection(prior, n, region, kind, seed, min_acceptance)
        if theta is not None:
            if reasons:
                warn(f"{reasons[-1]}; this round falls back to the box of the posterior "
                     f"samples (acceptance {acceptance:.3g}).", RuntimeWarning)
            return theta, kind, acceptance
        reasons.append(f"the {kind} region accepted {acceptance:.3g} of the prior draws, "
                       f"below min_acceptance={min_acceptance:g}")
    return None, reasons[-1] + " (the posterior fills too small a part of the prior to " \
        "find by rejection; fewer rounds or a lower min_acceptance)", acceptance


def _rejection(prior, n, region, kind, seed, min_acceptance, batch=None):
    """Prior draws accepted by the region until n, or None when the acceptance rate falls
    below the floor (judged once at least 10,000 draws were made)."""
    low, high = region["box"][:, 0], region["box"][:, 1]
    batch = batch or max(4 * n, 10_000)
    accepted, tried, k = [], 0, 0
    limit = max(10_000, int(np.ceil(n / min_acceptance)))
    while sum(len(a) for a in accepted) < n:
        theta = _draw(prior, batch, seed.spawn(1)[0], len(low))
        k += 1
        tried += batch
        inside = theta[np.all((theta >= low) & (theta <= high), axis=1)]
        if kind == "hpr" and len(inside):
            log_density = region["post"].log_prob(inside, observed=region["x_o"],
                                                   normalise=False)
            inside = inside[log_density >= region["threshold"]]
        accepted.append(inside)
        got = sum(len(a) for a in accepted)
        if tried >= 10_000 and got / tried < min_acceptance or tried >= limit and got < n:
            return None, got / tried
    theta = np.vstack(accepted)
    return theta[:n], sum(len(a) for a in accepted) / tried
