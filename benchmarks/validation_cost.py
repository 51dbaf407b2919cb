"""What the validation pass costs, and what fewer validation rows do to accuracy.

Every epoch ends with the loss on the validation rows, repeated to at least
``training_options["validation_rows"]`` (default 4096) so that early stopping reads a steady
number. At a small budget that pass outweighs the training itself: 1,000 simulations hold 100
validation rows, repeated 41 times, against 900 training rows.

Two parts:

``python validation_cost.py --measure``
    Seconds per epoch of the seed task's default model, one thread, for each budget (1e3, 1e4)
    and ``validation_rows`` setting (4096, the default; 1024; 1, no repeats), fitted for
    ``--epochs`` epochs one after another (no early stopping). Appends to
    ``results/validation_cost.csv`` (a cut-off run resumes) and prints the table.

``python validation_cost.py --compare BASE.csv CANDIDATE.csv``
    Two harness runs of the same tasks (the default, and e.g. ``--skformer
    training_options='{"validation_rows": 1024}'``), side by side per task: mean C2ST over the
    observations both scored, training seconds, epochs, seconds per epoch.

    cd benchmarks
    python -m harness --tasks two_moons gaussian_mixture seed gaussian_linear gaussian_dag \
        slcp bernoulli_glm --methods skformer_score --budgets 1000 --observations 1-3 \
        --dag-masks 3 --threads 1 --log-prob none --out results/valrows_1e3_base.csv
    python -m harness ... --out results/valrows_1e3_cand.csv \
        --skformer training_options='{"validation_rows": 1024}'
    python validation_cost.py --compare results/valrows_1e3_base.csv \
        results/valrows_1e3_cand.csv
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "validation_cost.csv"
FIELDS = ["budget", "validation_rows", "epochs", "s_per_epoch", "machine", "timestamp"]
BUDGETS = (1000, 10000)
SETTINGS = (4096, 1024, 1)


def measure(budgets=BUDGETS, settings=SETTINGS, epochs: int = 5, out: Path = OUT) -> list[dict]:
    """Time ``epochs`` epochs of the seed task's default model per budget and setting, on one
    thread; append each row as it finishes and skip those already in ``out``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _measure(budgets, settings, epochs, out)
    finally:
        torch.set_num_threads(threads)
    return _read(out)


def _measure(budgets, settings, epochs: int, out: Path) -> None:
    from sklearn.exceptions import ConvergenceWarning

    from skformer import SimformerEstimator

    from harness.run import machine
    from harness.tasks import get_task

    done = {(int(r["budget"]), int(r["validation_rows"])) for r in _read(out)}
    task = get_task("seed")
    # a first fit in a process pays one-time costs (torch imports its compiler with the first
    # optimiser, ~2.5 s): paid here, outside every timing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SimformerEstimator(max_epochs=1, random_state=0, n_threads=1).fit(
            task.joint(*task.simulate(200, 1)))
    for budget in budgets:
        theta, x = task.simulate(budget, 0)
        X = task.joint(theta, x)
        for rows in settings:
            if (budget, rows) in done:
                continue
            est = SimformerEstimator(max_epochs=epochs, random_state=0, n_threads=1,
                                     variables=task.variables,
                                     training_options={"validation_rows": rows})
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                est.fit(X)
            seconds = time.perf_counter() - start
            _append(out, dict(budget=budget, validation_rows=rows, epochs=est.n_iter_,
                              s_per_epoch=round(seconds / est.n_iter_, 3), machine=machine(),
                              timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z")))


def measure_table(records: list[dict]) -> str:
    lines = ["| simulations | validation_rows | s / epoch | against 4096 |", "|---|---|---|---|"]
    base = {int(r["budget"]): float(r["s_per_epoch"]) for r in records
            if int(r["validation_rows"]) == 4096}
    for r in records:
        b, s = int(r["budget"]), float(r["s_per_epoch"])
        rows = int(r["validation_rows"])
        ratio = f"{base[b] / s:.2f}x faster" if b in base and rows != 4096 else "-"
        lines.append(f"| {b:,} | {rows} | {s:.2f} | {ratio} |")
    if records:
        lines += ["", f"Machine: {records[-1]['machine']}."]
    return "\n".join(lines)


def compare(base_csv: Path, candidate_csv: Path) -> list[dict]:
    """Per task (and target), the two runs side by side over the observations both scored."""
    base, cand = _scores(base_csv), _scores(candidate_csv)
    out = []
    for key in base:
        if key not in cand:
            continue
        both = sorted(set(base[key]["c2st"]) & set(cand[key]["c2st"]))
        if not both:
            continue
        rec = {"task": key[0], "target": key[1], "observations": len(both)}
        for name, run in (("base", base[key]), ("candidate", cand[key])):
            rec[f"{name}_c2st"] = sum(run["c2st"][k] for k in both) / len(both)
            rec[f"{name}_train_s"] = run["train_s"]
            rec[f"{name}_epochs"] = run["epochs"]
        rec["delta"] = rec["candidate_c2st"] - rec["base_c2st"]
        out.append(rec)
    return out


def compare_table(records: list[dict]) -> str:
    lines = ["| task | target | obs | C2ST, default | C2ST, candidate | Δ | epochs | "
             "s / epoch, default → candidate | speed-up per epoch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        per = [r[f"{n}_train_s"] / r[f"{n}_epochs"] for n in ("base", "candidate")]
        lines.append(f"| {r['task']} | {r['target']} | {r['observations']} | "
                     f"{r['base_c2st']:.3f} | {r['candidate_c2st']:.3f} | {r['delta']:+.3f} | "
                     f"{r['base_epochs']} → {r['candidate_epochs']} | "
                     f"{per[0]:.2f} → {per[1]:.2f} | {per[0] / per[1]:.2f}x |")
    return "\n".join(lines)


def _scores(path: Path) -> dict:
    runs: dict = {}
    for r in _read(path):
        if r.get("status") != "ok" or not r.get("c2st"):
            continue
        run = runs.setdefault((r["task"], r["target"]), {
            "c2st": {}, "train_s": float(r["train_s"]), "epochs": int(r["epochs"])})
        run["c2st"][int(r["observation"])] = float(r["c2st"])
    return runs


def _read(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _append(path: Path, record: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow(record)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measure", action="store_true", help="time an epoch per setting")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--compare", type=Path, nargs=2, metavar=("BASE", "CANDIDATE"))
    args = ap.parse_args(argv)
    if not args.measure and not args.compare:
        ap.error("give --measure or --compare BASE CANDIDATE")
    if args.measure:
        print(measure_table(measure(args.budgets, epochs=args.epochs, out=args.out)))
    if args.compare:
        print(compare_table(compare(*args.compare)))


if __name__ == "__main__":
    main()
