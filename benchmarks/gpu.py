"""GPU benchmark: optimiser steps per second, and time to accuracy on two_moons at 1e5.

Two parts, both on ``--device`` (default ``cuda``):

1. **Steps per second.** The training step alone (masks, noise, loss, backward, clipping,
   AdamW, EMA) of a default-size network on random standardised data, for several batch sizes
   and token counts, timed over ``--steps`` steps after a warm-up, with the device synchronised
   before and after. This is the loop's own cost, without data loading or validation.
2. **Time to accuracy.** ``SimformerEstimator`` with its defaults on two_moons at 100,000
   simulations (the harness's simulator and sbibm's reference samples), then C2ST (sbibm's MLP)
   of 10,000 posterior samples on observations 1-3. Reports training time, epochs, the
   resolved batch size and C2ST. The issue's target: C2ST <= 0.52 in at most 30 s of training.

    python benchmarks/gpu.py                       # both parts, writes results/gpu.json
    python benchmarks/gpu.py --part steps --batch-sizes 512 4096
    python benchmarks/gpu.py --part steps --precision float32 bfloat16
    python benchmarks/gpu.py --part accuracy --variant precision=float32 \
        --variant precision=bfloat16
    python benchmarks/gpu.py --part accuracy --simulations 100000

Run it from the repository root with ``PYTHONPATH=.:benchmarks`` where skformer is not
installed (the GPU machines run the working tree). Appends one JSON record per measurement to
``benchmarks/results/gpu.json`` and prints a markdown table with the card's name.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

OUT = HERE / "results" / "gpu.json"


def card(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_per_second(device: torch.device, batch: int, tokens: int, steps: int,
                     graphs: bool = True, attention: str = "auto",
                     precision: str = "float32") -> dict:
    """The training loop's step on random data: masks, noise, loss, backward, AdamW, EMA."""
    from skformer import network
    from skformer._utils import fit_seeds
    from skformer.dynamics import ScoreDynamics
    from skformer.layout import Layout
    from skformer.masks import TrainingMasks
    from skformer.network import MaskedTransformer
    from skformer.training import TrainConfig, train

    network.ATTENTION = attention
    layout = Layout.from_spec(tokens)
    torch.manual_seed(0)
    net = MaskedTransformer(tokens, 64, 4, 4).to(device)
    net.precision = precision  # bf16 autocast of the matrix products (float32 outside)
    masks = TrainingMasks("structured", None, layout, ([0], list(range(1, tokens))), 0, device)
    n_rows = batch * steps
    x = torch.randn(n_rows, tokens, device=device)
    # one epoch of `steps` batches, no validation: the loop's own cost; a first short run warms
    # up kernels and allocator
    config = TrainConfig(max_epochs=1, batch_size=batch, learning_rate=1e-3, cuda_graphs=graphs)
    train(net, ScoreDynamics(), x[: batch * 6], None, masks, masks, config, fit_seeds(0))
    sync(device)
    start = time.perf_counter()
    train(net, ScoreDynamics(), x, None, masks, masks, config, fit_seeds(1))
    sync(device)
    seconds = time.perf_counter() - start
    return {"part": "steps", "batch": batch, "tokens": tokens, "steps": steps,
            "cuda_graphs": bool(graphs and device.type == "cuda"), "attention": attention,
            "precision": precision,
            "ms_per_step": 1000 * seconds / steps, "steps_per_s": steps / seconds}


def time_to_accuracy(device: torch.device, n_sims: int, observations: list[int],
                     seed: int, options: dict | None = None) -> dict:
    from skformer import SimformerEstimator

    from harness.tasks import get_task
    from metrics import c2st

    task = get_task("two_moons")
    theta, x = task.simulate(n_sims, seed)
    est = SimformerEstimator(variables=task.variables, posterior_latent=task.latent,
                             posterior_observed=task.observed, device=str(device),
                             random_state=seed, **(options or {}))
    X = task.joint(theta, x)
    sync(device)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X)
    sync(device)
    train_s = time.perf_counter() - start
    scores = []
    for k in observations:
        samples = est.posterior().sample(10_000, observed=task.observation(k), random_state=k)
        scores.append(c2st(samples, task.reference(k, 10_000), backend="torch"))
    return {"part": "accuracy", "task": "two_moons", "n_simulations": n_sims,
            "options": options or {}, "learning_rate": est.learning_rate,
            "train_s": train_s, "epochs": est.n_iter_, "batch_size": est.batch_size_,
            "tokens": len(est.token_columns_), "c2st": float(np.mean(scores)),
            "c2st_per_observation": [float(s) for s in scores], "observations": observations}


def _options(pairs: list[str]) -> dict:
    """["batch_size=4096", "learning_rate=4e-3"] -> {"batch_size": 4096, ...}, parsed as the
    harness's ``--skformer`` pairs are; empty entries (of "a=1,,b=2") are skipped."""
    from harness.run import _skformer_params

    return _skformer_params([pair for pair in pairs if pair])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--part", choices=["steps", "accuracy", "both"], default="both")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 2048, 4096])
    ap.add_argument("--tokens", type=int, nargs="+", default=[4, 20])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--simulations", type=int, default=100_000)
    ap.add_argument("--observations", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--graphs", choices=["on", "off"], nargs="+", default=["on"],
                    help="steps part: with CUDA graphs, without, or both")
    ap.add_argument("--attention", choices=["auto", "sdpa", "math"], nargs="+",
                    default=["auto"], help="steps part: attention implementation(s)")
    ap.add_argument("--precision", choices=["float32", "bfloat16"], nargs="+",
                    default=["float32"], help="steps part: the network's arithmetic(s)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="accuracy part: an estimator parameter (repeatable); several runs: "
                         "separate sets with --variant")
    ap.add_argument("--variant", action="append", default=[], metavar="K=V,K=V",
                    help="accuracy part: one run per variant (estimator parameters)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu to try the script.")
    rows = []
    if args.part in ("steps", "both"):
        for tokens in args.tokens:
            for batch in args.batch_sizes:
                for graphs in args.graphs:
                    for attention in args.attention:
                        for precision in args.precision:
                            rows.append(steps_per_second(device, batch, tokens, args.steps,
                                                         graphs == "on", attention, precision))
                            print(json.dumps(rows[-1]), flush=True)
    if args.part in ("accuracy", "both"):
        variants = [_options(v.split(",")) for v in args.variant] or [_options(args.option)]
        for options in variants:
            rows.append(time_to_accuracy(device, args.simulations, args.observations,
                                         args.seed, options))
            print(json.dumps(rows[-1]), flush=True)
    machine = f"{card(device)}, torch {torch.__version__}"
    OUT.parent.mkdir(exist_ok=True)
    with open(OUT, "a") as fh:
        for row in rows:
            fh.write(json.dumps({**row, "device": str(device), "machine": machine}) + "\n")
    print(f"\n{machine}\n")
    print("| batch | tokens | CUDA graphs | attention | precision | ms / step | steps / s |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        if r["part"] == "steps":
            print(f"| {r['batch']} | {r['tokens']} | {r['cuda_graphs']} | "
                  f"{r.get('attention', 'sdpa')} | {r.get('precision', 'float32')} | "
                  f"{r['ms_per_step']:.2f} | {r['steps_per_s']:.0f} |")
    for r in rows:
        if r["part"] == "accuracy":
            print(f"\ntwo_moons, {r['n_simulations']:,} simulations, {r['options']}: training "
                  f"{r['train_s']:.1f} s ({r['epochs']} epochs, batch {r['batch_size']}, "
                  f"{r['tokens']} tokens), "
                  f"C2ST {r['c2st']:.3f} on observations {r['observations']}")


if __name__ == "__main__":
    main()
