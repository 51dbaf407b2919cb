"""Screen a candidate setting on every task at 1e4 simulations against the same-day NPE.

One candidate is a set of SimformerEstimator parameters (``key=value``, as the harness's
``--skformer`` takes them). Each is fitted once per task (seed 0) on 10,000 simulations and
scored by C2ST (sbibm's MLP, 10,000 samples) on observations 1-3 (gaussian_dag: its posterior
and 3 random conditionals), the settings of the reference table in docs/benchmarks.md, and
timed; sbi's NPE is fitted on the same simulations in the same way. Two harness processes run
side by side, one thread each (one per core of a 2-core machine), the tasks split so that they
finish about together. Every row is appended as it finishes (``results/screen.csv``); a run cut
off resumes where it stopped.

    cd benchmarks
    python screen.py --npe                                      # today's NPE (once a day)
    python screen.py d_model=32 max_epochs=100                  # one candidate
    python screen.py                                            # the current defaults
    python screen.py --report                                   # the tables, docs/speed.md's

The report lists, per candidate and task, C2ST, training time, its multiple of the NPE fit of
the same day (the NPE row nearest in time when that day has none) and the difference to the
reference C2ST (the skformer score rows of docs/benchmarks.md's 1e4 table, observations 1-3).
A candidate screens well when every task is within 2.5x NPE and +0.01 of the reference.

Cost on the 2-core Xeon: NPE about 15 minutes; a candidate within the 2.5x goal about
25 minutes (the C2ST classifiers take about 20 minutes of CPU of that).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "screen.csv"
REFERENCE = [HERE / "results" / name for name in
             ("harness_13a.csv", "harness_13b.csv", "harness_prev.csv")]
"""The runs behind docs/benchmarks.md's 1e4 skformer rows (the reference C2ST)."""

#: two halves of about equal cost (fits of the old defaults: 3.1 and 2.6 thousand seconds)
HALVES = (["bernoulli_glm", "gaussian_dag", "seed", "gaussian_mixture"],
          ["slcp", "gaussian_linear", "two_moons"])
TASKS = [t for half in HALVES for t in half]
OBSERVATIONS = "1-3"
DAG_MASKS = 3
GOAL_MULTIPLE, GOAL_C2ST = 2.5, 0.01


def harness_command(tasks: list[str], method: str, pairs: list[str], out: Path,
                    variables: str = "task", network: list[str] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "harness", "--tasks", *tasks, "--methods", method,
           "--budgets", "10000", "--observations", OBSERVATIONS, "--dag-masks",
           str(DAG_MASKS), "--threads", "1", "--log-prob", "none", "--out", str(out),
           "--variables", variables]
    if pairs:
        cmd += ["--skformer", *pairs]
    if network:
        cmd += ["--network-option", *network]
    return cmd


def run(method: str, pairs: list[str], out: Path = OUT, tasks: list[list[str]] = HALVES,
        variables: str = "task", network: list[str] = ()) -> int:
    """The harness on each half of the tasks, side by side, one thread each; the exit code
    of the worse one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    logs = []
    procs = []
    for i, half in enumerate(tasks):
        if not half:
            continue
        log = open(out.with_name(f"{out.stem}_{i}.log"), "a")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(subprocess.Popen(harness_command(half, method, pairs, out, variables,
                                                      network),
                                      cwd=HERE,
                                      env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [p.wait() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for log in logs:
            log.close()
    return max(codes, default=0)


# --------------------------------------------------------------------------- the report
def _load(paths):
    import pandas as pd

    frames = [pd.read_csv(p, dtype={"mask": str, "error": str}) for p in paths if p.exists()]
    df = pd.concat(frames, ignore_index=True)
    df = df[(df["status"] == "ok") & (df["budget"] == 10_000)].copy()
    df["c2st"] = pd.to_numeric(df["c2st"], errors="coerce")
    df["train_s"] = pd.to_numeric(df["train_s"], errors="coerce")
    df["when"] = pd.to_datetime(df["timestamp"], utc=True)
    obs = {"gaussian_dag": set(range(1, DAG_MASKS + 1))}
    keep = df.apply(lambda r: int(r["observation"]) in obs.get(r["task"], {1, 2, 3}), axis=1)
    return df[keep]


def _reference(df_ref) -> dict:
    """task -> (reference C2ST, its epochs) (skformer score, the table's run, observations
    1-3)."""
    ref = df_ref[(df_ref["method"] == "skformer_score")
                 & df_ref["config"].isin(["default", "previous run"])]
    out = {}
    for task, rows in ref.groupby("task"):
        rows = rows[rows["config"] == ("default" if (rows["config"] == "default").any()
                                       else "previous run")]
        out[task] = float(rows["c2st"].mean()), rows["epochs"].iloc[0]
    return out


def summary(screen_csv: Path = OUT, reference=REFERENCE) -> list[dict]:
    """One record per candidate (method + config) and task: mean C2ST over the screened
    observations, training seconds, the same-day NPE's, their ratio, and the reference C2ST
    and epochs."""
    df = _load([screen_csv])
    ref = _reference(_load(reference))
    nothing = (float("nan"), "-")
    npe = df[df["method"] == "npe"]
    rows = []
    # a task's conditionals are their own line (gaussian_dag's reference mixes both targets)
    df = df.copy()
    split = (df["target"] != "posterior") & (df["task"] != "gaussian_dag")
    df.loc[split, "task"] = df.loc[split, "task"] + " (" + df.loc[split, "target"] + ")"
    for (method, config, task), g in df[df["method"] != "npe"].groupby(
            ["method", "config", "task"], sort=False):
        when = g["when"].min()
        base = npe[npe["task"] == task]
        npe_s = npe_c2st = float("nan")
        if len(base):
            fits = base.groupby("when")["train_s"].first()  # one fit per run
            nearest = min(fits.index, key=lambda t: abs((t - when).total_seconds()))
            npe_s = float(fits[nearest])
            npe_c2st = float(base[base["when"].dt.date == nearest.date()]["c2st"].mean())
        c2st = float(g["c2st"].mean())
        rows.append(dict(method=method, config=config, task=task, c2st=c2st,
                         n=int(g["c2st"].notna().sum()), train_s=float(g["train_s"].iloc[0]),
                         epochs=g["epochs"].iloc[0], npe_s=npe_s, npe_c2st=npe_c2st,
                         multiple=float(g["train_s"].iloc[0]) / npe_s,
                         reference=ref.get(task, nothing)[0],
                         reference_epochs=ref.get(task, nothing)[1],
                         delta=c2st - ref.get(task, nothing)[0], date=str(when.date())))
    return rows


def report(screen_csv: Path = OUT, reference=REFERENCE) -> str:
    """Markdown: one table per candidate, with how many tasks meet each goal."""
    import math

    lines = []
    rows = summary(screen_csv, reference)
    for (method, config) in dict.fromkeys((r["method"], r["config"]) for r in rows):
        mine = [r for r in rows if (r["method"], r["config"]) == (method, config)]
        order = {t: i for i, t in enumerate(TASKS)}
        mine.sort(key=lambda r: order.get(r["task"], 99))
        fast = sum(round(r["multiple"], 1) <= GOAL_MULTIPLE for r in mine)
        good = sum(round(r["delta"], 3) <= GOAL_C2ST for r in mine if not math.isnan(r["delta"]))
        screened = sum(r["task"] in TASKS for r in mine)  # conditionals are lines, not tasks
        lines += [f"### {method}, {config} ({mine[0]['date']})", "",
                  f"{screened} of {len(TASKS)} tasks; within {GOAL_MULTIPLE}x NPE: {fast}; "
                  f"C2ST within +{GOAL_C2ST} of the reference: {good}", "",
                  "| task | C2ST | reference | Δ | NPE C2ST | train s | epochs | reference epochs "
                  "| NPE s | × NPE |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        def shown(value: float, spec: str, unit: str = "") -> str:  # "-": no NPE that day
            return "-" if math.isnan(value) else f"{value:{spec}}{unit}"

        for r in mine:
            lines.append(f"| {r['task']} | {r['c2st']:.3f} | {shown(r['reference'], '.3f')} | "
                         f"{shown(r['delta'], '+.3f')} | {shown(r['npe_c2st'], '.3f')} | "
                         f"{r['train_s']:.0f} | {r['epochs']} | {r['reference_epochs']} | "
                         f"{shown(r['npe_s'], '.0f')} | "
                         f"{shown(r['multiple'], '.1f', 'x')} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", nargs="*", metavar="KEY=VALUE",
                    help="SimformerEstimator parameters of the candidate (none: its defaults)")
    ap.add_argument("--method", default="skformer_score",
                    help="harness method of the candidate (skformer_score, skformer_flow)")
    ap.add_argument("--npe", action="store_true", help="fit and score sbi's NPE instead")
    ap.add_argument("--tasks", nargs="+", default=None,
                    help="only these tasks (split over the two processes as listed)")
    ap.add_argument("--report", action="store_true", help="print the tables and stop")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--network-option", nargs="+", default=[], metavar="NAME=VALUE",
                    help="design constants of skformer.network (the harness's option)")
    ap.add_argument("--variables", choices=["task", "theta-x"], default="task",
                    help="skformer's variables (the harness's --variables): theta-x fits theta "
                         "and x as two variables, so that tokens may group their columns")
    args = ap.parse_args(argv)
    misplaced = [t for t in args.tasks or [] if "=" in t]
    if misplaced:  # --tasks takes every word after it: the pairs would silently be tasks
        ap.error(f"--tasks got {misplaced}: put the KEY=VALUE pairs before --tasks.")
    if args.report:
        print(report(args.out))
        return 0
    halves = HALVES
    if args.tasks:
        halves = ([t for t in HALVES[0] if t in args.tasks],
                  [t for t in HALVES[1] if t in args.tasks])
    code = run("npe" if args.npe else args.method, [] if args.npe else args.pairs, args.out,
               halves, args.variables, args.network_option)
    print(report(args.out))
    return code


if __name__ == "__main__":
    sys.exit(main())
