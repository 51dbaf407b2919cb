"""Quickstart: fit one Simformer on the seed task, then ask it three different questions
=====================================================================================

Simulator: theta ~ U(-1, 1)^3, x = theta + 1 + 0.1 * noise. One fit, then the posterior
p(theta | x_o), the likelihood p(x | theta_o) and a mixed conditional, each checked against its
exact answer. Saves pairplots to examples/output/. Runs in about a minute on 2 CPU cores.
"""

import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from skformer import SimformerEstimator, pairplot, plot_loss

# sphinx-gallery runs the examples from this folder, without __file__
OUT = (Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()) / "output"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    theta = rng.uniform(-1, 1, size=(10_000, 3))
    x = theta + 1.0 + 0.1 * rng.standard_normal(theta.shape)
    X = np.stack([theta, x], axis=1)  # (n_samples, 2 variables, 3 features)

    # A small network trained for 60 epochs is plenty for these 6 columns and trains in under
    # a minute on 2 CPU cores. The defaults (d_model=64, n_heads=4, up to 400 epochs) are sized
    # for harder posteriors (docs/speed.md): smaller or shorter fits lose accuracy on slcp and
    # bernoulli_glm.
    est = SimformerEstimator(d_model=32, n_heads=2, max_epochs=60, random_state=0, verbose=1)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported below instead
        est.fit(X)
    print(f"trained in {time.perf_counter() - start:.0f} s: {est.n_iter_} epochs, "
          f"best validation loss {min(est.validation_scores_):.4f} at epoch {est.best_epoch_ + 1}"
          f"{'' if est.converged_ else ' (still improving at max_epochs)'}")

    theta_o = np.zeros(3)
    x_o = theta_o + 1.0 + 0.1 * np.random.default_rng(1).standard_normal(3)

    def report(name, samples, exact_mean, exact_std):
        print(f"\n{name}: {samples.shape[0]} samples")
        print(f"  mean {np.round(samples.mean(0), 3)}   exact {np.round(exact_mean, 3)}")
        print(f"  std  {np.round(samples.std(0), 3)}   exact {np.round(exact_std, 3)}")

    start = time.perf_counter()
    post = est.condition([False, True])  # True = observed: p(theta | x)
    samples = post.sample(10_000, observed=x_o, random_state=0)
    print(f"\nsampled 10,000 posterior draws in {time.perf_counter() - start:.1f} s "
          f"({post.network_calls()} network calls each)")
    report("posterior p(theta | x_o)", samples, x_o - 1.0, np.full(3, 0.1))
    fig, _ = pairplot(samples, limits=[[-0.5, 0.5]] * 3, labels=post.latent_names,
                      points=theta_o)
    fig.savefig(OUT / "posterior.png", dpi=80)

    lik = est.likelihood().sample(10_000, observed=theta_o, random_state=0)
    report("likelihood p(x | theta_o)", lik, theta_o + 1.0, np.full(3, 0.1))
    fig, _ = pairplot(lik, limits=[[0.5, 1.5]] * 3, labels=["x[0]", "x[1]", "x[2]"])
    fig.savefig(OUT / "likelihood.png", dpi=80)

    # Any other split: observe theta[0] and x[1], x[2]; sample theta[1], theta[2], x[0].
    mask = np.array([True, False, False, False, True, True])  # one entry per column
    mixed = est.condition(mask)
    obs = np.array([0.3, 1.2, 0.8])
    draws = mixed.sample(10_000, observed=obs, random_state=0)
    exact_mean = np.array([0.2, -0.2, 1.3])  # theta_j | x_j = x_j - 1; x_0 | theta_0 = theta_0 + 1
    report(f"mixed conditional {mixed.latent_names} | {mixed.observed_names}", draws,
           exact_mean, np.full(3, 0.1))

    ax = plot_loss(est)
    ax.figure.savefig(OUT / "loss.png", dpi=80)
    print(f"\nplots saved in {OUT}")


if __name__ == "__main__":
    main()
