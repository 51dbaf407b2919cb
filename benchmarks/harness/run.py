"""The harness CLI: train each method once per task / budget / seed, score every observation,
append one CSV row per task / target / budget / method / observation / seed.

    cd benchmarks
    python -m harness --quick                                   # a smoke test, < 1 minute
    python -m harness --tasks two_moons slcp --budgets 1000 10000 \\
        --methods skformer_score skformer_flow npe npse fmpe --observations 1-10 --seeds 0 \\
        --out results/harness.csv --c2st mlp
    python -m harness.report --csv results/harness.csv          # docs/benchmarks.md + plots

Rows are appended as they are produced; a rerun skips every row already in the CSV (add
``--retry-failed`` to redo failed and skipped ones). A method that fails to train or to answer
an observation is recorded with status "failed" and the error; a missing optional dependency
(sbi, sbibm) gives rows with status "skipped" and the pip command that installs it.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shlex
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from harness import BENCHMARKS, ROOT, MissingDependency
from harness.methods import METHODS, Settings, get_runner
from harness.tasks import TASKS, get_task

__all__ = ["COLUMNS", "main", "parse_args", "run", "machine"]

COLUMNS = [
    "task", "target", "budget", "method", "observation", "seed", "config", "status", "error",
    "c2st", "c2st_rf", "n_samples", "train_s", "epochs", "sample_s", "network_calls",
    "log_prob_s", "log_prob_n", "log_prob_mae", "peak_rss_mb", "peak_gpu_mb", "mask", "device",
    "machine", "command", "timestamp",
]
KEY = ("task", "target", "budget", "method", "observation", "seed", "config")

DEFAULT_OUT = BENCHMARKS / "results" / "harness.csv"
QUICK_OUT = BENCHMARKS / "results" / "harness_quick.csv"
QUICK = dict(tasks=["seed"], budgets=[500], observations=[1], samples=1000, dag_masks=2)


# --------------------------------------------------------------------------- helpers
def machine() -> str:
    """CPU model, threads, torch version and the GPU when one is used."""
    from seed_task import machine as cpu_machine

    where = cpu_machine()
    if torch.cuda.is_available():
        where += f", GPU {torch.cuda.get_device_name(0)}"
    return where


def _reset_peak_memory() -> None:
    """Reset the process's peak resident set size (Linux: write 5 to clear_refs), so the peak
    read afterwards belongs to one model; elsewhere ru_maxrss stays a whole-process peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_memory() -> tuple[float, float | None]:
    rss = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss = float(line.split()[1]) / 1024
    except OSError:
        pass
    if rss is None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return rss, gpu


def parse_observations(tokens: list[str]) -> list[int]:
    """["1-10"], ["1", "3"], ["1,2,5"] -> sorted unique ints."""
    out: set[int] = set()
    for tok in tokens:
        for part in str(tok).split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                lo, hi = part.split("-", 1)
                out.update(range(int(lo), int(hi) + 1))
            else:
                out.add(int(part))
    if not out or min(out) < 1:
        raise ValueError(f"observations are 1-based numbers or ranges like 1-10; got {tokens}.")
    return sorted(out)


def _budget(s: str) -> int:
    return int(float(s))  # accepts 1e5


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m harness",
        description="Benchmark skformer against sbi's NPE, NPSE and FMPE (C2ST, time, memory).",
    )
    ap.add_argument("--tasks", nargs="+", default=None,
                    help=f"tasks ({', '.join(TASKS)}); default all, quick: seed")
    ap.add_argument("--methods", nargs="+", default=None,
                    help=f"methods ({', '.join(METHODS)}); default all")
    ap.add_argument("--budgets", nargs="+", type=_budget, default=None,
                    help="simulation budgets; default 1000 10000 (1e5 accepted), quick: 500")
    ap.add_argument("--observations", nargs="+", default=None,
                    help="observation numbers or ranges; default 1-10, quick: 1 "
                         "(gaussian_dag and gaussian_tree use 1..--dag-masks)")
    ap.add_argument("--dag-masks", type=int, default=None,
                    help="gaussian_dag, gaussian_tree: number of random condition masks (their "
                         "observations); "
                         "default 20, quick: 2")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--samples", type=int, default=None,
                    help="samples per observation (against as many reference samples); "
                         "default 10000, quick: 1000")
    ap.add_argument("--c2st", choices=["mlp", "rf", "both"], default="mlp",
                    help="C2ST classifier: sbibm's MLP (default), random forest, or both")
    ap.add_argument("--log-prob", choices=["first", "all", "none"], default="first",
                    help="time log_prob of 1,000 samples on the first observation of each "
                         "model (default), on every observation, or never")
    ap.add_argument("--log-prob-n", type=int, default=1000)
    ap.add_argument("--max-epochs", type=int, default=None,
                    help="cap every method's epochs (skformer max_epochs, sbi max_num_epochs)")
    ap.add_argument("--skformer", nargs="+", default=[], metavar="KEY=VALUE",
                    help="extra SimformerEstimator parameters for the skformer methods "
                         "(values read as JSON when they parse, e.g. tokens=variable "
                         "dynamics_options='{\"p_mean\": -1}'); recorded in the config column")
    ap.add_argument("--network-option", nargs="+", default=[], metavar="NAME=VALUE",
                    help="set a design constant of skformer.network for this run (e.g. "
                         "GROUP_EMBEDDING=mlp), of skformer.masks (masks.WITHIN_FRACTION=0) or "
                         "of skformer.model (model.BOX_STIFFNESS=8); recorded in the config "
                         "column")
    ap.add_argument("--variables", choices=["task", "theta-x", "structure"], default="task",
                    help="skformer's variables: each task's own, theta and x as two "
                         "variables on the posterior-only tasks, or those of the task's "
                         "declared structure (slcp: theta and its four draws); recorded in the "
                         "config column")
    ap.add_argument("--missing", type=float, default=0.0,
                    help="set this share of the training entries missing (NaN) at random; "
                         "skformer methods only (recorded in the config column)")
    ap.add_argument("--dag", choices=["faithful", "moral"], default=None,
                    help="give skformer the task's DAG as edge_masks (gaussian_dag, "
                         "gaussian_tree, slcp, seed), on its structure's variables")
    ap.add_argument("--exchangeable", action="store_true",
                    help="declare the task's exchangeable variables to skformer (slcp's four "
                         "draws), on its structure's variables")
    ap.add_argument("--no-split", action="store_true",
                    help="declare no posterior split to skformer (its default masks then serve "
                         "every conditional alike)")
    ap.add_argument("--also-steps", type=int, nargs="+", default=[], metavar="N",
                    help="skformer methods: also sample each fitted model with N solver steps "
                         "(rows with config +sampling_steps=N, same training)")
    ap.add_argument("--also-support", nargs="+", default=[], metavar="S",
                    choices=["truncate", "fold"],
                    help="skformer methods: also sample each fitted model with its bounds kept "
                         "by S (rows with config +support=S, same training; a model that "
                         "learnt a box keeps it)")
    ap.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                    help="skformer methods save their training state in DIR every minute, and "
                         "a fit cut off (a killed run, a session's end) resumes from it when "
                         "the same command runs again; not part of the config column")
    ap.add_argument("--device", default=None,
                    help="torch device for every method; default cuda when present, else cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default torch's; quick: 1, which is faster "
                         "for tiny models on a busy machine)")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"CSV to append to; default {DEFAULT_OUT.relative_to(ROOT)} "
                         f"(quick: {QUICK_OUT.relative_to(ROOT)})")
    ap.add_argument("--quick", action="store_true",
                    help="tiny smoke run: seed task, budget 500, 1 observation, 1,000 samples, "
                         "tiny models (3 epochs)")
    ap.add_argument("--retry-failed", action="store_true",
                    help="rerun rows recorded as failed or skipped")
    ap.add_argument("--report", action="store_true",
                    help="write docs/benchmarks.md and its plots from --out afterwards")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs",
                    help="where --report writes benchmarks.md and the plots")
    args = ap.parse_args(argv)
    q = args.quick
    args.tasks = args.tasks or (QUICK["tasks"] if q else list(TASKS))
    args.methods = args.methods or list(METHODS)
    args.budgets = args.budgets or (QUICK["budgets"] if q else [1000, 10_000])
    args.observations = (parse_observations(args.observations) if args.observations
                         else (QUICK["observations"] if q else list(range(1, 11))))
    args.dag_masks = args.dag_masks or (QUICK["dag_masks"] if q else 20)
    args.samples = args.samples or (QUICK["samples"] if q else 10_000)
    args.out = args.out or (QUICK_OUT if q else DEFAULT_OUT)
    if q and args.threads is None:
        args.threads = 1
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.command = shlex.join(["python", "-m", "harness", *(argv if argv is not None
                                                              else sys.argv[1:])])
    # validate names up front: a typo should not cost a half-finished run
    for t in args.tasks:
        task = get_task(t)
        for k in _observations(t, args):
            task.check_observation(k)
    for m in args.methods:
        get_runner(m)
    if any(b < 2 for b in args.budgets):
        raise ValueError(f"budgets must be at least 2 simulations; got {args.budgets}.")
    return args


def _observations(task_name: str, args, target: str = "posterior") -> list[int]:
    """The observations scored for a target: random masks 1..--dag-masks for the conditionals
    (and for the posterior of tasks whose observations are unlimited draws), else
    --observations."""
    task = get_task(task_name)
    if "conditionals" in task.targets and (target == "conditionals"
                                           or task.n_observations is None):
        return list(range(1, args.dag_masks + 1))
    return args.observations


def _skformer_params(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--skformer takes KEY=VALUE pairs; got {pair!r}.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _config(args) -> str:
    config = "quick" if args.quick else "default"
    if args.max_epochs is not None:
        config += f"+max_epochs={args.max_epochs}"
    if getattr(args, "variables", "task") != "task":
        config += f"+variables={args.variables}"
    if getattr(args, "missing", 0.0):
        config += f"+missing={args.missing:g}"
    if getattr(args, "dag", None):
        config += f"+dag={args.dag}"
    if getattr(args, "exchangeable", False):
        config += "+exchangeable"
    if getattr(args, "no_split", False):
        config += "+split=none"
    for pair in getattr(args, "skformer", []):
        config += f"+{pair}"
    for pair in getattr(args, "network_option", []):
        config += f"+{pair}" if pair.startswith(("masks.", "model.")) else f"+network.{pair}"
    if args.samples != (QUICK["samples"] if args.quick else 10_000):
        config += f"+samples={args.samples}"
    return config


# --------------------------------------------------------------------------- the CSV
class ResultsCSV:
    """Append-only results file: header once, one flushed row at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, newline="") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames != COLUMNS:
                    raise ValueError(
                        f"{self.path} has columns {reader.fieldnames}, not the harness's "
                        f"{COLUMNS}; write to a new --out."
                    )
                self.rows = list(reader)

    def done(self, retry_failed: bool) -> set[tuple]:
        return {tuple(str(r[k]) for k in KEY) for r in self.rows
                if not retry_failed or r["status"] == "ok"}

    def append(self, row: dict) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="raise")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
        self.rows.append(row)


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else f"{float(v):.6g}"
    return v


def _error(err: BaseException) -> str:
    msg = f"{type(err).__name__}: {err}".replace("\n", " ").strip()
    return msg[:500]


# --------------------------------------------------------------------------- scoring
def _c2st_scores(samples, reference, which: str) -> dict:
    from metrics import c2st, c2st_rf

    samples = np.asarray(samples, dtype=np.float64)
    if not np.all(np.isfinite(samples)):
        raise FloatingPointError(f"{int((~np.isfinite(samples)).any(1).sum())} samples are "
                                 "not finite")
    out = {}
    if which in ("mlp", "both"):
        out["c2st"] = c2st(samples, reference)
    if which in ("rf", "both"):
        out["c2st_rf"] = c2st_rf(samples, reference)
    return out


def _score_row(runner, trained, task, target, k, args, seed, want_log_prob) -> dict:
    n = args.samples
    row: dict = {}
    sample_seed = 1_000 * seed + k
    if target == "posterior":
        x_o = task.observation(k)
        reference = task.reference(k, n, seed=k)
        t0 = time.perf_counter()
        samples, calls = runner.sample(trained, task, x_o, n, sample_seed)
        row["sample_s"] = time.perf_counter() - t0
        lp_fn = lambda th: runner.log_prob(trained, task, th, x_o)  # noqa: E731
        exact_fn = lambda th: task.exact_log_prob(k, th)  # noqa: E731
    else:  # "conditionals": a random condition mask per observation
        mask, values = task.condition_case(k)
        row["mask"] = "".join("1" if m else "0" for m in mask)
        reference = task.sample_conditional(mask, values, n, seed=k)
        t0 = time.perf_counter()
        samples, calls = runner.sample_conditional(trained, task, mask, values, n, sample_seed)
        row["sample_s"] = time.perf_counter() - t0
        lp_fn = lambda th: runner.conditional_log_prob(trained, task, mask, th, values)  # noqa
        exact_fn = lambda th: task.conditional_log_prob(mask, values, th)  # noqa: E731
    row["network_calls"] = calls
    row.update(_c2st_scores(samples, reference, args.c2st))
    if want_log_prob:
        pts = np.asarray(samples[: args.log_prob_n], dtype=np.float64)
        t0 = time.perf_counter()
        lp = lp_fn(pts)
        if lp is not None:
            row["log_prob_s"] = time.perf_counter() - t0
            row["log_prob_n"] = len(pts)
            exact = exact_fn(pts)
            if exact is not None:
                ok = np.isfinite(lp) & np.isfinite(exact)
                if ok.any():
                    row["log_prob_mae"] = float(np.abs(lp[ok] - exact[ok]).mean())
    return row


def _other_settings(trained, runner, task, pending, args, seed, base, config, record,
                    done) -> None:
    """Score the same fitted skformer model with other solver step counts (``--also-steps``)
    and other ways of keeping its bounds (``--also-support``): rows of config
    ``<config>+sampling_steps=N`` / ``<config>+support=S``, the training columns copied."""
    est = trained.model
    variants = ([("sampling_steps", n) for n in args.also_steps]
                + [("support", s) for s in args.also_support])
    defaults = est.get_params()
    try:
        for name, value in variants:
            cfg = f"{config}+{name}={value}"
            est.set_params(**{"sampling_steps": defaults["sampling_steps"],  # one change
                              "support": defaults["support"], name: value})  # at a time
            base["config"] = cfg
            for t, k in pending:
                if tuple(str(v) for v in (base["task"], t, base["budget"], base["method"], k,
                                          seed, cfg)) in done:
                    continue
                try:
                    fields = _score_row(runner, trained, task, t, k, args, seed, False)
                    fields["status"] = "ok"
                except Exception as err:
                    traceback.print_exc()
                    fields = dict(status="failed", error=_error(err))
                rss, gpu = _peak_memory()
                record(t, k, train_s=trained.train_s, epochs=trained.epochs, peak_rss_mb=rss,
                       peak_gpu_mb=gpu, **fields)
    finally:
        est.set_params(sampling_steps=defaults["sampling_steps"], support=defaults["support"])
        base["config"] = config


# --------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> Path:
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # in-process callers (the tests) get theirs back


def _network_options(pairs: list[str]) -> None:
    """Set design constants of skformer.network (``NAME=VALUE``), skformer.masks
    (``masks.NAME=VALUE``) or skformer.model (``model.NAME=VALUE``); the name must exist,
    values are read as JSON where they parse."""
    import skformer.masks as masks
    import skformer.model as model
    import skformer.network as network

    for pair in pairs:
        name, sep, value = pair.partition("=")
        module = network
        if name.startswith("masks."):
            module, name = masks, name.removeprefix("masks.")
        elif name.startswith("model."):
            module, name = model, name.removeprefix("model.")
        if not sep or not name.isupper() or not hasattr(module, name):
            raise SystemExit(f"--network-option takes NAME=VALUE with a constant of "
                             f"skformer.network (or masks.NAME of skformer.masks); got {pair!r}.")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        setattr(module, name, value)


def _run(args: argparse.Namespace) -> Path:
    _network_options(getattr(args, "network_option", []))
    results = ResultsCSV(args.out)
    done = results.done(args.retry_failed)
    config = _config(args)
    settings = Settings(device=args.device, quick=args.quick, max_epochs=args.max_epochs,
                        skformer=_skformer_params(args.skformer), variables=args.variables,
                        missing=args.missing, dag=args.dag, split=not args.no_split,
                        exchangeable=args.exchangeable, checkpoint_dir=args.checkpoint_dir)
    where = machine()
    stamp = lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")  # noqa: E731

    for task_name in args.tasks:
        task = get_task(task_name)
        for budget in args.budgets:
            for seed in args.seeds:
                for method in args.methods:
                    runner = get_runner(method)
                    base = dict(task=task_name, budget=budget, method=method, seed=seed,
                                config=config, device=args.device, machine=where,
                                command=args.command, n_samples=args.samples)
                    jobs = [(t, k) for t in task.targets
                            for k in _observations(task_name, args, t)
                            if t == "posterior" or runner.conditionals]
                    pending = [(t, k) for t, k in jobs
                               if tuple(str(v) for v in (task_name, t, budget, method, k, seed,
                                                         config)) not in done]
                    if not pending:
                        print(f"[harness] {task_name} {budget} {method} seed {seed}: done, "
                              "skipped", flush=True)
                        continue

                    def record(target, k, **fields):
                        row = {**base, "target": target, "observation": k,
                               "timestamp": stamp(), **fields}
                        results.append(row)
                        c = row.get("c2st", row.get("c2st_rf"))
                        print(f"[harness] {task_name} {target} {budget} {method} obs {k} "
                              f"seed {seed}: {row['status']}"
                              + (f" c2st {c:.3f}" if isinstance(c, float) else "")
                              + (f" ({row['error']})" if row.get("error") else ""), flush=True)

                    try:
                        task.check()
                        runner.check()
                    except MissingDependency as err:
                        for t, k in pending:
                            record(t, k, status="skipped", error=str(err))
                        continue

                    _reset_peak_memory()
                    try:
                        theta, x = task.simulate(budget, seed)
                        trained = runner.fit(task, theta, x, settings, seed)
                    except Exception as err:  # a failing baseline is a result, not a crash
                        traceback.print_exc()
                        for t, k in pending:
                            record(t, k, status="failed", error=f"training: {_error(err)}")
                        continue
                    timed = set()
                    for t, k in pending:
                        want_lp = args.log_prob == "all" or (args.log_prob == "first"
                                                             and t not in timed)
                        try:
                            fields = _score_row(runner, trained, task, t, k, args, seed,
                                                want_lp)
                            fields["status"] = "ok"
                        except Exception as err:
                            traceback.print_exc()
                            fields = dict(status="failed", error=_error(err))
                        if want_lp:
                            timed.add(t)
                        rss, gpu = _peak_memory()
                        record(t, k, train_s=trained.train_s, epochs=trained.epochs,
                               peak_rss_mb=rss, peak_gpu_mb=gpu, **fields)
                    if (args.also_steps or args.also_support) and method.startswith("skformer"):
                        _other_settings(trained, runner, task, pending, args, seed, base,
                                        config, record, done)
                    del trained
    if args.report:
        from harness.report import write_report

        write_report(args.out, args.docs)
    return Path(args.out)


def main(argv=None) -> Path:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
