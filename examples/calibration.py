"""Calibration: is the posterior over- or under-confident? SBC ranks, coverage and TARP
====================================================================================

Simulator: the seed task, theta ~ U(-1, 1)^3, x = theta + 1 + 0.1 * noise. One model is fitted;
its posterior p(theta | x) and its likelihood p(x | theta) are checked on 200 fresh test
simulations each (not used in training): the rank of each true value among 300 samples
(SBC), the expected coverage of highest-density regions (here estimated from the samples by a
kernel density, ``method="kde"``, as the model's own ODE log density would take minutes on a
CPU), and TARP, all three from one set of samples per conditional (``draw_samples``). A
deliberately over-confident sampler (the posterior's samples pulled halfway to their mean)
shows what a failure looks like.

Small settings (a 32-wide network, 3,000 simulations, 60 epochs): about a minute on 2 CPU cores.
Saves examples/output/calibration.png.
"""

import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from skformer import SimformerEstimator, coverage_plot, sbc_rank_plot, tarp_plot
from skformer.diagnostics import check_sbc, coverage, draw_samples, sbc, tarp

# sphinx-gallery runs the examples from this folder, without __file__
OUT = (Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()) / "output"


def simulate(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    theta = rng.uniform(-1, 1, size=(n, 3))
    return theta, theta + 1.0 + 0.1 * rng.standard_normal(theta.shape)


def shrink(samples: np.ndarray) -> np.ndarray:
    """A wrong sampler for contrast: each observation's samples pulled halfway to their mean."""
    mean = samples.mean(axis=1, keepdims=True)
    return mean + 0.5 * (samples - mean)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    theta, x = simulate(3000, rng)
    est = SimformerEstimator(posterior_latent=[0, 1, 2], posterior_observed=[3, 4, 5],
                             d_model=32, n_layers=2, n_heads=2, batch_size=128,
                             learning_rate=3e-3, max_epochs=60, random_state=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(np.hstack([theta, x]))

    test_theta, test_x = simulate(200, np.random.default_rng(1))
    posterior = draw_samples(est.posterior(), test_x, 300, random_state=0, verbose=False)
    likelihood = draw_samples(est.likelihood(), test_theta, 300, random_state=0,
                              verbose=False)
    checks = {"posterior p(theta | x)": (posterior, test_theta, test_x),
              "likelihood p(x | theta)": (likelihood, test_x, test_theta),
              "over-confident sampler": (shrink(posterior), test_theta, test_x)}
    fig, axes = plt.subplots(len(checks), 5, figsize=(17, 3.2 * len(checks)))
    for row, (name, (samples, latent, observed)) in zip(axes, checks.items(), strict=True):
        ranks = sbc(None, latent, observed, samples=samples, random_state=0)
        report = check_sbc(ranks, 300)
        levels, cov = coverage(None, latent, observed, samples=samples, method="kde")
        _, ecp = tarp(None, latent, observed, samples=samples, random_state=0)
        print(f"{name}:\n  SBC KS p-values {np.round(report['ks_pvalues'], 3)}, "
              f"rank classifier accuracy {np.round(report['c2st_ranks'], 2)} (0.5 = uniform)")
        print(f"  coverage at 50 % / 90 %: {cov[10]:.2f} / {cov[18]:.2f}; "
              f"TARP at 50 % / 90 %: {ecp[10]:.2f} / {ecp[18]:.2f}")
        sbc_rank_plot(ranks, 300, axes=row[:3], names=[f"{name}: column {j}" for j in range(3)])
        coverage_plot(levels, cov, n_tests=200, ax=row[3])
        tarp_plot(levels, ecp, n_tests=200, ax=row[4])
        for ax in row[:3]:
            ax.title.set_fontsize("small")
    fig.tight_layout()
    fig.savefig(OUT / "calibration.png", dpi=80)
    print(f"\nrank histograms, coverage and TARP in {OUT / 'calibration.png'}")


if __name__ == "__main__":
    main()
