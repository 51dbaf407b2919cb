"""Scaling out on one machine: fits that share the cores, and data-parallel training.

Two measurements on the seed task (default network, a fixed number of epochs, no early
stopping, so every run does the same work):

* ``threads``: two fits started side by side as separate processes, first with torch's
  default thread count (each process takes every core), then with ``n_threads=1``; and one fit
  alone for reference. Seconds per epoch of each.
* ``ddp``: one process with one thread against ``torchrun --nproc_per_node=2`` (gloo, one
  thread per rank), on the same rows: wall time of ``fit`` and seconds per epoch.

    python benchmarks/scaling.py threads ddp       # results/scaling.json (appended)

Run it on an otherwise idle machine: it measures how processes share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROOT = HERE.parent


def _one_fit(args: argparse.Namespace) -> None:
    """Child process: one timed fit, its record printed as JSON on the last line."""
    import numpy as np
    import torch

    from skformer import SimformerEstimator

    rng = np.random.default_rng(0)
    theta = rng.uniform(-1, 1, size=(args.rows, 3))
    X = np.hstack([theta, theta + 1 + 0.1 * rng.standard_normal(theta.shape)])
    n_threads = None if args.n_threads == 0 else args.n_threads
    est = SimformerEstimator(max_epochs=args.epochs, early_stopping=False, batch_size=512,
                             random_state=0, device="cpu", n_threads=n_threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        est.fit(X)
        seconds = time.perf_counter() - start
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        print(json.dumps({"fit_s": seconds, "s_per_epoch": seconds / est.n_iter_,
                          "torch_threads": torch.get_num_threads() if n_threads is None
                          else n_threads, "rows_per_rank": est.n_training_rows_,
                          "batch_per_rank": est.batch_size_,
                          "world": int(os.environ.get("WORLD_SIZE", "1"))}))


def _child(extra: list[str], env: dict[str, str], torchrun: int = 0) -> subprocess.Popen:
    cmd = [sys.executable]
    if torchrun:
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    cmd += [str(Path(__file__).resolve()), "_fit", *extra]
    # no OMP_NUM_THREADS unless asked: torch picks its default
    environment = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    environment.update(env, PYTHONPATH=os.pathsep.join([str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(cmd, env=environment, stdout=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"a benchmark process failed ({proc.returncode}):\n{out}")
    return json.loads(out.strip().splitlines()[-1])


def threads(rows: int, epochs: int) -> list[dict]:
    base = ["--rows", str(rows), "--epochs", str(epochs)]
    records = [{"case": "one fit alone, default threads",
                **_result(_child(base + ["--n-threads", "0"], {}))}]
    for label, n in (("two fits side by side, default threads", "0"),
                     ("two fits side by side, n_threads=1", "1")):
        procs = [_child(base + ["--n-threads", n], {}) for _ in range(2)]
        for i, proc in enumerate(procs):
            records.append({"case": f"{label} (fit {i + 1})", **_result(proc)})
    return records


def ddp(rows: int, epochs: int) -> list[dict]:
    base = ["--rows", str(rows), "--epochs", str(epochs), "--n-threads", "1"]
    one = _result(_child(base, {"OMP_NUM_THREADS": "1"}))
    two = _result(_child(base, {"OMP_NUM_THREADS": "1"}, torchrun=2))
    return [{"case": "1 process x 1 thread", **one},
            {"case": "torchrun, 2 ranks x 1 thread (gloo)", **two}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="+", choices=["threads", "ddp", "_fit"])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n-threads", type=int, default=0, help="0: torch's default")
    args = parser.parse_args()
    if args.what == ["_fit"]:
        _one_fit(args)
        return
    sys.path.insert(0, str(HERE))
    from seed_task import machine

    RESULTS.mkdir(exist_ok=True)
    for what in args.what:
        records = (threads if what == "threads" else ddp)(args.rows, args.epochs)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with open(RESULTS / "scaling.json", "a") as f:
            for r in records:
                f.write(json.dumps({"study": what, "machine": machine(), "cores": os.cpu_count(),
                                    "rows": args.rows, "epochs": args.epochs, "timestamp": stamp,
                                    **r}) + "\n")
        print(f"\n{what} ({args.rows} rows, {args.epochs} epochs, {machine()}, "
              f"{os.cpu_count()} cores)")
        print("| case | s per epoch | fit s | threads | rows per rank | batch per rank |")
        print("|---|---|---|---|---|---|")
        for r in records:
            print(f"| {r['case']} | {r['s_per_epoch']:.2f} | {r['fit_s']:.1f} | "
                  f"{r['torch_threads']} | {r['rows_per_rank']} | {r['batch_per_rank']} |")


if __name__ == "__main__":
    main()
