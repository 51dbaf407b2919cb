"""iid trials: one model trained on single trials, posteriors given 1, 5 and 20 trials
====================================================================================

Simulator (the seed task): theta ~ U(-1, 1)^3, x = theta + 1 + 0.1 * noise. An experiment is
repeated N times with the same theta; the trials x_1..x_N are independent given theta. The
model is trained on single trials only, then ``posterior().sample(n, trials, iid=True)``
composes its single-trial posteriors with its own prior (the marginal of theta it learnt in
training; no analytic prior is needed, and the uniform prior's edges are respected).

Exact answer: theta_j | x_1..x_N ~ N(mean_i(x_ij) - 1, 0.1^2 / N) truncated to [-1, 1].
Small settings (a 32-wide network, 3,000 simulations, 80 epochs): about two minutes on
2 CPU cores. Saves a figure to examples/output/iid_trials.png.
"""

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import truncnorm  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from skformer import SimformerEstimator  # noqa: E402

# sphinx-gallery runs the examples from this folder, without __file__
OUT = (Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()) / "output"


def exact(trials: np.ndarray):
    """The exact posterior of theta given the trials, one truncated normal per column."""
    mu, sd = trials.mean(0) - 1.0, 0.1 / np.sqrt(len(trials))
    return truncnorm((-1 - mu) / sd, (1 - mu) / sd, loc=mu, scale=sd)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    theta = rng.uniform(-1, 1, size=(3000, 3))
    X = np.concatenate([theta, theta + 1.0 + 0.1 * rng.standard_normal(theta.shape)], axis=1)
    est = SimformerEstimator(variables=[3, 3], posterior_latent=[0], posterior_observed=[1],
                             d_model=32, n_layers=2, n_heads=2, batch_size=128,
                             learning_rate=3e-3, max_epochs=80, random_state=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)

    theta_o = np.array([0.3, -0.5, 0.92])  # the third close to the prior's edge
    all_trials = theta_o + 1.0 + 0.1 * rng.standard_normal((20, 3))
    post = est.posterior()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for N, colour in ((1, "tab:blue"), (5, "tab:orange"), (20, "tab:green")):
        trials = all_trials[:N]
        samples = post.sample(4000, trials, iid=True, random_state=N)
        ref = exact(trials)
        print(f"N = {N:2d}: mean {samples.mean(0).round(3)}  sd {samples.std(0).round(3)}")
        print(f"   exact: mean {ref.mean().round(3)}  sd {ref.std().round(3)}")
        for j, ax in enumerate(axes):
            ax.hist(samples[:, j], bins=60, density=True, alpha=0.45, color=colour,
                    label=f"N = {N}")
            lo, hi = ref.ppf(1e-4)[j], ref.ppf(1 - 1e-4)[j]
            grid = np.linspace(lo, hi, 200)
            ax.plot(grid, ref.pdf(np.repeat(grid[:, None], 3, axis=1))[:, j], color=colour,
                    lw=1.2)
    for j, ax in enumerate(axes):
        ax.axvline(theta_o[j], color="k", ls=":", lw=1)
        ax.set_xlabel(f"theta{j}")
    axes[0].legend(frameon=False)
    fig.suptitle("posterior given N iid trials: samples (bars) and exact (lines)")
    fig.tight_layout()
    fig.savefig(OUT / "iid_trials.png", dpi=110)
    print(f"\nsaved {OUT / 'iid_trials.png'}")


if __name__ == "__main__":
    main()
