"""Nothing silently broken: diverging fits, data far from zero, interrupts, warning texts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

import skformer.training
from skformer import Simformer, SimformerEstimator

from _data import TINY, seed_task


def small(**kw):
    params = dict(TINY, max_epochs=3, random_state=0, device="cpu")
    params.update(kw)
    return SimformerEstimator(**params)


def finite_weights(est) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in est.model_.state_dict().values())


# ---------------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("learning_rate", [1e6, 1e3])
def test_a_fit_that_diverges_from_the_start_is_refused_and_changes_nothing(learning_rate):
    est = small().fit(seed_task(200))
    before = {k: v.clone() for k, v in est.model_.state_dict().items()}
    with pytest.raises(ValueError, match=r"training diverged.*Lower learning_rate"):
        est.set_params(learning_rate=learning_rate).fit(seed_task(300))
    assert est.n_iter_ == 3  # the earlier fit, untouched
    for k, v in est.model_.state_dict().items():
        assert torch.equal(v, before[k])
    fresh = small(learning_rate=learning_rate)
    with pytest.raises(ValueError, match="diverged"):
        fresh.fit(seed_task(300))
    assert not hasattr(fresh, "model_")


def test_a_late_divergence_keeps_the_best_weights_and_says_so(monkeypatch):
    """The learning rate jumps a millionfold after 40 steps: training explodes in a later epoch;
    the estimator keeps the best epoch before it, warns at the caller's line, and samples."""
    real = skformer.training.lr_factor
    monkeypatch.setattr(skformer.training, "lr_factor",
                        lambda step, total, warmup: real(step, total, warmup) * (
                            1e6 if step >= 40 else 1.0))
    est = small(max_epochs=10, batch_size=64)
    with pytest.warns(RuntimeWarning, match=r"training diverged.*keeps the weights of epoch") \
            as record:
        est.fit(seed_task(1000))
    assert record[0].filename == __file__
    assert finite_weights(est)
    assert not est.converged_ and est.best_epoch_ < est.n_iter_ - 1
    samples = est.posterior().sample(200, observed=np.ones(3), random_state=0)
    assert np.isfinite(samples).all() and np.abs(samples).max() < 10


def test_no_fitted_estimator_ever_holds_non_finite_weights():
    for learning_rate in (1e6, 1e3, 30.0, 2e-3):
        est = small(learning_rate=learning_rate)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est.fit(seed_task(300))
        except ValueError:
            assert not hasattr(est, "model_")
            continue
        assert finite_weights(est), learning_rate


# ---------------------------------------------------------------------------------- data scale
@pytest.mark.parametrize("factor", [1e39, 1e-39, 1e300])
def test_data_far_from_float32s_range_is_handled_in_float64(factor):
    """Standardisation is float64 and robust to overflow: data at any finite float64 scale fit
    and sample in their own units."""
    X = seed_task(600).reshape(600, 6) * factor
    est = small(max_epochs=5, variables=[3, 3]).fit(X)
    assert np.isfinite(est.scale_).all() and (est.scale_ > 0).all()
    s = est.posterior().sample(200, observed=np.ones(3) * factor, random_state=0)
    assert np.isfinite(s).all()
    assert np.abs(s / factor).max() < 3  # in the data's units, within its range
    assert np.isfinite(est.score_samples(X[:5])).all()


def test_observations_beyond_float32_in_standard_units_are_refused():
    est = small().fit(seed_task(200))
    with pytest.raises(ValueError, match="so far outside the training data"):
        est.posterior().sample(3, observed=[1e39, 1.0, 1.0])
    with pytest.raises(ValueError, match="so far outside the training data"):
        est.posterior().log_prob(np.array([[1e39, 0, 0]]), observed=np.ones(3))


# ---------------------------------------------------------------------------------- interrupts
def _interrupt_at_validation(monkeypatch, call: int):
    real, calls = skformer.training._validate, []

    def validate(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(skformer.training, "_validate", validate)


def test_ctrl_c_stops_fit_and_keeps_the_best_weights_so_far(monkeypatch):
    """Call 1 scores the untrained network, calls 2 and 3 epochs 1 and 2: Ctrl-C while epoch 3
    is scored. fit re-raises (a script stops), the estimator keeps epoch 2's weights."""
    _interrupt_at_validation(monkeypatch, 4)
    est = small(max_epochs=10)
    with pytest.warns(RuntimeWarning, match="interrupted") as record, \
            pytest.raises(KeyboardInterrupt, match=r"after 3 epochs.*keeps the weights"):
        est.fit(seed_task(300))
    assert record[0].filename == __file__
    assert est.n_iter_ == 3 and not est.converged_ and finite_weights(est)
    assert est.posterior().sample(5, observed=np.ones(3)).shape == (5, 3)


def test_ctrl_c_in_the_first_epoch_leaves_the_estimator_as_it_was(monkeypatch):
    _interrupt_at_validation(monkeypatch, 2)
    est = small()
    with pytest.raises(KeyboardInterrupt):
        est.fit(seed_task(300))
    assert not hasattr(est, "model_") and not hasattr(est, "n_iter_")


# ---------------------------------------------------------------------------------- warnings
def test_convergence_warning_says_the_loss_was_still_improving_only_when_it_was():
    with pytest.warns(ConvergenceWarning, match="still improving") as record:
        small(max_epochs=2).fit(seed_task(300))
    assert record[0].filename == __file__
    # no epoch beats the first by tol=10: the loss had stopped improving, not "still improving"
    with pytest.warns(ConvergenceWarning, match=r"last improved in epoch 1 and then not for 2") \
            as record:
        small(max_epochs=3, n_iter_no_change=5, tol=10.0).fit(seed_task(300))
    assert "still improving" not in str(record[0].message)


def test_warnings_point_at_the_callers_line_through_pipelines_and_the_sbi_facade():
    pipe = make_pipeline(FunctionTransformer(), small(max_epochs=1))
    with pytest.warns(ConvergenceWarning) as record:
        pipe.fit(seed_task(200).reshape(200, 6))
    assert record[0].filename == __file__
    inference = Simformer(device="cpu", random_state=0, **TINY)
    inference.append_simulations(torch.as_tensor(seed_task(200)))
    with pytest.warns(ConvergenceWarning) as record:
        inference.train(max_num_epochs=1)
    assert record[0].filename == __file__


# ---------------------------------------------------------------------------------- promises
def test_what_a_fixed_random_state_promises():
    """The same random_state on the same machine, device, torch and thread count: the same
    weights, bit for bit; a sampling call's random_state: the same draws."""
    a, b = small().fit(seed_task(300)), small().fit(seed_task(300))
    for (k, va), vb in zip(a.model_.state_dict().items(), b.model_.state_dict().values(),
                           strict=True):
        assert torch.equal(va, vb), k
    cond = a.posterior()
    np.testing.assert_array_equal(cond.sample(5, observed=np.ones(3), random_state=1),
                                  cond.sample(5, observed=np.ones(3), random_state=1))
    # a batch of observations is one stream of draws: row 0 of a batch is a different (equally
    # valid) draw from sampling that observation alone with the same seed, but reproducible
    batch = np.ones((2, 3))
    np.testing.assert_array_equal(cond.sample(5, observed=batch, random_state=1),
                                  cond.sample(5, observed=batch, random_state=1))
