"""Data-parallel training under torchrun (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def test_two_ranks_under_torchrun_end_with_identical_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "_ddp_fit.py"), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert infos[0]["world"] == 2
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    # 1000 rows, 100 for validation: each rank trained on its half of the other 900, with half
    # the batch, and both saw the same averaged losses and made the same decisions
    assert [i["n_training_rows"] for i in infos] == [450, 450]
    assert infos[0]["batch_size"] == infos[1]["batch_size"] == 64
    for key in ("n_iter", "loss_curve", "validation_scores", "best_epoch"):
        assert infos[0][key] == infos[1][key], key


def test_a_lone_process_trains_on_all_its_rows():
    from skformer import SimformerEstimator

    from _data import TINY, seed_task

    est = SimformerEstimator(max_epochs=1, random_state=0, device="cpu", **TINY)
    with pytest.warns(Warning):
        est.fit(seed_task(1000))
    assert est.n_training_rows_ == 900 and est.batch_size_ == 128


def test_each_rank_takes_an_equal_disjoint_share_and_its_own_seeds():
    from skformer.distributed import Group

    rows = torch.arange(11)
    shares = [Group(r, 3).share(rows).tolist() for r in range(3)]
    assert shares == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]  # 2 left over: every rank takes 3
    seeds = {Group(r, 3).seed(5) for r in range(3)}
    assert len(seeds) == 3 and Group(1, 3).seed(5) == Group(1, 3).seed(5)
    assert Group(0, 2).is_main and not Group(1, 2).is_main


def test_n_threads_holds_during_the_fit_and_sampling_and_is_restored(monkeypatch):
    import skformer.estimator as module
    from skformer import Conditional, SimformerEstimator

    from _data import TINY, seed_task

    seen = []
    train, sample = module.train, Conditional.sample

    def counting_train(*args, **kwargs):
        seen.append(("fit", torch.get_num_threads()))
        return train(*args, **kwargs)

    def counting_sample(self, *args, **kwargs):
        seen.append(("sample", torch.get_num_threads()))
        return sample(self, *args, **kwargs)

    monkeypatch.setattr(module, "train", counting_train)
    monkeypatch.setattr(Conditional, "sample", counting_sample)
    before = torch.get_num_threads()
    target = 2 if before == 1 else 1
    # the smallest model: under xdist the fit runs with 2 threads beside a busy worker, where
    # every operation costs (what is checked is the thread count, not what the model learns)
    est = SimformerEstimator(max_epochs=1, random_state=0, device="cpu", n_threads=target,
                             **{**TINY, "d_model": 8, "n_layers": 1}, sampling_steps=2)
    with pytest.warns(Warning):
        est.fit(seed_task(200))
    est.sample(5, random_state=0)
    assert seen == [("fit", target), ("sample", target)]
    assert torch.get_num_threads() == before
    seen.clear()
    est.set_params(n_threads=None).sample(5, random_state=0)
    assert seen == [("sample", before)]
    with pytest.raises(ValueError, match="n_threads"):
        SimformerEstimator(n_threads=0).fit(seed_task(50))


def test_grid_search_over_a_local_dask_cluster_matches_a_local_search():
    import warnings

    import joblib
    import numpy as np
    from sklearn.model_selection import GridSearchCV

    from skformer import SimformerEstimator

    from _data import TINY, seed_task

    # dask is a test requirement (pyproject's "test" extra); the GPU machine's python lacks it
    dask_distributed = pytest.importorskip("dask.distributed")
    Client, LocalCluster = dask_distributed.Client, dask_distributed.LocalCluster
    X = seed_task(300)
    # plumbing, not accuracy: the smallest validation set, a short log-density path and no
    # refit (best_params_ is set without one) keep the work small; what is compared is whether
    # the two clusters agree
    est = SimformerEstimator(**dict(TINY, max_epochs=2, random_state=0, device="cpu",
                                    n_threads=1, log_prob_steps=4,
                                    training_options={"validation_rows": 1}))
    grid = {"learning_rate": [1e-3, 3e-3]}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        worker_threads = client.run(torch.get_num_threads)
        with joblib.parallel_config(backend="dask"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the short-training warning
            remote = GridSearchCV(est, grid, cv=2, n_jobs=2, refit=False).fit(X)
    assert len(worker_threads) == 2 and set(worker_threads.values()) == {1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = GridSearchCV(est, grid, cv=2, refit=False).fit(X)
    scores = remote.cv_results_["mean_test_score"]
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores, local.cv_results_["mean_test_score"], rtol=1e-6)
    assert remote.best_params_ == local.best_params_
