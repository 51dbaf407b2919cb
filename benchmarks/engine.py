"""Engine benchmark: accuracy against network calls, log_prob speed and error, MAP, guidance.

Seed task (theta ~ U(-1, 1)^3, x = theta + 1 + 0.1 noise), 10,000 simulations, at most 100
epochs, both methods. For each solver and step count: C2ST (sbibm MLP) of 10,000 posterior
samples against exact samples, and the sampling time. Then log_prob of 1,000 posterior samples
(time, mean absolute error in nats against the exact truncated-normal density), the MAP's
distance to the exact mode, and constrained sampling against the exact truncated conditional.

    python benchmarks/engine.py            # writes benchmarks/results/engine.json,
                                           # docs/engine.md and docs/engine_c2st.png
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import truncnorm
from sklearn.exceptions import ConvergenceWarning

from metrics import c2st
from seed_task import exact_posterior, machine, simulate
from skformer import SimformerEstimator

ROOT = Path(__file__).resolve().parent
CONFIGS = [("dpm", 5), ("dpm", 10), ("dpm", 20), ("dpm", 50), ("heun", 10), ("heun", 25),
           ("sde", 50), ("sde", 500)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", nargs="+", default=["score", "flow"])
    ap.add_argument("--n-sims", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    rng = np.random.default_rng(1000)
    x_o = 1.0 + 0.1 * rng.standard_normal(3)  # theta_o = 0
    mu = x_o - 1.0
    a, b = (-1 - mu) / 0.1, (1 - mu) / 0.1
    reference = exact_posterior(x_o, 10_000, 0)
    rows = []
    for method in args.method:
        est = SimformerEstimator(method=method, max_epochs=args.epochs, random_state=0,
                                 device="cpu")
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(simulate(args.n_sims, 0))
        train_s = time.perf_counter() - t0
        post = est.posterior()
        for solver, steps in CONFIGS:
            t0 = time.perf_counter()
            s = post.sample(10_000, observed=x_o, random_state=0, solver=solver, steps=steps)
            dt = time.perf_counter() - t0
            row = {"method": method, "solver": solver, "steps": steps,
                   "network_calls": post.network_calls(steps, solver),
                   "c2st": c2st(s, reference), "sample_10k_s": dt, "train_s": train_s}
            rows.append(row)
            print(json.dumps(row), flush=True)
        pts = post.sample(1000, observed=x_o, random_state=1)
        exact = truncnorm.logpdf(pts, a, b, loc=mu, scale=0.1).sum(1)
        for steps in (10, 20, 40):
            t0 = time.perf_counter()
            lp = post.log_prob(pts, observed=x_o, steps=steps)
            dt = time.perf_counter() - t0
            row = {"method": method, "log_prob_steps": steps, "log_prob_1k_s": dt,
                   "log_prob_mae": float(np.abs(lp - exact).mean())}
            rows.append(row)
            print(json.dumps(row), flush=True)
        t0 = time.perf_counter()
        mode = post.map(x_o, random_state=0)
        rows.append({"method": method, "map_error": float(np.abs(mode - mu).max()),
                     "map_s": time.perf_counter() - t0})
        t0 = time.perf_counter()
        guided = post.sample(2000, observed=x_o, random_state=0,
                             constraints={0: (mu[0], mu[0] + 0.3)})
        t_mean, t_var = truncnorm.stats(0, 3, loc=mu[0], scale=0.1, moments="mv")
        rows.append({"method": method, "guided_2k_s": time.perf_counter() - t0,
                     "guided_mean_error": float(abs(guided[:, 0].mean() - t_mean)),
                     "guided_std_error": float(abs(guided[:, 0].std() - np.sqrt(t_var))),
                     "guided_c2st": c2st(guided[:, 0], truncnorm.rvs(
                         0, 3, loc=mu[0], scale=0.1, size=2000, random_state=2))})
        print(json.dumps(rows[-2]), json.dumps(rows[-1]), flush=True)
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "engine.json").write_text(json.dumps(rows, indent=1))
    write_report(rows, machine())


def write_report(rows: list[dict], where: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = ROOT.parent / "docs"
    lines = ["# Engine benchmark", "", f"`python benchmarks/engine.py` on {where}.", "",
             "Seed task, 10,000 simulations, at most 100 epochs, defaults otherwise. C2ST of "
             "10,000 posterior samples against 10,000 exact samples (sbibm MLP; 0.5 is best).",
             "", "| method | solver | steps | network calls | C2ST | 10k samples (s) |",
             "|---|---|---|---|---|---|"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method in sorted({r["method"] for r in rows}):
        for solver in sorted({r.get("solver") for r in rows if r.get("solver")}):
            pts = [r for r in rows if r["method"] == method and r.get("solver") == solver]
            if pts:
                ax.plot([r["network_calls"] for r in pts], [r["c2st"] for r in pts], "o-",
                        label=f"{method} / {solver}")
        for r in rows:
            if r["method"] == method and "solver" in r:
                lines.append(f"| {method} | {r['solver']} | {r['steps']} | "
                             f"{r['network_calls']} | {r['c2st']:.3f} | {r['sample_10k_s']:.1f} |")
    ax.set_xscale("log")
    ax.axhline(0.52, color="gray", ls=":", label="target 0.52")
    ax.set_xlabel("network calls per sample")
    ax.set_ylabel("C2ST (posterior)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(docs / "engine_c2st.png", dpi=100)
    lines += ["", "![C2ST against network calls](engine_c2st.png)", "",
              "log_prob of 1,000 posterior samples (exact divergence), mean absolute error "
              "against the exact truncated-normal log density:", "",
              "| method | ODE steps | time (s) | mean abs. error (nats) |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['log_prob_steps']} | {r['log_prob_1k_s']:.1f} | "
              f"{r['log_prob_mae']:.3f} |" for r in rows if "log_prob_steps" in r]
    lines += ["", "| method | MAP max. error | MAP time (s) | guided 2k samples (s) | "
              "guided mean / std error | guided C2ST (1-d) |", "|---|---|---|---|---|---|"]
    maps = {r["method"]: r for r in rows if "map_error" in r}
    for r in rows:
        if "guided_2k_s" in r:
            m = maps[r["method"]]
            lines.append(f"| {r['method']} | {m['map_error']:.3f} | {m['map_s']:.1f} | "
                         f"{r['guided_2k_s']:.1f} | {r['guided_mean_error']:.3f} / "
                         f"{r['guided_std_error']:.3f} | {r['guided_c2st']:.3f} |")
    lines += ["", "Guided case: theta_0 known to lie in [mu_0, mu_0 + 0.3] (a half-normal "
              "conditional), the other two dimensions free."]
    (docs / "engine.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
