"""Sequential rounds: spend the simulations where one observation's posterior lives
================================================================================

Simulator: theta ~ U(-5, 5)^2, x = theta + 0.1 * noise. The posterior at one observation
x_o is narrow (sd 0.1 per parameter) inside a wide prior: of 2,000 prior simulations only a
handful land near x_o. ``skformer.sequential.rounds`` runs 4 rounds of 500 simulations: round 0
from the prior, then each round from the prior restricted to the current posterior's
highest-density region, the model warm-started on everything so far; the last round fits a
model afresh on all 2,000 (``refit="last"``). The same budget spent in one round is the
comparison.

Exact answer: theta | x_o ~ N(x_o, 0.1^2 I) (the prior's edges are far away).
Small settings (a 32-wide network, 80 epochs per fit): about 2.5 minutes on one CPU thread.
Saves a figure to examples/output/sequential_rounds.png.
"""

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from skformer import SimformerEstimator, simulate  # noqa: E402
from skformer.sequential import rounds  # noqa: E402

# sphinx-gallery runs the examples from this folder, without __file__
OUT = (Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()) / "output"
X_O = np.array([1.3, -2.1])
NOISE = 0.1


def prior(n, rng):
    return rng.uniform(-5, 5, size=(n, 2))


def simulator(theta, rng):
    return theta + NOISE * rng.standard_normal(theta.shape)


def settings() -> SimformerEstimator:
    return SimformerEstimator(d_model=32, n_layers=2, n_heads=2, batch_size=128,
                              learning_rate=3e-3, max_epochs=80, random_state=0,
                              device="cpu")


def report(name: str, samples: np.ndarray) -> None:
    error = np.abs(samples.mean(0) - X_O).max()
    print(f"{name:<22} mean error {error:.3f}   sd {np.round(samples.std(0), 3)} "
          f"(exact {NOISE})")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # the whole budget in one round, from the prior
        single = settings().set_params(variables=[2, 2])
        single.fit(simulate(simulator, prior, 2000, random_state=0))
        # the same budget in four rounds around x_o
        result = rounds(settings(), simulator, prior, X_O, n_rounds=4,
                        simulations_per_round=500, random_state=0, verbose=0)

    for r in result.history:
        fit = "fresh fit" if r.fresh else "warm start"
        print(f"round {r.round}: {r.proposal:<5} acceptance {r.acceptance:.4f}, {fit}, "
              f"{r.epochs} epochs, validation loss {r.validation_loss:.3f}")
    one = single.condition([False, False, True, True]).sample(5000, X_O, random_state=0)
    seq = result.posterior().sample(5000, X_O, random_state=0)
    report("one round of 2,000", one)
    report("4 rounds of 500", seq)

    fig = result.plot(labels=["theta[0]", "theta[1]"], truth=X_O, figsize=(10, 3))
    fig.savefig(OUT / "sequential_rounds.png", dpi=100)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(*one[:1000].T, s=3, alpha=0.4, label="one round of 2,000")
    ax.scatter(*seq[:1000].T, s=3, alpha=0.4, label="4 rounds of 500")
    ax.add_patch(plt.Circle(X_O, 2 * NOISE, fill=False, color="k", lw=1,
                            label="exact: 2 sd"))
    ax.set_xlim(X_O[0] - 0.6, X_O[0] + 0.6)
    ax.set_ylim(X_O[1] - 0.6, X_O[1] + 0.6)
    ax.set_aspect("equal")
    ax.legend(fontsize="small", loc="upper right")
    ax.set_title("posterior at x_o")
    fig.tight_layout()
    fig.savefig(OUT / "sequential_rounds_posterior.png", dpi=100)


if __name__ == "__main__":
    main()
