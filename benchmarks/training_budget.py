"""How much training does skformer need? C2ST against training length and batch size.

Each variant fits SimformerEstimator (``--method`` score or flow, otherwise defaults) on the
same simulations of an sbibm task and scores posterior samples with the MLP C2ST against sbibm's
reference samples. The questions it answers: are skformer's default ``max_epochs`` and
``batch_size`` enough, or does it stop before it has learnt the posterior? And is the remaining
error the network's or the sampler's (the ``_steps50`` / ``_steps100`` variants sample the same
fitted model with more solver steps than the default 20)?

    python training_budget.py --task two_moons --observations 1 2 3
    python training_budget.py --task slcp --variants epochs100 epochs400 --observations 1
    python training_budget.py --task two_moons --method flow --observations 1 2 3 \
        --variants epochs400 epochs400_steps50 epochs400_steps100
    python training_budget.py --task seed --method flow --budget 500 --samples 500 \
        --variants tiny30 tiny30_uniform tiny30_logitnormal tiny30_uniform10 tiny30_uniform50

Writes (appends) ``results/training_budget.json``: one record per task / variant / observation,
with the training time, epochs run, the best epoch and whether early stopping ended training.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from harness.methods import fit_skformer
from harness.tasks import get_task
from metrics import c2st

OUT = Path(__file__).parent / "results" / "training_budget.json"

#: estimator keyword arguments of each variant (on top of the defaults); a ``_stepsN`` suffix
#: samples the same fitted model with N solver steps instead of the default
VARIANTS = {
    "epochs100": {"max_epochs": 100},  # the default before this study
    "epochs100_steps50": {"max_epochs": 100},
    "batch128_epochs100": {"batch_size": 128, "max_epochs": 100},
    "epochs400": {"max_epochs": 400},  # the default since this study
    "epochs400_steps50": {"max_epochs": 400},
    "epochs400_steps100": {"max_epochs": 400},
    "batch128_epochs400": {"batch_size": 128, "max_epochs": 400},
    # flow's training times on a tiny, briefly trained model (--method flow --task seed
    # --budget 500): the default (logit-normal with 25 % uniform), all uniform, no uniform share
    "tiny30": {"d_model": 16, "n_layers": 1, "max_epochs": 30},
    "tiny30_uniform": {"d_model": 16, "n_layers": 1, "max_epochs": 30,
                       "dynamics_options": {"time_sampling": "uniform"}},
    "tiny30_logitnormal": {"d_model": 16, "n_layers": 1, "max_epochs": 30,
                           "dynamics_options": {"uniform_fraction": 0.0}},
    "tiny30_uniform10": {"d_model": 16, "n_layers": 1, "max_epochs": 30,
                         "dynamics_options": {"uniform_fraction": 0.1}},
    "tiny30_uniform50": {"d_model": 16, "n_layers": 1, "max_epochs": 30,
                         "dynamics_options": {"uniform_fraction": 0.5}},
}


def solver_steps(variant: str) -> int | None:
    """The solver steps a variant samples with (None: the estimator's default)."""
    _, sep, steps = variant.rpartition("_steps")
    return int(steps) if sep else None


def run(task_name, variants, observations, budget, n_samples, seed, threads, method="score",
        out=OUT):
    torch.set_num_threads(threads)
    task = get_task(task_name)
    theta, x = task.simulate(budget, seed)
    records, fitted = [], {}
    for name in variants:
        kwargs = VARIANTS[name]
        key = json.dumps(kwargs, sort_keys=True)
        if key not in fitted:
            fitted[key] = fit_skformer(task, theta, x, seed, method=method, **kwargs)
        est, train_s = fitted[key]
        steps = solver_steps(name)
        for k in observations:
            samples = est.posterior().sample(n_samples, observed=task.observation(k),
                                             random_state=k, steps=steps)
            score = c2st(samples, task.reference(k, n_samples, seed=k))
            rec = dict(task=task_name, method=method, variant=name, kwargs=kwargs, budget=budget,
                       observation=k, steps=steps or est.sampling_steps, c2st=score,
                       train_s=round(train_s, 1),
                       epochs=est.n_iter_, best_epoch=est.best_epoch_ + 1,
                       early_stopped=bool(est.n_iter_ < est.max_epochs),
                       batch_size=est.batch_size, threads=threads,
                       machine=f"{platform.processor() or platform.machine()}, torch "
                               f"{torch.__version__}")
            records.append(rec)
            print(json.dumps(rec), flush=True)
            old = json.loads(out.read_text()) if out.exists() else []
            out.write_text(json.dumps(old + [rec], indent=1))
    return records


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="two_moons")
    ap.add_argument("--method", default="score", choices=["score", "flow"])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                    default=[v for v in VARIANTS if not v.startswith("tiny")])
    ap.add_argument("--observations", nargs="+", type=int, default=[1])
    ap.add_argument("--budget", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT,
                    help="JSON file to append to (one per job when running jobs side by side)")
    a = ap.parse_args(argv)
    run(a.task, a.variants, a.observations, a.budget, a.samples, a.seed, a.threads, a.method,
        a.out)


if __name__ == "__main__":
    main()
