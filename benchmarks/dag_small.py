"""How fast a small model learns exact Gaussian conditionals with and without a declared DAG.

A four-variable linear-Gaussian DAG, a collider and a chain: z0, z1 ~ N(0, 1),
z2 = z0 + z1 + 0.5 e, z3 = z2 + 0.5 e. Three conditionals with exact answers: p(z0, z1, z2 | z3)
(the collider's causes are coupled, correlation -2/3, once z3 is seen through the latent z2),
p(z2, z3 | z0, z1) and p(z1, z3 | z0, z2). Each setting is fitted on 2,000 rows with a small
network (d_model 32, 2 layers, 4 heads, Bernoulli condition masks) for a fixed number of
epochs, over seeds; each conditional is scored by the error of its means and standard
deviations (in units of the exact standard deviations) and of the correlation of its first two
columns. One row per (setting, epochs, seed, conditional) is appended to ``--out``; a rerun
skips the rows already there.

Settings: full attention; ``DAG(..., "faithful")`` and ``DAG(..., "moral")`` on every head;
and the same with the edge mask on half the heads (``skformer.network.EDGE_HEADS = 2``).

    python dag_small.py --out results/dag_small.csv            # about 10 minutes, one thread
    python dag_small.py --report --out results/dag_small.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

PARENTS = {2: [0, 1], 3: [2]}
WEIGHTS = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0.0]])
NOISE = np.array([1.0, 1.0, 0.5, 0.5])
CONDITIONALS = {
    "z0,z1,z2|z3": (np.array([0, 0, 0, 1], bool), np.array([1.5])),
    "z2,z3|z0,z1": (np.array([1, 1, 0, 0], bool), np.array([0.5, -1.0])),
    "z1,z3|z0,z2": (np.array([1, 0, 1, 0], bool), np.array([-0.5, 0.8])),
}
SETTINGS = {
    "full": (None, None),
    "faithful": ("faithful", None),
    "moral": ("moral", None),
    "faithful, 2 of 4 heads": ("faithful", 2),
    "moral, 2 of 4 heads": ("moral", 2),
}
COLUMNS = ["setting", "epochs", "seed", "conditional", "mean_error", "std_error",
           "corr_error", "validation_loss", "train_s", "machine"]


def joint() -> tuple[np.ndarray, np.ndarray]:
    A = np.linalg.inv(np.eye(4) - WEIGHTS)
    return np.zeros(4), A @ np.diag(NOISE**2) @ A.T


def exact(observed: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, cov = joint()
    lat, obs = np.flatnonzero(~observed), np.flatnonzero(observed)
    k = cov[np.ix_(lat, obs)] @ np.linalg.inv(cov[np.ix_(obs, obs)])
    return mu[lat] + k @ (values - mu[obs]), cov[np.ix_(lat, lat)] - k @ cov[np.ix_(obs, lat)]


def score(samples: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> dict:
    """Errors of a conditional's samples against the exact Gaussian."""
    sd = np.sqrt(np.diag(cov))
    corr = np.corrcoef(samples.T)[0, 1]
    return {"mean_error": float(np.max(np.abs(samples.mean(0) - mean) / sd)),
            "std_error": float(np.max(np.abs(samples.std(0) / sd - 1))),
            "corr_error": float(abs(corr - cov[0, 1] / sd[0] / sd[1]))}


def run_one(setting: str, epochs: int, seed: int) -> list[dict]:
    import torch

    import skformer.network as network
    from skformer import SimformerEstimator
    from skformer.graph import DAG

    from seed_task import machine

    inversion, heads = SETTINGS[setting]
    torch.set_num_threads(1)  # as the fit (n_threads=1), so that machine() says so
    mu, cov = joint()
    X = np.random.default_rng(seed).multivariate_normal(mu, cov, size=2000)
    before = network.EDGE_HEADS
    network.EDGE_HEADS = heads
    try:
        est = SimformerEstimator(
            edge_masks=None if inversion is None else DAG(PARENTS, inversion),
            condition_masks="bernoulli", d_model=32, n_layers=2, n_heads=4, max_epochs=epochs,
            early_stopping=False, random_state=seed, device="cpu", n_threads=1)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X)
        train_s = time.perf_counter() - start
    finally:
        network.EDGE_HEADS = before
    rows = []
    for name, (observed, values) in CONDITIONALS.items():
        mean, c = exact(observed, values)
        samples = est.condition(observed).sample(2000, observed=values, random_state=0)
        rows.append({"setting": setting, "epochs": epochs, "seed": seed, "conditional": name,
                     **score(samples, mean, c),
                     "validation_loss": float(min(est.validation_scores_)),
                     "train_s": round(train_s, 2), "machine": machine()})
    return rows


def done(out: Path) -> set:
    if not out.exists():
        return set()
    with open(out, newline="") as fh:
        return {(r["setting"], int(r["epochs"]), int(r["seed"])) for r in csv.DictReader(fh)}


def run(out: Path, settings, epochs, seeds) -> None:
    have = done(out)
    for n in epochs:
        for setting in settings:
            for seed in seeds:
                if (setting, n, seed) in have:
                    continue
                rows = run_one(setting, n, seed)
                new = not out.exists()
                out.parent.mkdir(parents=True, exist_ok=True)
                with open(out, "a", newline="") as fh:
                    writer = csv.DictWriter(fh, COLUMNS)
                    if new:
                        writer.writeheader()
                    writer.writerows(rows)
                print(f"[dag_small] {setting} {n} epochs seed {seed}: " + ", ".join(
                    f"{r['conditional']} corr {r['corr_error']:.2f}" for r in rows), flush=True)


def report(out: Path) -> str:
    """Mean errors over seeds per setting and epochs (a markdown table)."""
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    keys = sorted({(r["setting"], int(r["epochs"])) for r in rows},
                  key=lambda k: (k[1], list(SETTINGS).index(k[0])))
    lines = ["| setting | epochs | seeds | mean error | std error | corr error, z0,z1 given z3 "
             "| corr error, all | validation loss |", "|---|---|---|---|---|---|---|---|"]
    for setting, n in keys:
        sel = [r for r in rows if r["setting"] == setting and int(r["epochs"]) == n]
        col = [r for r in sel if r["conditional"] == "z0,z1,z2|z3"]

        def mean(key, rs=sel):
            return np.mean([float(r[key]) for r in rs])

        lines.append(f"| {setting} | {n} | {len({r['seed'] for r in sel})} | "
                     f"{mean('mean_error'):.3f} | {mean('std_error'):.3f} | "
                     f"{mean('corr_error', col):.3f} | {mean('corr_error'):.3f} | "
                     f"{mean('validation_loss'):.4f} |")
    machines = sorted({r["machine"] for r in rows})
    return "\n".join(lines + ["", "Machine: " + "; ".join(machines)])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "dag_small.csv")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--epochs", type=int, nargs="+", default=[40, 200])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--report", action="store_true", help="print the table of --out")
    args = ap.parse_args(argv)
    if args.report:
        print(report(args.out))
        return
    run(args.out, args.settings, args.epochs, args.seeds)
    print(report(args.out))


if __name__ == "__main__":
    main()
