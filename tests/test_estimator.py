"""SimformerEstimator end to end: statistics against exact answers, layouts, masks, errors."""


import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from skformer import SimformerEstimator

from _data import TINY, seed_task

# Seed task answers: theta_j | x_j ~ N(x_j - 1, 0.1^2) (truncation at +-1 negligible for the
# observations used here); x_j | theta_j ~ N(theta_j + 1, 0.1^2).
MEAN_TOL = 0.05  # absolute, on a posterior std of 0.1
STD_RANGE = (0.075, 0.125)


def small(**kw):
    params = dict(TINY, max_epochs=2, random_state=0, device="cpu")
    params.update(kw)
    return SimformerEstimator(**params)


def _check(samples, mean, std=0.1):
    np.testing.assert_allclose(samples.mean(0), mean, atol=MEAN_TOL)
    s = samples.std(0)
    assert np.all((s > STD_RANGE[0]) & (s < STD_RANGE[1])), s


def test_posterior_matches_analytic(fitted):
    x_o = np.array([1.1, 0.9, 1.3])
    samples = fitted.condition([False, True]).sample(4000, observed=x_o, random_state=0)
    assert samples.shape == (4000, 3)
    _check(samples, x_o - 1)


def test_likelihood_matches_analytic(fitted):
    theta_o = np.array([0.5, -0.5, 0.0])
    samples = fitted.likelihood().sample(4000, observed=theta_o, random_state=0)
    _check(samples, theta_o + 1)


def test_mixed_column_conditional(fitted):
    mask = np.array([True, False, False, False, True, True])  # per column
    cond = fitted.condition(mask)
    assert list(cond.latent_columns) == [1, 2, 3]
    assert list(cond.observed_columns) == [0, 4, 5]
    samples = cond.sample(4000, observed=[0.3, 1.2, 0.8], random_state=1)
    _check(samples, [0.2, -0.2, 1.3])


def test_batched_observations_match_single(fitted):
    cond = fitted.posterior()
    obs = np.array([[1.1, 0.9, 1.3], [0.7, 1.0, 1.5]])
    both = cond.sample(2000, observed=obs, random_state=0)
    assert both.shape == (2, 2000, 3)
    for k in range(2):
        _check(both[k], obs[k] - 1)


@pytest.mark.parametrize("solver", ["heun", "euler", "sde"])
def test_other_solvers_sample_the_posterior(fitted, solver):
    steps = {"heun": 15, "euler": 60, "sde": 100}[solver]
    x_o = np.array([1.1, 0.9, 1.3])
    # 1500 draws: the mean's Monte-Carlo error (0.003) and the spread's (0.002) are far inside
    # the tolerances (over fits and draws of seeds 0-2 at most 0.53 of either is used)
    samples = fitted.posterior().sample(1500, observed=x_o, random_state=0, steps=steps,
                                        solver=solver)
    np.testing.assert_allclose(samples.mean(0), x_o - 1, atol=MEAN_TOL)
    assert np.all(np.abs(samples.std(0) - 0.1) < 0.035), samples.std(0)


def test_joint_sample(fitted):
    joint = fitted.sample(3000, random_state=0)
    assert joint.shape == (3000, 6)
    # theta uniform on [-1, 1]: mean 0, std 0.577; x - theta ~ N(1, 0.1^2)
    np.testing.assert_allclose(joint[:, :3].mean(0), 0, atol=0.08)
    np.testing.assert_allclose(joint[:, :3].std(0), 1 / np.sqrt(3), atol=0.08)
    np.testing.assert_allclose((joint[:, 3:] - joint[:, :3]).mean(0), 1, atol=0.05)


def test_sampling_is_reproducible_and_leaves_estimator_alone(fitted):
    before = {k: v.clone() for k, v in fitted.network_.state_dict().items()}
    params = fitted.get_params()
    cond = fitted.condition([False, True])
    a = cond.sample(50, observed=[1, 1, 1], random_state=3)
    b = cond.sample(50, observed=[1, 1, 1], random_state=3)
    c = cond.sample(50, observed=[1, 1, 1], random_state=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert fitted.get_params() == params
    for k, v in fitted.network_.state_dict().items():
        assert torch.equal(v, before[k])


# ---------------------------------------------------------------------------- layouts
def test_layouts_give_the_same_columns():
    X3 = seed_task(300)
    X2 = X3.reshape(300, 6)
    e3 = small().fit(X3)
    e2 = small(variables=[3, 3]).fit(X2)
    et = small(variables=[3, 3]).fit(torch.as_tensor(X2))
    for e in (e3, e2, et):
        assert e.n_features_in_ == 6
        assert e.layout_.n_variables == 2
        assert e.condition([False, True]).sample(4, observed=np.ones(3)).shape == (4, 3)
    np.testing.assert_allclose(e2.mean_, e3.mean_)
    # same seed, same data, same grouping: same weights whatever the container
    for a, b in zip(e2.network_.parameters(), et.network_.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_unequal_variables_and_index_groups():
    X = seed_task(300).reshape(300, 6)
    est = small(variables=[[0, 2], [1], [3, 4, 5]]).fit(X)
    cond = est.condition([False, True, True])
    assert list(cond.latent_columns) == [0, 2]
    assert cond.sample(5, observed=np.ones(4)).shape == (5, 2)


def test_pandas_column_names_become_variable_names():
    X = pd.DataFrame(seed_task(300).reshape(300, 6), columns=["a", "b", "c", "xa", "xb", "xc"])
    est = small().fit(X)
    assert list(est.feature_names_in_) == list(X.columns)
    cond = est.condition([False] * 3 + [True] * 3)
    assert cond.latent_names == ["a", "b", "c"]
    grouped = small(variables={"theta": ["a", "b", "c"], "x": ["xa", "xb", "xc"]}).fit(X)
    post = grouped.posterior()
    # columns keep the DataFrame's names; variables take the dict's
    assert grouped.layout_.names == ("theta", "x")
    assert post.latent_names == ["a", "b", "c"]
    assert post.observed_names == ["xa", "xb", "xc"]
    s = post.sample(50, observed=[1.0, 1.0, 1.0], constraints={"a": (-0.05, 0.0)},
                    random_state=0)
    assert ((s[:, 0] >= -0.05) & (s[:, 0] <= 0.0)).all()
    unnamed = small(variables=[3, 3]).fit(X.to_numpy())
    assert unnamed.posterior().latent_names == ["v0[0]", "v0[1]", "v0[2]"]


def test_posterior_marginalises_unlisted_variables():
    X = seed_task(300).reshape(300, 6)
    est = small(variables=[2, 1, 3], posterior_latent=[0], posterior_observed=[2]).fit(X)
    post = est.posterior()
    assert list(post.latent_columns) == [0, 1]
    assert list(post.observed_columns) == [3, 4, 5]
    assert post.sample(7, observed=np.ones(3)).shape == (7, 2)
    lik = est.likelihood()
    assert list(lik.latent_columns) == [3, 4, 5]
    est.set_condition_indexes(new_posterior_latent_idx=[1], new_posterior_observed_idx=[0])
    assert list(est.posterior().latent_columns) == [2]


# ---------------------------------------------------------------------------- masks
@pytest.mark.parametrize(
    "condition_masks",
    [
        "bernoulli",
        "structured",
        [[False, True], [True, False]],
        {(False, True), (True, False)},
        np.array([False, True]),
        lambda rng, n: rng.random((n, 2)) < 0.5,
    ],
    ids=["bernoulli", "structured", "list", "set", "fixed", "callable"],
)
def test_condition_mask_forms(condition_masks):
    est = small(condition_masks=condition_masks).fit(seed_task(300))
    assert est.condition([False, True]).sample(3, observed=np.ones(3)).shape == (3, 3)


@pytest.mark.parametrize(
    "edge_masks",
    [
        None,
        np.array([[True, False], [True, True]]),
        [np.ones((2, 2), bool), np.eye(2, dtype=bool)],
        lambda cond: np.ones((cond.shape[0], 2, 2), bool),
    ],
    ids=["none", "fixed", "collection", "callable"],
)
def test_edge_mask_forms(edge_masks):
    est = small(edge_masks=edge_masks).fit(seed_task(300))
    cond = est.condition([False, True], edge_mask=np.array([[True, False], [True, True]]))
    assert cond.edge_mask.shape == (6, 6)
    assert cond.sample(3, observed=np.ones(3)).shape == (3, 3)


def test_edge_mask_blocks_information():
    """theta may not attend to x: the 'posterior' then ignores the observation."""
    est = small(max_epochs=1).fit(seed_task(300))
    blind = est.condition([False, True], edge_mask=[[True, False], [True, True]])
    a = blind.sample(20, observed=np.zeros(3), random_state=0)
    b = blind.sample(20, observed=np.full(3, 2.0), random_state=0)
    np.testing.assert_allclose(a, b, atol=1e-5)
    seeing = est.condition([False, True])
    c = seeing.sample(20, observed=np.full(3, 2.0), random_state=0)
    assert not np.allclose(a, c)


# ---------------------------------------------------------------------------- randomness
def test_fit_is_deterministic_and_leaves_global_rng_alone():
    X = seed_task(300)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = small(random_state=7).fit(X)
    assert torch.equal(torch.get_rng_state(), state)
    b = small(random_state=7).fit(X)
    c = small(random_state=8).fit(X)
    pa, pb, pc = (torch.cat([p.flatten() for p in e.network_.parameters()]) for e in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.allclose(pa, pc)
    assert a.loss_curve_ == b.loss_curve_


def test_training_history_and_early_stopping():
    est = small(max_epochs=30, n_iter_no_change=2, tol=10.0).fit(seed_task(300))
    assert est.converged_ and est.n_iter_ == 3  # no epoch beats the first by tol=10
    assert est.best_epoch_ == 0
    assert len(est.loss_curve_) == len(est.validation_scores_) == 3


def test_convergence_warning_when_max_epochs_cuts_training():
    with pytest.warns(ConvergenceWarning, match="max_epochs"):
        small(max_epochs=2).fit(seed_task(300))


def test_no_validation_split():
    est = small(validation_fraction=0.0).fit(seed_task(100))
    assert est.validation_scores_ == []
    assert len(est.loss_curve_) == 2


def test_verbose_progress_bar(capsys):
    small(verbose=1).fit(seed_task(100))
    assert "epoch" in capsys.readouterr().err


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "X, match",
    [
        (np.ones(10), "2D array"),
        (np.ones((0, 3)), "0 sample"),
        (np.ones((1, 3)), "at least 2 samples"),
        (np.array([[0.0, np.nan], [np.nan, np.nan], [1.0, np.nan]]), "hold no value"),
        (np.array([[0.0, 1.0], [np.inf, 2.0], [1.0, 1.0]]), "infinity"),
    ],
)
def test_bad_X(X, match):
    with pytest.raises(ValueError, match=match):
        small().fit(X)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(method="magic"), "method"),
        (dict(condition_masks="random"), "condition_masks"),
        (dict(condition_masks=[[True, True]]), "at least one must be latent"),
        (dict(condition_masks=[True, False, True]), "length"),
        (dict(edge_masks=np.ones((3, 3), bool)), "edge_mask must have shape"),
        (dict(d_model=30, n_heads=4), "divisible"),
        (dict(variables=[2, 2]), "variables applies to 2-D"),
        (dict(posterior_latent=[5]), "outside"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(device="tpu"), "device"),
        (dict(training_options={"max_epochs": 3}), "training_options does not take"),
        (dict(training_options={"ema_decay": 1.5}), "ema_decay"),
        (dict(training_options={"validation_rows": 0}), "validation_rows"),
    ],
)
def test_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        small(**params).fit(seed_task(50))


def test_failed_fit_leaves_estimator_unchanged():
    est = small().fit(seed_task(100))
    net, names = est.network_, est.n_features_in_
    with pytest.raises(ValueError):
        est.fit(np.ones((1, 5)))
    assert est.network_ is net and est.n_features_in_ == names


@pytest.fixture(scope="module")
def tiny_fitted():
    return small().fit(seed_task(200))


@pytest.mark.parametrize(
    "mask, edge, match",
    [
        ([True, False, True], None, "length 2 .one per variable. or 6"),
        ([True, True], None, "at least one must be latent"),
        ([False, 2], None, "booleans"),
        ([False, True], np.ones((3, 3), bool), r"edge_mask must have shape \(2, 2\)"),
    ],
)
def test_bad_condition(tiny_fitted, mask, edge, match):
    with pytest.raises(ValueError, match=match):
        tiny_fitted.condition(mask, edge)


@pytest.mark.parametrize(
    "observed, match",
    [
        (np.ones(2), r"shape \(3,\)"),
        (np.ones((2, 4)), r"\(n_observations, 3\)"),
        (np.array([1.0, np.inf, 1.0]), "infinite"),
        (np.array([1.0, np.nan, 1.0]), "NaN in part of the variable"),
        (None, "required"),
    ],
)
def test_bad_observed(tiny_fitted, observed, match):
    with pytest.raises(ValueError, match=match):
        tiny_fitted.condition([False, True]).sample(3, observed=observed)


@pytest.mark.parametrize(
    "kw, match", [(dict(steps=0), "steps"), (dict(solver="rk4"), "solver"), (dict(), None)]
)
def test_bad_sampling_options(tiny_fitted, kw, match):
    cond = tiny_fitted.condition([False, True])
    if match is None:
        with pytest.raises(ValueError, match="n_samples"):
            cond.sample(0, observed=np.ones(3))
    else:
        with pytest.raises(ValueError, match=match):
            cond.sample(3, observed=np.ones(3), **kw)


def test_unfitted_estimator():
    est = small()
    for call in (lambda: est.condition([False, True]), est.posterior, est.likelihood,
                 lambda: est.sample(3)):
        with pytest.raises(NotFittedError):
            call()


def test_3d_shape_mismatch_at_inference(tiny_fitted):
    with pytest.raises(ValueError, match="fitted on"):
        tiny_fitted._validate_X(np.ones((4, 3, 2)), reset=False)


def test_observed_and_values_accept_strided_and_readonly_arrays(tiny_fitted):
    cond = tiny_fitted.condition([False, True])
    obs = np.array([1.3, 0.9, 1.1])
    reversed_view = obs[::-1]
    readonly = obs.copy()
    readonly.setflags(write=False)
    a = cond.sample(5, observed=reversed_view, random_state=0)
    b = cond.sample(5, observed=np.ascontiguousarray(reversed_view), random_state=0)
    np.testing.assert_array_equal(a, b)
    assert cond.sample(5, observed=readonly, random_state=0).shape == (5, 3)
