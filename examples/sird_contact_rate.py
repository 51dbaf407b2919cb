"""A function-valued parameter: an epidemic's contact rate over time
===================================================================

Simulator: an SIRD epidemic (fractions of a population; recovery rate 0.1 and death rate 0.01
per day) whose contact rate beta(t) changes over 40 days. beta is a Gaussian process: log beta
on the days 0, 8, ..., 40 is Gaussian (mean log 0.4, sd 0.35, correlation length 12 days),
linear in between. The data are the infected share, read on the log scale with noise (sd
0.1) on 8 random days per simulation.

Both the parameter and the data are functions, so both carry positions: beta's are its grid
days (the same in every simulation), the readings' their days (different in every one). Then,
for a new epidemic read on 8 days no simulation had, the posterior of the whole curve
beta(t), with bands, against the true curve; and the coverage of those bands over 100 test
epidemics read on the same days (a calibrated posterior's 90 % bands hold the true value 90 %
of the time). Small settings (a 32-wide network, 4,000 simulations, 60 epochs): about a
minute on 2 CPU cores. Saves examples/output/sird_contact_rate.png.
"""

import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from skformer import SimformerEstimator
from skformer.diagnostics import draw_samples

# sphinx-gallery runs the examples from this folder, without __file__
OUT = (Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()) / "output"
GRID = np.linspace(0, 40, 6)
K, NOISE, DT = 8, 0.1, 0.1


def prior(n, rng):
    """log beta on GRID, (n, 6)."""
    d = GRID[:, None] - GRID[None, :]
    cov = 0.35**2 * np.exp(-0.5 * (d / 12.0) ** 2) + 1e-8 * np.eye(GRID.size)
    return np.log(0.4) + rng.multivariate_normal(np.zeros(GRID.size), cov, n)


def log_infected(log_beta, days):
    """log I at ``days`` ((K,) or (n, K)) of each epidemic, by RK4 with step DT."""
    n = log_beta.shape[0]
    beta_grid = np.exp(log_beta)
    steps = int(round(GRID[-1] / DT))
    s, i = np.full(n, 0.99), np.full(n, 0.01)
    path = np.empty((n, steps + 1))
    path[:, 0] = np.log(i)

    def rates(s, i, t):
        j = min(int(t // (GRID[1] - GRID[0])), GRID.size - 2)
        w = (t - GRID[j]) / (GRID[j + 1] - GRID[j])
        b = (1 - w) * beta_grid[:, j] + w * beta_grid[:, j + 1]
        return -b * s * i, b * s * i - 0.11 * i

    for step in range(steps):
        t = step * DT
        k1 = rates(s, i, t)
        k2 = rates(s + DT / 2 * k1[0], i + DT / 2 * k1[1], t + DT / 2)
        k3 = rates(s + DT / 2 * k2[0], i + DT / 2 * k2[1], t + DT / 2)
        k4 = rates(s + DT * k3[0], i + DT * k3[1], t + DT)
        s = s + DT / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        i = i + DT / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        path[:, step + 1] = np.log(np.maximum(i, 1e-12))
    days = np.broadcast_to(days, (n, np.shape(days)[-1]))
    pos = days / DT
    lo = np.minimum(np.floor(pos).astype(int), steps - 1)
    w = pos - lo
    rows = np.arange(n)[:, None]
    return (1 - w) * path[rows, lo] + w * path[rows, lo + 1]


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    n = 4000
    log_beta = prior(n, rng)
    days = np.sort(rng.uniform(0, 40, (n, K)), axis=1)
    x = log_infected(log_beta, days) + NOISE * rng.standard_normal((n, K))

    est = SimformerEstimator(
        variables={"log_beta": list(range(GRID.size)),
                   "infected": list(range(GRID.size, GRID.size + K))},
        posterior_latent=["log_beta"], d_model=32, n_layers=2, n_heads=2, batch_size=128,
        learning_rate=3e-3, max_epochs=60, random_state=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(np.hstack([log_beta, x]), positions={"log_beta": GRID, "infected": days})
    print(f"trained {est.n_iter_} epochs on {n} epidemics")

    # a new epidemic, read on 8 new days; beta keeps its grid (shared in training)
    t_o = np.sort(rng.uniform(0, 40, K))
    post = est.posterior(positions={"infected": t_o})
    truth = prior(1, rng)
    x_o = log_infected(truth, t_o)[0] + NOISE * rng.standard_normal(K)
    samples = post.sample(4000, observed=x_o, random_state=0)
    print("posterior columns:", post.latent_names)
    print("true log beta:     ", truth[0].round(2))
    print("posterior mean:    ", samples.mean(0).round(2))
    print("posterior sd:      ", samples.std(0).round(2), "(prior sd 0.35)")

    # calibration: 100 test epidemics read on the same days
    tests = prior(100, rng)
    x_tests = log_infected(tests, t_o) + NOISE * rng.standard_normal((100, K))
    draws = draw_samples(post, x_tests, 300, random_state=1, verbose=False)
    for level in (0.5, 0.9):
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=1)
        held = ((tests >= lo) & (tests <= hi)).mean()
        print(f"{level:.0%} bands hold the true log beta(t) in {held:.0%} of cases "
              "(per grid day, 100 test epidemics)")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6))
    fine = np.linspace(0, 40, 161)
    ax0.plot(fine, log_infected(truth, fine)[0], "g:", label="true log I(t)")
    ax0.plot(t_o, x_o, "ro", label="readings")
    ax0.set(xlabel="day", ylabel="log infected share", title="data")
    ax0.legend(fontsize=8)
    beta = np.exp(samples)
    lo, mid, hi = np.percentile(beta, [5, 50, 95], axis=0)
    ax1.fill_between(GRID, lo, hi, alpha=0.3, label="posterior 90 % band")
    ax1.plot(GRID, mid, label="posterior median")
    ax1.plot(GRID, np.exp(truth[0]), "g:o", label="true contact rate")
    ax1.set(xlabel="day", ylabel="beta(t)", title="contact rate")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "sird_contact_rate.png", dpi=110)
    print(f"saved {OUT / 'sird_contact_rate.png'}")


if __name__ == "__main__":
    main()
