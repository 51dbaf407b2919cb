"""What an epoch costs: two SimformerEstimator settings fitted side by side on a task's data.

Wall times on these shared machines differ from one run to another (the same NPE fits took
1.5-2.5x longer on 2026-12-03 than on 2026-12-05, docs/speed.md), and two processes side by
side slow each other, so a time measured in one run and compared with one measured in another
misleads. This script times two settings (a baseline and a candidate, each ``key=value``
pairs as ``screen.py`` takes them; name every parameter that differs, since "the defaults"
change) in two single-threaded processes started together, one per core, each fitting the
same 10,000 simulations of each task for ``--epochs`` epochs (no early stopping): whatever the
machine does to one it does to the other, and the ratio of their seconds per epoch holds.
Appends one row per task and setting to ``results/epoch_cost.csv`` (a cut-off run resumes)
and prints the table of docs/speed.md.

    cd benchmarks
    python epoch_cost.py --baseline d_model=64 n_heads=4 --candidate d_model=32 n_heads=2
    python epoch_cost.py --baseline variables=theta-x tokens=column \
        --candidate variables=theta-x tokens=auto network.GROUP_EMBEDDING=mlp

``variables=theta-x`` fits theta and x as two variables (the harness's ``--variables``);
``network.NAME=VALUE`` sets a design constant of ``skformer.network`` in that setting's process.
``--sample N`` also times N posterior draws at the task's observation 1 after the fit (the
default solver and steps; ``sample_s``):

    python epoch_cost.py --baseline precision=float32 --candidate precision=bfloat16 \
        --epochs 3 --sample 10000 --out results/epoch_cost_bf16.csv
    python epoch_cost.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import rows

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "epoch_cost.csv"
TASKS = ["seed", "two_moons", "gaussian_mixture", "gaussian_dag", "slcp", "gaussian_linear",
         "bernoulli_glm"]
FIELDS = ["task", "setting", "epochs", "seconds", "s_per_epoch", "tokens", "machine", "partner",
          "timestamp", "sample_s"]


def parse_pairs(pairs: list[str]) -> dict:
    """``key=value`` pairs -> estimator parameters, as the harness's ``--skformer`` reads them
    (values as JSON where they parse)."""
    from harness.run import _skformer_params

    return _skformer_params(pairs)


def label(params: dict) -> str:
    return "default" if not params else "+".join(f"{k}={v}" for k, v in params.items())


def time_fit(task_name: str, params: dict, epochs: int, n_samples: int = 0) -> dict:
    """Fit ``epochs`` epochs of the task's 10,000 simulations (seed 0) with ``params``, one
    thread; the seconds of ``fit``, the number of tokens, and (``n_samples``) the seconds of
    that many posterior draws at observation 1."""
    import torch

    sys.path.insert(0, str(HERE))
    import skformer.network as network
    from skformer import SimformerEstimator

    from harness.methods import skformer_layout
    from harness.tasks import get_task

    torch.set_num_threads(1)
    params = dict(params)
    for key in [k for k in params if k.startswith("network.")]:
        setattr(network, key.removeprefix("network."), params.pop(key))
    task = get_task(task_name)
    theta, x = task.simulate(10_000, 0)
    X = task.joint(theta, x)
    layout = skformer_layout(task, params.pop("variables", "task"))
    est = SimformerEstimator(**layout, random_state=0, max_epochs=epochs,
                             early_stopping=False, **params)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "max_epochs reached": intended
        est.fit(X)
    seconds = time.perf_counter() - start
    out = {"seconds": seconds, "epochs": est.n_iter_,
           "tokens": est.model_.network.n_token_slots, "sample_s": ""}
    if n_samples:
        x_o = task.observation(1)
        start = time.perf_counter()
        est.posterior().sample(n_samples, x_o, random_state=0)
        out["sample_s"] = round(time.perf_counter() - start, 2)
    return out


def done(out: Path) -> set:
    """(task, setting, partner) of the rows written so far."""
    return {(r["task"], r["setting"], r["partner"]) for r in rows.read(out)}


def append(out: Path, row: dict) -> None:
    out.parent.mkdir(exist_ok=True)
    if out.exists():
        with out.open() as f:  # the header only
            if f.readline().rstrip("\n").split(",") != FIELDS:
                raise SystemExit(f"{out} was written with other columns; name a new --out.")
    rows.append(out, FIELDS, row)


def report(out: Path = OUT) -> str:
    """Markdown: per task and pair of settings, seconds per epoch and their ratio."""
    import pandas as pd

    df = pd.read_csv(out)
    sampled = "sample_s" in df and df["sample_s"].notna().any()
    lines = ["| task | tokens | setting | s / epoch | partner | partner s / epoch "
             "| setting / partner |" + (" sample s | partner sample s |" if sampled else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|" if sampled else "")]
    for (task, partner), g in df.groupby(["task", "partner"], sort=False):
        mine = g.iloc[-1]
        if mine["setting"] < partner:  # each pair once
            continue
        other = df[(df["task"] == task) & (df["setting"] == partner)
                   & (df["partner"] == mine["setting"])]
        if other.empty:
            continue
        theirs = other.iloc[-1]
        lines.append(f"| {task} | {mine['tokens']} | {mine['setting']} | "
                     f"{mine['s_per_epoch']:.2f} | {partner} | {theirs['s_per_epoch']:.2f} | "
                     f"{mine['s_per_epoch'] / theirs['s_per_epoch']:.2f} |"
                     + (f" {mine['sample_s']} | {theirs['sample_s']} |" if sampled else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--candidate", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--sample", type=int, default=0, metavar="N",
                    help="also time N posterior draws at observation 1 after each fit")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--one", nargs=4, metavar=("TASK", "PARAMS_JSON", "EPOCHS", "SAMPLES"),
                    help=argparse.SUPPRESS)  # a child process: time one fit, print JSON
    args = ap.parse_args(argv)
    if args.one:
        task, params, epochs, n_samples = args.one
        print(json.dumps(time_fit(task, json.loads(params), int(epochs), int(n_samples))))
        return 0
    if args.report:
        print(report(args.out))
        return 0
    baseline, candidate = parse_pairs(args.baseline), parse_pairs(args.candidate)
    if label(baseline) == label(candidate):
        ap.error("the baseline and the candidate are the same setting.")
    settings = [(baseline, label(candidate)), (candidate, label(baseline))]
    from seed_task import machine as cpu

    machine = f"{cpu().split(',')[0]}, 1 thread per process"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    finished = done(args.out)
    for task in args.tasks:
        if all((task, label(p), partner) in finished for p, partner in settings):
            print(f"{task}: done, skipped")
            continue
        procs = [subprocess.Popen([sys.executable, __file__, "--one", task, json.dumps(p),
                                   str(args.epochs), str(args.sample)], env=env, cwd=HERE,
                                  stdout=subprocess.PIPE, text=True) for p, _ in settings]
        outputs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            print(f"{task}: a fit failed (its error is above)", file=sys.stderr)
            return 1
        results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for (params, partner), r in zip(settings, results, strict=True):
            append(args.out, {"task": task, "setting": label(params), "epochs": r["epochs"],
                              "seconds": round(r["seconds"], 2),
                              "s_per_epoch": round(r["seconds"] / r["epochs"], 4),
                              "tokens": r["tokens"], "machine": machine, "partner": partner,
                              "timestamp": stamp, "sample_s": r["sample_s"]})
        print(f"{task}: " + ", ".join(f"{label(p)} {r['seconds'] / r['epochs']:.2f} s/epoch"
                                      for (p, _), r in zip(settings, results, strict=True)),
              flush=True)
    print(report(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
