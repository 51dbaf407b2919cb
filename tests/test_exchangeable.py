"""Exchangeable variables: iid draws given their parents share an identity and a
standardisation, so the network is symmetric under swapping them."""

from __future__ import annotations

import copy
import pickle

import joblib
import numpy as np
import pytest
import torch

from skformer import SimformerEstimator, load, save
from skformer.graph import DAG
from skformer.layout import Layout

NOISE = 0.5


def draws(n=2000, seed=0, k=3):
    """theta ~ N(0, 1); k draws x_j = theta + 0.5 eps_j, iid given theta."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n, 1))
    return np.concatenate([theta, theta + NOISE * rng.normal(size=(n, k))], axis=1)


NAMES = {"theta": 1, "x1": 1, "x2": 1, "x3": 1}
TINY = dict(d_model=16, n_layers=1, n_heads=2, random_state=0, device="cpu")


@pytest.fixture(scope="module")
def briefly_fitted():
    return SimformerEstimator(variables=NAMES, exchangeable=[["x1", "x2", "x3"]],
                              max_epochs=2, **TINY).fit(draws(300))


# ---------------------------------------------------------------------------------- layout
def test_the_kth_columns_of_exchangeable_variables_form_one_class():
    layout = Layout.from_spec(7, [1, 2, 2, 2], names=["t", "a", "b", "c"])
    sets = layout.exchangeable_sets([["a", 3]])
    assert sets == [[1, 3]]
    shared = layout.shared_columns(sets)
    assert sorted(map(sorted, shared)) == [[1, 5], [2, 6]]
    assert layout.column_identities(shared) == [0, 1, 2, 3, 4, 1, 2]
    # with positions, all the readings of a variable share one class too
    both = layout.shared_columns(sets, whole=[2])
    assert sorted(map(sorted, both)) == [[1, 5], [2, 6], [3, 4]]
    assert layout.column_identities([]) is None


def test_exchangeable_columns_share_identity_and_standardisation(briefly_fitted):
    net, std = briefly_fitted.model_.network, briefly_fitted.model_.standardiser
    assert net.identities == [0, 1, 1, 1]
    assert net.token_id.num_embeddings == 2
    assert torch.equal(std.mean[1:], std.mean[1].expand(3))
    assert torch.equal(std.scale[1:], std.scale[1].expand(3))
    X = draws(300)
    np.testing.assert_allclose(std.mean[1].item(), X[:, 1:].mean(), rtol=1e-9)
    # tokens="auto" keeps one token per column for them
    auto = SimformerEstimator(variables=[1, 4, 4, 4], exchangeable=[[1, 2, 3]], tokens="auto",
                              max_epochs=1, **TINY)
    X13 = np.random.default_rng(0).normal(size=(64, 13))
    assert all(len(t) == 1 for t in auto.fit(X13).token_columns_)


def test_the_model_is_symmetric_under_swapping_exchangeable_draws(briefly_fitted):
    """Swapping the observed draws changes nothing (to rounding): the posterior's samples with
    one random state and its log density are those of the draws in another order."""
    post = briefly_fitted.posterior()
    x_o = np.array([0.3, -0.4, 1.1])
    swapped = x_o[[2, 0, 1]]
    a = post.sample(200, observed=x_o, random_state=3)
    b = post.sample(200, observed=swapped, random_state=3)
    np.testing.assert_allclose(a, b, atol=1e-5)
    grid = np.linspace(-1, 1, 5)[:, None]
    np.testing.assert_allclose(post.log_prob(grid, observed=x_o),
                               post.log_prob(grid, observed=swapped), atol=1e-4)
    # the network itself, with a head that is not near zero after two epochs: swapping two
    # exchangeable columns swaps its outputs; without the declaration it does not
    plain = SimformerEstimator(variables=NAMES, max_epochs=2, **TINY).fit(draws(300))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, generator=gen)
    t = torch.rand(8, generator=gen)
    observed = torch.tensor([False, True, True, False]).expand(8, 4)
    order = [0, 2, 1, 3]  # x1 <-> x2
    for est, symmetric in ((briefly_fitted, True), (plain, False)):
        net = copy.deepcopy(est.model_.network).eval()
        with torch.no_grad():
            net.head.weight.normal_(generator=gen)
            out = net(x, t, observed)
            out_swapped = net(x[:, order], t, observed[:, order])[:, order]
        assert torch.allclose(out, out_swapped, atol=1e-5) == symmetric


def test_exchangeable_draws_give_the_exact_gaussian_posterior():
    """theta ~ N(0, 1) and three draws theta + 0.5 eps: the posterior is N(m, 1/13) with
    m = 4 (x1 + x2 + x3) / 13, learnt with one conditional shared by the draws.

    Tolerances from random states 0-4 of this fit: the means within 0.034 (0.12 posterior sds),
    the spreads within 15 % (random state 1; the others within 6 %). A model that read one draw
    instead of three would be 60 % too wide."""
    est = SimformerEstimator(variables=NAMES, exchangeable=[["x1", "x2", "x3"]], d_model=32,
                             n_layers=2, max_epochs=40, random_state=0, device="cpu")
    est.fit(draws(2000))
    precision = 1 + 3 / NOISE**2
    for x_o in ([0.5, 0.2, 0.8], [-1.0, -0.6, -1.3]):
        s = est.posterior().sample(2000, observed=np.array(x_o), random_state=0)[:, 0]
        mean, std = sum(x_o) / NOISE**2 / precision, precision**-0.5
        assert abs(s.mean() - mean) < 0.06, (s.mean(), mean)
        assert abs(s.std() / std - 1) < 0.20, (s.std(), std)


# ---------------------------------------------------------------------------------- persistence
def test_exchangeable_persists(briefly_fitted, tmp_path):
    save(briefly_fitted, tmp_path / "exchangeable.skf")
    joblib.dump(briefly_fitted, tmp_path / "exchangeable.joblib")
    x_o = np.array([0.3, -0.4, 1.1])
    expected = briefly_fitted.posterior().sample(50, observed=x_o, random_state=1)
    for loaded in (load(tmp_path / "exchangeable.skf"),
                   joblib.load(tmp_path / "exchangeable.joblib"),
                   pickle.loads(pickle.dumps(briefly_fitted))):
        assert loaded.exchangeable == [["x1", "x2", "x3"]]
        assert loaded.model_.network.identities == [0, 1, 1, 1]
        np.testing.assert_array_equal(
            loaded.posterior().sample(50, observed=x_o, random_state=1), expected)


# ---------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("spec, match", [
    (["x1"], "must be a list of variables"),
    ([["x1"]], "at least two distinct"),
    ([["x1", "x1"]], "at least two distinct"),
    ([["x1", "nope"]], "unknown variable 'nope'"),
    ([[1, 7]], "outside the 4 variables"),
    ([["x1", "x2"], ["x2", "x3"]], "belongs to one set"),
    ([[True, False]], "boolean mask"),
])
def test_bad_declarations_are_clear_errors_that_change_nothing(briefly_fitted, spec, match):
    est = copy.deepcopy(briefly_fitted)
    before = {k: v.clone() for k, v in est.model_.state_dict().items()}
    est.set_params(exchangeable=spec, warm_start=False)
    with pytest.raises(ValueError, match=match):
        est.fit(draws(300))
    after = est.model_.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_exchangeable_must_be_a_list_of_sets():
    with pytest.raises(ValueError, match="'exchangeable' parameter"):
        SimformerEstimator(exchangeable="x1").fit(draws(50))
    layout = Layout.from_spec(4, None, names=list(NAMES))
    with pytest.raises(ValueError, match="list of sets of variables"):
        layout.exchangeable_sets("x1")


def test_exchangeable_variables_of_different_sizes_are_refused():
    est = SimformerEstimator(variables=[1, 1, 2], exchangeable=[[1, 2]], max_epochs=1, **TINY)
    with pytest.raises(ValueError, match="same number of columns"):
        est.fit(draws(50))


def test_exchangeable_needs_one_token_per_column():
    est = SimformerEstimator(variables=[2, 2], exchangeable=[[0, 1]], tokens="variable",
                             max_epochs=1, **TINY)
    with pytest.raises(ValueError, match="one token per column"):
        est.fit(draws(50))


def test_exchangeable_variables_must_play_one_role_in_the_dag():
    dag = DAG({"x1": ["theta"], "x2": ["theta", "x1"], "x3": ["theta"]})
    est = SimformerEstimator(variables=NAMES, exchangeable=[["x1", "x2", "x3"]],
                             edge_masks=dag, max_epochs=1, **TINY)
    with pytest.raises(ValueError, match="different roles in the DAG"):
        est.fit(draws(50))
    ok = DAG({"x1": ["theta"], "x2": ["theta"], "x3": ["theta"]}, inversion="moral")
    est.set_params(edge_masks=ok).fit(draws(50))  # the same parents: accepted
    assert est.model_.network.identities == [0, 1, 1, 1]
