"""One token per column or one per variable: what each costs and how well each answers.

The test suite's seed task (theta ~ U(-1, 1)^3, x = theta + 1 + 0.1 noise, 3,000 rows given as
two variables of 3 columns) and its tiny network (d_model 32, 2 layers, 2 heads), fitted with
``tokens="column"`` (6 tokens) and ``tokens="variable"`` (2 tokens) for a fixed number of
epochs (no early stopping), by each method. Per fit: training seconds, the mean absolute error
of the posterior's log density at x_o against the exact one (300 posterior samples), the
posterior samples' mean and standard deviation error, and the same for a conditional *within*
the variables (theta[0], x[1], x[2] observed; theta[1], theta[2], x[0] latent; exact: each
latent is N(the observed partner -+ 1, 0.1), truncated for theta): a mask that observes part of
each token of a model with one token per variable. Appends one row per fit to
``results/token_layout_b.csv`` (a cut-off run resumes) and prints the table of docs/speed.md.
About 2 minutes on one CPU thread. (``results/token_layout.csv`` holds the runs of the design
before tokens kept per-column states, which refused that mask: "refused" there.)

    cd benchmarks
    python token_layout.py
    python token_layout.py --report
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import rows

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "token_layout_b.csv"
FIELDS = ["method", "tokens", "design", "epochs", "train_s", "post_logprob_mae", "post_mean_err",
          "post_std_err", "mixed_mean_err", "mixed_std_err", "machine", "timestamp"]
SETTINGS = [("column", 40, "-"), ("variable", 40, "readout"), ("variable", 80, "readout"),
            ("variable", 40, "hourglass"), ("variable", 40, "mlp"), ("variable", 80, "mlp")]
"""(tokens, epochs, design): the design of the network with groups (``group_embedding``, set
through ``skformer.network.GROUP_EMBEDDING``; "-" for one token per column)."""
ROWS, LOG_PROB_DRAWS, DRAWS = 3000, 300, 4000
"""Simulations per fit; posterior draws scored by their log density; draws for the moments."""
X_O = [1.1, 0.9, 1.3]
MIXED = [True, False, False, False, True, True]  # one entry per column: True = observed
MIXED_OBSERVED = [0.3, 1.2, 0.8]
MIXED_EXACT = [0.2, -0.2, 1.3]  # theta_j | x_j = x_j - 1; x_0 | theta_0 = theta_0 + 1


def fit_and_score(method: str, tokens: str, epochs: int, design: str = "-") -> dict:
    """Fit one setting and score it (the network design set for this fit only)."""
    import skformer.network as network

    kept = network.GROUP_EMBEDDING
    if design != "-":
        network.GROUP_EMBEDDING = design
    try:
        return _fit_and_score(method, tokens, epochs, design)
    finally:
        network.GROUP_EMBEDDING = kept


def _fit_and_score(method: str, tokens: str, epochs: int, design: str) -> dict:
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning

    from seed_task import exact_log_prob, machine, simulate
    from skformer import SimformerEstimator

    tiny = dict(d_model=32, n_layers=2, n_heads=2, batch_size=128, learning_rate=3e-3)
    est = SimformerEstimator(method=method, tokens=tokens, max_epochs=epochs,
                             early_stopping=False, random_state=0, **tiny)
    X = simulate(ROWS, 0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    train_s = time.perf_counter() - start

    x_o = np.asarray(X_O)
    mu = x_o - 1.0
    post = est.posterior()
    theta = post.sample(LOG_PROB_DRAWS, observed=x_o, random_state=0)
    exact = exact_log_prob(x_o, theta)
    mae = float(np.abs(post.log_prob(theta, observed=x_o) - exact).mean())
    many = post.sample(DRAWS, observed=x_o, random_state=1)
    row = dict(method=method, tokens=tokens, design=design, epochs=epochs,
               train_s=round(train_s, 2),
               post_logprob_mae=round(mae, 3),
               post_mean_err=round(float(np.abs(many.mean(0) - mu).max()), 3),
               post_std_err=round(float(np.abs(many.std(0) - 0.1).max()), 3),
               machine=machine(), timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    try:
        draws = est.condition(np.asarray(MIXED)).sample(DRAWS, observed=MIXED_OBSERVED,
                                                        random_state=1)
    except ValueError:
        row.update(mixed_mean_err="refused", mixed_std_err="refused")
    else:
        row.update(mixed_mean_err=round(float(np.abs(draws.mean(0) - MIXED_EXACT).max()), 3),
                   mixed_std_err=round(float(np.abs(draws.std(0) - 0.1).max()), 3))
    return row


def report(path: Path = OUT) -> str:
    lines = ["| method | tokens | design | epochs | train s | posterior log density MAE (nats) "
             "| posterior mean / std error | within-variable conditional mean / std error |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows.read(path):
        lines.append(f"| {r['method']} | {r['tokens']} | {r.get('design', '-')} | "
                     f"{r['epochs']} | {r['train_s']} | "
                     f"{r['post_logprob_mae']} | {r['post_mean_err']} / {r['post_std_err']} | "
                     f"{r['mixed_mean_err']} / {r['mixed_std_err']} |")
    machines = sorted({r["machine"] for r in rows.read(path)})
    return "\n".join(lines + ["", f"Machine: {', '.join(machines)}."])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", action="store_true", help="print the table and stop")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if not args.report:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(1)
        done = {(r["method"], r["tokens"], int(r["epochs"]), r["design"])
                for r in rows.read(args.out)}
        for method in ("score", "flow"):
            for tokens, epochs, design in SETTINGS:
                if (method, tokens, epochs, design) in done:
                    continue
                row = fit_and_score(method, tokens, epochs, design)
                rows.append(args.out, FIELDS, row)
                print(row, flush=True)
    print(report(args.out))


if __name__ == "__main__":
    main()
