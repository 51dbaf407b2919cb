"""Sequential rounds against one round and against sbi's TSNPE, at the same budget.

Per task and observation (sbibm's reference posteriors, C2ST with sbibm's MLP on 10,000
samples), 10,000 simulations in all:

- ``skformer_rounds``: :func:`skformer.sequential.rounds`, 5 rounds of 2,000, its defaults
  and the estimator's (rounds 1-3 warm-start, round 4 fits afresh on all 10,000:
  ``refit="last"``); ``skformer_rounds_never`` warm-starts rounds 1-4 (``refit="never"``),
  ``skformer_rounds_lr_fifth`` does so at a fifth of the first fit's learning rate;
- ``skformer_single``: one fit on 10,000 prior simulations (one fit serves every observation;
  its time is counted once, on observation 1's row);
- ``skformer_rounds_bounded`` and ``skformer_single_bounded``: the same with the estimator's
  ``bounds`` set to the prior's box (``skformer.simulation.prior_box`` of the task's torch
  prior), so that every posterior is truncated to the prior's support as sbi's NPE / TSNPE
  posteriors are (``support="truncate"``; the single-round model is the same fit, sampled
  with bounds); the plain methods pass the prior as a callable, which states no support;
- ``skformer_rounds_box``: the rounds with the prior's box learnt by the model
  (``support="transform"``: theta in the logit of the box);
- ``skformer_single_1e5`` and ``skformer_single_1e5_bounded``: one fit on 100,000 prior
  simulations (ten times the budget: the issue's bar for two_moons), plain and bounded;
- ``skformer_single_bounded_steps50`` and ``skformer_single_1e5_bounded_steps50``: those
  models sampled with 50 solver steps instead of the default 20;
- ``skformer_rounds_bounded_e800`` and ``skformer_single_e800_bounded``: the bounded rounds
  and one bounded round with the estimator's ``max_epochs=800`` instead of 400 (early
  stopping still ends a fit whose validation loss stops improving), since sbi's NPE trains
  until its validation loss stops improving while skformer's default stops at 400 epochs;
  ``skformer_rounds_bounded_e800_steps50`` samples the rounds' kept models with 50 steps;
- ``tsnpe``: sbi's truncated sequential NPE (NSF, ``RestrictedPrior`` with
  ``get_density_thresholder(quantile=1e-4)``, sbi's tutorial recipe), 5 rounds of 2,000.

Every row is appended to ``results/sequential.csv`` as it finishes; a run cut off resumes where
it stopped. The model each method returns is kept in ``results/cache`` (one file per task,
method and observation for the rounds), so that it can be sampled again. Tasks run side by
side, one process and one thread each.

    cd benchmarks
    python sequential.py --observations 1          # screening: two_moons and slcp, obs 1
    python sequential.py --observations 1-5        # the full table (several sessions)
    python sequential.py --report
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
OUT = HERE / "results" / "sequential.csv"
CACHE = HERE / "results" / "cache"
COLUMNS = ["task", "method", "observation", "c2st", "train_s", "simulations", "rounds",
           "acceptance", "machine", "timestamp"]
METHODS = ("skformer_rounds", "skformer_rounds_never", "skformer_rounds_lr_fifth",
           "skformer_single", "skformer_rounds_bounded", "skformer_single_bounded",
           "skformer_single_1e5", "skformer_single_1e5_bounded", "skformer_rounds_bounded_e800",
           "skformer_single_e800_bounded", "skformer_single_bounded_steps50",
           "skformer_rounds_bounded_e800_steps50", "skformer_single_1e5_bounded_steps50",
           "skformer_rounds_box", "tsnpe")
BUDGET, ROUNDS, SAMPLES = 10_000, 5, 10_000


def _kept_rounds(method: str, task_name: str, k: int) -> Path:
    """Where ``skformer_rounds`` keeps the model that ``method`` returned."""
    return CACHE / f"sequential_{method}_{task_name}_{k}.skf"


def done() -> set[tuple[str, str, int]]:
    return {(r["task"], r["method"], int(r["observation"])) for r in read_rows(OUT)}


def skformer_rounds(task, k, bounded=False, method="skformer_rounds", estimator=None,
                    **options):
    import skformer
    from skformer import SimformerEstimator
    from skformer.sequential import rounds

    from harness.methods import prior_bounds

    t0 = time.perf_counter()
    est = SimformerEstimator(random_state=k, bounds=prior_bounds(task) if bounded else None,
                             **(estimator or {}))
    result = rounds(est, task.simulator, task.sample_prior,
                    task.observation(k), n_rounds=ROUNDS,
                    simulations_per_round=BUDGET // ROUNDS, random_state=k, verbose=0,
                    **options)
    seconds = time.perf_counter() - t0
    CACHE.mkdir(parents=True, exist_ok=True)  # kept, so the model can be sampled again
    skformer.save(result.estimator, _kept_rounds(method, task.name, k))
    samples = result.posterior().sample(SAMPLES, observed=task.observation(k), random_state=k)
    acceptance = ";".join(f"{r.acceptance:.3g}" for r in result.history)
    print(f"{task.name} obs {k} {options}: per round (fresh, epochs, fit s, validation loss) "
          + "; ".join(f"({r.fresh}, {r.epochs}, {r.fit_seconds:.0f}, {r.validation_loss:.4f})"
                      for r in result.history), flush=True)
    return samples, seconds, len(result.X), len(result.history), acceptance


def skformer_rounds_never(task, k):
    """The rounds with every fit after round 0 warm-started (no fresh last fit)."""
    return skformer_rounds(task, k, refit="never", method="skformer_rounds_never")


def skformer_rounds_lr_fifth(task, k):
    """The rounds warm-started throughout at a fifth of the estimator's learning rate."""
    from skformer import SimformerEstimator

    return skformer_rounds(task, k, refit="never", method="skformer_rounds_lr_fifth", warm_params={
        "learning_rate": SimformerEstimator().learning_rate / 5})


def skformer_rounds_bounded(task, k):
    """The rounds at their defaults with the prior's box as the estimator's bounds, kept by
    truncation (``support="truncate"``, the only way before the box was learnt)."""
    return skformer_rounds(task, k, bounded=True, method="skformer_rounds_bounded",
                           estimator={"support": "truncate"})


def skformer_rounds_box(task, k):
    """The rounds with the prior's box as bounds, learnt in the logit of the box
    (``support="transform"``)."""
    return skformer_rounds(task, k, bounded=True, method="skformer_rounds_box",
                           estimator={"support": "transform"})


def skformer_rounds_bounded_e800(task, k):
    """``skformer_rounds_bounded`` with the estimator's ``max_epochs=800`` (round 0's and the
    last round's fresh fits may train twice as long; early stopping still ends them)."""
    return skformer_rounds(task, k, bounded=True, method="skformer_rounds_bounded_e800",
                           estimator={"max_epochs": 800})


def skformer_rounds_bounded_e800_steps50(task, k):
    """``skformer_rounds_bounded_e800``'s model (kept in the cache by that method's run)
    sampled with 50 solver steps instead of 20; its time is on that method's row."""
    import skformer

    path = _kept_rounds("skformer_rounds_bounded_e800", task.name, k)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run skformer_rounds_bounded_e800 for "
                                f"observation {k} first.")
    est = skformer.load(path).set_params(sampling_steps=50)
    samples = est.posterior().sample(SAMPLES, observed=task.observation(k), random_state=k)
    return samples, 0.0, BUDGET, ROUNDS, ""


def _bounded(task, k, budget=BUDGET, sampling_steps=None):
    """The cached one-round model of ``budget`` simulations sampled with the prior's box as
    bounds; its fit time stays on the plain method's row."""
    from harness.methods import prior_bounds

    samples, _, n, rounds, acceptance = skformer_single(
        task, k, bounds=prior_bounds(task), budget=budget, sampling_steps=sampling_steps)
    return samples, 0.0, n, rounds, acceptance


def skformer_single_bounded(task, k):
    """``skformer_single``'s model (the same cached fit) sampled with the prior's box."""
    return _bounded(task, k)


def skformer_single_bounded_steps50(task, k):
    """``skformer_single_bounded``'s model sampled with 50 solver steps instead of 20."""
    return _bounded(task, k, sampling_steps=50)


def skformer_single_1e5(task, k):
    """One fit on 100,000 prior simulations; its time is on observation 1's row."""
    return skformer_single(task, k, budget=10 * BUDGET)


def skformer_single_1e5_bounded(task, k):
    """``skformer_single_1e5``'s model sampled with the prior's box as bounds."""
    return _bounded(task, k, budget=10 * BUDGET)


def skformer_single_1e5_bounded_steps50(task, k):
    """``skformer_single_1e5_bounded`` with 50 solver steps instead of 20."""
    return _bounded(task, k, budget=10 * BUDGET, sampling_steps=50)


def skformer_single_e800_bounded(task, k):
    """One fit on 10,000 prior simulations with ``max_epochs=800``, sampled with the prior's
    box as bounds (the estimator of ``skformer_rounds_bounded_e800``); time on observation 1."""
    from harness.methods import prior_bounds

    return skformer_single(task, k, bounds=prior_bounds(task), max_epochs=800)


def skformer_single(task, k, cache={}, bounds=None, budget=BUDGET,  # noqa: B006 - one fit
                    max_epochs=None, sampling_steps=None):
    """One fit of ``budget`` prior simulations (kept in the cache), sampled with ``bounds`` and
    ``sampling_steps`` (None: the estimator's default)."""
    import skformer
    from skformer import SimformerEstimator

    from harness.methods import fit_skformer

    seconds = 0.0
    name = (f"sequential_single_{task.name}" + ("" if budget == BUDGET else f"_{budget}")
            + ("" if max_epochs is None else f"_e{max_epochs}"))
    if name not in cache:
        path = CACHE / f"{name}.skf"
        if path.exists():
            cache[name] = skformer.load(path)
        else:
            theta, x = task.simulate(budget, 0)
            est, seconds = fit_skformer(task, theta, x, seed=0, **(
                {} if max_epochs is None else {"max_epochs": max_epochs}))
            CACHE.mkdir(parents=True, exist_ok=True)
            skformer.save(est, path)
            cache[name] = est
    est = cache[name].set_params(
        bounds=bounds, sampling_steps=sampling_steps or SimformerEstimator().sampling_steps)
    samples = est.posterior().sample(SAMPLES, observed=task.observation(k), random_state=k)
    return samples, seconds, budget, 1, "1"


def tsnpe(task, k):
    import numpy as np
    import torch
    from sbi.inference import NPE
    from sbi.utils import RestrictedPrior, get_density_thresholder

    from harness.methods import _NullTracker

    torch.manual_seed(k)
    prior = task.prior_torch()
    x_o = torch.as_tensor(task.observation(k), dtype=torch.float32)[None]
    inference = NPE(prior=prior, density_estimator="nsf", show_progress_bars=False,
                    tracker=_NullTracker())
    proposal, acceptance = prior, []
    rng = np.random.default_rng([k, 17])
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(ROUNDS):
            theta = proposal.sample((BUDGET // ROUNDS,))
            x = torch.as_tensor(task.simulator(theta.double().numpy(), rng), dtype=torch.float32)
            inference.append_simulations(theta, x, proposal=proposal)
            estimator = inference.train(force_first_round_loss=True)
            posterior = inference.build_posterior(estimator).set_default_x(x_o)
            threshold = get_density_thresholder(posterior, quantile=1e-4)
            proposal = RestrictedPrior(prior, threshold, sample_with="rejection")
            probe = prior.sample((20_000,))
            acceptance.append(float(threshold(probe).float().mean()))
        seconds = time.perf_counter() - t0
        samples = posterior.sample((SAMPLES,), x=x_o, show_progress_bars=False)
    return (samples.numpy().astype(np.float64), seconds, BUDGET, ROUNDS,
            ";".join(f"{a:.3g}" for a in [1.0, *acceptance[:-1]]))


def run_task(name: str, observations: list[int], methods: list[str]) -> None:
    import torch

    from harness.run import machine
    from harness.tasks import get_task
    from metrics import c2st

    torch.set_num_threads(1)
    task = get_task(name)
    for k in observations:
        for method in methods:
            if (name, method, k) in done():
                continue
            samples, seconds, n_sims, n_rounds, acceptance = globals()[method](task, k)
            score = c2st(samples, task.reference(k, SAMPLES, seed=k))
            append_row(OUT, COLUMNS, {"task": name, "method": method, "observation": k,
                    "c2st": round(score, 4), "train_s": round(seconds, 1),
                    "simulations": n_sims, "rounds": n_rounds, "acceptance": acceptance,
                    "machine": machine(),
                    "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            print(f"{name} obs {k} {method}: C2ST {score:.3f}, {seconds:.0f} s", flush=True)


def report(path: Path = OUT) -> str:
    """The table of every (task, method): mean and per-observation C2ST, summed seconds."""
    import pandas as pd

    df = pd.read_csv(path).drop_duplicates(["task", "method", "observation"], keep="last")
    lines = ["| task | method | observations | C2ST mean | per observation | train s |",
             "|---|---|---|---|---|---|"]
    for (task, method), g in df.groupby(["task", "method"], sort=False):
        g = g.sort_values("observation")
        per = ", ".join(f"{c:.3f}" for c in g.c2st)
        obs = ",".join(str(o) for o in g.observation)
        lines.append(f"| {task} | {method} | {obs} | {g.c2st.mean():.3f} | {per} | "
                     f"{g.train_s.sum():.0f} |")
    lines.append(f"\nMachine: {df.machine.iloc[-1]}.")
    return "\n".join(lines)


def _observations(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(t) for t in text.split(",")]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["two_moons", "slcp"])
    ap.add_argument("--observations", default="1")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.report:
        print(report())
        return
    observations = _observations(args.observations)
    if args.one:
        run_task(args.one, observations, args.methods)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    for name in args.tasks:
        log = open(OUT.with_name(f"sequential_{name}.log"), "a")  # noqa: SIM115
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--one", name, "--observations", args.observations,
             "--methods", *args.methods], cwd=HERE, env=env, stdout=log,
            stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    print(report())
    sys.exit(max(codes))


if __name__ == "__main__":
    main()
