"""Calibration diagnostics for any conditional: SBC ranks, expected coverage, TARP.

A posterior that looks right can still be over- or under-confident. These checks draw test
pairs ``(latent, observed)`` from the joint (simulations the model was *not* trained on), sample
the conditional given each ``observed`` row, and ask whether the true ``latent`` values sit
where a calibrated conditional would put them:

* :func:`sbc` (simulation-based calibration, Talts et al. 2018): the rank of each true value
  among the samples, per column; uniform when calibrated. :func:`check_sbc` tests the ranks.
* :func:`coverage`: expected coverage of highest-density regions; on the diagonal when
  calibrated, below it when over-confident, above it when under-confident.
* :func:`tarp` (Lemos et al. 2023): expected coverage of balls around random reference points,
  a test that is necessary and sufficient for accuracy and needs samples only.

Each takes any object with ``sample(n, observed=..., random_state=...)`` (and ``log_prob`` for
density-based coverage): a :class:`skformer.Conditional` (posterior, likelihood, or any other
condition mask of one fitted model), or another library's sampler. All test observations are
sampled in batches, one ``sample`` call for many observations (a 2-D ``observed``), with a
per-observation fallback for samplers that take one observation at a time. Results are
reproducible for a given ``random_state``. Plots: :func:`skformer.plot.sbc_rank_plot`,
:func:`skformer.plot.coverage_plot`, :func:`skformer.plot.tarp_plot`.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np
from scipy import stats
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from skformer._utils import int_seed, real_array, seed_from

__all__ = ["sbc", "check_sbc", "coverage", "tarp", "draw_samples"]

#: samples per sampling call: observations are grouped so that one call draws about this many
ROWS_PER_CALL = 100_000


def _check_pairs(latent, observed) -> tuple[np.ndarray, np.ndarray]:
    latent = real_array(latent, "latent")
    observed = real_array(observed, "observed")
    latent = latent[:, None] if latent.ndim == 1 else latent
    observed = observed[:, None] if observed.ndim == 1 else observed
    if latent.ndim != 2 or observed.ndim != 2:
        raise ValueError(f"latent and observed must be 2-D (n_tests, columns); got shapes "
                         f"{latent.shape} and {observed.shape}.")
    if latent.shape[0] != observed.shape[0]:
        raise ValueError(f"latent has {latent.shape[0]} rows and observed {observed.shape[0]}; "
                         "each test pair is one row of each.")
    if latent.shape[0] < 1:
        raise ValueError("at least one test pair is needed.")
    if not np.isfinite(latent).all():
        raise ValueError("latent must be finite: the true values of the test pairs.")
    return latent, observed


def _positive(value, name: str) -> int:
    if not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def draw_samples(sampler, observed, n_samples: int, *, random_state=None,
                 verbose: bool | None = None, desc: str = "sampling") -> np.ndarray:
    """``n_samples`` draws of ``sampler`` given each row of ``observed``, in batched calls.

    Parameters
    ----------
    sampler : object with ``sample(n, observed=..., random_state=...)``
        Given a 2-D ``observed`` it should return (n_observations, n, n_latent); a sampler that
        does not (it raises, or returns another shape) is called once per observation.
    observed : array of shape (n_tests, n_observed)
    n_samples : int
    random_state : int, RandomState, Generator or None
        Seeds every call (one seed per batch, derived from this).
    verbose : bool or None, default=None
        Progress bar over observations: always (True), never (False), or when sampling takes
        longer than 10 s (None).

    Returns
    -------
    ndarray of shape (n_tests, n_samples, n_latent)
    """
    from tqdm.auto import tqdm

    n_samples = _positive(n_samples, "n_samples")
    observed = np.asarray(observed, dtype=np.float64)
    n_tests = observed.shape[0]
    per_call = max(1, ROWS_PER_CALL // n_samples)
    seeds = np.random.SeedSequence(seed_from(random_state)).spawn(math.ceil(n_tests / per_call))
    bar = tqdm(total=n_tests, desc=desc, unit="obs", disable=verbose is False,
               delay=0 if verbose else 10)
    out, batched = [], True
    try:
        for k, start in enumerate(range(0, n_tests, per_call)):
            obs = observed[start:start + per_call]
            seed = int_seed(seeds[k])
            draws = None
            if batched:
                try:
                    draws = np.asarray(sampler.sample(n_samples, observed=obs,
                                                      random_state=seed), dtype=np.float64)
                except (TypeError, ValueError, RuntimeError):
                    draws = None
                if draws is None or draws.ndim != 3 or draws.shape[:2] != (len(obs), n_samples):
                    batched, draws = False, None
            if draws is None:
                one = [np.asarray(sampler.sample(n_samples, observed=o,
                                                 random_state=(seed + i) % 2**63),
                                  dtype=np.float64) for i, o in enumerate(obs)]
                draws = np.stack([d[:, None] if d.ndim == 1 else d for d in one])
            out.append(draws)
            bar.update(len(obs))
    finally:
        bar.close()
    samples = np.concatenate(out)
    if samples.shape[:2] != (n_tests, n_samples):
        raise ValueError(f"the sampler returned shape {samples.shape}; expected "
                         f"({n_tests}, {n_samples}, n_latent).")
    return samples


def _samples_of(conditional, latent, observed, n_samples, random_state, verbose, desc,
                samples=None):
    if samples is None:
        samples = draw_samples(conditional, observed, n_samples, random_state=random_state,
                               verbose=verbose, desc=desc)
    else:
        samples = real_array(samples, "samples")
        if samples.ndim != 3 or samples.shape[0] != latent.shape[0]:
            raise ValueError(f"samples must have shape (n_tests={latent.shape[0]}, n_samples, "
                             f"n_latent); got {samples.shape}.")
    if not np.isfinite(samples).all():
        # a NaN compares false with everything: every rank would read 0
        raise ValueError("samples hold non-finite values; ranks and coverage need finite "
                         "posterior samples.")
    if samples.shape[2] != latent.shape[1]:
        raise ValueError(f"the conditional samples {samples.shape[2]} latent columns; latent "
                         f"has {latent.shape[1]}.")
    return samples


def _ranks(samples: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per column, the number of samples below the truth, ties broken at random."""
    below = (samples < truth[:, None, :]).sum(axis=1)
    ties = (samples == truth[:, None, :]).sum(axis=1)
    return below + np.floor(rng.random(below.shape) * (ties + 1)).astype(below.dtype)


def sbc(conditional, latent, observed, n_samples: int = 1000, random_state=None, *,
        samples=None, verbose: bool | None = None) -> np.ndarray:
    """Simulation-based calibration ranks of the true latent values.

    Parameters
    ----------
    conditional : object with ``sample(n, observed=..., random_state=...)``
        E.g. ``est.posterior()`` or any ``est.condition(mask)``.
    latent : array-like of shape (n_tests, n_latent)
        True values of the conditional's latent columns, one test pair per row, drawn from the
        joint (e.g. fresh simulations ``[theta, x]``: ``latent = theta``).
    observed : array-like of shape (n_tests, n_observed)
        The matching observed values (``x`` of the same simulations).
    n_samples : int, default=1000
        Samples per test pair.
    random_state : int, RandomState, Generator or None
        Seeds the sampling and the random tie-breaking.
    samples : array-like of shape (n_tests, n_samples, n_latent) or None
        Samples already drawn for these test pairs (e.g. by :func:`draw_samples`, to share
        one set between :func:`sbc`, :func:`coverage` and :func:`tarp`; ``n_samples`` is
        then their count); None draws them.
    verbose : bool or None, default=None
        Progress bar (None: when it takes longer than 10 s).

    Returns
    -------
    ndarray of int of shape (n_tests, n_latent)
        The rank of each true value among the samples of its column, from 0 to ``n_samples``;
        uniform on ``0..n_samples`` for a calibrated conditional.

    Examples
    --------
    >>> import numpy as np
    >>> from skformer.diagnostics import sbc, check_sbc
    >>> class Exact:  # theta ~ N(0, 1), x = theta + N(0, 1): theta | x ~ N(x / 2, 1 / 2)
    ...     def sample(self, n, observed, random_state=None):
    ...         rng = np.random.default_rng(random_state)
    ...         obs = np.atleast_2d(observed)
    ...         return obs[:, None, :] / 2 + np.sqrt(0.5) * rng.standard_normal((len(obs), n, 1))
    >>> rng = np.random.default_rng(0)
    >>> theta = rng.standard_normal((200, 1))
    >>> x = theta + rng.standard_normal((200, 1))
    >>> ranks = sbc(Exact(), theta, x, n_samples=100, random_state=0)
    >>> ranks.shape
    (200, 1)
    >>> bool(check_sbc(ranks, 100)["ks_pvalues"][0] > 0.01)
    True
    """
    latent, observed = _check_pairs(latent, observed)
    root = np.random.SeedSequence(seed_from(random_state))
    sample_seed, tie_seed = (int_seed(s) for s in root.spawn(2))
    samples = _samples_of(conditional, latent, observed, n_samples, sample_seed, verbose, "SBC",
                          samples)
    return _ranks(samples, latent, np.random.default_rng(tie_seed))


def check_sbc(ranks, n_samples: int, random_state=0) -> dict:
    """Test SBC ranks for uniformity, per column.

    Parameters
    ----------
    ranks : array-like of int of shape (n_tests, n_latent)
        From :func:`sbc`.
    n_samples : int
        The ``n_samples`` the ranks were computed with (ranks lie in ``0..n_samples``).
    random_state : int, RandomState, Generator or None, default=0
        Seeds the jitter of the KS test and the classifier check.

    Returns
    -------
    dict
        ``"ks_pvalues"``: per column, the p-value of a Kolmogorov-Smirnov test of the ranks
        (jittered to a continuous scale, exact under uniformity) against the uniform
        distribution; small values flag miscalibration. ``"c2st_ranks"``: per column, the
        cross-validated accuracy of a k-nearest-neighbour classifier that tells the ranks from
        uniform draws of the same size; 0.5 when it cannot, higher when the ranks are not
        uniform (sbi reports the same check with an MLP). ``"mean_rank"``: the mean rank per
        column over ``n_samples``; 0.5 when unbiased, above 0.5 when the samples sit below the
        truth (the conditional is biased low), below when they sit above.
    """
    ranks = np.asarray(ranks)
    ranks = ranks[:, None] if ranks.ndim == 1 else ranks
    n_samples = _positive(n_samples, "n_samples")
    if ranks.ndim != 2 or ranks.min() < 0 or ranks.max() > n_samples:
        raise ValueError(f"ranks must be a 2-D array of values in 0..{n_samples}.")
    rng = np.random.default_rng(seed_from(random_state))
    u = (ranks + rng.random(ranks.shape)) / (n_samples + 1)
    ks = np.array([stats.kstest(u[:, j], "uniform").pvalue for j in range(u.shape[1])])
    reference = rng.random(u.shape)
    folds = max(2, min(5, ranks.shape[0] // 10))
    c2st = []
    for j in range(u.shape[1]):
        data = np.concatenate([u[:, j], reference[:, j]])[:, None]
        labels = np.r_[np.ones(len(u)), np.zeros(len(u))]
        knn = KNeighborsClassifier(n_neighbors=max(5, int(np.sqrt(2 * len(u)))))
        c2st.append(cross_val_score(knn, data, labels, cv=folds).mean())
    return {"ks_pvalues": ks, "c2st_ranks": np.array(c2st),
            "mean_rank": ranks.mean(axis=0) / n_samples}


def _levels(levels) -> np.ndarray:
    levels = np.linspace(0.0, 1.0, 21) if levels is None else real_array(levels, "levels")
    if levels.ndim != 1 or not ((levels >= 0) & (levels <= 1)).all():  # NaN too
        raise ValueError("levels must be a 1-D array of credibility levels in [0, 1].")
    return levels


def coverage(conditional, latent, observed, levels=None, n_samples: int = 1000,
             random_state=None, *, method: str = "auto", samples=None,
             verbose: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Expected coverage of highest-density regions.

    For each test pair, the smallest highest-density region that contains the true value has
    some credibility ``a`` (the share of the conditional's mass denser than the truth); the
    empirical coverage at level ``l`` is the share of test pairs with ``a <= l``. A calibrated
    conditional gives ``coverage == levels``; an over-confident one lies below the diagonal, an
    under-confident one above.

    Parameters
    ----------
    conditional : object with ``sample(n, observed=..., random_state=...)``
        and, for ``method="log_prob"``, ``log_prob(values, observed)`` that takes one row of
        ``observed`` per row of ``values``.
    latent, observed : array-like of shape (n_tests, n_latent), (n_tests, n_observed)
        Test pairs drawn from the joint, as in :func:`sbc`.
    levels : array-like of floats in [0, 1] or None
        Credibility levels (default: 0, 0.05, ..., 1).
    n_samples : int, default=1000
        Samples per test pair.
    random_state : int, RandomState, Generator or None
    method : {"auto", "log_prob", "kde"}, default="auto"
        How densities are compared. "log_prob": the conditional's own log density of the truth
        and of its samples (exact regions; one log density per sample, so it costs
        ``n_tests * (n_samples + 1)`` evaluations: for a skformer model an ODE each, minutes
        on a CPU; lower ``n_samples`` to a few hundred there). "kde": a Gaussian kernel density
        estimate fitted to each test pair's samples (needs only samples; good in a few
        dimensions). "auto": "log_prob" when the conditional has it, else "kde".
    samples : array-like of shape (n_tests, n_samples, n_latent) or None
        Samples already drawn for these test pairs (e.g. by :func:`draw_samples`, to share
        one set between :func:`sbc`, :func:`coverage` and :func:`tarp`; ``n_samples`` is
        then their count); None draws them.
    verbose : bool or None, default=None
        Progress bar (None: when it takes longer than 10 s).

    Returns
    -------
    levels, empirical_coverage : ndarrays of shape (n_levels,)
    """
    latent, observed = _check_pairs(latent, observed)
    levels = _levels(levels)
    if method not in ("auto", "log_prob", "kde"):
        raise ValueError(f"method must be 'auto', 'log_prob' or 'kde'; got {method!r}.")
    if method == "auto":
        method = "log_prob" if callable(getattr(conditional, "log_prob", None)) else "kde"
    samples = _samples_of(conditional, latent, observed, n_samples, random_state, verbose,
                          "coverage", samples)
    if method == "log_prob":
        alpha = _alpha_log_prob(conditional, samples, latent, observed, verbose)
    else:
        alpha = np.array([_alpha_kde(s, t) for s, t in zip(samples, latent, strict=True)])
    return levels, (alpha[None, :] <= levels[:, None]).mean(axis=1)


def _alpha_log_prob(conditional, samples, latent, observed, verbose) -> np.ndarray:
    from tqdm.auto import tqdm

    from skformer.conditional import Conditional

    n_tests, n, d = samples.shape
    alpha = np.empty(n_tests)
    # densities are compared within one observation, so the bounds' normalising constant
    # cancels: skformer's conditionals skip its draws
    options = {"normalise": False} if isinstance(conditional, Conditional) else {}
    per_call = max(1, ROWS_PER_CALL // (n + 1))
    for start in tqdm(range(0, n_tests, per_call), desc="log densities", unit="batch",
                      disable=verbose is False, delay=0 if verbose else 10):
        sl = slice(start, start + per_call)
        values = np.concatenate([latent[sl][:, None, :], samples[sl]], axis=1)  # truth first
        k = values.shape[0]
        obs = np.repeat(observed[sl], n + 1, axis=0)
        logp = np.asarray(conditional.log_prob(values.reshape(k * (n + 1), d), obs, **options),
                          dtype=np.float64).reshape(k, n + 1)
        alpha[sl] = (logp[:, 1:] > logp[:, :1]).mean(axis=1)
    return alpha


def _alpha_kde(samples: np.ndarray, truth: np.ndarray) -> float:
    """The share of samples denser than the truth under a kernel density estimate.

    Truth and samples are treated alike, as a calibrated conditional makes them exchangeable:
    the estimate is fitted to all of them, and each point's density leaves its own kernel out
    (a sample scored by a fit that includes it looks denser than the truth, which no fit
    includes, and coverage would come out too low).
    """
    points = np.concatenate([truth[None, :], samples]).T  # (d, n + 1)
    kde = stats.gaussian_kde(points)
    own = 1.0 / np.sqrt(np.linalg.det(2 * np.pi * kde.covariance))
    density = kde.pdf(points) * points.shape[1] - own  # up to a common factor, leave-one-out
    return float((density[1:] > density[0]).mean())


def tarp(conditional, latent, observed, levels=None, n_samples: int = 1000, random_state=None,
         *, references=None, samples=None, verbose: bool | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """TARP expected coverage (Lemos et al., "Sampling-based accuracy testing of posterior
    estimators for general inference", ICML 2023).

    Per test pair, a reference point is drawn; the share ``f`` of samples closer to the
    reference than the truth is is the credibility of the ball around the reference that
    reaches the truth. The expected coverage at level ``l`` is the share of pairs with
    ``f < l``; it lies on the diagonal for every choice of references if and only if the
    conditional is exact. Distances are taken after z-scoring every column by the mean and
    standard deviation of the true values, with the references z-scored alike (sbi fixed a
    mismatch there in 0.26.1), so that columns of different scales count equally.

    Parameters
    ----------
    conditional, latent, observed, levels, n_samples, random_state
        As in :func:`coverage`.
    references : array-like of shape (n_tests, n_latent) or None
        Reference points in data units; None draws them uniformly in the box spanned by the
        true values.
    samples : array-like of shape (n_tests, n_samples, n_latent) or None
        Samples already drawn for these test pairs (e.g. by :func:`draw_samples`, to share
        one set between :func:`sbc`, :func:`coverage` and :func:`tarp`; ``n_samples`` is
        then their count); None draws them.
    verbose : bool or None, default=None

    Returns
    -------
    levels, expected_coverage : ndarrays of shape (n_levels,)
    """
    latent, observed = _check_pairs(latent, observed)
    levels = _levels(levels)
    root = np.random.SeedSequence(seed_from(random_state))
    sample_seed, ref_seed = (int_seed(s) for s in root.spawn(2))
    samples = _samples_of(conditional, latent, observed, n_samples, sample_seed, verbose, "TARP",
                          samples)
    mean, std = latent.mean(axis=0), latent.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    z_truth, z_samples = (latent - mean) / std, (samples - mean) / std
    if references is None:
        rng = np.random.default_rng(ref_seed)
        z_ref = rng.uniform(z_truth.min(axis=0), z_truth.max(axis=0), size=z_truth.shape)
    else:
        references = real_array(references, "references")
        if references.shape != latent.shape or not np.isfinite(references).all():
            raise ValueError(f"references must be finite, of the shape of latent "
                             f"{latent.shape}; got shape {references.shape}.")
        z_ref = (references - mean) / std
    d_samples = np.linalg.norm(z_samples - z_ref[:, None, :], axis=2)
    d_truth = np.linalg.norm(z_truth - z_ref, axis=1)
    f = (d_samples < d_truth[:, None]).mean(axis=1)
    return levels, (f[None, :] < levels[:, None]).mean(axis=1)
