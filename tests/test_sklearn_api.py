"""scikit-learn citizenship: the estimator checks, tags, pipelines and model selection.

Every check of ``parametrize_with_checks`` runs on a tiny CPU model and is expected to pass:
``EXPECTED_FAILED_CHECKS`` is empty on purpose. A few checks that scikit-learn does not yield by
default but that apply to a density estimator run below it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import estimator_checks as ec
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import parametrize_with_checks

from skformer import SimformerEstimator

# max_epochs=2 always stops before convergence; the warning says so and is not under test here
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

TINY = dict(d_model=8, n_layers=1, n_heads=2, max_epochs=2, sampling_steps=4, device="cpu",
            random_state=0)


def tiny(**kw) -> SimformerEstimator:
    return SimformerEstimator(**{**TINY, **kw})


# Checks that may fail for a true reason, with that reason. None do: the estimator passes them all.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


def _check_name(check) -> str:
    while hasattr(check, "__wrapped__"):
        check = check.__wrapped__
    return getattr(check, "func", check).__name__


@parametrize_with_checks([tiny()], expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check, monkeypatch):
    if _check_name(check) == "check_array_api_input":
        # scikit-learn skips this check unless SCIPY_ARRAY_API is set. For an estimator without
        # array API support it only runs NumPy input with array_api_dispatch on, so scipy's own
        # array API mode (read when scipy is imported) plays no part: set the variable here
        # rather than skip.
        monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    check(estimator)


@pytest.mark.parametrize(
    "check",
    [
        ec.check_param_validation,
        ec.check_dataframe_column_names_consistency,
        ec.check_inplace_ensure_writeable,
    ],
    ids=lambda c: c.__name__,
)
def test_checks_not_yielded_by_default(check):
    check(SimformerEstimator.__name__, tiny())


# ---------------------------------------------------------------------------- tags
def test_tags_tell_the_truth():
    tags = get_tags(tiny())
    assert tags.estimator_type == "density_estimator"
    assert tags.requires_fit
    assert tags.input_tags.allow_nan  # NaN = missing (tests/test_missing.py)
    assert not tags.input_tags.sparse
    assert tags.input_tags.two_d_array
    assert not tags.target_tags.required
    assert not tags.non_deterministic  # CPU: fit and score_samples are reproducible


def test_non_deterministic_tag_follows_the_device(monkeypatch):
    # where CUDA is missing, device="cuda" falls back to the CPU: still deterministic
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not get_tags(tiny(device="cuda")).non_deterministic
    assert not get_tags(tiny(device="auto")).non_deterministic
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert get_tags(tiny(device="cuda")).non_deterministic
    assert get_tags(tiny(device="auto")).non_deterministic
    assert not get_tags(tiny(device="cpu")).non_deterministic
    assert not get_tags(tiny(device="tpu")).non_deterministic  # invalid: fit will say so


# ---------------------------------------------------------------------------- data
def gaussian(n: int = 60, d: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ A.T + 2.0


@pytest.fixture(scope="module")
def fitted():
    return tiny().fit(gaussian())


# ---------------------------------------------------------------------------- validation
def test_one_sample_is_refused_in_sklearn_wording():
    with pytest.raises(ValueError, match="at least 2 samples .* got 1 sample"):
        tiny().fit(np.ones((1, 3)))


def test_wrong_number_of_features_at_inference(fitted):
    with pytest.raises(ValueError, match="expecting 3 features"):
        fitted.score_samples(np.ones((4, 2)))


def test_feature_names_are_checked():
    X = pd.DataFrame(gaussian(), columns=["a", "b", "c"])
    est = tiny().fit(X)
    assert list(est.feature_names_in_) == ["a", "b", "c"]
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        plain = est.score_samples(X.to_numpy())
    np.testing.assert_array_equal(est.score_samples(X), plain)
    with pytest.raises(ValueError, match="feature names should match"):
        est.score_samples(X.rename(columns={"c": "z"}))


def test_strided_and_readonly_input(fitted):
    X = gaussian(12, seed=1)
    expected = fitted.score_samples(X)
    np.testing.assert_array_equal(fitted.score_samples(X[::-1])[::-1], expected)
    frozen = X.copy()
    frozen.setflags(write=False)
    np.testing.assert_array_equal(fitted.score_samples(frozen), expected)
    np.testing.assert_array_equal(fitted.score_samples(np.asfortranarray(X)), expected)


def test_single_column_is_a_density_estimation_problem():
    X = gaussian(60, d=1)
    est = tiny().fit(X)
    assert est.layout_.n_variables == 1
    assert np.all(np.isfinite(est.score_samples(X)))
    assert est.sample(5, random_state=0).shape == (5, 1)
    with pytest.raises(ValueError, match="single variable"):
        est.posterior()


# ---------------------------------------------------------------------------- determinism
def test_sample_takes_randomness_from_the_call(fitted):
    a = fitted.sample(4, random_state=0)
    np.testing.assert_array_equal(a, fitted.sample(4, random_state=0))
    np.testing.assert_array_equal(
        fitted.sample(4, random_state=np.random.RandomState(3)),
        fitted.sample(4, random_state=np.random.RandomState(3)),
    )
    assert not np.allclose(a, fitted.sample(4, random_state=1))
    assert fitted.sample().shape == (1, 3)
    assert fitted.random_state == 0  # the call's seed never becomes the estimator's


def test_hutchinson_score_samples_is_row_independent():
    """Above 16 columns the divergence is Hutchinson's estimate: one set of probes for every
    row, so a row's log density is the same alone, in a batch, or in another order (up to
    float32 rounding of batch-size-dependent kernels, far below the probes' own noise)."""
    X = gaussian(40, d=20)
    est = tiny(max_epochs=1).fit(X)
    rows = X[:6]
    full = est.score_samples(rows)
    np.testing.assert_array_equal(full, est.score_samples(rows))  # deterministic
    one_by_one = np.array([est.score_samples(r[None])[0] for r in rows])
    reversed_ = est.score_samples(rows[::-1])[::-1]
    np.testing.assert_allclose(one_by_one, full, rtol=1e-5, atol=0)
    np.testing.assert_allclose(reversed_, full, rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------- composition
def test_clone_and_params_round_trip(fitted):
    params = fitted.get_params()
    twin = clone(fitted)
    assert twin.get_params() == params
    assert not hasattr(twin, "network_")
    other = tiny().set_params(d_model=16, condition_masks="bernoulli")
    assert other.d_model == 16 and other.condition_masks == "bernoulli"
    assert tiny().set_params(**other.get_params()).get_params() == other.get_params()
    with pytest.raises(ValueError, match="Invalid parameter"):
        tiny().set_params(width=3)


def test_pipeline_passes_score_samples_and_score_through():
    X = gaussian()
    pipe = Pipeline([("scale", StandardScaler()), ("simformer", tiny())]).fit(X)
    inner = pipe.named_steps["simformer"]
    Xt = pipe.named_steps["scale"].transform(X)
    np.testing.assert_array_equal(pipe.score_samples(X), inner.score_samples(Xt))
    assert pipe.score(X) == pytest.approx(np.mean(inner.score_samples(Xt)))
    # the same weights as fitting the estimator alone on the scaled data
    alone = tiny().fit(Xt)
    for a, b in zip(alone.network_.parameters(), inner.network_.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert clone(pipe).get_params()["simformer__d_model"] == 8


def test_cross_val_score_is_held_out_mean_log_density():
    X = gaussian()
    cv = KFold(2, shuffle=True, random_state=0)
    scores = cross_val_score(tiny(), X, cv=cv)
    assert scores.shape == (2,) and np.all(np.isfinite(scores))
    for score, (train, test) in zip(scores, cv.split(X), strict=True):
        manual = tiny().fit(X[train]).score(X[test])
        assert score == pytest.approx(manual, rel=1e-12)


def test_grid_search_picks_by_score():
    X = gaussian()
    search = GridSearchCV(tiny(), {"d_model": [8, 16]}, cv=2).fit(X)
    results = search.cv_results_
    assert list(results["param_d_model"]) == [8, 16]
    assert np.all(np.isfinite(results["mean_test_score"]))
    best = int(np.argmax(results["mean_test_score"]))
    assert search.best_params_ == {"d_model": [8, 16][best]}
    assert search.best_estimator_.d_model == search.best_params_["d_model"]
    assert search.score(X) == pytest.approx(search.best_estimator_.score(X))
    assert search.best_estimator_.sample(3, random_state=0).shape == (3, 3)
