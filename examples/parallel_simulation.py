"""Simulate in parallel, with failures kept as missing data
==========================================================

``skformer.simulate`` runs a simulator over prior draws in seeded chunks through joblib (here 2
local worker processes; a dask or ray cluster behind ``joblib.parallel_config`` works the same).
This simulator misbehaves as real ones do: it raises for some parameters (a solver that blows
up when theta_0 > 0.9) and returns NaN in one output for others (a summary statistic that is
undefined when theta_1 < -0.8). ``simulate`` reports both, re-runs a failed chunk row by row so
that only the failing rows are affected, and keeps their outputs as NaN, which ``fit`` treats
as missing: the parameters keep their prior distribution and every output that did come back
is learnt from.

Then the posterior for an observation, against the exact answer (theta_j | x_j is a normal
truncated to the prior's box). Small settings (4,000 simulations, a 32-wide network, 60
epochs): about a minute on 2 CPU cores. Saves examples/output/parallel_simulation.png.
"""

import warnings
from pathlib import Path

import numpy as np
from scipy.stats import truncnorm
from sklearn.exceptions import ConvergenceWarning

from skformer import BoxUniform, SimformerEstimator, simulate

# sphinx-gallery runs the examples from this folder, without __file__
OUT = (Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()) / "output"


def simulator(theta, rng):
    """x = theta + 1 + 0.1 noise, with failures."""
    if (theta[:, 0] > 0.9).any():
        raise FloatingPointError("the solver diverged")
    x = theta + 1.0 + 0.1 * rng.standard_normal(theta.shape)
    x[theta[:, 1] < -0.8, 1] = np.nan
    return x


def main() -> None:
    import matplotlib.pyplot as plt

    OUT.mkdir(exist_ok=True)
    prior = BoxUniform(low=-np.ones(3), high=np.ones(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        X = simulate(simulator, prior, 4000, n_jobs=2, chunk_size=200, random_state=0)
    print("simulate said:", *[str(w.message) for w in caught], sep="\n  ")
    failed = np.isnan(X[:, 3:]).any(axis=1)
    print(f"{failed.sum()} rows with outputs missing; theta kept for all {len(X)} rows")

    est = SimformerEstimator(posterior_latent=[0, 1, 2], posterior_observed=[3, 4, 5],
                             d_model=32, n_layers=2, n_heads=2, batch_size=128,
                             learning_rate=3e-3, max_epochs=60, random_state=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    x_o = np.array([1.2, 0.9, 1.4])
    samples = est.posterior().sample(4000, observed=x_o, random_state=0)
    mu = x_o - 1.0
    a, b = (-1 - mu) / 0.1, (1 - mu) / 0.1
    print("posterior mean", samples.mean(0).round(3), " exact",
          truncnorm.mean(a, b, loc=mu, scale=0.1).round(3))
    print("posterior sd  ", samples.std(0).round(3), " exact",
          truncnorm.std(a, b, loc=mu, scale=0.1).round(3))

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.scatter(X[~failed, 0], X[~failed, 1], s=2, alpha=0.3, label="complete")
    left.scatter(X[failed, 0], X[failed, 1], s=2, color="C3", label="outputs missing")
    left.set_xlabel("theta_0")
    left.set_ylabel("theta_1")
    left.set_title("prior draws: which simulations failed", fontsize="small")
    left.legend(fontsize="small", markerscale=4)
    for j in range(3):
        grid = np.linspace(-1, 1, 400)
        right.hist(samples[:, j], bins=60, density=True, alpha=0.5, color=f"C{j}",
                   label=f"theta_{j}")
        right.plot(grid, truncnorm.pdf(grid, a[j], b[j], loc=mu[j], scale=0.1), color=f"C{j}")
    right.set_title("posterior given x_o (lines: exact)", fontsize="small")
    right.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(OUT / "parallel_simulation.png", dpi=80)


if __name__ == "__main__":
    main()
