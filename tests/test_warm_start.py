"""Simulations that keep arriving: ``warm_start=True`` and ``partial_fit``."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone

from skformer import SimformerEstimator
from skformer.training import PartialTrainer

from _data import TINY, seed_task

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def small(**kw):
    return SimformerEstimator(**{**TINY, "random_state": 0, "device": "cpu", **kw})


def weights(est):
    return {k: v.clone() for k, v in est.network_.state_dict().items()}


def same_weights(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained(built_once):
    """A short fit to continue from (8 epochs on 1500 rows of the seed task)."""
    return built_once("warm-start-trained", lambda: small(max_epochs=8).fit(seed_task(1500)))


# ------------------------------------------------------------------ warm_start
def test_warm_start_continues_from_the_fitted_weights_and_improves_them(trained):
    start = weights(trained)
    est = pickle.loads(pickle.dumps(trained)).set_params(warm_start=True, max_epochs=6)
    mean = est.mean_.copy()
    est.fit(seed_task(1500, seed=1))
    # the histories continue; the first new epoch trains at the fitted level, not from scratch
    assert est.n_iter_ == 8 + 6 and len(est.loss_curve_) == 14
    assert len(est.validation_scores_) == 14
    assert est.training_time_ > trained.training_time_ > 0  # so does the training time
    assert est.loss_curve_[8] < 0.75 * trained.loss_curve_[0]
    assert abs(est.loss_curve_[8] - trained.loss_curve_[-1]) < 0.1
    np.testing.assert_array_equal(est.mean_, mean)  # the first fit's standardiser stays
    assert not same_weights(weights(est), start)
    assert same_weights(weights(trained), start)  # the fitted estimator it copied is untouched
    # and the continued model is better: a higher log density of fresh simulations (200 rows:
    # the gain is 0.50-1.49 over fits of seeds 0-2 and held-out seeds 9-11, 0.05 needed)
    held_out = seed_task(200, seed=9)
    assert est.score(held_out) > trained.score(held_out) + 0.05


def test_warm_start_keeps_the_start_when_training_diverges(trained):
    start = weights(trained)
    est = pickle.loads(pickle.dumps(trained))
    est.set_params(warm_start=True, max_epochs=3, learning_rate=1e4)
    with pytest.warns(RuntimeWarning, match="fit it started from"):
        est.fit(seed_task(1500, seed=1))
    assert same_weights(weights(est), start)
    assert est.best_epoch_ == trained.best_epoch_  # still the epoch those weights come from
    assert len(est.loss_curve_) > len(trained.loss_curve_)


def test_warm_start_on_an_unfitted_estimator_is_a_fresh_fit():
    X = seed_task(600)
    a = small(max_epochs=2, warm_start=True).fit(X)
    b = small(max_epochs=2).fit(X)
    assert same_weights(weights(a), weights(b))
    assert a.loss_curve_ == b.loss_curve_


def test_warm_start_off_refits_from_scratch(trained):
    est = pickle.loads(pickle.dumps(trained)).set_params(max_epochs=2)
    est.fit(seed_task(1500))
    assert est.n_iter_ == 2 and len(est.loss_curve_) == 2


@pytest.mark.parametrize("change, match", [
    (dict(d_model=16), "network changed"),
    (dict(tokens="variable"), "network changed"),
    (dict(method="flow"), "dynamics changed"),
    (dict(dynamics_options={"p_mean": -1.0}), "dynamics changed"),
])
def test_warm_start_refuses_a_changed_model(trained, change, match):
    est = pickle.loads(pickle.dumps(trained)).set_params(warm_start=True, max_epochs=1)
    before = weights(est)
    est.set_params(**change)
    with pytest.raises(ValueError, match=match):
        est.fit(seed_task(1500))
    assert same_weights(weights(est), before) and est.n_iter_ == trained.n_iter_


def test_warm_start_refuses_other_columns(trained):
    est = pickle.loads(pickle.dumps(trained)).set_params(warm_start=True, max_epochs=1)
    with pytest.raises(ValueError, match="features"):
        est.fit(seed_task(300).reshape(300, -1)[:, :5])


# ------------------------------------------------------------------ partial_fit
def test_partial_fit_in_chunks_equals_one_call_of_the_same_steps():
    """The steps of partial_fit do not depend on how the rows were cut into calls (batches of
    64; chunks that are whole batches)."""
    rows = seed_task(1024, seed=3)
    a = small(batch_size=64).partial_fit(rows[:256])
    b = small(batch_size=64).partial_fit(rows[:256])
    for lo, hi in ((256, 512), (512, 640), (640, 1024)):
        a.partial_fit(rows[lo:hi])
    b.partial_fit(rows[256:])
    assert same_weights(weights(a), weights(b))
    assert a.n_iter_ == 4 and b.n_iter_ == 2
    assert a.n_training_rows_ == b.n_training_rows_ == 1024
    assert a._partial.steps == b._partial.steps == 1024 // 64
    # and the chunks trained: the weights moved away from the first call's
    c = small(batch_size=64).partial_fit(rows[:256])
    assert not same_weights(weights(a), weights(c))


def test_partial_fit_on_arriving_chunks_learns_the_posterior():
    """Chunks of fresh simulations, one pass each: the posterior of the seed task,
    theta | x ~ N(x - 1, 0.1^2), from 40 chunks of 512 rows (320 steps of 64 rows)."""
    est = small(batch_size=64)
    for k in range(40):
        est.partial_fit(seed_task(512, seed=100 + k))
    x_o = np.array([1.1, 0.9, 1.3])
    samples = est.posterior().sample(4000, observed=x_o, random_state=0)
    np.testing.assert_allclose(samples.mean(0), x_o - 1, atol=0.05)
    assert np.all((samples.std(0) > 0.075) & (samples.std(0) < 0.125)), samples.std(0)


def test_partial_fit_continues_a_fitted_model(trained):
    est = pickle.loads(pickle.dumps(trained))
    est.partial_fit(seed_task(512, seed=5))
    assert est.n_iter_ == trained.n_iter_ + 1
    assert est.training_time_ > trained.training_time_
    # a trained network's loss, not an untrained one's (whose first epoch was loss_curve_[0])
    assert est.loss_curve_[-1] < 0.75 * trained.loss_curve_[0]
    np.testing.assert_array_equal(est.mean_, trained.mean_)


def test_partial_fit_refuses_changes_and_bad_input():
    est = small(batch_size=64).partial_fit(seed_task(256))
    before = weights(est)
    with pytest.raises(ValueError, match="features"):
        est.partial_fit(seed_task(64).reshape(64, -1)[:, :5])
    est.set_params(n_layers=3)
    with pytest.raises(ValueError, match="network changed"):
        est.partial_fit(seed_task(64))
    assert same_weights(weights(est), before) and est.n_iter_ == 1
    with pytest.raises(ValueError, match="at least 2"):
        small().partial_fit(seed_task(1))


def test_partial_fit_undoes_a_call_whose_loss_is_not_finite(monkeypatch):
    est = small(batch_size=64).partial_fit(seed_task(256))
    trainer = est._partial
    before, ema, steps = weights(est), trainer.ema.state_dict(), trainer.steps
    ema = {k: v.clone() for k, v in ema.items()}
    raw = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    real, calls = trainer.step_fn, []

    def failing(batch, lr):
        calls.append(lr)
        loss = real(batch, lr)  # the weights do move ...
        return loss if len(calls) < 3 else loss * float("nan")  # ... then the third is NaN

    monkeypatch.setattr(trainer, "step_fn", failing)
    with pytest.raises(ValueError, match="not finite|is nan"):
        est.partial_fit(seed_task(512, seed=1))
    assert len(calls) == 3
    assert same_weights(weights(est), before) and est.n_iter_ == 1
    assert trainer.steps == steps
    assert same_weights(trainer.ema.state_dict(), ema)
    assert same_weights(trainer.network.state_dict(), raw)


def test_partial_fit_survives_pickling_without_its_optimiser():
    est = small(batch_size=64).partial_fit(seed_task(256))
    loaded = pickle.loads(pickle.dumps(est))
    assert "_partial" not in loaded.__dict__
    assert same_weights(weights(loaded), weights(est))
    loaded.partial_fit(seed_task(256, seed=1))  # restarts its optimiser from the weights
    assert loaded.n_iter_ == 2


def test_clone_keeps_warm_start_and_drops_the_fit(trained):
    est = pickle.loads(pickle.dumps(trained)).set_params(warm_start=True)
    copy = clone(est)
    assert copy.warm_start is True and "model_" not in copy.__dict__


def test_fit_after_partial_fit_starts_afresh():
    est = small(batch_size=64, max_epochs=1).partial_fit(seed_task(256))
    est.fit(seed_task(600))
    assert "_partial" not in est.__dict__ and est.n_iter_ == 1


def test_partial_trainer_warm_up_is_linear_then_constant():
    est = small(batch_size=64).partial_fit(seed_task(128))
    trainer = est._partial
    assert isinstance(trainer, PartialTrainer) and trainer.steps == 2
    seen = []
    real = trainer.step_fn
    trainer.step_fn = lambda batch, lr: (seen.append(lr), real(batch, lr))[1]
    est.partial_fit(seed_task(64 * 150, seed=2))
    lr = est.learning_rate
    assert seen[0] == pytest.approx(lr * 3 / PartialTrainer.WARMUP_STEPS)
    assert seen[97] == pytest.approx(lr) and seen[-1] == pytest.approx(lr)
