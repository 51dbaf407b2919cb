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

``--attention`` instead compares the two attention paths (``skformer.network.ATTENTION``:
"math", two matrix products and a softmax, and "sdpa", ``F.scaled_dot_product_attention``) on
2-32 tokens, one call forward alone and forward + backward (head dims 8 and 16, batches 128
and 1,024, 4 heads, a random bool mask), and a whole small fit (``d_model=32``, 2 layers,
3,000 rows, 20 epochs) with 2,000 posterior draws for 2-8 columns, the paths alternating,
the faster of two runs. It writes ``results/attention_cpu.csv`` (about 3.5 minutes), the
evidence for ``skformer.network.SMALL_T_CPU``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
import warnings
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "results" / "cpu_profile.json"
ATTENTION_OUT = OUT.with_name("attention_cpu.csv")
ATTENTION_FIELDS = ["part", "kernel", "tokens", "batch", "head_dim", "forward_ms", "train_ms",
                    "fit_s", "sample_s", "machine", "timestamp"]
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


def _ms_per_call(fn, seconds: float = 0.4) -> float:
    """Milliseconds per call of ``fn`` (three warm-up calls, then as many as fit ``seconds``)."""
    for _ in range(3):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n * 1e3


def attention_kernels(tokens=(2, 3, 4, 5, 6, 8, 12, 16, 24, 32)):
    """One attention call per path, forward and forward + backward, per shape."""
    from skformer import network

    paths = {}
    for name in ("math", "sdpa"):
        def path(*args, name=name):
            network.ATTENTION = name
            try:
                return network.attention(*args)
            finally:
                network.ATTENTION = "auto"
        paths[name] = path
    for head_dim in (8, 16):
        for batch in (128, 1024):
            for t in tokens:
                gen = torch.Generator().manual_seed(0)
                q, k, v = (torch.randn(batch, 4, t, head_dim, generator=gen,
                                       requires_grad=True) for _ in range(3))
                mask = torch.rand(batch, 1, t, t, generator=gen) < 0.7
                mask |= torch.eye(t, dtype=torch.bool)
                for name, path in paths.items():
                    def forward(path=path, args=(q, k, v, mask)):
                        with torch.no_grad():
                            path(*args)

                    def train(path=path, args=(q, k, v, mask)):
                        path(*args).sum().backward()

                    yield dict(part="kernel", kernel=name, tokens=t, batch=batch,
                               head_dim=head_dim, forward_ms=round(_ms_per_call(forward), 4),
                               train_ms=round(_ms_per_call(train), 4))


def attention_fits(columns=(2, 3, 4, 6, 8), repeats: int = 2):
    """A small fit and 2,000 draws per path and column count (the faster of ``repeats``)."""
    import numpy as np

    from skformer import SimformerEstimator, network

    with warnings.catch_warnings():  # the first fit of a process imports torch's compiler
        warnings.simplefilter("ignore")
        SimformerEstimator(d_model=8, n_layers=1, max_epochs=1).fit(np.zeros((64, 2)))
    for c in columns:
        rng = np.random.default_rng(0)
        theta = rng.normal(size=(3000, 1))
        X = np.hstack([theta] + [theta + 0.5 * rng.normal(size=theta.shape)
                                 for _ in range(c - 1)])
        best = {name: [np.inf, np.inf] for name in ("math", "sdpa")}
        for _ in range(repeats):
            for name in best:
                network.ATTENTION = name
                try:
                    est = SimformerEstimator(d_model=32, n_layers=2, max_epochs=20,
                                             random_state=0, posterior_latent=[0])
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        est.fit(X)
                    fit_s = time.perf_counter() - start
                    start = time.perf_counter()
                    est.posterior().sample(2000, X[0, 1:], random_state=0)
                    sample_s = time.perf_counter() - start
                finally:
                    network.ATTENTION = "auto"
                best[name] = [min(best[name][0], fit_s), min(best[name][1], sample_s)]
        for name, (fit_s, sample_s) in best.items():
            yield dict(part="fit", kernel=name, tokens=c, fit_s=round(fit_s, 3),
                       sample_s=round(sample_s, 3))


def compare_attention(machine: str) -> None:
    """``--attention``: both parts into ``ATTENTION_OUT`` (written afresh), then the tables."""
    ATTENTION_OUT.parent.mkdir(exist_ok=True)
    rows = []
    with open(ATTENTION_OUT, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=ATTENTION_FIELDS)
        writer.writeheader()
        for row in [*attention_kernels(), *attention_fits()]:
            row.update(machine=machine, timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"))
            writer.writerow({k: row.get(k, "") for k in ATTENTION_FIELDS})
            fh.flush()
            rows.append(row)
    by = {(r["part"], r["kernel"], r["tokens"], r.get("batch"), r.get("head_dim")): r
          for r in rows}
    print(f"\n{machine}\n\n| head dim | batch | tokens | forward, math / sdpa (ms) | "
          "forward + backward, math / sdpa (ms) |\n|---|---|---|---|---|")
    for (part, kernel, t, batch, head_dim), m in by.items():
        if part == "kernel" and kernel == "math":
            s = by[("kernel", "sdpa", t, batch, head_dim)]
            print(f"| {head_dim} | {batch} | {t} | {m['forward_ms']:.2f} / {s['forward_ms']:.2f} "
                  f"| {m['train_ms']:.2f} / {s['train_ms']:.2f} |")
    print("\n| columns | fit, math / sdpa (s) | 2,000 draws, math / sdpa (s) |\n|---|---|---|")
    for (part, kernel, t, _, _), m in by.items():
        if part == "fit" and kernel == "math":
            s = by[("fit", "sdpa", t, None, None)]
            print(f"| {t} | {m['fit_s']:.2f} / {s['fit_s']:.2f} | "
                  f"{m['sample_s']:.2f} / {s['sample_s']:.2f} |")


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
    ap.add_argument("--attention", action="store_true",
                    help="compare the two attention paths instead (results/attention_cpu.csv)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import skformer

    machine = (f"{platform.processor() or platform.machine()}, {args.threads} thread(s), "
               f"torch {torch.__version__}, skformer {skformer.__version__}")
    if args.attention:
        compare_attention(machine)
        return
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
