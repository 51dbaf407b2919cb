"""Score or flow: two generative methods behind one API
======================================================

``method="score"`` (denoising score matching on an SDE, the default) and ``method="flow"``
(flow matching) share the network, the masks, the solvers and every method of the estimator.
This example fits both on sbibm's two moons task, whose posterior has two crescent-shaped modes,
and draws the posterior for one observation from each, next to their training curves.

At this size (3,000 simulations, a 32-wide network, at most 80 epochs) both find the two
modes, still blurred into blobs where the full-size models draw thin crescents.
docs/benchmarks.md compares them at full size on every task. About a minute on 2 CPU cores.
Saves examples/output/score_vs_flow.png.
"""

import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from skformer import SimformerEstimator, plot_loss

# sphinx-gallery runs the examples from this folder, without __file__
OUT = (Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()) / "output"


def two_moons(n: int, rng) -> np.ndarray:
    """sbibm's two moons: theta ~ U(-1, 1)^2, x = a moon point shifted by a function of theta."""
    theta = rng.uniform(-1, 1, size=(n, 2))
    a = rng.uniform(-np.pi / 2, np.pi / 2, size=n)
    r = 0.1 + 0.01 * rng.standard_normal(n)
    p = np.stack([r * np.cos(a) + 0.25, r * np.sin(a)], axis=1)
    shift = np.stack([-np.abs(theta[:, 0] + theta[:, 1]) / np.sqrt(2),
                      (-theta[:, 0] + theta[:, 1]) / np.sqrt(2)], axis=1)
    return np.hstack([theta, p + shift])


def main() -> None:
    import matplotlib.pyplot as plt

    OUT.mkdir(exist_ok=True)
    X = two_moons(3000, np.random.default_rng(0))
    x_o = np.zeros(2)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for k, method in enumerate(("score", "flow")):
        est = SimformerEstimator(method=method, posterior_latent=[0, 1],
                                 posterior_observed=[2, 3], d_model=32, n_layers=2, n_heads=2,
                                 batch_size=128, learning_rate=3e-3, max_epochs=80,
                                 random_state=0, device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X)
        samples = est.posterior().sample(3000, observed=x_o, random_state=0)
        print(f"{method}: {est.n_iter_} epochs, posterior mean {samples.mean(0).round(2)}, "
              f"sd {samples.std(0).round(2)}")
        axes[k].scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.3, color=f"C{k}")
        axes[k].set_xlim(-1, 1)
        axes[k].set_ylim(-1, 1)
        axes[k].set_title(f"method={method!r}: p(theta | x = 0)", fontsize="small")
        axes[k].set_xlabel("theta_0")
        axes[k].set_ylabel("theta_1")
        before = len(axes[2].lines)
        plot_loss(est, ax=axes[2])
        for line in axes[2].lines[before:]:
            line.set_label(f"{method}: {line.get_label()}")
    axes[2].set_title("training curves (loss scales differ by method)", fontsize="small")
    axes[2].legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(OUT / "score_vs_flow.png", dpi=80)


if __name__ == "__main__":
    main()
