"""Known support learnt by the model (``support="transform"``, an opt-in): a column bounded on
both sides is learnt in the logit of its box, so samples land inside without rejection and
densities are proper densities in data units."""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import beta

from skformer import SimformerEstimator, load, save
from skformer.model import Standardiser

from _data import TINY

BOX = {"v0": (0.0, 1.0)}


def edge_task(n: int = 2000, seed: int = 0) -> np.ndarray:
    """theta ~ U(0, 1)^2, x = theta + 0.05 noise: posteriors piled against the box's edges."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0, 1, (n, 2))
    return np.hstack([theta, theta + 0.05 * rng.standard_normal((n, 2))])


def fit(X, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SimformerEstimator(**{**dict(variables=[2, 2], bounds=BOX, max_epochs=15,
                                            support="transform", random_state=0, **TINY),
                                     **params}).fit(X)


@pytest.fixture(scope="module")
def boxed(built_once):
    return built_once("support-boxed", lambda: fit(edge_task(), max_epochs=40))


@pytest.mark.parametrize("stiffness", [0.0, 8.0])
def test_standardiser_round_trip_and_jacobian(stiffness):
    low = torch.tensor([0.0, -np.inf, 2.0])
    high = torch.tensor([1.0, np.inf, np.inf])  # column 2 is one sided: not a box
    st = Standardiser(torch.tensor([0.3, 1.0, 4.0]), torch.tensor([1.7, 2.0, 0.5]), low, high,
                      stiffness)
    assert st.box() == {0: (0.0, 1.0)}
    x = torch.tensor([[1e-9, -3.0, 2.5], [0.5, 7.0, 9.0], [1.0 - 1e-9, 0.0, 2.0]],
                     dtype=torch.float64)
    back = st.inverse(st(x))
    np.testing.assert_allclose(back[1].numpy(), x[1].numpy(), rtol=1e-6)
    assert ((back[:, 0] >= 0) & (back[:, 0] <= 1)).all()
    # any standard value, however far out, maps inside the box
    z = torch.tensor([[-1e4, 0.0, 0.0], [1e4, 0.0, 0.0]])
    assert ((st.inverse(z)[:, 0] >= 0) & (st.inverse(z)[:, 0] <= 1)).all()
    # log |dz/dx| per entry against autograd of the map itself, in float64
    xs = torch.tensor([[0.2, 1.0, 3.0], [0.93, -2.0, 5.0]], dtype=torch.float64,
                      requires_grad=True)
    z64 = (st.unbound(xs) - st.mean) / st.scale
    grads = torch.stack([torch.autograd.grad(z64[:, j].sum(), xs, retain_graph=True)[0][:, j]
                         for j in range(3)], 1)
    np.testing.assert_allclose(st.log_abs_det_at(xs.detach()).numpy(),
                               torch.log(grads.abs()).numpy(), rtol=1e-10)
    # the inverse's gradient (guidance and the map climb differentiate through it)
    zs = st(xs.detach()).double().requires_grad_(True)
    (dx,) = torch.autograd.grad(st.inverse(zs)[:, 0].sum(), zs)
    np.testing.assert_allclose(dx[:, 0].numpy(), 1 / grads[:, 0].numpy(), rtol=1e-4)


def test_a_standardiser_refuses_data_outside_its_box():
    X = torch.tensor([[0.5], [1.5]])
    with pytest.raises(ValueError, match="outside their box"):
        Standardiser.from_data(X, low=torch.tensor([0.0]), high=torch.tensor([1.0]))


def test_samples_stay_inside_without_rejection(boxed):
    assert boxed.support_ == {"v0[0]": (0.0, 1.0), "v0[1]": (0.0, 1.0)}
    post = boxed.posterior()
    assert post._bounds == {}  # the model keeps the box: nothing left to reject
    s = post.sample(4000, np.array([0.02, 0.98]), random_state=0)
    assert ((s >= 0) & (s <= 1)).all()
    # the exact posterior is N(x_o, 0.05) cut at the edge: mass piles against both edges
    # (58 % within 0.05 of the edge; this small model 37 % and 44 % at seed 0)
    assert (s[:, 0] < 0.05).mean() > 0.25 and (s[:, 1] > 0.95).mean() > 0.25


def test_the_truncating_model_samples_outside_and_redraws():
    est = fit(edge_task(), support="truncate")
    assert est.support_ == {}
    post = est.posterior()
    assert set(post._bounds) == {0, 1}
    s = post.sample(2000, np.array([0.02, 0.98]), random_state=0)
    assert ((s >= 0) & (s <= 1)).all()
    free = est.set_params(bounds=None).posterior().sample(2000, np.array([0.02, 0.98]),
                                                          random_state=0)
    assert ((free < 0) | (free > 1)).mean() > 0.05  # what the rejection removed


def test_log_prob_is_a_density_in_data_units():
    """A single bounded column, Beta(2, 5) on (0, 2): exp(log_prob) integrates to one over the
    box (the logit's Jacobian included), is -inf outside, and follows the true density."""
    theta = 2.0 * beta(2, 5).rvs(3000, random_state=np.random.default_rng(0))
    est = fit(theta[:, None], variables=None, bounds={0: (0.0, 2.0)}, max_epochs=30)
    grid = np.linspace(0, 2, 4001)[1:-1]
    lp = est.score_samples(grid[:, None])
    integral = np.exp(lp).sum() * (grid[1] - grid[0])
    assert abs(integral - 1) < 0.03
    assert np.isneginf(est.score_samples(np.array([[-0.1], [2.5]]))).all()
    inner = (grid > 0.2) & (grid < 1.0)  # where the density is large
    np.testing.assert_allclose(np.exp(lp[inner]), beta(2, 5, scale=2).pdf(grid[inner]),
                               atol=0.25)


def test_map_stays_inside_and_near_the_edge(boxed):
    """The exact posterior's mode given x_o = (0.02, 0.98) is (0.02, 0.98); the climb runs in
    the logit and cannot leave the box (the data-unit mode of an exact network:
    tests/test_model.py)."""
    mode = boxed.posterior().map(np.array([0.02, 0.98]), random_state=0, n_iter=50)
    assert ((mode > 0) & (mode < 1)).all()
    np.testing.assert_allclose(mode, [0.02, 0.98], atol=0.06)


def test_guidance_and_iid_trials_keep_inside(boxed):
    post = boxed.posterior()
    s = post.sample(500, np.array([0.3, 0.5]), constraints={0: (0.0, 0.25)}, random_state=0)
    assert (s[:, 0] <= 0.25).all() and (s >= 0).all()
    trials = np.array([[0.02, 0.5], [0.04, 0.45], [0.0, 0.55]])
    s = post.sample(300, trials, iid=True, random_state=0)
    assert ((s >= 0) & (s <= 1)).all()
    with pytest.raises(ValueError, match="logit of their box"):
        post.sample(10, trials, iid=True, prior=torch.distributions.Independent(
            torch.distributions.Uniform(torch.zeros(2), torch.ones(2)), 1))


def test_narrower_bounds_after_the_fit_truncate_on_top(boxed):
    est = copy.deepcopy(boxed).set_params(bounds={"v0": (0.0, 0.5)})
    post = est.posterior()
    assert set(post._bounds) == {0, 1}  # narrower than the model's box: rejection
    s = post.sample(300, np.array([0.45, 0.3]), random_state=0)
    assert ((s >= 0) & (s <= 0.5)).all()


def test_observed_values_outside_the_box_are_refused(boxed):
    like = boxed.likelihood()
    assert like.sample(5, np.array([0.5, 0.5]), random_state=0).shape == (5, 2)
    with pytest.raises(ValueError, match="outside the box of column 'v0\\[1\\]'"):
        like.sample(5, np.array([0.5, 1.2]))
    lp = boxed.posterior().log_prob(np.array([[0.5, 0.5], [0.5, 1.5]]), np.array([0.5, 0.5]))
    assert np.isfinite(lp[0]) and np.isneginf(lp[1])


def test_data_outside_the_bounds_is_refused_and_changes_nothing(boxed):
    est = copy.deepcopy(boxed)
    before = pickle.dumps(est.model_)
    X = edge_task(200)
    X[3, 1] = 1.2
    with pytest.raises(ValueError, match="column 'v0\\[1\\]' outside its bounds"):
        est.fit(X)
    assert pickle.dumps(est.model_) == before
    with pytest.raises(ValueError, match="support"):
        SimformerEstimator(support="clip").fit(edge_task(50))


def test_a_warm_start_keeps_its_box(boxed):
    est = copy.deepcopy(boxed).set_params(warm_start=True, max_epochs=1)
    est.fit(edge_task(300, seed=1))  # same bounds: continues
    assert est.support_ == boxed.support_
    with pytest.raises(ValueError, match="support changed"):
        est.set_params(bounds={"v0": (0.0, 2.0)}).fit(edge_task(300, seed=2))


def test_the_box_survives_every_format(boxed, tmp_path):
    import joblib

    save(boxed, tmp_path / "m.skf")
    joblib.dump(boxed, tmp_path / "m.joblib")
    x_o = np.array([0.02, 0.5])
    ref = boxed.posterior().sample(50, x_o, random_state=3)
    for back in (load(tmp_path / "m.skf"), joblib.load(tmp_path / "m.joblib"),
                 pickle.loads(pickle.dumps(boxed))):
        assert back.support_ == boxed.support_
        np.testing.assert_array_equal(back.posterior().sample(50, x_o, random_state=3), ref)


def test_a_bad_support_in_a_file_is_refused(boxed):
    from skformer.model import SimformerModel

    description = boxed.model_.describe()
    state = boxed.model_.state_dict()
    box = [[0, 0.0, 1.0], [1, 0.0, 1.0]]
    assert description["support"] == {"box": box, "stiffness": boxed.model_.standardiser
                                      .stiffness}
    for bad in ([[0, 1.0, 0.0]], [[7, 0.0, 1.0]], [[0, 0.0, 1.0], [0, 0.0, 1.0]], "box",
                [[0, 0.0, float("inf")]]):
        with pytest.raises(ValueError, match="support"):
            SimformerModel.from_description(
                {**description, "support": {"box": bad, "stiffness": 0.0}}, state, "cpu")
    for bad in (-1.0, float("nan"), "2", None):
        with pytest.raises(ValueError, match="support"):
            SimformerModel.from_description(
                {**description, "support": {"box": box, "stiffness": bad}}, state, "cpu")
    with pytest.raises(ValueError, match="support"):
        SimformerModel.from_description({**description, "support": box}, state, "cpu")


def test_columns_that_share_a_standardisation_need_one_box():
    X = edge_task(100)
    with pytest.raises(ValueError, match="share one standardisation"):
        fit(X, variables={"a": 1, "b": 1, "x": 2}, exchangeable=[["a", "b"]],
            bounds={"a": (0.0, 1.0)})
    est = fit(X, variables={"a": 1, "b": 1, "x": 2}, exchangeable=[["a", "b"]],
              bounds={"a": (0.0, 1.0), "b": (0.0, 1.0)}, max_epochs=1)
    assert est.support_ == {"a": (0.0, 1.0), "b": (0.0, 1.0)}


def test_missing_entries_pass_through_the_box():
    """NaN (missing) in a boxed column: fit leaves it out, a density marginalises it."""
    X = edge_task(600)
    X[::7, 0] = np.nan
    est = fit(X, max_epochs=3)
    assert np.isfinite(est.mean_).all() and est.support_ == {"v0[0]": (0.0, 1.0),
                                                            "v0[1]": (0.0, 1.0)}
    cond = est.condition(np.array([False, False, True, True]))
    lp = cond.log_prob(np.array([[np.nan, 0.4], [np.nan, 1.4]]), np.array([0.3, 0.4]))
    assert np.isfinite(lp[0]) and np.isneginf(lp[1])
    # truncated instead: a row is renormalised over the bounded columns present in it
    est = fit(X, max_epochs=3, support="truncate")
    cond = est.condition(np.array([False, False, True, True]))
    rows = np.array([[np.nan, 0.4], [0.3, 0.4]])
    shift = (cond.log_prob(rows, np.array([0.3, 0.4]), normalise=False)
             - cond.log_prob(rows, np.array([0.3, 0.4])))
    free = est.set_params(bounds=None).condition(np.array([False, False, True, True]))
    s = free.sample(4000, np.array([0.3, 0.4]), random_state=5)
    inside = (s >= 0) & (s <= 1)
    np.testing.assert_allclose(shift, np.log([inside[:, 1].mean(), inside.all(1).mean()]),
                               atol=0.05)
    assert inside.all(1).mean() < inside[:, 1].mean() < 0.95  # the correction is not small
