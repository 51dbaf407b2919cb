"""Plots: pairplots of samples, loss curves, and calibration diagnostics (matplotlib, imported
only when called)."""

from __future__ import annotations

import numpy as np

__all__ = ["pairplot", "plot_loss"]


def _as_2d(samples) -> np.ndarray:
    if hasattr(samples, "detach"):
        samples = samples.detach().cpu().numpy()
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        arr = arr.reshape(arr.shape[0], -1)
    return arr


def pairplot(samples, limits=None, figsize=None, labels=None, points=None, bins: int = 50):
    """Marginal histograms on the diagonal and pairwise 2-D histograms above it.

    Parameters
    ----------
    samples : array-like or tensor of shape (n_samples, n_dims), or a list of them
        Several sets are overlaid in different colours.
    limits : list of (low, high) per dimension, or one pair for all, optional
    figsize : (width, height), optional
    labels : list of str, optional
        One label per dimension.
    points : array-like of shape (n_dims,) or (n_points, n_dims), optional
        Reference points (e.g. the true parameters) marked on every panel.
    bins : int, default=50

    Returns
    -------
    fig, axes : matplotlib Figure and ndarray of Axes of shape (n_dims, n_dims)

    Examples
    --------
    >>> import numpy as np
    >>> from skformer import pairplot
    >>> fig, axes = pairplot(np.random.default_rng(0).normal(size=(500, 2)), labels=["a", "b"])
    >>> axes.shape
    (2, 2)
    """
    import matplotlib.pyplot as plt

    sets = samples if isinstance(samples, (list, tuple)) else [samples]
    sets = [_as_2d(s) for s in sets]
    dim = sets[0].shape[1]
    if any(s.shape[1] != dim for s in sets):
        raise ValueError("all sample sets must have the same number of dimensions.")
    if limits is None:
        both = np.concatenate(sets)
        lo, hi = both.min(0), both.max(0)
        pad = 0.05 * np.where(hi > lo, hi - lo, 1.0)
        limits = np.stack([lo - pad, hi + pad], axis=1)
    else:
        limits = np.asarray(limits, dtype=np.float64)
        if limits.shape == (2,):
            limits = np.tile(limits, (dim, 1))
        if limits.shape != (dim, 2):
            raise ValueError(f"limits must have shape ({dim}, 2) or (2,); got {limits.shape}.")
    if labels is not None and len(labels) != dim:
        raise ValueError(f"labels must have {dim} entries; got {len(labels)}.")
    pts = None if points is None else _as_2d(np.atleast_2d(_as_2d(points).reshape(-1, dim)))

    fig, axes = plt.subplots(dim, dim, figsize=figsize or (2.2 * dim, 2.2 * dim), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i in range(dim):
        for j in range(dim):
            ax = axes[i, j]
            if j < i:
                ax.axis("off")
                continue
            for k, s in enumerate(sets):
                c = colors[k % len(colors)]
                if i == j:
                    ax.hist(s[:, i], bins=bins, range=tuple(limits[i]), color=c,
                            histtype="step" if len(sets) > 1 else "stepfilled", alpha=0.8)
                elif len(sets) == 1:
                    ax.hist2d(s[:, j], s[:, i], bins=bins, range=[limits[j], limits[i]],
                              cmap="Blues")
                else:
                    ax.scatter(s[:, j], s[:, i], s=1, alpha=0.2, color=c)
            if pts is not None:
                if i == j:
                    for p in pts:
                        ax.axvline(p[i], color="tab:red", lw=1)
                else:
                    ax.scatter(pts[:, j], pts[:, i], color="tab:red", s=12, zorder=3)
            ax.set_xlim(limits[j])
            if i != j:
                ax.set_ylim(limits[i])
            else:
                ax.set_yticks([])
            if labels is not None and i == j:
                ax.set_xlabel(labels[i])
    fig.tight_layout()
    return fig, axes


def plot_loss(estimator, ax=None):
    """Training and validation loss per epoch of a fitted estimator; returns the Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    ax.plot(estimator.loss_curve_, label="training")
    if estimator.validation_scores_:
        ax.plot(estimator.validation_scores_, label="validation")
    ax.axvline(estimator.best_epoch_, color="gray", ls=":", label="kept")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    return ax


def _names(names, n: int, prefix: str) -> list[str]:
    names = [f"{prefix}{j}" for j in range(n)] if names is None else list(names)
    if len(names) != n:
        raise ValueError(f"names has {len(names)} entries for {n} columns.")
    return names


def sbc_rank_plot(ranks, n_samples: int, *, kind: str = "hist", n_bins: int | None = None,
                  names=None, confidence: float = 0.99, axes=None):
    """SBC ranks per column against the uniform distribution a calibrated conditional gives.

    Parameters
    ----------
    ranks : array-like of int of shape (n_tests, n_columns)
        From :func:`skformer.diagnostics.sbc`.
    n_samples : int
        Samples per test the ranks were computed from.
    kind : {"hist", "ecdf"}, default="hist"
        "hist": a histogram of the ranks with the band a uniform histogram stays within at
        ``confidence`` (per bin). "ecdf": the difference between the empirical CDF of the
        normalised ranks and the uniform CDF, with the pointwise band at ``confidence``; it
        reads better with few tests.
    n_bins : int or None
        Histogram bins (default: about n_tests / 10, between 5 and 50).
    names : list of str or None
        Column names for the titles.
    confidence : float, default=0.99
    axes : array of matplotlib Axes or None

    Returns
    -------
    ndarray of Axes

    Reading it: a U shape (truths often below or above every sample) means over-confident
    (too narrow); a hump in the middle means under-confident (too wide); a slope (ranks
    piling up at one end) means bias: ranks near ``n_samples`` say the samples sit below the
    truth. See docs/diagnostics.md.
    """
    import matplotlib.pyplot as plt
    from scipy import stats

    ranks = np.asarray(ranks)
    ranks = ranks[:, None] if ranks.ndim == 1 else ranks
    n_tests, d = ranks.shape
    if kind not in ("hist", "ecdf"):
        raise ValueError(f"kind must be 'hist' or 'ecdf'; got {kind!r}.")
    names = _names(names, d, "column ")
    if axes is None:
        _, axes = plt.subplots(1, d, figsize=(3.2 * d, 2.8), squeeze=False)
    axes = np.asarray(axes).reshape(-1)
    tail = (1 - confidence) / 2
    for j, ax in enumerate(axes[:d]):
        if kind == "hist":
            bins = n_bins or int(np.clip(n_tests // 10, 5, 50))
            lo, hi = stats.binom.ppf([tail, 1 - tail], n_tests, 1 / bins)
            ax.axhspan(lo, hi, color="gray", alpha=0.25, lw=0, label=f"uniform, {confidence:.0%}")
            ax.axhline(n_tests / bins, color="gray", lw=1)
            ax.hist(ranks[:, j], bins=np.linspace(0, n_samples + 1, bins + 1), color="C0",
                    alpha=0.8)
            ax.set_xlabel("rank")
            ax.set_ylabel("count" if j == 0 else "")
        else:
            z = np.linspace(0, 1, 201)
            u = np.sort((ranks[:, j] + 0.5) / (n_samples + 1))
            ecdf = np.searchsorted(u, z, side="right") / n_tests
            lo = stats.binom.ppf(tail, n_tests, z) / n_tests - z
            hi = stats.binom.ppf(1 - tail, n_tests, z) / n_tests - z
            ax.fill_between(z, lo, hi, color="gray", alpha=0.25, lw=0,
                            label=f"uniform, {confidence:.0%}")
            ax.plot(z, ecdf - z, color="C0")
            ax.axhline(0, color="gray", lw=1)
            ax.set_xlabel("normalised rank")
            ax.set_ylabel("ECDF - uniform" if j == 0 else "")
        ax.set_title(names[j])
    axes[0].legend(fontsize="small")
    return axes


def _calibration_curve(levels, values, n_tests, ax, label, ylabel, confidence):
    import matplotlib.pyplot as plt
    from scipy import stats

    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 3.4))
    levels, values = np.asarray(levels, float), np.asarray(values, float)
    if n_tests:
        tail = (1 - confidence) / 2
        lo = stats.binom.ppf(tail, n_tests, levels) / n_tests
        hi = stats.binom.ppf(1 - tail, n_tests, levels) / n_tests
        ax.fill_between(levels, lo, hi, color="gray", alpha=0.25, lw=0,
                        label=f"calibrated, {confidence:.0%}")
    ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--")
    ax.plot(levels, values, marker=".", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("credibility level")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small", loc="upper left")
    return ax


def coverage_plot(levels, coverage, *, n_tests: int | None = None, label: str | None = None,
                  confidence: float = 0.99, ax=None):
    """Expected coverage against the credibility level, with the diagonal of a calibrated
    conditional and, given ``n_tests``, the band sampling error allows around it.

    Below the diagonal: over-confident (regions too small); above: under-confident.
    Returns the Axes. ``levels, coverage`` come from :func:`skformer.diagnostics.coverage`.
    """
    return _calibration_curve(levels, coverage, n_tests, ax, label or "empirical",
                              "empirical coverage", confidence)


def tarp_plot(levels, expected_coverage, *, n_tests: int | None = None,
              label: str | None = None, confidence: float = 0.99, ax=None):
    """TARP expected coverage (:func:`skformer.diagnostics.tarp`) against the credibility
    level; on the diagonal when the conditional is exact. Returns the Axes."""
    return _calibration_curve(levels, expected_coverage, n_tests, ax, label or "TARP",
                              "expected coverage (TARP)", confidence)
