"""Function-valued data: Lotka-Volterra read at random times (issue #25).

The model: parameters theta = log(alpha, beta, gamma, delta) with sbibm's log-normal prior
(log alpha, log gamma ~ N(-0.125, 0.5^2), log beta, log delta ~ N(-3, 0.5^2)), prey and
predators from (30, 1) by dx/dt = alpha x - beta x y, dy/dt = -gamma y + delta x y, read with
log-normal noise (sd 0.1 on the log). Both methods see log populations.

- ``skformer``: each simulation is read at 20 random times in [0, 20] (both species at each
  time; two variables with positions, 44 tokens). One fit serves every observation; the
  posterior of observation k comes from 5-10 readings at new random times.
- ``npe``: sbi's NPE (NSF) on the same number of simulations, each read on a fixed grid of 10
  times (2, 4, ..., 20): its best case, an observation on the grid it was trained on.

Each method is scored by C2ST (benchmarks/metrics.py) against its own reference posterior:
adaptive random-walk Metropolis on the exact likelihood (the simulator's own ODE solution,
vectorised RK4 with step 0.02, within 1e-4 of scipy's DOP853 on the log populations, as
tests/test_benchmarks.py checks), 256 chains, 10,000 samples. ``--cost`` times an epoch with
and without positions. ``--max-epochs`` caps skformer's training (its cosine schedule then
spans the cap): at 1e5 simulations on one CPU thread, 40 epochs take the optimiser steps of
400 at 1e4 (batch 512 either way).

Every row is appended to ``results/positions.csv`` (``results/positions_cost.csv``) as it
finishes; a run cut off resumes where it stopped. Fitted models and reference samples are
cached in ``results/cache``. SIGINT during the skformer fit (``kill -INT``) ends training with
the best weights so far, which are then scored and marked "interrupted" in the epochs column.

    cd benchmarks
    python positions.py --budget 10000 --observations 1-5 --methods skformer   # ~1 h
    python positions.py --budget 10000 --observations 1-5 --methods npe
    python positions.py --budget 100000 --max-epochs 40 --methods skformer   # ~1.5 h
    python positions.py --budget 100000 --methods npe
    python positions.py --cost
    python positions.py --report
"""

from __future__ import annotations

import argparse
import signal
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rows import append as append_row
from rows import read as read_rows

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "positions.csv"
COST = HERE / "results" / "positions_cost.csv"
CACHE = HERE / "results" / "cache"
COLUMNS = ["task", "method", "budget", "observation", "n_readings", "c2st", "train_s",
           "epochs", "machine", "timestamp"]
COST_COLUMNS = ["tokens", "positions", "rows", "batch_size", "s_per_epoch", "machine",
                "timestamp"]

PRIOR_MEAN = np.array([-0.125, -3.0, -0.125, -3.0])
PRIOR_SD = 0.5
NOISE = 0.1
T_MAX, DT = 20.0, 0.02
K_TRAIN = 20
GRID = np.linspace(2.0, 20.0, 10)
SAMPLES = 10_000


# ---------------------------------------------------------------------- the model
def prior(n: int, rng: np.random.Generator) -> np.ndarray:
    return PRIOR_MEAN + PRIOR_SD * rng.standard_normal((n, 4))


def paths(theta: np.ndarray) -> np.ndarray:
    """Log populations on the grid 0, DT, ..., T_MAX: (n, steps + 1, 2), by RK4 on the log
    populations (u = log x, v = log y), which stay finite however small a population gets."""
    a, b, c, d = np.exp(theta).T

    def f(u, v):
        return a - b * np.exp(v), -c + d * np.exp(u)

    steps = int(round(T_MAX / DT))
    u = np.full(theta.shape[0], np.log(30.0))
    v = np.zeros(theta.shape[0])
    out = np.empty((theta.shape[0], steps + 1, 2))
    out[:, 0, 0], out[:, 0, 1] = u, v
    for i in range(steps):
        k1 = f(u, v)
        k2 = f(u + DT / 2 * k1[0], v + DT / 2 * k1[1])
        k3 = f(u + DT / 2 * k2[0], v + DT / 2 * k2[1])
        k4 = f(u + DT * k3[0], v + DT * k3[1])
        u = u + DT / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        v = v + DT / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        out[:, i + 1, 0], out[:, i + 1, 1] = u, v
    return out


def read_at(log_paths: np.ndarray, times: np.ndarray, dt: float = DT) -> np.ndarray:
    """Noise-free values at ``times`` ((k,) shared or (n, k) per row), by linear
    interpolation of paths on the grid 0, dt, 2 dt, ...: (n, k, channels)."""
    n = log_paths.shape[0]
    times = np.broadcast_to(times, (n, times.shape[-1]))
    pos = np.clip(times / dt, 0, log_paths.shape[1] - 1 - 1e-9)
    i = np.floor(pos).astype(int)
    w = (pos - i)[..., None]
    rows = np.arange(n)[:, None]
    return (1 - w) * log_paths[rows, i] + w * log_paths[rows, i + 1]


def simulate(theta: np.ndarray, times: np.ndarray, rng: np.random.Generator,
             chunk: int = 2000, solve=None, dt: float = DT, noise: float = NOISE) -> np.ndarray:
    """Noisy readings (n, k, channels) of each theta at its times: ``solve`` (default: this
    model's :func:`paths`) on the grid of step ``dt``, in chunks of rows, plus Gaussian noise
    of sd ``noise``."""
    solve = paths if solve is None else solve
    out = []
    for s in range(0, theta.shape[0], chunk):
        t = times if times.ndim == 1 else times[s : s + chunk]
        out.append(read_at(solve(theta[s : s + chunk]), t, dt))
    clean = np.concatenate(out)
    return clean + noise * rng.standard_normal(clean.shape)


def log_posterior(theta: np.ndarray, times: np.ndarray, x_o: np.ndarray) -> np.ndarray:
    """Unnormalised log posterior of each row of theta given readings x_o (k, 2) at times."""
    clean = read_at(paths(theta), times)
    lik = -0.5 * (((x_o - clean) / NOISE) ** 2).sum((1, 2))
    pri = -0.5 * (((theta - PRIOR_MEAN) / PRIOR_SD) ** 2).sum(1)
    return np.where(np.isfinite(lik), lik + pri, -np.inf)


def reference(times: np.ndarray, x_o: np.ndarray, seed: int, n: int = SAMPLES,
              chains: int = 256, burn: int = 800, thin: int = 5) -> np.ndarray:
    """Posterior samples by adaptive random-walk Metropolis: ``chains`` chains started at the
    best of 20,000 prior draws, the proposal covariance 2.38^2 / d times the chains' recent
    covariance (adapted every 100 steps of the burn-in), every ``thin``-th state kept."""
    rng = np.random.default_rng([seed, 99])
    draws = prior(20_000, rng)
    lp = np.concatenate([log_posterior(draws[i : i + 2000], times, x_o)
                         for i in range(0, len(draws), 2000)])
    state = draws[np.argsort(lp)[-chains:]]
    lp_state = log_posterior(state, times, x_o)
    cov = np.cov(state.T) + 1e-6 * np.eye(4)
    keep = []
    accepted = 0
    total = burn + thin * (-(-n // chains))
    for step in range(total):
        if step < burn and step % 100 == 99:  # adapt on the chains' spread
            recent = np.concatenate(keep[-50:]) if keep else state
            cov = np.cov(recent.T) + 1e-8 * np.eye(4)
            keep = []
        proposal = state + rng.multivariate_normal(np.zeros(4), 2.38**2 / 4 * cov, chains)
        lp_new = log_posterior(proposal, times, x_o)
        accept = np.log(rng.uniform(size=chains)) < lp_new - lp_state
        state = np.where(accept[:, None], proposal, state)
        lp_state = np.where(accept, lp_new, lp_state)
        if step >= burn:
            accepted += accept.sum()
        if step < burn or (step - burn) % thin == 0:
            keep.append(state.copy())
    samples = np.concatenate(keep)[-n:]
    rate = accepted / (chains * (total - burn))
    if not 0.05 < rate < 0.7:
        warnings.warn(f"Metropolis acceptance {rate:.2f} for seed {seed}", RuntimeWarning,
                      stacklevel=2)
    return samples


def observation(k: int) -> dict:
    """Observation k: theta_o from the prior, 5-10 readings at random times for skformer and
    the readings on the fixed grid for NPE (the same theta_o and path)."""
    rng = np.random.default_rng([k, 25])
    theta_o = prior(1, rng)
    m = int(rng.integers(5, 11))
    times = np.sort(rng.uniform(0, T_MAX, m))
    x_random = simulate(theta_o, times, rng)[0]
    x_grid = simulate(theta_o, GRID, rng)[0]
    return {"theta": theta_o[0], "times": times, "x": x_random, "x_grid": x_grid}


def reference_of(k: int, which: str) -> np.ndarray:
    path = CACHE / f"positions_lv_reference_{which}_{k}.npy"
    if path.exists():
        return np.load(path)
    obs = observation(k)
    times, x = (obs["times"], obs["x"]) if which == "random" else (GRID, obs["x_grid"])
    samples = reference(times, x, seed=k)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, samples)
    return samples


def training_data(budget: int, seed: int = 0, times: np.ndarray | None = None):
    """(theta (n, 4), readings (n, k, 2), times (n, k) or the shared grid)."""
    rng = np.random.default_rng([seed, budget])
    theta = prior(budget, rng)
    if times is None:
        times = np.sort(rng.uniform(0, T_MAX, (budget, K_TRAIN)), axis=1)
    return theta, simulate(theta, times, rng), times


# ---------------------------------------------------------------------- the methods
def skformer_layout(k: int) -> dict:
    return {"theta": [0, 1, 2, 3], "prey": list(range(4, 4 + k)),
            "predator": list(range(4 + k, 4 + 2 * k))}


def fit_skformer(budget: int, **params):
    import joblib

    from skformer import SimformerEstimator

    suffix = f"_e{params['max_epochs']}" if "max_epochs" in params else ""
    path = CACHE / f"positions_lv_skformer_{budget}{suffix}.joblib"
    if path.exists():
        return joblib.load(path)
    theta, x, times = training_data(budget)
    X = np.hstack([theta, x[..., 0], x[..., 1]])
    est = SimformerEstimator(variables=skformer_layout(K_TRAIN), posterior_latent=["theta"],
                             random_state=0, n_threads=1, verbose=1, **params)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            est.fit(X, positions={"prey": times, "predator": times})
        except KeyboardInterrupt:  # Ctrl-C (or SIGINT at a session's end): keep the best so far
            est.interrupted_ = True
    est.train_seconds_ = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(est, path)
    return est


def skformer_samples(est, k: int) -> np.ndarray:
    obs = observation(k)
    t = obs["times"]
    post = est.posterior(positions={"prey": t, "predator": t})
    return post.sample(SAMPLES, observed=np.r_[obs["x"][:, 0], obs["x"][:, 1]],
                       random_state=k)


def fit_npe(budget: int):
    import torch
    from sbi.inference import NPE
    from torch.distributions import Independent, Normal

    torch.manual_seed(0)
    theta, x, _ = training_data(budget, times=GRID)
    p = Independent(Normal(torch.as_tensor(PRIOR_MEAN, dtype=torch.float32),
                           PRIOR_SD * torch.ones(4)), 1)
    from harness.methods import _NullTracker

    inference = NPE(prior=p, density_estimator="nsf", show_progress_bars=False,
                    tracker=_NullTracker())  # no TensorBoard files in ./sbi-logs
    inference.append_simulations(torch.as_tensor(theta, dtype=torch.float32),
                                 torch.as_tensor(x.reshape(budget, -1), dtype=torch.float32))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = inference.train()
    seconds = time.perf_counter() - t0
    epochs = int(inference.summary["epochs_trained"][-1])
    return inference.build_posterior(net), seconds, epochs


def npe_samples(posterior, k: int) -> np.ndarray:
    import torch

    torch.manual_seed(k)
    x_o = torch.as_tensor(observation(k)["x_grid"].reshape(1, -1), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = posterior.sample((SAMPLES,), x=x_o, show_progress_bars=False)
    return s.numpy().astype(np.float64)


# ---------------------------------------------------------------------- runs
def done() -> set[tuple[str, int, int]]:
    return {(r["method"], int(r["budget"]), int(r["observation"])) for r in read_rows(OUT)}


def run(method: str, budget: int, observations: list[int], max_epochs: int | None = None) -> None:
    import torch

    from harness.run import machine
    from metrics import c2st

    torch.set_num_threads(1)
    todo = [k for k in observations if (method, budget, k) not in done()]
    if not todo:
        return
    if method == "skformer":
        est = fit_skformer(budget, **({} if max_epochs is None else {"max_epochs": max_epochs}))
        train_s, epochs = est.train_seconds_, est.n_iter_
        if max_epochs is not None:
            epochs = f"{epochs} (max_epochs={max_epochs})"
        if getattr(est, "interrupted_", False):
            epochs = f"{epochs} (interrupted)"
    else:
        posterior, train_s, epochs = fit_npe(budget)
    for k in todo:
        samples = skformer_samples(est, k) if method == "skformer" else npe_samples(posterior, k)
        ref = reference_of(k, "random" if method == "skformer" else "grid")
        score = c2st(samples, ref, seed=k)
        obs = observation(k)
        append_row(OUT, COLUMNS, {
            "task": "lotka_volterra", "method": method, "budget": budget, "observation": k,
            "n_readings": len(obs["times"]) if method == "skformer" else len(GRID),
            "c2st": f"{score:.4f}", "train_s": f"{train_s:.1f}", "epochs": epochs,
            "machine": machine(), "timestamp": datetime.now(timezone.utc).isoformat()})
        print(f"{method} {budget} obs {k}: C2ST {score:.3f} ({train_s:.0f} s train)", flush=True)


def cost(rows: int = 2000, epochs: int = 3) -> None:
    """Seconds per epoch of the default network on the LV readings, with and without
    positions (the same 44 columns), one thread."""
    import torch

    from skformer import SimformerEstimator

    from harness.run import machine

    torch.set_num_threads(1)
    theta, x, times = training_data(rows)
    X = np.hstack([theta, x[..., 0], x[..., 1]])
    for with_positions in (False, True):
        est = SimformerEstimator(variables=skformer_layout(K_TRAIN), max_epochs=epochs,
                                 early_stopping=False, random_state=0, n_threads=1)
        kw = {"positions": {"prey": times, "predator": times}} if with_positions else {}
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X, **kw)
        seconds = (time.perf_counter() - t0) / epochs
        append_row(COST, COST_COLUMNS, {
            "tokens": X.shape[1], "positions": with_positions, "rows": rows,
            "batch_size": est.batch_size_, "s_per_epoch": f"{seconds:.2f}",
            "machine": machine(), "timestamp": datetime.now(timezone.utc).isoformat()})
        print(f"positions={with_positions}: {seconds:.2f} s per epoch", flush=True)


def report() -> None:
    rows = read_rows(OUT)
    print("| method | budget | observation | readings | C2ST | train s | epochs |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["method"], int(r["budget"]), int(r["observation"]))):
        print(f"| {r['method']} | {r['budget']} | {r['observation']} | {r['n_readings']} | "
              f"{float(r['c2st']):.3f} | {float(r['train_s']):.0f} | {r['epochs']} |")
    for method in sorted({r["method"] for r in rows}):
        for budget in sorted({int(r["budget"]) for r in rows if r["method"] == method}):
            scores = [float(r["c2st"]) for r in rows
                      if r["method"] == method and int(r["budget"]) == budget]
            print(f"{method} {budget}: mean C2ST {np.mean(scores):.3f} over {len(scores)}")
    for r in read_rows(COST):
        print(f"cost: {r['tokens']} tokens, positions={r['positions']}: "
              f"{r['s_per_epoch']} s per epoch ({r['rows']} rows, batch {r['batch_size']})")


def _observations(spec: str) -> list[int]:
    if "-" in spec:
        a, b = spec.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in spec.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--observations", default="1-5")
    parser.add_argument("--methods", nargs="+", default=["skformer", "npe"],
                        choices=["skformer", "npe"])
    parser.add_argument("--references", action="store_true",
                        help="only compute (and cache) the reference posteriors")
    parser.add_argument("--cost", action="store_true")
    parser.add_argument("--max-epochs", type=int, default=None,
                        help="cap skformer's epochs (default: the estimator's, 400); at 1e5 on a "
                             "CPU, 40 takes the same optimiser steps as 400 at 1e4")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    # A job started in the background inherits SIGINT ignored; restore Python's handler so that
    # `kill -INT` ends training with the best weights so far.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.report:
        report()
        return
    if args.cost:
        cost()
        return
    ks = _observations(args.observations)
    if args.references:
        for k in ks:
            for which in ("random", "grid"):
                t0 = time.perf_counter()
                reference_of(k, which)
                print(f"reference {which} {k}: {time.perf_counter() - t0:.0f} s", flush=True)
        return
    for method in args.methods:
        run(method, args.budget, ks, args.max_epochs)


if __name__ == "__main__":
    main()
