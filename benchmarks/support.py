"""A posterior piled against the edge of its prior's box: ``bounds`` kept by a transform or by
truncation.

theta ~ U(0, 1)^2, x = theta + 0.05 noise. The exact posterior given x_o is, per column, a
normal N(x_o, 0.05^2) cut to [0, 1]. Observation 1, x_o = (0.02, 0.02), puts 24 % of each
column's mass within 0.02 of the edge 0; observation 2, (0.02, 0.5), one column at the edge and
one in the middle; observation 3, (0.5, 0.99), the other edge. Each setting fits the default
estimator (``bounds={"theta": (0, 1)}``) on ``--budget`` simulations, samples 10,000 per
observation and scores them with C2ST against 10,000 exact draws, the share of each edge
column's samples within 0.02 of its edge (exact: 0.237) and the share outside the box. One
row per (setting, seed, observation) is appended to ``--out``; a rerun skips those done.

Settings: ``support="transform"`` (the model learns theta in the map
``k (u - 1/2) + logit(u)`` of its position u in the box; ``--stiffness k`` sets
``skformer.model.BOX_STIFFNESS``, 0 the plain logit, and the setting is recorded as
"transform k=..." when k is not 0) and ``support="truncate"`` (the model learns theta as it
is; samples outside are redrawn). ``npe``: sbi's NPE (a neural spline flow) with a
``BoxUniform`` prior, whose posterior samples are rejected into the prior's support: the
reference users know. ``reflect`` (a screen, not a skformer option): ``truncate`` fitted on
three copies of the simulations in which each theta column is, at random, kept, reflected at 0
or reflected at 1 (1/3 each). Inside the box the augmented joint is the true one (times a
constant) and it is continuous across the edges, so the truncated conditionals are exact
there and no edge is left for the network to smooth; the price is a posterior with 9 modes,
of which one is inside. ``reflected`` (a screen, not a skformer option;
``reflected_sde.py``): the score model trained under a forward process reflected at the
box's edges and sampled in the unfolded coordinate, its samples folded in at the end.
``fold`` (a screen of a sampling rule, not a skformer option): the
``truncate`` fit, its samples drawn without the bounds and those outside folded back in
(reflected at the edge they crossed) instead of redrawn: where the network smoothed a cut
edge, the mass it spilled over the edge belongs just inside it. The same fit's truncated
samples are written too, as setting "truncate (fold's fit)".

    python support.py --out results/support.csv              # about 25 minutes, one thread
    python support.py --report --out results/support.csv
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from rows import append as append_row  # noqa: E402
from rows import read as read_rows  # noqa: E402

NOISE = 0.05
OBSERVATIONS = {1: np.array([0.02, 0.02]), 2: np.array([0.02, 0.5]), 3: np.array([0.5, 0.99])}
SETTINGS = ("transform", "truncate", "npe", "reflect", "fold", "reflected")
COLUMNS = ["setting", "budget", "seed", "observation", "c2st", "edge_share", "exact_share",
           "outside", "train_s", "epochs", "machine"]


def simulate(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 31])
    theta = rng.uniform(0, 1, (n, 2))
    return np.hstack([theta, theta + NOISE * rng.normal(size=(n, 2))])


def exact_posterior(x_o: np.ndarray, n: int, seed: int) -> np.ndarray:
    from scipy.stats import truncnorm

    a, b = (0 - x_o) / NOISE, (1 - x_o) / NOISE
    return truncnorm.rvs(a, b, loc=x_o, scale=NOISE, size=(n, 2),
                         random_state=np.random.default_rng([seed, 97]))


def edge_share(samples: np.ndarray, x_o: np.ndarray) -> float:
    """Mean over the columns observed within 0.05 of an edge of the share of samples within
    0.02 of that edge."""
    shares = []
    for j, v in enumerate(x_o):
        if v < 0.05:
            shares.append(np.mean(samples[:, j] < 0.02))
        elif v > 0.95:
            shares.append(np.mean(samples[:, j] > 0.98))
    return float(np.mean(shares))


def run_one(setting: str, budget: int, seed: int) -> list[dict]:
    import torch

    import skformer.model
    from skformer import SimformerEstimator

    torch.set_num_threads(1)
    if setting == "npe":
        return _rows(setting, budget, seed, *_npe(budget, seed))
    support, _, k = setting.partition(" k=")
    skformer.model.BOX_STIFFNESS = float(k or 0)
    X = simulate(budget, seed)
    if setting == "reflect":
        support, X = "truncate", reflected(X, 3, seed)
    if setting == "fold":
        support = "truncate"
    estimator = SimformerEstimator
    if setting == "reflected":
        from reflected_sde import ReflectedEstimator

        support, estimator = "fold", ReflectedEstimator
    est = estimator(variables=[2, 2], bounds={"v0": (0.0, 1.0)}, support=support,
                             random_state=seed, device="cpu", n_threads=1)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X)
    train_s = time.perf_counter() - start

    def sample(x_o):
        return est.posterior().sample(10_000, x_o, random_state=seed)

    if setting != "fold":
        return _rows(setting, budget, seed, sample, train_s, est.n_iter_)
    truncated = _rows("truncate (fold's fit)", budget, seed, sample, train_s, est.n_iter_)
    est.set_params(bounds=None)

    spilled = []

    def folded(x_o):
        raw = est.posterior().sample(10_000, x_o, random_state=seed)
        spilled.append(float(np.mean((raw < 0) | (raw > 1))))
        return fold(raw, 0.0, 1.0)

    rows = _rows(setting, budget, seed, folded, train_s, est.n_iter_)
    for row, share in zip(rows, spilled, strict=True):
        row["outside"] = share  # for fold: the share of values folded back in
    return truncated + rows


def fold(samples: np.ndarray, low: float, high: float) -> np.ndarray:
    """Reflect every value outside [low, high] at the edge it crossed (again, if that lands
    outside the other edge)."""
    out = samples.copy()
    for _ in range(8):
        out = np.where(out < low, 2 * low - out, out)
        out = np.where(out > high, 2 * high - out, out)
    return out


def reflected(X: np.ndarray, copies: int, seed: int) -> np.ndarray:
    """``copies`` copies of X whose theta columns are each kept, reflected at 0 or reflected
    at 1, at random (1/3 each)."""
    rng = np.random.default_rng([seed, 5])
    parts = []
    for _ in range(copies):
        Y = X.copy()
        for j in (0, 1):
            r = rng.integers(0, 3, len(Y))
            Y[r == 1, j] = -Y[r == 1, j]
            Y[r == 2, j] = 2 - Y[r == 2, j]
        parts.append(Y)
    return np.vstack(parts)


def _npe(budget: int, seed: int):
    """sbi's NPE with the box prior: (sampler, train seconds, epochs)."""
    import torch
    from sbi.inference import NPE
    from sbi.utils import BoxUniform

    from harness.methods import sbi_quiet

    torch.manual_seed(seed)
    X = simulate(budget, seed)
    prior = BoxUniform(torch.zeros(2), torch.ones(2))
    inference = NPE(prior=prior, density_estimator="nsf", show_progress_bars=False,
                    **sbi_quiet(NPE))
    inference.append_simulations(torch.as_tensor(X[:, :2], dtype=torch.float32),
                                 torch.as_tensor(X[:, 2:], dtype=torch.float32))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = inference.build_posterior(inference.train())
    train_s = time.perf_counter() - start
    epochs = int(inference.summary["epochs_trained"][-1])

    def sample(x_o):
        torch.manual_seed(seed)
        x = torch.as_tensor(x_o, dtype=torch.float32)
        return posterior.sample((10_000,), x=x, show_progress_bars=False).numpy()

    return sample, train_s, epochs


def _rows(setting, budget, seed, sample, train_s, epochs) -> list[dict]:
    from metrics import c2st
    from seed_task import machine

    rows = []
    for k, x_o in OBSERVATIONS.items():
        samples = sample(x_o)
        reference = exact_posterior(x_o, 10_000, seed)
        rows.append({"setting": setting, "budget": budget, "seed": seed, "observation": k,
                     "c2st": round(c2st(samples, reference), 4),
                     "edge_share": round(edge_share(samples, x_o), 4),
                     "exact_share": round(edge_share(reference, x_o), 4),
                     "outside": float(np.mean((samples < 0) | (samples > 1))),
                     "train_s": round(train_s, 1), "epochs": epochs,
                     "machine": machine()})
    return rows


def done(out: Path) -> set:
    return {(r["setting"], int(r["budget"]), int(r["seed"])) for r in read_rows(out)}


def run(out: Path, settings, budget: int, seeds) -> None:
    have = done(out)
    for seed in seeds:
        for setting in settings:
            if (setting, budget, seed) in have:
                continue
            rows = run_one(setting, budget, seed)
            out.parent.mkdir(parents=True, exist_ok=True)
            for row in rows:
                append_row(out, COLUMNS, row)
            print(f"[support] {setting} seed {seed}: " + ", ".join(
                f"obs {r['observation']} c2st {r['c2st']} edge {r['edge_share']}"
                for r in rows), flush=True)


def report(out: Path) -> str:
    """Means over seeds per setting and observation (a markdown table)."""
    rows = read_rows(out)
    lines = ["| setting | budget | observation | seeds | C2ST | edge share (exact) | outside |",
             "|---|---|---|---|---|---|---|"]
    for setting in sorted({r["setting"] for r in rows}, key=lambda n: (n != "truncate", n)):
        for budget in sorted({int(r["budget"]) for r in rows}):
            for k in OBSERVATIONS:
                sel = [r for r in rows if r["setting"] == setting and int(r["budget"]) == budget
                       and int(r["observation"]) == k]
                if not sel:
                    continue

                def mean(key, rs=sel):
                    return np.mean([float(r[key]) for r in rs])

                lines.append(f"| {setting} | {budget:,} | {k} | {len(sel)} | {mean('c2st'):.3f} "
                             f"| {mean('edge_share'):.3f} ({mean('exact_share'):.3f}) "
                             f"| {mean('outside'):.4f} |")
    machines = sorted({r["machine"] for r in rows})
    return "\n".join(lines + ["", "Machine: " + "; ".join(machines)])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "support.csv")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--stiffness", type=float, default=0.0,
                    help="skformer.model.BOX_STIFFNESS for the transform setting")
    ap.add_argument("--budget", type=int, default=10_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--report", action="store_true", help="print the table of --out")
    args = ap.parse_args(argv)
    if args.report:
        print(report(args.out))
        return
    settings = [f"transform k={args.stiffness:g}" if s == "transform" and args.stiffness
                else s for s in args.settings]
    run(args.out, settings, args.budget, args.seeds)
    print(report(args.out))


if __name__ == "__main__":
    main()
