"""iid trials: posteriors given N independent trials from models trained on single trials.

skformer (``Conditional.sample(..., iid=True)``, its default "gauss" composition and "fnpe")
side by side with sbi's NPSE and its iid methods (``auto_gauss``, its default, and ``fnpe``),
on two tasks with exact N-trial posteriors:

- ``gaussian_linear``: theta ~ N(0, 0.1 I_10), x_j ~ N(theta, 0.1 I_10); the posterior given
  N trials is N(sum_j x_j / (N + 1), 0.1 / (N + 1) I).
- ``seed``: theta ~ U(-1, 1)^3, x_j = theta + 1 + 0.1 noise; the posterior is a normal with
  mean mean_j(x_j) - 1 and sd 0.1 / sqrt(N), truncated to the box.

Each method is trained once per task on ``--simulations`` single-trial simulations; for each
observation k (theta drawn from the prior with seed k, then N trials) and each N, ``--samples``
posterior samples are scored by C2ST (sbibm's MLP) against as many exact samples.

    OMP_NUM_THREADS=1 python benchmarks/iid.py --task seed --method skformer
    OMP_NUM_THREADS=1 python benchmarks/iid.py --task gaussian_linear --method npse
    python benchmarks/iid.py --report

Records (one JSON line each) are appended to ``benchmarks/results/iid.jsonl``; a rerun skips
the ones already there. ``--report`` prints the markdown table of docs/iid_trials.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

OUT = HERE / "results" / "iid.jsonl"
TASKS = ("gaussian_linear", "seed")
METHODS = {"skformer": ("gauss", "fnpe"), "npse": ("auto_gauss", "fnpe")}


def trials(task: str, k: int, n_trials: int) -> tuple[np.ndarray, np.ndarray]:
    """(theta_true, trials of shape (N, dim_x)) of observation k."""
    rng = np.random.default_rng([k, 1656])
    if task == "gaussian_linear":
        theta = math.sqrt(0.1) * rng.standard_normal(10)
        return theta, theta + math.sqrt(0.1) * rng.standard_normal((n_trials, 10))
    theta = rng.uniform(-1, 1, size=3)
    return theta, theta + 1.0 + 0.1 * rng.standard_normal((n_trials, 3))


def reference(task: str, x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Exact posterior samples given trials ``x`` (N, dim_x)."""
    N = x.shape[0]
    rng = np.random.default_rng(seed)
    if task == "gaussian_linear":
        return x.sum(0) / (N + 1) + math.sqrt(0.1 / (N + 1)) * rng.standard_normal((n, 10))
    from scipy.stats import truncnorm

    mu, sd = x.mean(0) - 1.0, 0.1 / math.sqrt(N)
    return truncnorm.rvs((-1 - mu) / sd, (1 - mu) / sd, loc=mu, scale=sd, size=(n, 3),
                         random_state=rng)


def fit(task_name: str, method: str, n_sims: int, seed: int):
    from harness.methods import SbiRunner, Settings, fit_skformer
    from harness.tasks import get_task

    task = get_task(task_name)
    theta, x = task.simulate(n_sims, seed)
    if method == "skformer":
        est, seconds = fit_skformer(task, theta, x, seed)
        return est, seconds, task
    trained = SbiRunner("npse").fit(task, theta, x, Settings(), seed)
    return trained.model, trained.train_s, task


def sample(method: str, model, x: np.ndarray, iid_method: str, n: int, seed: int):
    if method == "skformer":
        return model.posterior().sample(n, x, iid=True, iid_method=iid_method,
                                        random_state=seed)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = model.sample((n,), x=torch.as_tensor(x, dtype=torch.float32),
                         iid_method=iid_method, show_progress_bars=False)
    return s.detach().cpu().numpy().astype(np.float64)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def _done(out: Path) -> set:
    if not out.exists():
        return set()
    keys = set()
    for line in out.read_text().splitlines():
        r = json.loads(line)
        keys.add((r["task"], r["method"], r["iid_method"], r["n_trials"], r["observation"]))
    return keys


def run(args) -> None:
    from metrics import c2st

    out = Path(args.out)
    done = _done(out)
    fnpe_trials = args.fnpe_trials or args.trials
    todo = [(N, k, m) for N in args.trials for k in args.observations
            for m in args.iid_methods or METHODS[args.method]
            if (args.task, args.method, m, N, k) not in done
            and not (m == "fnpe" and (N == 1 or N not in fnpe_trials))]
    if not todo:
        print("nothing to do")
        return
    if args.model is not None:  # a skformer estimator saved with skformer.save
        from skformer import load

        model, train_s = load(args.model), args.train_seconds
    else:
        model, train_s, _ = fit(args.task, args.method, args.simulations, args.seed)
    print(f"{args.task} {args.method}: trained in {train_s:.0f} s", flush=True)
    began = time.perf_counter()
    for N, k, iid_method in todo:
        if time.perf_counter() - began > args.max_seconds:
            print(f"stopping: --max-seconds {args.max_seconds} spent; left "
                  f"{todo[todo.index((N, k, iid_method)):]}", flush=True)
            break
        _, x = trials(args.task, k, N)
        start = time.perf_counter()
        try:
            s = sample(args.method, model, x, iid_method, args.samples, k)
            error = None
        except Exception as err:  # noqa: BLE001 - a method that fails is a result
            s, error = None, f"{type(err).__name__}: {err}"[:300]
        sample_s = time.perf_counter() - start
        score = math.nan
        if s is not None and np.isfinite(s).all():
            score = c2st(s, reference(args.task, x, args.samples, 10_000 + k))
        elif s is not None:
            error = f"{int((~np.isfinite(s)).any(1).sum())} of {len(s)} samples not finite"
        record = {"task": args.task, "method": args.method, "iid_method": iid_method,
                  "n_trials": N, "observation": k, "c2st": score, "train_s": train_s,
                  "sample_s": sample_s, "samples": args.samples,
                  "simulations": args.simulations, "error": error,
                  "machine": f"{machine()}, torch {torch.__version__}, "
                             f"{torch.get_num_threads()} thread(s)"}
        print(json.dumps(record), flush=True)
        out.parent.mkdir(exist_ok=True)
        with open(out, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def report(out: Path) -> None:
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    cells: dict = {}
    for r in rows:
        key = (r["task"], f"{r['method']} {r['iid_method']}", r["n_trials"])
        cells.setdefault(key, []).append(r)
    trial_counts = sorted({r["n_trials"] for r in rows})
    n_obs = len({r["observation"] for r in rows})
    print(f"| task | method | {' | '.join(f'N = {n}' for n in trial_counts)} | "
          "train s | sample s (largest N run) |")
    print(f"|---|---|{'---|' * len(trial_counts)}---|---|")
    for task in TASKS:
        methods = sorted({m for (t, m, _) in cells if t == task})
        for m in methods:
            vals = []
            for n in trial_counts:
                rs = cells.get((task, m, n), [])
                c = [r["c2st"] for r in rs]
                if not rs:
                    vals.append("")
                else:
                    good = [v for v in c if not math.isnan(v)]
                    cell = f"{np.mean(good):.3f}" if good else ""
                    if len(good) < len(c):
                        cell = f"fails {len(c) - len(good)}/{len(c)}" + (f", {cell}" if cell
                                                                          else "")
                    if len(c) < n_obs:
                        cell += f" (obs {sorted(r['observation'] for r in rs)})"
                    vals.append(cell)
            last = [r for n in trial_counts for r in cells.get((task, m, n), [])]
            train = np.mean([r["train_s"] for r in last]) if last else math.nan
            largest = max(n for (t, mm, n) in cells if t == task and mm == m)
            big = [r["sample_s"] for r in cells[(task, m, largest)]]
            print(f"| {task} | {m} | {' | '.join(vals)} | {train:.0f} | "
                  f"{np.mean(big) if big else math.nan:.1f} |")
    print(f"\n{rows[0]['machine']}; C2ST of {rows[0]['samples']} samples, mean over "
          f"observations {sorted({r['observation'] for r in rows})}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=TASKS, default="seed")
    ap.add_argument("--method", choices=sorted(METHODS), default="skformer")
    ap.add_argument("--iid-methods", nargs="+", default=None)
    ap.add_argument("--trials", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--observations", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--simulations", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fnpe-trials", type=int, nargs="+", default=None,
                    help="trial counts for the fnpe methods (default: --trials)")
    ap.add_argument("--max-seconds", type=float, default=float("inf"),
                    help="start no new record after this many seconds of sampling")
    ap.add_argument("--model", default=None,
                    help="sample a saved skformer estimator (skformer.save) instead of fitting")
    ap.add_argument("--train-seconds", type=float, default=float("nan"),
                    help="with --model: its training time, for the records")
    ap.add_argument("--out", default=str(OUT), help="records file (JSON lines)")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if args.report:
        report(Path(args.out))
    else:
        run(args)


if __name__ == "__main__":
    main()
