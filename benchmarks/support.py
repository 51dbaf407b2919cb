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
of which one is inside. ``reflected`` (a screen, not a skformer option; Lou & Ermon's
reflected diffusion, ICML 2023): the score model trained under a forward process reflected at
the box's edges (:class:`ReflectedScore`) and sampled in the unfolded coordinate, its samples
folded in at the end. ``fold`` (a screen of a sampling rule, not a skformer option): the
``truncate`` fit, its samples drawn without the bounds and those outside folded back in
(reflected at the edge they crossed) instead of redrawn: where the network smoothed a cut
edge, the mass it spilled over the edge belongs just inside it. The same fit's truncated
samples are written too, as setting "truncate (fold's fit)".

    python support.py --out results/support.csv              # about 25 minutes, one thread
    python support.py --report --out results/support.csv
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from rows import append as append_row  # noqa: E402
from rows import read as read_rows  # noqa: E402

from skformer import SimformerEstimator  # noqa: E402
from skformer.conditional import resolve_bounds  # noqa: E402
from skformer.dynamics.base import _fixed, masked_mean  # noqa: E402
from skformer.dynamics.score import ScoreDynamics  # noqa: E402

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
    import skformer.model

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



# --------------------------------------------------------------------------- reflected
# The ``reflected`` setting. A bounded column's noisy value is the clean one plus noise, folded
# back into the column's box (reflected Brownian motion), so its density at every noise level
# lives on the box and is flat across the edges.
# - Training: ``y = x0 + sigma eps`` folded to ``x = fold(y)``; the target is the score of the
#   folded kernel, the sum over every pre-image ``y_k`` of ``x`` (its translates by twice the
#   box's width, and their mirrors) of ``N(y_k; x0, sigma^2)``.
# - Sampling: the unchanged solvers run in the unfolded coordinate ``y``, whose density is the
#   box's extended by reflection; the denoiser at ``y`` is the network's at ``fold(y)``, its
#   step turned by the fold's slope: ``D(y) = y + J(y) (D(fold y) - fold y)``. The samples are
#   folded at the end (``support="fold"``). Score method, VE SDE, sampling only.
MAX_IMAGES = 400
"""At most this many pre-images on each side of a folded value in the kernel's sum; the sum
keeps enough to cover 6 standard deviations of the batch's widest noise."""


def fold_with_slope(y: torch.Tensor, low: torch.Tensor, high: torch.Tensor):
    """``(fold(y), slope)``: ``y`` reflected into ``[low, high]`` per column (columns whose
    bounds are infinite pass through, slope 1)."""
    boxed = torch.isfinite(low) & torch.isfinite(high)
    if not bool(boxed.any()):
        return y, torch.ones_like(y)
    lo = torch.where(boxed, low, 0.0).to(y.dtype)
    width = torch.where(boxed, high - low, 1.0).to(y.dtype)
    u = torch.remainder(y - lo, 2 * width)
    x = torch.where(boxed, lo + width - (u - width).abs(), y)
    slope = torch.where(boxed & (u > width), -1.0, 1.0).to(y.dtype)
    return x, slope


def reflected_step(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
                   low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``sigma^2`` times the score at ``x`` (in the box) of the folded kernel started at
    ``x0``, per entry; 0 where a column has no box (the caller uses ``x0 - x`` there)."""
    boxed = torch.isfinite(low) & torch.isfinite(high)
    lo = torch.where(boxed, low, 0.0).to(x.dtype)
    width = torch.where(boxed, high - low, 1.0).to(x.dtype)
    narrowest = float(width[boxed].min()) if bool(boxed.any()) else 1.0
    images = min(MAX_IMAGES, math.ceil(6 * float(sigma.max()) / (2 * narrowest)) + 2)
    k = torch.arange(-images, images + 1, device=x.device, dtype=x.dtype)
    shift = 2 * width[..., None] * k  # (..., columns, images)
    ys = torch.cat([x[..., None] + shift, (2 * lo - x)[..., None] + shift], -1)
    slopes = torch.cat([torch.ones_like(k), -torch.ones_like(k)])
    s2 = (sigma**2)[:, None, None]
    logw = -((ys - x0[..., None]) ** 2) / (2 * s2)
    w = torch.softmax(logw, -1)
    return torch.where(boxed, (w * slopes * (x0[..., None] - ys)).sum(-1), 0.0)


class ReflectedScore(ScoreDynamics):
    """:class:`~skformer.dynamics.ScoreDynamics` (VE) whose bounded columns diffuse reflected
    in their box; ``low`` / ``high`` (standard units, one per column, infinite where none) are
    set once the model's standardiser is known.

    A reflected value stays in its box however large the noise, so EDM's preconditioning
    (inputs scaled by ``1 / sigma``, a denoiser that tends to the mean) does not fit it: on a
    bounded column the network reads ``x / sqrt(1 + min(sigma^2, w^2 / 12))`` (``w`` the box's
    width) and predicts ``sigma^2`` times the score divided by ``c = sigma exp(-(pi sigma /
    w)^2 / 2)`` (at least ``sigma / 1000``), which keeps the target near unit size at every
    noise level: ``D = x + c F``. Unbounded columns
    keep EDM's."""

    low: torch.Tensor | None = None
    high: torch.Tensor | None = None

    def _box(self, like: torch.Tensor):
        low, high = self.low.to(like.device), self.high.to(like.device)
        return low, high, torch.isfinite(low) & torch.isfinite(high)

    def _inputs(self, x, sigma, fixed, low, high, boxed):
        """The network's input and noise level, EDM's ``c_skip`` and ``c_out``, and the bounded
        columns' output scale."""
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        width = torch.where(boxed, high - low, 1.0)
        s = sigma[:, None]
        c_box = torch.rsqrt(1 + torch.minimum(s**2, width**2 / 12))  # a uniform's variance
        x_in = torch.where(boxed, x * c_box, x * c_in[:, None])
        # sigma times the score fades like the box's first cosine mode once the noise is as
        # wide as the box: scale the target by it, so that it stays of unit size
        fade = torch.exp(-((math.pi * s / width) ** 2) / 2).clamp(min=1e-3)
        return torch.where(fixed, x, x_in), c_skip, c_out, c_noise, s * fade

    def loss(self, net, x0, observed, edges, sigma, eps):
        low, high, boxed = self._box(x0)
        fixed = _fixed(observed)
        y = x0 + sigma[:, None] * eps
        x, _ = fold_with_slope(y, low, high)
        x = torch.where(fixed, x0, x)
        x_in, _, _, c_noise, c_box = self._inputs(x, sigma, fixed, low, high, boxed)
        target = torch.where(boxed, reflected_step(x, x0, sigma, low, high) / c_box,
                             self.target(x0, eps, sigma))
        out = net(x_in, c_noise, observed, edges)
        return masked_mean((out - target) ** 2, ~fixed)

    def denoise(self, net, y, sigma, observed, edges):
        low, high, boxed = self._box(y)
        fixed = _fixed(observed)
        x, slope = fold_with_slope(y, low, high)
        x = torch.where(fixed, y, x)
        x_in, c_skip, c_out, c_noise, c_box = self._inputs(x, sigma, fixed, low, high, boxed)
        out = net(x_in, c_noise, observed, edges)
        d = torch.where(boxed, y + slope * c_box * out,
                        c_skip[:, None] * y + c_out[:, None] * out)
        return torch.where(fixed, y, d)


class ReflectedEstimator(SimformerEstimator):
    """The estimator with :class:`ReflectedScore` for ``method="score"`` (VE): give it
    ``bounds`` and ``support="fold"``."""

    def _make_dynamics(self):
        dynamics = super()._make_dynamics()
        if not isinstance(dynamics, ScoreDynamics) or dynamics.sde != "ve":
            raise ValueError("the reflected screen needs method='score' with the VE SDE.")
        return ReflectedScore(**dynamics.config())

    def _build_model(self, X, layout, seeds, positions=None):
        model = super()._build_model(X, layout, seeds, positions)
        box = torch.tensor([[-math.inf], [math.inf]], dtype=torch.float64).repeat(
            1, layout.n_columns)  # rows: low, high; no bound where none is given
        for c, bound in resolve_bounds(self.bounds, layout).items():
            box[:, c] = torch.tensor(bound)
        model.dynamics.low, model.dynamics.high = model.standardiser(box).float()  # std units
        return model


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
