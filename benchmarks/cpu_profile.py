"""Where time goes on a CPU thread: skformer's optimiser step, profiled, and its sampler.

For each token count and batch size it times the parts of one step of the training loop with
the skformer on the import path (run it once with an old checkout on ``PYTHONPATH`` and once
with the new one, with ``--label``): drawing the batch (condition masks, left-out rows, noise
levels, noise), the forward pass with the loss, the backward pass, gradient clipping, the
optimiser step (the loop's own AdamW, fused or not as ``skformer.training`` builds it) and the
EMA update. Then the
time to draw 10,000 posterior samples per token count (default-size model, default sampler),
and the operators that take the most time (``torch.profiler``, self time) in the training
step of the largest setting.

    python benchmarks/cpu_profile.py --label before     # from a checkout of the old code
    python benchmarks/cpu_profile.py --label after

Appends one JSON record per setting to ``benchmarks/results/cpu_profile.json`` and prints a
markdown table. Default: one thread (``--threads``), as the harness's CPU benchmarks.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "results" / "cpu_profile.json"
PARTS = ["draw", "forward+loss", "backward", "clip", "optimiser", "ema"]


def _setup(tokens: int, batch: int, d_model: int = 64, n_heads: int = 4):
    from skformer._utils import fit_seeds, make_generator
    from skformer.dynamics import ScoreDynamics
    from skformer.layout import Layout
    from skformer.masks import TrainingMasks
    from skformer.network import MaskedTransformer
    from skformer.training import TrainConfig, _left_out, _states, _Step

    torch.manual_seed(0)
    layout = Layout.from_spec(tokens)
    half = tokens // 2
    masks = TrainingMasks("structured", None, layout, (list(range(half)),
                                                       list(range(half, tokens))), 0, "cpu")
    net = MaskedTransformer(tokens, d_model, 4, n_heads)
    ema = MaskedTransformer(tokens, d_model, 4, n_heads).requires_grad_(False)
    dynamics = ScoreDynamics()
    config = TrainConfig(batch_size=batch)
    step = _Step(net, dynamics, config, graphed=False)
    gen = make_generator(fit_seeds(0).noise, torch.device("cpu"))
    x = torch.randn(batch, tokens)

    def draw():
        observed, edges = masks(batch)
        left_out = _left_out(observed, None, config.marginal_fraction, gen)
        if left_out is not None:
            observed = _states(observed, left_out)
        return (x, observed, edges, dynamics.training_sigmas(batch, gen),
                torch.randn(x.shape, generator=gen), None)  # no positions

    return net, ema, dynamics, step, draw


def profile_step(tokens: int, batch: int, steps: int, d_model: int = 64, n_heads: int = 4
                 ) -> dict:
    """Mean milliseconds per part of the step over ``steps`` steps (after 3 warm-up steps), for
    a network of width ``d_model`` with ``n_heads`` heads (4 layers)."""
    net, ema, dynamics, step, draw = _setup(tokens, batch, d_model, n_heads)
    params = step.params
    times = dict.fromkeys(PARTS, 0.0)
    for i in range(steps + 3):
        marks = [time.perf_counter()]
        batch_ = draw()
        marks.append(time.perf_counter())
        loss = dynamics.loss(net, *batch_[:5]).mean()
        marks.append(time.perf_counter())
        step.opt.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        marks.append(time.perf_counter())
        step.opt.step()
        marks.append(time.perf_counter())
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1e-3)
        marks.append(time.perf_counter())
        if i >= 3:
            for part, a, b in zip(PARTS, marks, marks[1:], strict=False):
                times[part] += (b - a) * 1000 / steps
    total = sum(times.values())
    return {"part": "step", "tokens": tokens, "batch": batch, "steps": steps,
            "d_model": d_model, "n_heads": n_heads,
            "ms_per_step": total,
            "us_per_row": 1000 * total / batch, "parts_ms": times,
            "fused_adamw": bool(step.opt.defaults.get("fused"))}


def top_operators(tokens: int, batch: int, steps: int, k: int = 12, d_model: int = 64,
                  n_heads: int = 4) -> list[dict]:
    """The ``k`` operators with the most self CPU time over ``steps`` steps, ms per step."""
    from torch.profiler import ProfilerActivity, profile

    net, ema, dynamics, step, draw = _setup(tokens, batch, d_model, n_heads)
    for _ in range(2):
        step(draw(), 1e-3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(draw(), 1e-3)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    return [{"op": e.key, "ms_per_step": e.self_cpu_time_total / 1000 / steps,
             "share": e.self_cpu_time_total / total} for e in rows[:k]]


def sampling_speed(tokens: int, n: int = 10_000) -> dict:
    """Seconds to draw ``n`` posterior samples (half the columns observed) from a default-size
    model trained for one epoch on random data: the sampler's cost does not depend on what the
    network learnt."""
    import numpy as np

    from skformer import SimformerEstimator

    rng = np.random.default_rng(0)
    X = rng.normal(size=(1_000, tokens))
    half = tokens // 2
    est = SimformerEstimator(max_epochs=1, posterior_latent=list(range(half)),
                             posterior_observed=list(range(half, tokens)), random_state=0,
                             device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one epoch: "still improving", as intended
        est.fit(X)
    post = est.posterior()
    post.sample(100, observed=X[0, half:], random_state=0)
    start = time.perf_counter()
    post.sample(n, observed=X[0, half:], random_state=1)
    seconds = time.perf_counter() - start
    return {"part": "sampling", "tokens": tokens, "n_samples": n, "sample_s": seconds,
            "steps": est.sampling_steps, "chunk_rows": est.model_.rows_per_chunk()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", default="", help="e.g. before / after, stored with each record")
    ap.add_argument("--tokens", type=int, nargs="+", default=[4, 20])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sizes", nargs="+", default=["64/4"], metavar="D_MODEL/N_HEADS",
                    help="network sizes of the step timings (4 layers each), e.g. 64/4 32/2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-operators", action="store_true")
    ap.add_argument("--no-sampling", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import skformer

    machine = (f"{platform.processor() or platform.machine()}, {args.threads} thread(s), "
               f"torch {torch.__version__}, skformer {skformer.__version__}")
    sizes = [tuple(int(v) for v in size.split("/")) for size in args.sizes]
    rows = [profile_step(t, b, args.steps, d, h) for d, h in sizes for t in args.tokens
            for b in args.batch_sizes]
    ops = ([] if args.no_operators else
           top_operators(max(args.tokens), max(args.batch_sizes), max(5, args.steps // 2),
                         d_model=sizes[0][0], n_heads=sizes[0][1]))
    sampling = [] if args.no_sampling else [sampling_speed(t) for t in args.tokens]
    OUT.parent.mkdir(exist_ok=True)
    with open(OUT, "a") as fh:
        for r in [*rows, *sampling]:
            fh.write(json.dumps({**r, "label": args.label, "machine": machine}) + "\n")
        if ops:
            fh.write(json.dumps({"label": args.label, "machine": machine,
                                 "tokens": max(args.tokens), "batch": max(args.batch_sizes),
                                 "d_model": sizes[0][0], "n_heads": sizes[0][1],
                                 "top_operators": ops}) + "\n")
    print(f"\n{machine} ({args.label or 'no label'})\n")
    print("| d_model / heads | tokens | batch | ms / step | µs / row | "
          + " | ".join(PARTS) + " |")
    print("|---" * (5 + len(PARTS)) + "|")
    for r in rows:
        print(f"| {r['d_model']} / {r['n_heads']} | {r['tokens']} | {r['batch']} | "
              f"{r['ms_per_step']:.1f} | {r['us_per_row']:.0f} | "
              + " | ".join(f"{r['parts_ms'][p]:.2f}" for p in PARTS) + " |")
    for r in sampling:
        print(f"\n{r['n_samples']:,} posterior samples, {r['tokens']} tokens, {r['steps']} "
              f"solver steps, {r['chunk_rows']} rows per network call: {r['sample_s']:.2f} s")
    if ops:
        print(f"\nTop operators (self time), d_model {sizes[0][0]}, {sizes[0][1]} heads, "
              f"{max(args.tokens)} tokens, batch {max(args.batch_sizes)}:\n\n"
              "| operator | ms / step | share |\n|---|---|---|")
        for o in ops:
            print(f"| {o['op']} | {o['ms_per_step']:.1f} | {100 * o['share']:.0f} % |")


if __name__ == "__main__":
    main()
