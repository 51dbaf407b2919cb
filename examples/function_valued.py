"""Function-valued data: readings at irregular times, predictions anywhere
=========================================================================

Simulator: a random wave f(t) = theta_0 sin(2 pi t) + theta_1 cos(2 pi t) with theta ~ N(0, I),
read with noise (sd 0.1) at 8 times drawn uniformly in [0, 1], different times for every
simulation. ``fit(X, positions={"x": times})`` tells the
network when each reading was taken; in training it keeps a random subset of each row's
readings, so it learns every number of them.

Then, from 2 and from 6 readings at times no simulation had:

- the posterior of theta (``condition(["x"], positions={"x": t_o})``);
- the function at each of 41 grid times: one conditional per time, whose readings at ``t_o``
  are observed and the reading at that time latent (a mask per column of the new layout);
  its samples are the predictive distribution there, and their percentiles draw the band.
  Reading all 41 in one conditional (five times as many tokens as any simulation had) goes
  beyond what the network learnt; the printout says by how much.

f is a Gaussian process here (a linear model with a Gaussian prior), so every answer is exact:
the bands of the exact predictive distribution are drawn next to skformer's. Small settings
(a 32-wide network, 5,000 simulations, 80 epochs): about two minutes on 2 CPU cores. Saves
examples/output/function_valued.png.
"""

import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from skformer import SimformerEstimator

# sphinx-gallery runs the examples from this folder, without __file__
OUT = (Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()) / "output"
NOISE, K = 0.1, 8


def basis(t):
    t = np.asarray(t, dtype=float)
    return np.stack([np.sin(2 * np.pi * t), np.cos(2 * np.pi * t)], -1)


def exact(t_o, x_o, t_grid):
    """Posterior mean and covariance of theta, and the predictive mean and sd of readings on
    the grid, given readings x_o at times t_o."""
    A = basis(t_o)
    cov = np.linalg.inv(np.eye(2) + A.T @ A / NOISE**2)
    mean = cov @ A.T @ x_o / NOISE**2
    B = basis(t_grid)
    return mean, cov, B @ mean, np.sqrt(np.einsum("gi,ij,gj->g", B, cov, B) + NOISE**2)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    n = 5000
    theta = rng.standard_normal((n, 2))
    times = rng.uniform(0, 1, size=(n, K))
    x = np.einsum("nkj,nj->nk", basis(times), theta) + NOISE * rng.standard_normal((n, K))
    X = np.hstack([theta, x])

    est = SimformerEstimator(variables={"theta": [0, 1], "x": list(range(2, 2 + K))},
                             posterior_latent=["theta"], d_model=32, n_layers=2, n_heads=2,
                             batch_size=128, learning_rate=3e-3, max_epochs=80,
                             random_state=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, positions={"x": times})
    print(f"trained {est.n_iter_} epochs on {n} simulations, {K} readings each at their own "
          "times")

    truth = np.array([0.8, -0.5])
    grid = np.linspace(0, 1, 41)
    panels = []
    for m in (2, 6):
        t_o = np.sort(rng.uniform(0, 1, m))
        x_o = basis(t_o) @ truth + NOISE * rng.standard_normal(m)
        mean, cov, pred_mean, pred_sd = exact(t_o, x_o, grid)

        post = est.condition(["x"], positions={"x": t_o})
        samples = post.sample(4000, observed=x_o, random_state=0)
        print(f"\n{m} readings at t = {np.round(t_o, 2)}")
        print("  posterior of theta: mean", samples.mean(0).round(2), " sd",
              samples.std(0).round(2))
        print("            exact:    mean", mean.round(2), " sd", np.sqrt(np.diag(cov)).round(2))

        # the function on the grid: for each grid time, one conditional whose readings at t_o
        # are observed and the reading at that time (and theta) latent; its samples are that
        # time's predictive distribution, so their percentiles draw the band
        mask = np.r_[np.zeros(2, bool), np.ones(m, bool), False]
        draws = np.stack([
            est.condition(mask, positions={"x": np.r_[t_o, t]}).sample(
                1000, observed=x_o, random_state=i)[:, -1]
            for i, t in enumerate(grid)], 1)
        err = np.abs(draws.mean(0) - pred_mean).max()
        ratio = draws.std(0) / pred_sd
        print(f"  the function at {grid.size} grid times: largest error of the predictive mean "
              f"{err:.3f}; predictive sd / exact between {ratio.min():.2f} and {ratio.max():.2f}")

        # all 41 grid readings in one conditional: five times as many tokens as any training
        # row had, beyond what the network learnt (docs/positions.md)
        wide = np.r_[np.zeros(2, bool), np.ones(m, bool), np.zeros(grid.size, bool)]
        joint = est.condition(wide, positions={"x": np.r_[t_o, grid]}).sample(
            1000, observed=x_o, random_state=0)[:, 2:]
        ratio = joint.std(0) / pred_sd
        print(f"  all {grid.size} at once: predictive sd / exact between {ratio.min():.2f} and "
              f"{ratio.max():.2f}")
        panels.append((t_o, x_o, draws, pred_mean, pred_sd))

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, (t_o, x_o, draws, pred_mean, pred_sd) in zip(axes, panels, strict=True):
        lo, hi = np.percentile(draws, [5, 95], axis=0)
        ax.fill_between(grid, lo, hi, alpha=0.3, label="skformer 90 % band")
        ax.plot(grid, draws.mean(0), label="skformer mean")
        ax.plot(grid, pred_mean - 1.645 * pred_sd, "k--", lw=1, label="exact 90 % band")
        ax.plot(grid, pred_mean + 1.645 * pred_sd, "k--", lw=1)
        ax.plot(grid, basis(grid) @ truth, "g:", label="true function")
        ax.plot(t_o, x_o, "ro", label="readings")
        ax.set_title(f"{len(t_o)} readings")
        ax.set_xlabel("t")
    axes[0].set_ylabel("x(t)")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(OUT / "function_valued.png", dpi=110)
    print(f"\nsaved {OUT / 'function_valued.png'}")


if __name__ == "__main__":
    main()
