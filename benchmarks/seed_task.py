"""Seed task benchmark: accuracy, speed and memory of skformer on the sbi tutorial's problem.

theta ~ U(-1, 1)^3, x = theta + 1 + 0.1 * noise; 10,000 simulations, at most 100 epochs (the
tutorial's), default estimator. Reports C2ST (sbibm's MLP version, 10,000 samples against 10,000
exact samples) of the posterior p(theta | x_o) and the likelihood p(x | theta_o), training time,
time for 10,000 posterior samples, network calls per sample and peak resident memory.

    python benchmarks/seed_task.py                       # both methods, default masks
    python benchmarks/seed_task.py --method score --condition-masks bernoulli structured

Writes benchmarks/results/seed_task.json (one record per run, appended) and prints a markdown
table. Reference implementation on 2 CPU cores: training 227 s, 10,000 samples 114 s,
C2ST 0.66 (posterior) / 0.63 (likelihood), peak memory 0.9 GB.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import truncnorm
from sklearn.exceptions import ConvergenceWarning

import skformer
from skformer import SimformerEstimator

from metrics import c2st

RESULTS = Path(__file__).resolve().parent / "results"


def simulate(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-1, 1, size=(n, 3))
    x = theta + 1.0 + 0.1 * rng.standard_normal(theta.shape)
    return np.stack([theta, x], axis=1)


def exact_posterior(x_o: np.ndarray, n: int, seed: int) -> np.ndarray:
    mu = x_o - 1.0
    a, b = (-1 - mu) / 0.1, (1 - mu) / 0.1
    return truncnorm.rvs(a, b, loc=mu, scale=0.1, size=(n, 3), random_state=seed)


def exact_log_prob(x_o: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """The exact posterior's log density at ``theta`` (..., 3) given ``x_o``."""
    mu = np.asarray(x_o, dtype=float) - 1.0
    a, b = (-1 - mu) / 0.1, (1 - mu) / 0.1
    return truncnorm.logpdf(theta, a, b, loc=mu, scale=0.1).sum(-1)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def run(method: str, masks: str, n_sims: int, epochs: int, seed: int,
        tokens: str = "column") -> dict:
    X = simulate(n_sims, seed)
    est = SimformerEstimator(method=method, condition_masks=masks, max_epochs=epochs,
                             tokens=int(tokens) if tokens.isdigit() else tokens,
                             random_state=seed, device="cpu")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    train_s = time.perf_counter() - start

    rng = np.random.default_rng(1000 + seed)
    theta_o = np.zeros(3)
    x_o = theta_o + 1.0 + 0.1 * rng.standard_normal(3)
    post = est.posterior()
    start = time.perf_counter()
    samples = post.sample(10_000, observed=x_o, random_state=seed)
    sample_s = time.perf_counter() - start
    lik = est.likelihood().sample(10_000, observed=theta_o, random_state=seed)
    ref_lik = theta_o + 1.0 + 0.1 * rng.standard_normal((10_000, 3))
    return {
        "method": method,
        "condition_masks": masks,
        "tokens": len(est.token_columns_),
        "n_simulations": n_sims,
        "max_epochs": epochs,
        "epochs_run": est.n_iter_,
        "seed": seed,
        "c2st_posterior": c2st(samples, exact_posterior(x_o, 10_000, seed)),
        "c2st_likelihood": c2st(lik, ref_lik),
        "train_s": train_s,
        "sample_10k_s": sample_s,
        "network_calls": post.network_calls(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "machine": machine(),
        "skformer_version": skformer.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", nargs="+", default=["score", "flow"])
    ap.add_argument("--condition-masks", nargs="+", default=["structured"])
    ap.add_argument("--n-sims", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--tokens", nargs="+", default=["column"],
                    help="column, variable and / or a number of columns per token (one run "
                         "each)")
    args = ap.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    RESULTS.mkdir(exist_ok=True)
    rows = []
    for method in args.method:
        for masks in args.condition_masks:
            for seed, tokens in ((s, t) for s in args.seeds for t in args.tokens):
                row = run(method, masks, args.n_sims, args.epochs, seed, tokens)
                rows.append(row)
                with open(RESULTS / "seed_task.json", "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print(f"\nmachine: {rows[0]['machine']}\n")
    print("| method | masks | tokens | seed | epochs | C2ST post | C2ST lik | train s "
          "| 10k samples s | calls | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['condition_masks']} | {r['tokens']} | {r['seed']} | "
              f"{r['epochs_run']} | "
              f"{r['c2st_posterior']:.3f} | {r['c2st_likelihood']:.3f} | {r['train_s']:.0f} | "
              f"{r['sample_10k_s']:.1f} | {r['network_calls']} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
