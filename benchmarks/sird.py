"""A function-valued parameter: SIRD with a contact rate that changes over time (issue #25).

The model (fractions of a population, 50 days): S' = -beta(t) S I, I' = beta(t) S I - (gamma +
mu) I, R' = gamma I, D' = mu I, from S = 0.99, I = 0.01. The contact rate beta(t) is a
Gaussian process: log beta on the grid 0, 5, ..., 50 days is Gaussian with mean log 0.4, sd
0.4 and a squared-exponential correlation of length 10 days, linear in between. gamma ~ U(0.05,
0.2), mu ~ U(0.002, 0.02). Readings: log I and log(D + 0.001) with noise of sd 0.1, at 10
random times in [0, 50] per simulation (the same times for both).

skformer is fitted once (``variables`` beta (11 columns, positions: the grid), gamma, mu,
infected and deaths (10 columns each, positions: the reading times of each row)); then, for
one set of 10 new reading times, 200 test simulations give the posterior of the whole rate
curve from their readings. Reported: the coverage of the posterior's central bands of
beta(t) (per grid time, averaged), the 1-D highest-density coverage of each beta(t_j) by
``skformer.diagnostics.coverage``, and the posterior's width against the prior's.

Rows are appended to ``results/sird.csv``; the fitted model is cached in ``results/cache``.
``--max-epochs`` caps the training (the cosine schedule then spans the cap); SIGINT during
the fit ends it with the best weights so far, marked "interrupted".

    cd benchmarks
    python sird.py --budget 10000       # about 65 min on one CPU thread
    python sird.py --budget 100000 --max-epochs 40   # the same optimiser steps, about 1 h
    python sird.py --report
"""

from __future__ import annotations

import argparse
import json
import signal
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import positions
from rows import append as append_row
from rows import read as read_rows

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "sird.csv"
CACHE = HERE / "results" / "cache"
COLUMNS = ["budget", "n_tests", "n_readings", "band_coverage", "hpd_coverage", "width_ratio",
           "rmse_log_beta", "train_s", "epochs", "machine", "timestamp"]
GRID = np.linspace(0.0, 50.0, 11)
T_MAX, DT, K = 50.0, 0.05, 10
NOISE = 0.1
D_FLOOR = 1e-3  # deaths are read as log(D + 0.001): one death in a thousand as the floor
LEVELS = [0.5, 0.8, 0.9, 0.95]


def prior(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 13): log beta on GRID, gamma, mu."""
    d = GRID[:, None] - GRID[None, :]
    cov = 0.4**2 * np.exp(-0.5 * (d / 10.0) ** 2) + 1e-8 * np.eye(GRID.size)
    log_beta = np.log(0.4) + rng.multivariate_normal(np.zeros(GRID.size), cov, n)
    gamma = rng.uniform(0.05, 0.2, (n, 1))
    mu = rng.uniform(0.002, 0.02, (n, 1))
    return np.hstack([log_beta, gamma, mu])


def paths(params: np.ndarray) -> np.ndarray:
    """log I and log(D + D_FLOOR) on 0, DT, ..., T_MAX: (n, steps + 1, 2), by RK4."""
    n = params.shape[0]
    beta_grid, gamma, mu = np.exp(params[:, : GRID.size]), params[:, -2], params[:, -1]

    def f(y, t):
        s, i = y[0], y[1]
        b = _interp_rows(t, beta_grid)
        return np.stack([-b * s * i, b * s * i - (gamma + mu) * i, gamma * i, mu * i])

    steps = int(round(T_MAX / DT))
    y = np.stack([np.full(n, 0.99), np.full(n, 0.01), np.zeros(n), np.zeros(n)])
    out = np.empty((n, steps + 1, 2))
    out[:, 0] = np.log(np.stack([y[1], y[3] + D_FLOOR], -1))
    for i in range(steps):
        t = i * DT
        k1 = f(y, t)
        k2 = f(y + DT / 2 * k1, t + DT / 2)
        k3 = f(y + DT / 2 * k2, t + DT / 2)
        k4 = f(y + DT * k3, t + DT)
        y = y + DT / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out[:, i + 1] = np.log(np.stack([np.maximum(y[1], 1e-12), y[3] + D_FLOOR], -1))
    return out


def _interp_rows(t: float, values: np.ndarray) -> np.ndarray:
    """Each row of ``values`` (on GRID) linearly interpolated at the scalar time t."""
    j = min(int(t // (GRID[1] - GRID[0])), GRID.size - 2)
    w = (t - GRID[j]) / (GRID[j + 1] - GRID[j])
    return (1 - w) * values[:, j] + w * values[:, j + 1]


def simulate(params: np.ndarray, times: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy log I and log(D + D_FLOOR) readings (n, K, 2) at ``times`` ((K,) or (n, K))."""
    return positions.simulate(params, times, rng, solve=paths, dt=DT, noise=NOISE)


def layout() -> dict:
    G = GRID.size
    return {"beta": list(range(G)), "gamma": [G], "mu": [G + 1],
            "infected": list(range(G + 2, G + 2 + K)),
            "deaths": list(range(G + 2 + K, G + 2 + 2 * K))}


def fit(budget: int, max_epochs: int | None = None):
    import joblib

    from skformer import SimformerEstimator

    suffix = "" if max_epochs is None else f"_e{max_epochs}"
    path = CACHE / f"sird_skformer_{budget}{suffix}.joblib"
    if path.exists():
        return joblib.load(path)
    rng = np.random.default_rng([budget, 3])
    params = prior(budget, rng)
    times = np.sort(rng.uniform(0, T_MAX, (budget, K)), axis=1)
    x = simulate(params, times, rng)
    X = np.hstack([params, x[..., 0], x[..., 1]])
    est = SimformerEstimator(variables=layout(), posterior_latent=["beta", "gamma", "mu"],
                             random_state=0, n_threads=1, verbose=1,
                             **({} if max_epochs is None else {"max_epochs": max_epochs}))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            est.fit(X, positions={"beta": GRID, "infected": times, "deaths": times})
        except KeyboardInterrupt:  # SIGINT at a session's end: keep the best weights so far
            est.interrupted_ = True
    est.train_seconds_ = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(est, path)
    return est


def evaluate(budget: int, max_epochs: int | None = None, n_tests: int = 200,
             n_samples: int = 500) -> None:
    import torch

    from skformer.diagnostics import coverage, draw_samples

    from harness.run import machine

    torch.set_num_threads(1)
    est = fit(budget, max_epochs)
    rng = np.random.default_rng(2026)
    t_o = np.sort(rng.uniform(0, T_MAX, K))
    params = prior(n_tests, rng)
    x = simulate(params, t_o, rng)
    observed = np.hstack([x[..., 0], x[..., 1]])
    post = est.posterior(positions={"infected": t_o, "deaths": t_o})
    samples = draw_samples(post, observed, n_samples, random_state=0, verbose=False)
    G = GRID.size
    beta_s, beta_true = samples[:, :, :G], params[:, :G]
    bands = {}
    for level in LEVELS:
        lo, hi = np.quantile(beta_s, [(1 - level) / 2, (1 + level) / 2], axis=1)
        bands[level] = float(((beta_true >= lo) & (beta_true <= hi)).mean())
    hpd = np.mean([coverage(post, beta_true[:, [j]], observed, levels=LEVELS,
                            samples=beta_s[:, :, [j]], method="kde")[1] for j in range(G)], 0)
    width = float(np.mean(beta_s.std(1)) / 0.4)
    rmse = float(np.sqrt(np.mean((beta_s.mean(1) - beta_true) ** 2)))
    append_row(OUT, COLUMNS, {
        "budget": budget, "n_tests": n_tests, "n_readings": K,
        "band_coverage": json.dumps({str(k): round(v, 3) for k, v in bands.items()}),
        "hpd_coverage": json.dumps({str(k): round(float(v), 3)
                                    for k, v in zip(LEVELS, hpd, strict=True)}),
        "width_ratio": f"{width:.3f}", "rmse_log_beta": f"{rmse:.3f}",
        "train_s": f"{est.train_seconds_:.0f}",
        "epochs": f"{est.n_iter_}"
                  + ("" if max_epochs is None else f" (max_epochs={max_epochs})")
                  + (" (interrupted)" if getattr(est, "interrupted_", False) else ""),
        "machine": machine(), "timestamp": datetime.now(timezone.utc).isoformat()})
    print(f"band coverage {bands}; HPD coverage {dict(zip(LEVELS, hpd.round(3), strict=True))}; "
          f"posterior sd / prior sd {width:.3f}; RMSE of log beta {rmse:.3f}", flush=True)
    np.savez(CACHE / f"sird_eval_{budget}.npz", t_o=t_o, params=params[:4], x=x[:4],
             samples=samples[:4])


def report() -> None:
    for r in read_rows(OUT):
        print(f"| {r['budget']} | {r['n_tests']} | {r['band_coverage']} | {r['hpd_coverage']} | "
              f"{r['width_ratio']} | {r['rmse_log_beta']} | {r['train_s']} | {r['epochs']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--max-epochs", type=int, default=None,
                        help="cap the epochs (default: the estimator's, 400); at 1e5 on a CPU, "
                             "40 takes the same optimiser steps as 400 at 1e4")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    # A background job inherits SIGINT ignored; restore Python's handler so that `kill -INT`
    # ends training with the best weights so far.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.report:
        report()
        return
    done = {int(r["budget"]) for r in read_rows(OUT)}
    if args.budget not in done:
        evaluate(args.budget, args.max_epochs)


if __name__ == "__main__":
    main()
