"""Pairplots of samples and loss curves (matplotlib, imported only when called)."""

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
