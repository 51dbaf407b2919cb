"""The benchmark harness (benchmarks/harness): quick mode end to end, resumable CSV, name checks,
and the exact conditionals of the gaussian_dag task. Needs neither sbi nor sbibm nor network:
sbi's methods are then recorded as skipped rows."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from harness.methods import METHODS, QUICK_SKFORMER  # noqa: E402
from harness.run import COLUMNS, main, parse_observations  # noqa: E402
from harness.tasks import TASKS, GaussianDAG, get_task  # noqa: E402

HAVE_SBI = importlib.util.find_spec("sbi") is not None


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def quick_csv(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("harness") / "quick.csv"
    main(["--quick", "--out", str(out)])
    return out


def test_quick_mode_writes_one_row_per_method(quick_csv):
    with open(quick_csv, newline="") as fh:
        assert next(csv.reader(fh)) == COLUMNS
    rows = _rows(quick_csv)
    assert [r["method"] for r in rows] == list(METHODS)
    for r in rows:
        assert (r["task"], r["target"], r["budget"], r["observation"], r["seed"], r["config"]) \
            == ("seed", "posterior", "500", "1", "0", "quick")
    for r in rows:
        if r["method"].startswith("skformer") or (HAVE_SBI and r["status"] == "ok"):
            assert r["status"] == "ok", r["error"]
            assert 0.5 <= float(r["c2st"]) <= 1.0
            assert float(r["train_s"]) > 0 and float(r["sample_s"]) > 0
            assert float(r["log_prob_s"]) > 0 and r["log_prob_n"] == "1000"
            assert float(r["peak_rss_mb"]) > 0
        else:  # sbi missing: a recorded skip naming what to install, not a crash
            assert r["status"] in ("skipped", "failed")
            if not HAVE_SBI:
                assert r["status"] == "skipped" and "pip install sbi" in r["error"]
    sk = [r for r in rows if r["method"].startswith("skformer")]
    assert all(r["network_calls"] == "20" for r in sk)  # default 20 DPM-Solver steps


def test_rerun_adds_no_rows(quick_csv):
    before = quick_csv.read_text()
    main(["--quick", "--out", str(quick_csv)])
    assert quick_csv.read_text() == before


def test_report_from_quick_run(quick_csv, tmp_path):
    from harness.report import write_report

    md = write_report(quick_csv, tmp_path)
    text = md.read_text()
    assert "| seed | posterior | 500 | skformer_score |" in text
    assert "python -m harness --quick" in text
    assert "## Where skformer wins and where not" in text
    assert (tmp_path / "benchmarks_c2st.png").stat().st_size > 0
    assert (tmp_path / "benchmarks_time.png").stat().st_size > 0


def test_report_reads_several_csvs_and_states_the_conditionals_target(quick_csv, tmp_path):
    """Two result files (one per core) read as one; a gaussian_dag conditionals row at 10,000
    simulations yields the <= 0.55 target line with the right verdict."""
    from harness.report import write_report

    with open(quick_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    sk = next(r for r in rows if r["method"] == "skformer_score")
    extra = []
    for k, value in enumerate(["0.52", "0.60"], start=1):
        extra.append({**sk, "task": "gaussian_dag", "target": "conditionals", "config": "default",
                      "budget": "10000", "observation": str(k), "c2st": value})
    # skformer_flow alone has an observation 2 (a run stopped part-way): the table averages
    # every method over the observations all of them completed, so that row is left out
    flow = next(r for r in rows if r["method"] == "skformer_flow")
    extra.append({**flow, "observation": "2", "c2st": "0.999"})
    for path, part in [(a, rows[:2]), (b, rows[2:] + extra)]:
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(part)
    text = write_report([a, b], tmp_path / "docs").read_text()
    # two configurations (quick, default) in the data: the table gains a config column
    for m in METHODS:
        assert f"| seed | posterior | quick | 500 | {m} |" in text
    flow_line = next(ln for ln in text.splitlines()
                     if ln.startswith("| seed | posterior | quick | 500 | skformer_flow |"))
    assert flow_line.split(" | ")[5:7] == ["1", f"{float(flow['c2st']):.3f}"]
    assert "--csv a.csv b.csv" in text or f"--csv {a} {b}" in text
    assert ("all-conditionals C2ST <= 0.55 at 10,000 simulations) on gaussian_dag with "
            "skformer_score: 0.560 over 2 random masks: not met") in text


def test_seed_table_means_complete_seeds_only(quick_csv, tmp_path, capsys):
    """``--seeds``: each seed's mean over its observations, and the mean over the seeds that
    completed every observation; a seed stopped part-way is shown but not averaged."""
    from harness.report import main as report_main

    sk = next(r for r in _rows(quick_csv) if r["method"] == "skformer_score")
    values = {("0", "1"): "0.60", ("0", "2"): "0.70", ("1", "1"): "0.50", ("1", "2"): "0.54",
              ("2", "1"): "0.99"}  # seed 2 has observation 1 only
    path = tmp_path / "seeds.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for (seed, obs), c in values.items():
            w.writerow({**sk, "seed": seed, "observation": obs, "c2st": c})
    report_main(["--csv", str(path), "--seeds"])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| seed "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[5] == "0: 0.650, 1: 0.520, 2: (0.990, 1 of 2)"
    assert cells[6:] == ["2", "0.585"]


def test_c2st_torch_backend_agrees_with_sklearn():
    """The fold-batched PyTorch MLP C2ST against scikit-learn's (sbibm's code path) on
    Gaussians with a known separation; agreement within 0.03 (fold noise at 2 x 1,500 rows
    is ~0.01)."""
    from metrics import c2st

    rng = np.random.default_rng(0)
    for shift in (0.0, 0.8):
        a = rng.normal(size=(1500, 2))
        b = rng.normal(size=(1500, 2)) + [shift, 0.0]
        fast, ref = c2st(a, b, backend="torch"), c2st(a, b, backend="sklearn")
        assert abs(fast - ref) < 0.03, (shift, fast, ref)
        # the Bayes accuracy of a 1-d mean shift s is Phi(s / 2): 0.5 and 0.655
        bayes = 0.5 if shift == 0 else 0.6554
        assert abs(fast - bayes) < 0.04, (shift, fast)
    with pytest.raises(ValueError, match="backend"):
        c2st(a, b, backend="keras")


def test_unknown_names_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid tasks: " + ", ".join(TASKS)):
        main(["--tasks", "nope", "--out", str(tmp_path / "x.csv")])
    with pytest.raises(ValueError, match="valid methods: " + ", ".join(METHODS)):
        main(["--methods", "snpe_z", "--out", str(tmp_path / "x.csv")])
    with pytest.raises(ValueError, match="valid tasks"):
        get_task("two_moon")
    with pytest.raises(ValueError, match="observations 1..10"):
        main(["--tasks", "slcp", "--observations", "11", "--out", str(tmp_path / "x.csv")])
    assert not (tmp_path / "x.csv").exists()


def test_missing_sbibm_is_a_skipped_row(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sbibm" else real_find_spec(name, *a))
    out = tmp_path / "x.csv"
    main(["--quick", "--tasks", "two_moons", "--methods", "skformer_score", "--out", str(out)])
    (row,) = _rows(out)
    assert row["status"] == "skipped" and "pip install --no-deps sbibm" in row["error"]


def test_parse_observations():
    assert parse_observations(["1-3", "5", "7,8"]) == [1, 2, 3, 5, 7, 8]
    with pytest.raises(ValueError):
        parse_observations(["0"])


# --------------------------------------------------------------------------- gaussian_dag
def test_gaussian_dag_joint_matches_ancestral_sampling():
    task = GaussianDAG()
    z = task.sample_joint(200_000, np.random.default_rng(0))
    sd = np.sqrt(np.diag(task.cov))
    # tolerance: 5 standard errors of the empirical mean, 0.03 on the correlation scale
    assert np.all(np.abs(z.mean(0) - task.mean) < 5 * sd / np.sqrt(len(z)))
    corr_err = (np.cov(z.T) - task.cov) / np.outer(sd, sd)
    assert np.abs(corr_err).max() < 0.03
    # non-trivial structure: strong dependence between distant nodes
    corr = task.cov / np.outer(sd, sd)
    assert abs(corr[0, 11]) > 0.1 and (np.abs(corr) > 0.05).mean() > 0.5


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_gaussian_dag_exact_conditionals(k):
    task = GaussianDAG()
    mask, values = task.condition_case(k)
    assert 0 < mask.sum() < task.dim and len(values) == mask.sum()
    mean, cov = task.conditional(mask, values)
    n = 100_000
    s = task.sample_conditional(mask, values, n, seed=k)
    assert s.shape == (n, (~mask).sum())
    # sampler against the conditional mean and covariance: mean within 5 standard errors,
    # every covariance entry within 5 standard errors (var of s_i s_j ~ C_ii C_jj + C_ij^2)
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(s.mean(0) - mean) < 5 * se_mean)
    d = np.diag(cov)
    se_cov = np.sqrt((np.outer(d, d) + cov**2) / n)
    assert np.all(np.abs(np.cov(s.T).reshape(cov.shape) - cov) < 5 * se_cov)
    # the conditioning algebra against the joint: linear regression of the latent on the
    # observed variables over ancestral samples recovers the conditional mean at `values`
    # and the residual covariance (tolerance 0.05 in units of the conditional std)
    z = task.sample_joint(200_000, np.random.default_rng(100 + k))
    design = np.column_stack([np.ones(len(z)), z[:, mask]])
    coef, *_ = np.linalg.lstsq(design, z[:, ~mask], rcond=None)
    sd = np.sqrt(d)
    reg_mean = np.concatenate([[1.0], values]) @ coef
    assert np.all(np.abs(reg_mean - mean) < 0.05 * sd)
    resid = z[:, ~mask] - design @ coef
    assert np.all(np.abs(np.cov(resid.T).reshape(cov.shape) - cov) < 0.05 * np.outer(sd, sd))


def test_gaussian_dag_posterior_reference_and_log_prob():
    task = GaussianDAG()
    x_o = task.observation(1)
    assert x_o.shape == (task.dim_x,)
    ref = task.reference(1, 50_000, seed=0)
    mean, cov = task.conditional(task.posterior_mask, x_o)
    assert ref.shape == (50_000, task.dim_theta)
    assert np.all(np.abs(ref.mean(0) - mean) < 5 * np.sqrt(np.diag(cov) / len(ref)))
    from scipy.stats import multivariate_normal

    lp = task.exact_log_prob(1, ref[:10])
    np.testing.assert_allclose(lp, multivariate_normal(mean, cov).logpdf(ref[:10]))
    theta, x = task.simulate(100, seed=0)
    assert theta.shape == (100, 4) and x.shape == (100, 8)


@pytest.mark.parametrize("name", ["gaussian_curve", "gaussian_linear"])
def test_gaussian_joints_match_their_simulators(name):
    """The stated joint covariance of the wide task and of gaussian_linear is what their
    simulators draw (within sampling error of 40,000 rows: relative 0.05 of the scales)."""
    from harness.tasks import get_task

    task = get_task(name)
    theta, x = task.simulate(40_000, seed=0)
    z = np.hstack([theta, x])
    sd = np.sqrt(np.diag(task.cov))
    assert np.all(np.abs(z.mean(0) - task.mean) < 0.05 * sd)
    assert np.all(np.abs(np.cov(z.T) - task.cov) < 0.05 * np.outer(sd, sd))


def test_conditionals_within_variables_split_both_and_are_exact():
    """gaussian_linear's conditionals observe part of theta and part of x; gaussian_curve's
    4 of 8 parameters and 48 of 96 readings; the references follow the exact conditional."""
    from harness.tasks import get_task

    linear, curve = get_task("gaussian_linear"), get_task("gaussian_curve")
    for k in range(1, 6):
        mask, values = linear.condition_case(k)
        assert 0 < mask[:10].sum() < 10 and 0 < mask[10:].sum() < 10
        assert values.shape == (mask.sum(),)
        mask, values = curve.condition_case(k)
        assert mask[:8].sum() == 4 and mask[8:].sum() == 48
    mean, cov = curve.conditional(mask, values)
    ref = curve.sample_conditional(mask, values, 20_000, seed=0)
    assert np.all(np.abs(ref.mean(0) - mean) < 5 * np.sqrt(np.diag(cov) / len(ref)))
    assert curve.reference(1, 10, seed=0).shape == (10, 8)


def _report_on_two_moons_1e4(quick_csv, tmp_path, c2st: dict) -> str:
    """The report's text for the quick run's rows relabelled as two_moons at 10,000 simulations
    with the given C2ST per method."""
    from harness.report import write_report

    with open(quick_csv, newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    out = tmp_path / "r.csv"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for m, value in c2st.items():
            w.writerow({**rows[m], "task": "two_moons", "budget": "10000", "config": "default",
                        "status": "ok", "c2st": value})
    return write_report(out, tmp_path / "docs").read_text()


def test_report_counts_each_skformer_method_against_the_best_baseline(quick_csv, tmp_path):
    """At the defaults on an sbibm task at 10,000 simulations: the verdict and the target take
    skformer's best method; the per-method counts judge each method alone."""
    text = _report_on_two_moons_1e4(quick_csv, tmp_path, {
        "skformer_score": "0.520", "skformer_flow": "0.700", "npe": "0.600", "npse": "0.650",
        "fmpe": "0.610"})
    assert ("beats every baseline in 1 of 1 task / target / budget settings where both ran; "
            "skformer_score alone in 1 of 1; skformer_flow alone in 0 of 1.") in text
    assert "met on two_moons; not met on none" in text
    assert ("two_moons (posterior, 10,000 simulations): **skformer wins**: skformer_score C2ST "
            "0.520 vs best baseline npe 0.600.") in text


def test_report_target_counts_a_tie_as_not_met(quick_csv, tmp_path):
    """A gap under the tie threshold is neither a win in the counts nor a met target."""
    text = _report_on_two_moons_1e4(quick_csv, tmp_path, {
        "skformer_score": "0.598", "skformer_flow": "0.700", "npe": "0.600", "npse": "0.650",
        "fmpe": "0.610"})
    assert "beats every baseline in 0 of 1" in text
    assert "skformer_score alone in 0 of 1" in text
    assert "**tie**" in text
    assert "met on none; not met on two_moons" in text


def test_training_budget_records_each_variant_and_its_solver_steps(tmp_path, monkeypatch):
    """The training-length study on the seed task, with a tiny model: one record per variant
    and observation, a ``_stepsN`` variant samples the same fit with N steps, and a C2ST of a
    model that learnt something is well below 1."""
    import metrics
    import training_budget

    tiny = {**QUICK_SKFORMER, "max_epochs": 30}
    monkeypatch.setattr(training_budget, "VARIANTS", {"tiny": tiny, "tiny_steps5": tiny})
    # the random forest's C2ST (the paper's) is a tenth of the MLP's time and still tells a
    # model that learnt something from one that did not
    monkeypatch.setattr(training_budget, "c2st", metrics.c2st_rf)
    out = tmp_path / "budget.json"
    recs = training_budget.run("seed", ["tiny", "tiny_steps5"], [1], budget=500, n_samples=500,
                               seed=0, threads=1, method="flow", out=out)
    assert [(r["variant"], r["steps"], r["method"]) for r in recs] == [
        ("tiny", 20, "flow"), ("tiny_steps5", 5, "flow")]
    assert recs[0]["train_s"] == recs[1]["train_s"]  # one fit, sampled twice
    assert len(json.loads(out.read_text())) == 2
    assert all(0.5 <= r["c2st"] < 0.9 for r in recs), [r["c2st"] for r in recs]
    assert training_budget.solver_steps("epochs400_steps100") == 100
    assert training_budget.solver_steps("epochs400") is None


def test_also_steps_scores_the_same_fit_with_other_solver_steps(tmp_path):
    out = tmp_path / "steps.csv"
    main(["--quick", "--methods", "skformer_score", "--also-steps", "5", "--out", str(out)])
    rows = _rows(out)
    # sampled again with 5 steps (5 network calls), not copied from the first row (whose C2ST
    # the second may equal to three decimals: the quick fit's samples are far off either way)
    assert [(r["config"], r["network_calls"]) for r in rows] == [
        ("quick", "20"), ("quick+sampling_steps=5", "5")]
    assert rows[0]["train_s"] == rows[1]["train_s"] and rows[1]["status"] == "ok"
    assert rows[1]["c2st"] and rows[1]["sample_s"]
    main(["--quick", "--methods", "skformer_score", "--also-steps", "5", "--out", str(out)])
    assert len(_rows(out)) == 2  # resumable like the default rows


def test_also_support_scores_the_same_fit_with_its_bounds_folded(tmp_path):
    out = tmp_path / "support.csv"
    main(["--quick", "--methods", "skformer_score", "--skformer", "bounds=prior",
          "--also-support", "fold", "--out", str(out)])
    rows = _rows(out)
    assert [r["config"] for r in rows] == ["quick+bounds=prior", "quick+bounds=prior+support=fold"]
    assert rows[0]["train_s"] == rows[1]["train_s"] and rows[1]["status"] == "ok"
    assert rows[1]["c2st"] and rows[1]["network_calls"] == rows[0]["network_calls"]


def test_checkpoint_dir_resumes_a_killed_fit_and_counts_its_time(tmp_path, monkeypatch):
    from skformer.checkpoint import Checkpoint

    class Killed(BaseException):
        pass

    original = Checkpoint.save

    def save_then_die(self, state):
        original(self, state)
        raise Killed

    ckpt, out = tmp_path / "ckpt", tmp_path / "resumed.csv"
    args = ["--quick", "--methods", "skformer_score", "--checkpoint-dir", str(ckpt),
            "--out", str(out)]
    monkeypatch.setattr(Checkpoint, "due", lambda self: True)
    monkeypatch.setattr(Checkpoint, "save", save_then_die)
    with pytest.raises(Killed):  # the run dies after epoch 1's save, before any row
        main(args)
    assert not out.exists() or _rows(out) == []
    (saved,) = ckpt.glob("fit-*.pt")
    import torch

    earlier = torch.load(saved, weights_only=True)["seconds"]
    monkeypatch.setattr(Checkpoint, "save", original)
    main(args)
    (row,) = _rows(out)
    assert float(row["train_s"]) > earlier > 0  # the killed run's training counts
    assert row["config"] == "quick"  # the directory is not a setting
    assert row["status"] == "ok" and row["epochs"] == "3" and row["c2st"]
    assert list(ckpt.glob("fit-*.pt")) == []  # (tests/test_checkpoint.py: the same weights)


def test_report_gives_training_time_as_a_multiple_of_npe_per_budget(quick_csv, tmp_path):
    from harness.report import write_report

    rows = [r for r in _rows(quick_csv) if r["method"] in ("skformer_score", "npe")]
    made = []
    for budget, (sk_s, npe_s) in {"1000": ("30", "10"), "10000": ("50", "20")}.items():
        for r in rows:
            made.append({**r, "config": "default", "budget": budget, "status": "ok",
                         "c2st": "0.6", "train_s": sk_s if r["method"] != "npe" else npe_s})
    path = tmp_path / "r.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(made)
    text = write_report(path, tmp_path / "docs").read_text()
    assert text.index("### 10,000 simulations") < text.index("### 1,000 simulations")
    assert "| train s | train × NPE |" in text
    assert "| seed | posterior | 10,000 | skformer_score | 1 | 0.600 | - | 50.0 | 2.5x |" in text
    assert "| seed | posterior | 1,000 | skformer_score | 1 | 0.600 | - | 30.0 | 3.0x |" in text
    assert "| seed | posterior | 1,000 | npe | 1 | 0.600 | - | 10.0 | 1.0x |" in text


def test_screen_report_compares_with_the_npe_fit_nearest_in_time_and_the_reference(tmp_path):
    """benchmarks/screen.py: per candidate and task, the mean C2ST over the screened
    observations, the multiple of the NPE fit of the same day and the change against the
    reference run; observations outside the screen are left out."""
    import screen

    def row(method, task, obs, c2st, train_s, when, config="default"):
        return {**dict.fromkeys(COLUMNS, ""), "task": task, "target": "posterior",
                "budget": 10000, "method": method, "observation": obs, "seed": 0,
                "config": config, "status": "ok", "c2st": c2st, "train_s": train_s,
                "epochs": 50, "timestamp": when}

    def write(path, rows):
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)

    day1, day2 = "2026-01-01T10:00:00+00:00", "2026-01-05T10:00:00+00:00"
    screen_csv, ref_csv = tmp_path / "screen.csv", tmp_path / "ref.csv"
    write(screen_csv, [
        row("npe", "slcp", 1, 0.9, 100, day1), row("npe", "slcp", 2, 0.8, 100, day1),
        row("npe", "slcp", 1, 0.9, 300, day2),  # a later NPE run, slower: not the nearest
        row("skformer_score", "slcp", 1, 0.7, 200, day1, "default+d_model=32"),
        row("skformer_score", "slcp", 2, 0.8, 200, day1, "default+d_model=32"),
        row("skformer_score", "slcp", 7, 0.99, 200, day1, "default+d_model=32"),  # not screened
    ])
    write(ref_csv, [{**row("skformer_score", "slcp", k, 0.74, 900, day1), "epochs": 120}
                    for k in (1, 2, 3)])
    (rec,) = screen.summary(screen_csv, [ref_csv])
    assert rec["c2st"] == pytest.approx(0.75) and rec["n"] == 2
    assert rec["npe_s"] == 100 and rec["multiple"] == pytest.approx(2.0)
    assert rec["npe_c2st"] == pytest.approx(0.85)
    assert rec["delta"] == pytest.approx(0.01) and rec["reference_epochs"] == 120
    text = screen.report(screen_csv, [ref_csv])
    assert "| slcp | 0.750 | 0.740 | +0.010 | 0.850 | 200 | 50 | 120 | 100 | 2.0x |" in text
    assert "1 of 7 tasks" in text
    assert "within 2.5x NPE: 1; C2ST within +0.01 of the reference: 1" in text


def test_screen_refuses_candidate_pairs_taken_as_task_names(capsys):
    """``screen.py --tasks slcp d_model=32`` would screen the defaults on a task named
    "d_model=32" (argparse gives --tasks every word after it): refused, with the fix."""
    import screen

    with pytest.raises(SystemExit):
        screen.main(["--tasks", "slcp", "d_model=32"])
    assert "put the KEY=VALUE pairs before --tasks" in capsys.readouterr().err


def test_epoch_cost_pairs_and_report(tmp_path):
    """benchmarks/epoch_cost.py: key=value pairs become estimator parameters, a setting is
    labelled by them, and the report gives each side-by-side pair once with its ratio."""
    import epoch_cost

    assert epoch_cost.parse_pairs(["d_model=32", "tokens=variable"]) == {
        "d_model": 32, "tokens": "variable"}
    assert epoch_cost.label({}) == "default"
    out = tmp_path / "cost.csv"
    for setting, partner, s in (("d_model=64", "d_model=32", 2.4), ("d_model=32", "d_model=64",
                                                                     1.2)):
        epoch_cost.append(out, {"task": "slcp", "setting": setting, "epochs": 10,
                                "seconds": 10 * s, "s_per_epoch": s, "tokens": 13,
                                "machine": "m", "partner": partner, "timestamp": "t"})
    assert epoch_cost.done(out) == {("slcp", "d_model=64", "d_model=32"),
                                    ("slcp", "d_model=32", "d_model=64")}
    table = epoch_cost.report(out).splitlines()
    assert table[2:] == ["| slcp | 13 | d_model=64 | 2.40 | d_model=32 | 1.20 | 2.00 |"]
    # with --sample, each side's seconds of posterior draws come along
    timed = tmp_path / "timed.csv"
    for setting, partner, s in (("precision=bfloat16", "precision=float32", 8.5),
                                ("precision=float32", "precision=bfloat16", 12.0)):
        epoch_cost.append(timed, {"task": "slcp", "setting": setting, "epochs": 3,
                                  "seconds": 3.0, "s_per_epoch": 1.0, "tokens": 13,
                                  "machine": "m", "partner": partner, "timestamp": "t",
                                  "sample_s": s})
    assert epoch_cost.report(timed).splitlines()[2:] == [
        "| slcp | 13 | precision=float32 | 1.00 | precision=bfloat16 | 1.00 | 1.00 | 12.0 | 8.5 |"]
    old = tmp_path / "old.csv"  # written before sample_s: a new row would not line up
    old.write_text("task,setting,epochs,seconds,s_per_epoch,tokens,machine,partner,timestamp\n")
    with pytest.raises(SystemExit, match="other columns"):
        epoch_cost.append(old, {"task": "slcp"})


# ------------------------------------------------- the function-valued benchmarks' references
@pytest.mark.parametrize("name", ["positions", "sird"])
def test_function_valued_simulators_solve_their_odes_as_scipy_does(name):
    """Lotka-Volterra (positions.py) and SIRD (sird.py) integrate by fixed-step RK4; their log
    paths agree with scipy's DOP853 at tight tolerances, so the references are exact for the
    simulators' ODEs."""
    from scipy.integrate import solve_ivp

    bench = importlib.import_module(name)
    params = bench.prior(2, np.random.default_rng(5))
    log_paths = bench.paths(params)
    t = np.arange(log_paths.shape[1]) * bench.DT
    for row, path in zip(params, log_paths, strict=True):
        if name == "positions":  # in log populations, as the simulator integrates
            def f(s, y, row=row):
                a, b, c, d = np.exp(row)
                return [a - b * np.exp(y[1]), -c + d * np.exp(y[0])]

            sol = solve_ivp(f, (0, t[-1]), [np.log(30.0), 0.0], t_eval=t, method="DOP853",
                            rtol=1e-10, atol=1e-10)
            exact = sol.y.T
        else:
            beta, gamma, mu = np.exp(row[: bench.GRID.size]), row[-2], row[-1]

            def f(s, y, beta=beta, gamma=gamma, mu=mu):
                b = np.interp(s, bench.GRID, beta)
                return [-b * y[0] * y[1], b * y[0] * y[1] - (gamma + mu) * y[1],
                        gamma * y[1], mu * y[1]]

            sol = solve_ivp(f, (0, t[-1]), [0.99, 0.01, 0.0, 0.0], t_eval=t, method="DOP853",
                            rtol=1e-12, atol=1e-16, max_step=0.5)
            exact = np.log(np.stack([sol.y[1], sol.y[3] + bench.D_FLOOR], -1))
        assert np.abs(path - exact).max() < 1e-4


def test_lotka_volterra_reference_sampler_recovers_a_known_posterior(monkeypatch):
    """positions.reference (adaptive Metropolis) on a correlated Gaussian of the posterior's
    width in place of the Lotka-Volterra log posterior: mean, sd and correlation as exact."""
    import positions

    mean = positions.PRIOR_MEAN + np.array([0.3, -0.2, 0.1, 0.4])
    sd = np.array([0.05, 0.03, 0.07, 0.04])
    corr = np.eye(4)
    corr[0, 1] = corr[1, 0] = 0.9
    precision = np.linalg.inv(corr * np.outer(sd, sd))

    def log_posterior(theta, times, x_o):
        z = theta - mean
        return -0.5 * np.einsum("ni,ij,nj->n", z, precision, z)

    monkeypatch.setattr(positions, "log_posterior", log_posterior)
    s = positions.reference(None, None, seed=0, n=4000, chains=64, burn=400)
    assert s.shape == (4000, 4)
    assert np.all(np.abs(s.mean(0) - mean) < 0.25 * sd)
    np.testing.assert_allclose(s.std(0), sd, rtol=0.15)
    assert np.corrcoef(s[:, 0], s[:, 1])[0, 1] == pytest.approx(0.9, abs=0.05)


def test_token_layout_scores_both_layouts_and_resumes(tmp_path, monkeypatch):
    """benchmarks/token_layout.py: models with one token per column and one per variable
    both answer the conditional within the variables; a second run fits nothing that is
    done."""
    import token_layout

    monkeypatch.setattr(token_layout, "SETTINGS",
                        [("column", 2, "-"), ("variable", 2, "mlp")])
    for name, value in (("ROWS", 600), ("LOG_PROB_DRAWS", 40), ("DRAWS", 500)):
        monkeypatch.setattr(token_layout, name, value)
    out = tmp_path / "layout.csv"
    token_layout.main(["--out", str(out)])
    done = _rows(out)
    assert [(r["method"], r["tokens"], r["design"]) for r in done] == [
        ("score", "column", "-"), ("score", "variable", "mlp"), ("flow", "column", "-"),
        ("flow", "variable", "mlp")]
    for r in done:
        assert float(r["train_s"]) > 0 and float(r["post_logprob_mae"]) >= 0
        assert float(r["mixed_mean_err"]) >= 0 and float(r["mixed_std_err"]) >= 0

    def no_fit(*args):
        raise AssertionError(f"refitted {args}")

    monkeypatch.setattr(token_layout, "fit_and_score", no_fit)
    token_layout.main(["--out", str(out)])
    assert len(_rows(out)) == 4
    assert "| score | variable | mlp | 2 |" in token_layout.report(out)
    import skformer.network as network

    assert network.GROUP_EMBEDDING == "readout"  # the design set for one fit is put back


def test_gpu_options_parse_as_the_harness_does():
    """benchmarks/gpu.py's --option / --variant pairs go through the harness's parser: JSON
    values become numbers and dicts, other values stay strings, empty entries are skipped, and
    a pair without "=" is refused."""
    import gpu

    pairs = "batch_size=4096,,tokens=variable,training_options={\"ema_decay\": 0.99}"
    assert gpu._options(pairs.split(",")) == {
        "batch_size": 4096, "tokens": "variable", "training_options": {"ema_decay": 0.99}}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        gpu._options(["batch_size"])


def test_bounds_prior_gives_skformer_the_prior_box():
    """``--skformer bounds=prior``: a fit on a uniform-prior task gets the prior's box as
    bounds (its posterior samples stay inside), a Gaussian prior none."""
    import warnings

    from harness.methods import fit_skformer, prior_bounds

    assert prior_bounds(get_task("two_moons")) == {0: (-1.0, 1.0), 1: (-1.0, 1.0)}
    assert prior_bounds(get_task("bernoulli_glm")) is None
    task = get_task("two_moons")
    theta, x = task.simulate(200, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est, _ = fit_skformer(task, theta, x, seed=0, bounds="prior", **QUICK_SKFORMER)
    assert est.bounds == {0: (-1.0, 1.0), 1: (-1.0, 1.0)}
    s = est.posterior().sample(300, observed=x[0], random_state=0)  # no sbibm files needed
    assert (np.abs(s) <= 1).all()


def test_report_appends_the_sequential_table_when_its_csv_exists(quick_csv, tmp_path):
    from harness.report import write_report

    seq = tmp_path / "sequential.csv"
    seq.write_text(
        "task,method,observation,c2st,train_s,simulations,rounds,acceptance,machine,timestamp\n"
        "two_moons,tsnpe,1,0.51,10.0,10000,5,1;0.2,M,2026-01-01T00:00:00+00:00\n"
        "two_moons,tsnpe,2,0.53,12.0,10000,5,1;0.3,M,2026-01-01T00:00:00+00:00\n")
    text = write_report(quick_csv, tmp_path / "docs", sequential_csv=seq).read_text()
    assert "## Simulations that keep arriving" in text
    assert "| two_moons | tsnpe | 1,2 | 0.520 | 0.510, 0.530 | 22 |" in text
    text = write_report(quick_csv, tmp_path / "docs2",
                        sequential_csv=tmp_path / "none.csv").read_text()
    assert "keep arriving" not in text


def test_validation_cost_measures_each_setting_once_and_compares_two_runs(tmp_path):
    """benchmarks/validation_cost.py: --measure times each budget and validation_rows setting
    once (a second call resumes, fitting nothing), and --compare pairs two harness runs per
    task over the observations both scored."""
    import validation_cost

    out = tmp_path / "cost.csv"
    recs = validation_cost.measure([200], (4096, 1), epochs=1, out=out)
    assert [(int(r["budget"]), int(r["validation_rows"]), int(r["epochs"])) for r in recs] == [
        (200, 4096, 1), (200, 1, 1)]
    assert all(float(r["s_per_epoch"]) > 0 for r in recs)
    assert validation_cost.measure([200], (4096, 1), epochs=1, out=out) == recs  # resumed
    table = validation_cost.measure_table(recs).splitlines()
    assert table[2].startswith("| 200 | 4096 |") and table[2].endswith("| - |")
    assert table[3].endswith("x faster |")

    def run(path, c2sts, train_s, epochs):
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            w.writeheader()
            for k, c in c2sts.items():
                w.writerow({**dict.fromkeys(COLUMNS, ""), "task": "seed", "target": "posterior",
                            "observation": k, "status": "ok", "c2st": c, "train_s": train_s,
                            "epochs": epochs})

    run(tmp_path / "a.csv", {1: 0.60, 2: 0.50, 3: 0.70}, 100.0, 100)
    run(tmp_path / "b.csv", {1: 0.62, 2: 0.54}, 40.0, 80)  # observation 3 not scored
    (rec,) = validation_cost.compare(tmp_path / "a.csv", tmp_path / "b.csv")
    assert rec["observations"] == 2 and rec["base_c2st"] == pytest.approx(0.55)
    assert rec["delta"] == pytest.approx(0.03)
    row = validation_cost.compare_table([rec]).splitlines()[2]
    assert row == ("| seed | posterior | 2 | 0.550 | 0.580 | +0.030 | 100 → 80 | "
                   "1.00 → 0.50 | 2.00x |")


def test_tasks_declare_their_structure_and_the_harness_fits_with_it():
    """``Task.STRUCTURE`` gives the variables, the DAG and the exchangeable draws skformer is
    fitted with under ``--dag`` / ``--exchangeable``: slcp as theta and four iid 2-D draws, the
    DAG tasks their parents; a task without exchangeable draws refuses ``--exchangeable``."""
    from skformer.graph import DAG

    from harness.methods import fit_skformer, skformer_layout

    slcp = get_task("slcp").STRUCTURE
    assert slcp["variables"] == [5, 2, 2, 2, 2] and slcp["exchangeable"] == [[1, 2, 3, 4]]
    assert slcp["parents"] == {k: [0] for k in (1, 2, 3, 4)}
    dag = GaussianDAG()
    assert dag.STRUCTURE["parents"] == dag.PARENTS and dag.STRUCTURE["variables"] is None
    seed = get_task("seed")
    assert skformer_layout(seed, "structure") == dict(
        variables=[3, 3], posterior_latent=[0], posterior_observed=[1])
    theta, x = seed.simulate(200, 0)
    est, _ = fit_skformer(seed, theta, x, 0, dag="moral", **QUICK_SKFORMER)
    assert est.edge_masks == DAG({1: [0]}, inversion="moral") and est.variables == [3, 3]
    with pytest.raises(ValueError, match="no exchangeable variables"):
        fit_skformer(seed, theta, x, 0, exchangeable=True, **QUICK_SKFORMER)


def test_reflected_screen_targets_the_folded_kernels_score():
    """benchmarks/support.py's ``reflected`` screen: ``fold_with_slope`` reflects into the box
    with the slope of the map, and ``reflected_step`` is sigma^2 times the derivative of the
    log density of the folded kernel (a sum over many images, differentiated numerically), 0
    at an edge."""
    import torch
    from support import fold_with_slope, reflected_step

    low, high = torch.tensor([0.0, -np.inf]), torch.tensor([1.0, np.inf])
    x, slope = fold_with_slope(torch.tensor([[-0.25, 5.0], [1.25, -7.0], [2.25, 0.0]]), low,
                               high)
    assert torch.allclose(x, torch.tensor([[0.25, 5.0], [0.75, -7.0], [0.25, 0.0]]))
    assert slope.tolist() == [[-1.0, 1.0], [-1.0, 1.0], [1.0, 1.0]]

    def log_kernel(x, x0, sigma):  # images x + 2k and -x + 2k of a point of [0, 1]
        k = np.arange(-400, 401)
        ys = np.concatenate([x + 2 * k, -x + 2 * k])
        return np.log(np.exp(-((ys - x0) ** 2) / (2 * sigma**2)).sum())

    h = 1e-5
    for x_, x0, sigma in [(0.3, 0.1, 0.05), (0.02, 0.05, 0.1), (0.9, 0.2, 0.7), (0.5, 0.4, 3.0),
                          (0.0, 0.3, 0.4)]:
        numeric = sigma**2 * (log_kernel(x_ + h, x0, sigma) - log_kernel(x_ - h, x0, sigma)) / (
            2 * h)
        got = reflected_step(torch.tensor([[x_, 0.0]], dtype=torch.float64),
                             torch.tensor([[x0, 0.0]], dtype=torch.float64),
                             torch.tensor([sigma], dtype=torch.float64), low, high)
        assert abs(float(got[0, 0]) - numeric) < 1e-6 * max(1.0, abs(numeric)), (x_, numeric)
        assert float(got[0, 1]) == 0.0  # no box: the caller's plain step
