"""Screen: a bounded task's posterior with its bounds kept by truncation or by folding, from
one fit.

Fits skformer with the task prior's box as ``bounds`` (``support="truncate"``) on 10,000
simulations, then samples each observation three ways with the same seed: truncated (samples
outside redrawn), folded (``support="fold"``: the same draws as the unbounded model's, those
outside reflected back in) and raw (no bounds), and scores each with C2ST against the
reference posterior. ``spilled`` is the share of raw draws outside the box. One JSON line per
observation is appended to ``--out``.

    python fold_screen.py two_moons 1,2,3,4,5 0      # task, observations, seed
    python fold_screen.py seed 1,2,3 0

The same comparison on the harness's rows: ``python -m harness --skformer bounds=prior
--also-support fold`` (rows ``+support=fold`` next to the truncated ones).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def main(argv=None) -> None:
    import torch

    from harness.methods import fit_skformer, prior_bounds
    from harness.tasks import get_task
    from metrics import c2st
    from seed_task import machine

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("task")
    ap.add_argument("observations", help="comma-separated observation numbers")
    ap.add_argument("seed", type=int)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fold_screen.jsonl")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    task = get_task(args.task)
    theta, x = task.simulate(10_000, args.seed)
    est, train_s = fit_skformer(task, theta, x, args.seed, bounds="prior", support="truncate",
                                device="cpu")
    box = prior_bounds(task)
    low = np.array([box[c][0] for c in sorted(box)])
    high = np.array([box[c][1] for c in sorted(box)])
    for k in (int(o) for o in args.observations.split(",")):
        x_o, reference = task.observation(k), task.reference(k, 10_000)
        scores = {}
        for support, bounds in (("truncate", box), ("fold", box), ("raw", None)):
            est.set_params(bounds=bounds, support="fold" if support == "fold" else "truncate")
            samples = est.posterior().sample(10_000, observed=x_o, random_state=args.seed)
            scores[support] = round(c2st(samples, reference), 4)
            if support == "raw":
                scores["spilled"] = round(float(((samples < low) | (samples > high))
                                                .any(1).mean()), 4)
        row = dict(task=args.task, seed=args.seed, observation=k, **scores,
                   train_s=round(train_s, 1), epochs=est.n_iter_, machine=machine())
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
