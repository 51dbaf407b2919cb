"""What a warm start saves when 10 % new simulations arrive, and what it costs in accuracy.

Per task (seed 0, 10,000 simulations, skformer's defaults, one CPU thread):

- ``start``: a fit on the first 9,000 simulations (what the user had);
- ``fresh``: a fit from scratch on all 10,000 (what a user without warm starts pays);
- ``warm_all``: ``warm_start=True`` from ``start`` on all 10,000;
- ``warm_new``: ``warm_start=True`` from ``start`` on the 1,000 new rows only.

Each is timed and scored by C2ST (sbibm's MLP, 10,000 samples) on observations 1-3. The goal
(issue 26): a warm fit costs at most a fifth of ``fresh`` and its C2ST is within +0.01 of it.
The ``start`` model is saved under ``results/cache`` (pickle-free), so a run cut off resumes
without refitting it; every row is appended to ``results/warm_start.csv`` as it finishes.

    cd benchmarks
    python warm_start.py --tasks gaussian_linear two_moons   # the screening version
    python warm_start.py --tasks slcp bernoulli_glm          # the rest (about 2 hours each)
    python warm_start.py --report                            # the table (docs/arriving.md)

Tasks run two at a time (``--jobs``), in processes side by side, one thread each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

from rows import append as append_row
from rows import read as read_rows

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "warm_start.csv"
CACHE = HERE / "results" / "cache"
COLUMNS = ["task", "variant", "rows", "train_s", "epochs", "c2st_1", "c2st_2", "c2st_3",
           "c2st", "machine", "timestamp"]
VARIANTS = ("start", "fresh", "warm_all", "warm_new")
N, NEW, OBSERVATIONS, SAMPLES = 10_000, 1_000, (1, 2, 3), 10_000


def done() -> set[tuple[str, str]]:
    return {(r["task"], r["variant"]) for r in read_rows(OUT)}


def scores(est, task) -> list[float]:
    from metrics import c2st

    post = est.posterior()
    return [c2st(post.sample(SAMPLES, observed=task.observation(k), random_state=k),
                 task.reference(k, SAMPLES, seed=k)) for k in OBSERVATIONS]


def run_task(name: str) -> None:
    import torch
    from sklearn.exceptions import ConvergenceWarning

    import skformer

    from harness.methods import skformer_layout
    from harness.run import machine
    from harness.tasks import get_task

    torch.set_num_threads(1)
    task = get_task(name)
    theta, x = task.simulate(N, 0)
    X = task.joint(theta, x)
    finished = done()
    CACHE.mkdir(parents=True, exist_ok=True)
    start_file = CACHE / f"warm_start_{name}.skf"

    def fit(est, rows):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(rows)
        return time.perf_counter() - t0

    def record(variant, est, rows, seconds, epochs):
        c = scores(est, task)
        per_obs = {f"c2st_{k}": round(v, 4) for k, v in zip(OBSERVATIONS, c, strict=True)}
        append_row(OUT, COLUMNS, {
            "task": name, "variant": variant, "rows": rows, "train_s": round(seconds, 1),
            "epochs": epochs, **per_obs, "c2st": round(sum(c) / len(c), 4),
            "machine": machine(),
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        print(f"{name} {variant}: {seconds:.0f} s, {epochs} epochs, C2ST {sum(c) / len(c):.3f}",
              flush=True)

    layout = skformer_layout(task)
    if start_file.exists():
        start = skformer.load(start_file)
    else:
        start = skformer.SimformerEstimator(**layout, random_state=0)
        seconds = fit(start, X[: N - NEW])
        skformer.save(start, start_file)
        record("start", start, N - NEW, seconds, start.n_iter_)
    if (name, "fresh") not in finished:
        est = skformer.SimformerEstimator(**layout, random_state=0)
        record("fresh", est, N, fit(est, X), est.n_iter_)
    for variant, rows in (("warm_all", X), ("warm_new", X[N - NEW:])):
        if (name, variant) in finished:
            continue
        est = skformer.load(start_file).set_params(warm_start=True)
        before = est.n_iter_
        record(variant, est, len(rows), fit(est, rows), est.n_iter_ - before)


def report() -> str:
    import pandas as pd

    df = pd.read_csv(OUT)
    lines = ["| task | variant | rows | train s | x fresh | epochs | C2ST (obs 1-3) | vs fresh |",
             "|---|---|---|---|---|---|---|---|"]
    for task, g in df.groupby("task", sort=False):
        g = g.drop_duplicates("variant", keep="last").set_index("variant")
        fresh = g.loc["fresh"] if "fresh" in g.index else None
        for variant in VARIANTS:
            if variant not in g.index:
                continue
            r = g.loc[variant]
            ratio = "" if fresh is None else f"{r.train_s / fresh.train_s:.2f}"
            delta = "" if fresh is None else f"{r.c2st - fresh.c2st:+.3f}"
            lines.append(f"| {task} | {variant} | {r.rows} | {r.train_s:.0f} | {ratio} | "
                         f"{r.epochs} | {r.c2st:.3f} | {delta} |")
    lines.append(f"\nMachine: {df.machine.iloc[-1]}.")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["gaussian_linear", "two_moons"])
    ap.add_argument("--jobs", type=int, default=2, help="tasks run side by side (one per core)")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one task
    args = ap.parse_args(argv)
    if args.report:
        print(report())
        return
    if args.one:
        run_task(args.one)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    codes = []
    for i in range(0, len(args.tasks), args.jobs):  # at most one process per core at a time
        procs = []
        for name in args.tasks[i:i + args.jobs]:
            log = open(OUT.with_name(f"warm_start_{name}.log"), "a")  # noqa: SIM115
            procs.append(subprocess.Popen([sys.executable, __file__, "--one", name], cwd=HERE,
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
        codes += [p.wait() for p in procs]
    print(report())
    sys.exit(max(codes))


if __name__ == "__main__":
    main()
