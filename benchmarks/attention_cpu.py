"""Which attention kernel is faster on a CPU for a few tokens: the fused
``F.scaled_dot_product_attention`` ("sdpa") or two matrix products and a softmax ("math").

Two parts, one thread, float32, appended to ``results/attention_cpu.csv`` (a cut-off run
resumes; rerun with ``--fresh`` on another machine):

- ``kernel``: one attention call on (batch, 4 heads, tokens, head dim) under a random bool
  mask, forward alone (sampling) and forward + backward (training), for 2-32 tokens;
- ``fit``: a whole small fit (``d_model=32``, 2 layers, 3,000 rows, 20 epochs) and 2,000
  posterior draws with ``skformer.network.ATTENTION`` set to each kernel, for 2-8 columns
  (the kernels alternate, twice; the faster of the two counts).

    cd benchmarks && python attention_cpu.py            # about 5 minutes
    python attention_cpu.py --report                     # the tables from the CSV

The result sets ``skformer.network.SMALL_T_CPU``: "auto" takes "math" on a CPU up to that many
tokens.
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "attention_cpu.csv"
FIELDS = ["part", "kernel", "tokens", "batch", "head_dim", "forward_ms", "train_ms",
          "fit_s", "sample_s", "machine", "timestamp"]
TOKENS = (2, 3, 4, 5, 6, 8, 12, 16, 24, 32)
COLUMNS = (2, 3, 4, 6, 8)
REPEATS = 2


def _math(q, k, v, mask):
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def _sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


KERNELS = {"math": _math, "sdpa": _sdpa}


def _ms(fn, seconds: float = 0.4) -> float:
    """Milliseconds per call of ``fn`` (three warm-up calls, then as many as fit ``seconds``)."""
    for _ in range(3):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n * 1e3


def kernel_rows(done: set):
    for head_dim in (8, 16):
        for batch in (128, 1024):
            for tokens in TOKENS:
                gen = torch.Generator().manual_seed(0)
                q, k, v = (torch.randn(batch, 4, tokens, head_dim, generator=gen,
                                       requires_grad=True) for _ in range(3))
                mask = torch.rand(batch, 1, tokens, tokens, generator=gen) < 0.7
                mask |= torch.eye(tokens, dtype=torch.bool)
                for name, f in KERNELS.items():
                    key = ("kernel", name, str(tokens), str(batch), str(head_dim))
                    if key in done:
                        continue

                    args = (q, k, v, mask)

                    def forward(f=f, args=args):
                        with torch.no_grad():
                            f(*args)

                    def train(f=f, args=args):
                        f(*args).sum().backward()

                    yield dict(part="kernel", kernel=name, tokens=tokens, batch=batch,
                               head_dim=head_dim, forward_ms=round(_ms(forward), 4),
                               train_ms=round(_ms(train), 4))


def fit_rows(done: set):
    from skformer import SimformerEstimator, network

    with warnings.catch_warnings():  # the first fit of a process imports torch's compiler
        warnings.simplefilter("ignore")
        SimformerEstimator(d_model=8, n_layers=1, max_epochs=1).fit(np.zeros((64, 2)))
    for columns in COLUMNS:
        rng = np.random.default_rng(0)
        theta = rng.normal(size=(3000, 1))
        X = np.hstack([theta] + [theta + 0.5 * rng.normal(size=theta.shape)
                                 for _ in range(columns - 1)])
        if all(("fit", name, str(columns), "", "") in done for name in KERNELS):
            continue
        best = {name: [np.inf, np.inf] for name in KERNELS}
        for _ in range(REPEATS):  # the kernels alternate; the fastest of the repeats counts
            for name in KERNELS:
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
            yield dict(part="fit", kernel=name, tokens=columns, batch="", head_dim="",
                       fit_s=round(fit_s, 3), sample_s=round(sample_s, 3))


def _read() -> list[dict]:
    if not OUT.exists():
        return []
    with open(OUT, newline="") as fh:
        return list(csv.DictReader(fh))


def report(records: list[dict]) -> str:
    lines = ["Kernel: milliseconds per call, math / sdpa (forward; forward + backward)", ""]
    by = {(r["part"], r["kernel"], r["tokens"], r["batch"], r["head_dim"]): r for r in records}
    for head_dim in ("8", "16"):
        for batch in ("128", "1024"):
            cells = []
            for t in TOKENS:
                m, s = by.get(("kernel", "math", str(t), batch, head_dim)), \
                    by.get(("kernel", "sdpa", str(t), batch, head_dim))
                if m and s:
                    cells.append(f"T={t}: {float(m['forward_ms']):.2f}/"
                                 f"{float(s['forward_ms']):.2f}; {float(m['train_ms']):.2f}/"
                                 f"{float(s['train_ms']):.2f}")
            lines.append(f"head dim {head_dim}, batch {batch}: " + " | ".join(cells))
    lines += ["", "Small fit (20 epochs) and 2,000 draws, seconds, math / sdpa", ""]
    for c in COLUMNS:
        m, s = by.get(("fit", "math", str(c), "", "")), by.get(("fit", "sdpa", str(c), "", ""))
        if m and s:
            lines.append(f"{c} columns: fit {float(m['fit_s']):.2f} / {float(s['fit_s']):.2f}, "
                         f"draws {float(m['sample_s']):.2f} / {float(s['sample_s']):.2f}")
    if records:
        lines += ["", f"Machine: {records[-1]['machine']}."]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", action="store_true", help="print the tables and stop")
    ap.add_argument("--fresh", action="store_true", help="start a new CSV (another machine)")
    args = ap.parse_args(argv)
    if args.report:
        print(report(_read()))
        return
    from harness.run import machine

    torch.set_num_threads(1)
    if args.fresh and OUT.exists():
        OUT.unlink()
    done = {(r["part"], r["kernel"], r["tokens"], r["batch"], r["head_dim"]) for r in _read()}
    new = not OUT.exists()
    OUT.parent.mkdir(exist_ok=True)
    with open(OUT, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        for gen in (kernel_rows, fit_rows):
            for row in gen(done):
                row.update(machine=machine(), timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"))
                writer.writerow({k: row.get(k, "") for k in FIELDS})
                fh.flush()
    print(report(_read()))


if __name__ == "__main__":
    main()
