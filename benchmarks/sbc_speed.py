"""Time of simulation-based calibration on the seed task's posterior (200 tests x 1,000 samples).

Fits the default estimator on 10,000 simulations of the seed task (theta ~ U(-1, 1)^3,
x = theta + 1 + 0.1 noise), then times ``skformer.diagnostics.sbc`` of ``est.posterior()`` on
200 fresh test pairs with 1,000 samples each (200,000 samples, drawn in batched calls), for the
default solver steps and for fewer, and reports ``check_sbc``'s KS p-values.

    python benchmarks/sbc_speed.py                    # full default fit (minutes on a CPU)
    python benchmarks/sbc_speed.py --max-epochs 3     # timing only: the fit does not change it

Appends to benchmarks/results/sbc_speed.json. The time of sampling does not depend on how well
the model is trained, so ``--max-epochs`` only changes the p-values.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from skformer import SimformerEstimator
from skformer.diagnostics import check_sbc, sbc

from seed_task import machine

RESULTS = Path(__file__).resolve().parent / "results"


def simulate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-1, 1, size=(n, 3))
    return theta, theta + 1.0 + 0.1 * rng.standard_normal(theta.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-epochs", type=int, default=400)
    parser.add_argument("--tokens", default="column")
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 10])
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    theta, x = simulate(10_000, 0)
    tokens = int(args.tokens) if args.tokens.isdigit() else args.tokens
    est = SimformerEstimator(max_epochs=args.max_epochs, tokens=tokens, random_state=0,
                             device="auto")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(np.stack([theta, x], axis=1))  # sbi's layout: variable 0 is theta
    fit_s = time.perf_counter() - start
    test_theta, test_x = simulate(args.tests, 1)
    RESULTS.mkdir(exist_ok=True)
    print(f"fit: {fit_s:.0f} s, {est.n_iter_} epochs ({machine()}, {torch.get_num_threads()} "
          f"threads, {est.device_})")
    for steps in args.steps:
        est.set_params(sampling_steps=steps)
        start = time.perf_counter()
        ranks = sbc(est.posterior(), test_theta, test_x, n_samples=args.samples,
                    random_state=0, verbose=False)
        seconds = time.perf_counter() - start
        ks = check_sbc(ranks, args.samples)["ks_pvalues"]
        record = {"task": "seed", "tests": args.tests, "samples": args.samples,
                  "steps": steps, "tokens": args.tokens, "max_epochs": args.max_epochs,
                  "epochs": est.n_iter_, "sbc_s": seconds, "ks_pvalues": ks.round(4).tolist(),
                  "machine": machine(), "threads": torch.get_num_threads(),
                  "device": str(est.device_), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with open(RESULTS / "sbc_speed.json", "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"SBC {args.tests} x {args.samples}, {steps} steps: {seconds:.1f} s, "
              f"KS p-values {ks.round(3).tolist()}")


if __name__ == "__main__":
    main()
