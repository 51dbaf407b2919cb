"""Turn the harness CSV into docs/benchmarks.md, docs/benchmarks_c2st.png and
docs/benchmarks_time.png: a table of mean +- std over observations per task / budget / method,
C2ST against budget per task, time per method, and a statement of where skformer wins and where
it does not, all computed from the rows (nothing hard-coded).

    python -m harness.report --csv results/harness.csv [more.csv ...] [--docs ../docs]
    python -m harness.report --csv results/harness_14a.csv --print   # the table only, to stdout
    python -m harness.report --csv results/structure_slcp.csv --seeds  # per seed, and their mean

Several CSVs (e.g. from harness runs on the two cores side by side) are read as one.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from harness import ROOT
from harness.methods import METHODS
from harness.run import DEFAULT_OUT, KEY

__all__ = ["load", "seed_table", "summarise", "write_report"]

SKFORMER = ("skformer_score", "skformer_flow")
SBIBM_TASKS = ("gaussian_linear", "two_moons", "gaussian_mixture", "slcp", "bernoulli_glm")
GROUP = ["task", "target", "config", "budget", "method"]
NUMERIC = ["c2st", "c2st_rf", "train_s", "sample_s", "n_samples", "network_calls", "log_prob_s",
           "log_prob_n", "log_prob_mae", "peak_rss_mb", "peak_gpu_mb", "epochs"]


def _paths(csv_path) -> list[Path]:
    if isinstance(csv_path, (str, Path)):
        return [Path(csv_path)]
    return [Path(p) for p in csv_path]


def load(csv_path):
    """The CSV(s) as one DataFrame, the last row of each key kept (reruns with
    --retry-failed append newer rows)."""
    import pandas as pd

    frames = [pd.read_csv(p, dtype={"mask": str, "error": str}) for p in _paths(csv_path)]
    df = pd.concat(frames, ignore_index=True)
    for col in NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df = df.drop_duplicates(subset=list(KEY), keep="last").reset_index(drop=True)
    # time for 10,000 samples, scaled linearly when fewer were drawn
    df["sample_10k_s"] = df["sample_s"] * 10_000 / df["n_samples"]
    df["log_prob_1k_s"] = df["log_prob_s"] * 1_000 / df["log_prob_n"]
    return df


def _metric(df) -> str:
    return "c2st" if df["c2st"].notna().any() else "c2st_rf"


def _common_observations(df) -> dict:
    """Per task / target / config / budget: the observations every method with an ok row has
    completed, so that methods are averaged over the same observations (a run stopped part-way
    leaves some methods with more)."""
    ok = df[df["status"] == "ok"]
    out = {}
    for key, g in ok.groupby(GROUP[:-1], sort=False):
        sets = [set(gm["observation"]) for _, gm in g.groupby("method")]
        out[key] = set.intersection(*sets)
    return out


def summarise(df):
    """One row per task / target / config / budget / method: mean and std over the
    observations that every method completed there (see ``_common_observations``; all of a
    method's ok rows when they share none), and the counts of ok, failed and skipped rows."""
    import pandas as pd

    rows = []
    order = {m: i for i, m in enumerate(METHODS)}
    df = df.assign(_order=df["method"].map(order).fillna(len(order)))
    df = df.sort_values(["task", "target", "config", "budget", "_order"], kind="stable")
    common = _common_observations(df)
    for key, g in df.groupby(GROUP, sort=False):
        ok = g[g["status"] == "ok"]
        shared = common.get(key[:-1])
        if shared:
            ok = ok[ok["observation"].isin(shared)]
        r = dict(zip(GROUP, key))
        r["n_ok"] = len(ok)
        r["n_failed"] = int((g["status"] == "failed").sum())
        r["n_skipped"] = int((g["status"] == "skipped").sum())
        bad = g[g["status"] != "ok"]["error"].dropna()
        r["error"] = bad.iloc[0] if len(bad) else ""
        for col in ["c2st", "c2st_rf", "train_s", "sample_10k_s", "log_prob_1k_s",
                    "log_prob_mae", "network_calls", "peak_rss_mb", "peak_gpu_mb", "epochs"]:
            vals = ok[col].dropna()
            r[col] = vals.mean() if len(vals) else np.nan
            r[col + "_std"] = vals.std(ddof=0) if len(vals) > 1 else np.nan
        rows.append(r)
    out = pd.DataFrame(rows)
    if len(out):
        out["train_x_npe"] = _npe_multiple(out)
    return out


def _npe_multiple(s):
    """Training time as a multiple of NPE's in the same task / target / budget (NPE's default
    config; NaN where NPE has no row there)."""
    npe = s[(s["method"] == "npe") & (s["config"] == "default")]
    base = {(r["task"], r["target"], r["budget"]): r["train_s"] for _, r in npe.iterrows()}
    return [r["train_s"] / base[k] if (k := (r["task"], r["target"], r["budget"])) in base
            and base[k] > 0 else np.nan for _, r in s.iterrows()]


def _pm(mean, std, digits=3) -> str:
    if not np.isfinite(mean):
        return "-"
    if np.isfinite(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def _num(v, fmt="{:.1f}") -> str:
    return "-" if v is None or not np.isfinite(v) else fmt.format(v)


def _table(s, show_config: bool) -> list[str]:
    head = ["task", "target", *(["config"] if show_config else []), "budget", "method", "obs ok",
            "C2ST (MLP)", "C2ST (RF)", "train s", "train × NPE", "10k samples s", "log_prob 1k s",
            "log_prob MAE (nats)", "calls / sample", "epochs", "peak RSS MB", "not ok"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in s.iterrows():
        notok = []
        if r["n_failed"]:
            notok.append(f"{r['n_failed']} failed")
        if r["n_skipped"]:
            notok.append(f"{r['n_skipped']} skipped")
        cells = [r["task"], r["target"], *([r["config"]] if show_config else []),
                 f"{int(r['budget']):,}", r["method"], str(r["n_ok"]),
                 _pm(r["c2st"], r["c2st_std"]), _pm(r["c2st_rf"], r["c2st_rf_std"]),
                 _num(r["train_s"]), _num(r.get("train_x_npe", np.nan), "{:.1f}x"),
                 _num(r["sample_10k_s"], "{:.2f}"),
                 _num(r["log_prob_1k_s"], "{:.2f}"), _num(r["log_prob_mae"], "{:.2f}"),
                 _num(r["network_calls"], "{:.0f}"), _num(r["epochs"], "{:.0f}"),
                 _num(r["peak_rss_mb"], "{:.0f}"), ", ".join(notok) or "-"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def seed_table(df) -> list[str]:
    """Markdown lines: per task / target / config / budget / method, the C2ST of each seed
    (mean over its ok observations or masks) and the mean over seeds. A seed counts only where
    it completed every observation that some seed of the group completed, so a run stopped
    part-way does not enter the mean; its partial figure is shown in brackets."""
    metric = _metric(df)
    ok = df[df["status"] == "ok"]
    head = ["task", "target", "config", "budget", "method", "per seed", "seeds", "mean of seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, g in ok.groupby(GROUP, sort=True):
        wanted = set(g["observation"])
        cells, full = [], []
        for seed, gs in g.groupby("seed", sort=True):
            value = gs[metric].mean()
            if set(gs["observation"]) == wanted:
                full.append(value)
                cells.append(f"{seed}: {value:.3f}")
            else:
                cells.append(f"{seed}: ({value:.3f}, {len(gs)} of {len(wanted)})")
        mean = f"{np.mean(full):.3f}" if full else "-"
        lines.append("| " + " | ".join([*map(str, key[:3]), f"{int(key[3]):,}", key[4],
                                        ", ".join(cells), str(len(full)), mean]) + " |")
    return lines


TIE = 0.005  # C2ST gaps smaller than this are ties, not wins


def _beats(value: float, baseline: float) -> bool:
    """Whether a C2ST beats a baseline's by more than a tie (the rule of every count here)."""
    return value < baseline - TIE


def verdicts(s, metric: str) -> list[str]:
    """Plain statements, from the summary, of where skformer beats the baselines and where not."""
    out: list[str] = []
    ok = s[(s["n_ok"] > 0) & s[metric].notna()]
    wins = losses = 0
    met: list[str] = []
    missed: list[str] = []
    per_method: dict[str, list[int]] = {}  # skformer method -> [settings won, settings run]
    # each skformer configuration against the baselines of the same configuration, or their
    # defaults where the baselines were not run with it (e.g. skformer's own max_epochs study)
    for (task, target, budget), g_all in ok.groupby(["task", "target", "budget"]):
        is_sk = g_all["method"].isin(SKFORMER)
        others = g_all[~is_sk]
        for config in dict.fromkeys(g_all[is_sk]["config"]):
            sk = g_all[is_sk & (g_all["config"] == config)]
            same = others[others["config"] == config]
            base = same if not same.empty else others[others["config"] == "default"]
            where = f"{task} ({target}, {int(budget):,} simulations" + (
                f", skformer {config})" if config != "default" else ")")
            best_sk = sk.loc[sk[metric].idxmin()]
            if base.empty:
                out.append(f"- {where}: {best_sk['method']} C2ST {best_sk[metric]:.3f}; no baseline "
                           "result here" + (" (sbi answers only the posterior)."
                                            if target != "posterior" else "."))
                continue
            best_base = base.loc[base[metric].idxmin()]
            beaten = [m for m, v in zip(base["method"], base[metric]) if best_sk[metric] < v]
            current = config == "default"  # the counts and targets are about the defaults
            if current:
                for m, v in zip(sk["method"], sk[metric]):
                    per_method.setdefault(m, [0, 0])[0] += _beats(v, best_base[metric])
                    per_method[m][1] += 1
            won = _beats(best_sk[metric], best_base[metric])
            if won:
                wins += current
                verdict = "**skformer wins**"
            elif not _beats(best_base[metric], best_sk[metric]):
                losses += current
                verdict = f"**tie** (within {TIE})"
            else:
                losses += current
                verdict = "**skformer loses**"
            line = (f"- {where}: {verdict}: {best_sk['method']} C2ST {best_sk[metric]:.3f} vs best "
                    f"baseline {best_base['method']} {best_base[metric]:.3f}")
            if 0 < len(beaten) < len(base):
                line += f" (beats {', '.join(beaten)})"
            stds = [v for v in (best_sk[metric + "_std"], best_base[metric + "_std"])
                    if np.isfinite(v)]
            if stds and abs(best_sk[metric] - best_base[metric]) < max(stds):
                line += "; the gap is within one standard deviation over observations"
            out.append(line + ".")
            if (current and target == "posterior" and task in SBIBM_TASKS
                    and int(budget) == 10_000):
                (met if won else missed).append(task)
    head: list[str] = []
    if wins + losses:
        head.append(f"On the C2ST ({metric}), skformer's best method with its defaults beats "
                    f"every baseline in {wins} of {wins + losses} task / target / budget settings "
                    "where both ran"
                    + "".join(f"; {m} alone in {w} of {n}" for m, (w, n) in per_method.items())
                    + ".")
    if met or missed:
        pending = [t for t in SBIBM_TASKS if t not in met + missed]
        head.append("Target (C2ST below every baseline's on each sbibm task at 10,000 "
                    f"simulations): met on {', '.join(met) or 'none'}; not met on "
                    f"{', '.join(missed) or 'none'}"
                    + (f"; not yet run with skformer's defaults: {', '.join(pending)}."
                       if pending else "."))
    cond = ok[(ok["target"] == "conditionals") & (ok["budget"] == 10_000)
              & ok["method"].isin(SKFORMER) & (ok["config"] == "default")]
    for _, r in cond.iterrows():
        verdict = "met" if r[metric] <= 0.55 else "not met"
        head.append(f"Target (mean all-conditionals C2ST <= 0.55 at 10,000 simulations) on "
                    f"{r['task']} with {r['method']}: {r[metric]:.3f} over {r['n_ok']} random "
                    f"masks: {verdict}.")
    if head:
        out[:0] = [" ".join(head), ""]
    # speed: median ratio over the task / budget settings both methods completed
    ok = s[s["n_ok"] > 0]
    idx = ["task", "target", "config", "budget"]
    baselines = [m for m in dict.fromkeys(ok["method"]) if m not in SKFORMER]
    for sk in SKFORMER:
        for col, what in [("train_s", "training"), ("sample_10k_s", "sampling 10,000"),
                          ("log_prob_1k_s", "log_prob of 1,000")]:
            parts = []
            for base in baselines:
                a = ok[ok["method"] == sk].set_index(idx)[col]
                b = ok[ok["method"] == base].set_index(idx)[col]
                ratio = (a / b).dropna()
                ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
                if ratio.empty:
                    continue
                med = float(np.median(ratio))
                if 0.9 <= med <= 1.1:
                    rel = "about as fast as"
                elif med < 1:
                    rel = f"{1 / med:.1f}x faster than"
                else:
                    rel = f"{med:.1f}x slower than"
                parts.append(f"{rel} {base} ({len(ratio)})")
            if parts:
                out.append(f"- {what}: {sk} is " + ", ".join(parts) + " (median ratio over the "
                           "settings in brackets).")
    failed = s[(s["n_failed"] > 0)]
    for _, r in failed.iterrows():
        out.append(f"- {r['method']} failed on {r['task']} ({r['target']}, "
                   f"{int(r['budget']):,}): {r['n_failed']} rows; first error: "
                   f"`{str(r['error'])[:160]}`.")
    skipped = s[(s["n_skipped"] > 0)].groupby("method")["error"].first()
    for method, err in skipped.items():
        out.append(f"- {method} was skipped: {err}")
    if not (s["method"].isin(SKFORMER) & (s["n_ok"] > 0)).any():
        out.insert(0, "- No completed skformer rows in this data: nothing to compare.")
    return out


def _plots(df, s, metric: str, docs: Path) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = s[s["n_ok"] > 0]
    panels = list(ok.groupby(["task", "target"]).groups)
    methods = [m for m in dict.fromkeys(ok["method"])]
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    ncol = min(4, max(1, len(panels)))
    nrow = max(1, int(np.ceil(len(panels) / ncol)))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow), squeeze=False)
    for ax, (task, target) in zip(axes.flat, panels):
        g = ok[(ok["task"] == task) & (ok["target"] == target)]
        for m in methods:
            gm = g[g["method"] == m].sort_values("budget")
            if gm.empty or gm[metric].isna().all():
                continue
            ax.errorbar(gm["budget"], gm[metric], yerr=gm[metric + "_std"].fillna(0), marker="o",
                        capsize=3, label=m, color=colors[m],
                        ls="-" if m in SKFORMER else "--")
        ax.set_xscale("log")
        ax.axhline(0.5, color="gray", lw=0.8, ls=":")
        ax.set_title(task if target == "posterior" else f"{task} ({target})", fontsize=10)
        ax.set_xlabel("simulations")
        ax.set_ylabel(f"C2ST ({'MLP' if metric == 'c2st' else 'RF'})")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9,
                   bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    c2st_png = docs / "benchmarks_c2st.png"
    fig.savefig(c2st_png, dpi=120, bbox_inches="tight")
    plt.close(fig)

    cols = [("train_s", "training (s)"), ("sample_10k_s", "10,000 samples (s)"),
            ("log_prob_1k_s", "log_prob of 1,000 (s)")]
    budgets = sorted(set(ok["budget"]))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), squeeze=False)
    width = 0.8 / max(1, len(budgets))
    for ax, (col, title) in zip(axes.flat, cols):
        for i, b in enumerate(budgets):
            # median over tasks of the per-task mean
            vals = [ok[(ok["method"] == m) & (ok["budget"] == b)][col].median() for m in methods]
            x = np.arange(len(methods)) + (i - (len(budgets) - 1) / 2) * width
            ax.bar(x, vals, width,
                   label=f"{int(b):,} sims")
        ax.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(title + ", median over tasks", fontsize=10)
    if budgets:
        axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    time_png = docs / "benchmarks_time.png"
    fig.savefig(time_png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return c2st_png.name, time_png.name


def _tables_by_budget(s) -> list[str]:
    """One results table per simulation budget, the largest first (all with a config column
    when the report holds several configs)."""
    lines, show_config = [], s["config"].nunique() > 1
    for budget in sorted(set(s["budget"]), reverse=True):
        lines += [f"### {int(budget):,} simulations", "",
                  *_table(s[s["budget"] == budget], show_config), ""]
    return lines


SEQUENTIAL_CSV = ROOT / "benchmarks" / "results" / "sequential.csv"


def _sequential_section(path: Path) -> list[str]:
    """``sequential.py``'s table (rounds, one round, TSNPE) when its CSV exists."""
    if not Path(path).exists():
        return []
    from sequential import report

    return ["## Simulations that keep arriving", "",
            f"`python sequential.py --report` (from `benchmarks/`, {Path(path).name}): 10,000 "
            "simulations in all per task and observation, C2ST against sbibm's reference "
            "posteriors; the methods and the machines of each day are described in "
            "[simulations that keep arriving](arriving.md#sequential-rounds-against-one-round-"
            "and-tsnpe). train s sums the observations listed.", "", report(path), ""]


def write_report(csv_path=DEFAULT_OUT, docs=ROOT / "docs",
                 sequential_csv=SEQUENTIAL_CSV) -> Path:
    """Write ``docs/benchmarks.md`` and its two plots from the harness CSV (and the sequential
    benchmark's table from ``sequential_csv`` when it exists); return the path."""
    paths, docs = _paths(csv_path), Path(docs)
    docs.mkdir(parents=True, exist_ok=True)
    df = load(csv_path)
    s = summarise(df)
    metric = _metric(df)
    c2st_png, time_png = _plots(df, s, metric, docs)
    shown = []
    for p in paths:
        try:
            shown.append(str(p.resolve().relative_to(ROOT / "benchmarks")))
        except ValueError:
            shown.append(str(p))
    shown = " ".join(shown)
    commands = [c for c in dict.fromkeys(df["command"].dropna())]
    machines = [m for m in dict.fromkeys(df["machine"].dropna())]
    devices = ", ".join(dict.fromkeys(df["device"].dropna().astype(str)))
    obs = df.groupby("task")["observation"].agg(
        lambda o: str(o.min()) if o.min() == o.max() else f"{o.min()}-{o.max()}")
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `python -m harness.report --csv {shown}` (from `benchmarks/`) on "
        f"{datetime.now(timezone.utc):%Y-%m-%d} from {len(df)} rows. Do not edit by hand: "
        "rerun the harness and the report.",
        "",
        "## How it was run",
        "",
        *[f"    {c}" for c in commands],
        "",
        "Machine: " + "; ".join(machines) + f" (device: {devices}).",
        "",
        "Observations per task: " + ", ".join(f"{t} {o}" for t, o in obs.items()) + ".",
        "",
        "## What is measured",
        "",
        "- **C2ST** (0.5 = indistinguishable from the reference, 1.0 = disjoint): sbibm's MLP "
        "classifier (and/or the random forest the Simformer paper used), samples against as "
        "many reference samples (exact for seed and gaussian_dag; sbibm's shipped reference "
        "samples otherwise). Mean ± std over the observations that every method completed in "
        "that setting (*obs ok*). For gaussian_dag's *conditionals* "
        "target each observation is a random condition mask, so the mean is over masks. "
        "The MLP C2ST is trained with `metrics.c2st`'s PyTorch backend: sbibm's classifier "
        "and stopping rule with the five folds trained side by side, which agrees with "
        "scikit-learn's within fold noise (`python metrics.py` compares them).",
        "- **train s**: wall time of one training run on the budget; **10k samples s**: time "
        "to draw 10,000 samples for one observation; **log_prob 1k s**: log density of 1,000 "
        "samples (first observation of each model) and, where the density is known exactly, "
        "its mean absolute error; **calls / sample**: network evaluations per sample (sbi's "
        "vector-field methods counted with a hook, NPE one flow pass); **peak RSS**: peak "
        "resident memory of the process while training and sampling that model; **train × NPE**: "
        "training time as a multiple of NPE's (default config) in the same task and budget.",
        "",
        "## Results",
        "",
        *_tables_by_budget(s),
        f"![C2ST against simulation budget]({c2st_png})",
        "",
        f"![time per method]({time_png})",
        "",
        "## Where skformer wins and where not",
        "",
        *verdicts(s, metric),
        "",
        *_sequential_section(sequential_csv),
    ]
    md = docs / "benchmarks.md"
    md.write_text("\n".join(lines))
    return md


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__)
    ap.add_argument("--csv", type=Path, nargs="+", default=[DEFAULT_OUT])
    ap.add_argument("--docs", type=Path, default=ROOT / "docs")
    ap.add_argument("--print", action="store_true",
                    help="print the table of every config (mean over observations or masks) to "
                         "stdout and write nothing")
    ap.add_argument("--seeds", action="store_true",
                    help="print each config's C2ST per seed and the mean over seeds (the "
                         "figure of a goal stated as a mean of seeds) and write nothing")
    args = ap.parse_args(argv)
    if args.seeds:
        print("\n".join(seed_table(load(args.csv))))
        return None
    if args.print:
        print("\n".join(_table(summarise(load(args.csv)), show_config=True)))
        return None
    md = write_report(args.csv, args.docs)
    print(f"wrote {md}")
    return md


if __name__ == "__main__":
    main()
