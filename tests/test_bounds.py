"""Known support (``bounds``): every conditional truncated to it, the prior's box in rounds."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from scipy.stats import ks_2samp

from skformer import SimformerEstimator, load, save
from skformer.simulation import prior_box

from _data import TINY

X_EDGE = np.array([1.95, 0.9, 1.3])  # theta_0 | x_0 ~ N(0.95, 0.1) cut at the prior's edge 1
MU = X_EDGE - 1.0


def bounded(fitted, bounds):
    est = copy.deepcopy(fitted)  # the fixture is shared: leave it as it is
    return est.set_params(bounds=bounds)


def test_posterior_at_the_prior_edge_stays_inside_the_prior(fitted):
    """The seed task's prior is U(-1, 1)^3 and theta_0 | x_0 ~ N(0.95, 0.1) cut at 1: the
    unbounded tiny model puts several per cent of its draws above 1, the bounded none, and the
    bounded draws are the unbounded ones that fall inside (a two-sample KS test). The tiny
    model is too wide at the edge (sd 0.09 against the exact 0.07), so its mean there is not
    the exact one with or without bounds: bounds remove impossible draws, not model error."""
    plain = fitted.posterior().sample(6000, observed=X_EDGE, random_state=1)
    assert (plain[:, 0] > 1).mean() > 0.02
    s = bounded(fitted, {"v0": (-1.0, 1.0)}).posterior().sample(3000, observed=X_EDGE,
                                                                random_state=0)
    assert s.shape == (3000, 3)
    assert (np.abs(s) <= 1.0).all()
    kept = plain[plain[:, 0] <= 1]
    assert ks_2samp(kept[:, 0], s[:, 0]).pvalue > 0.01
    np.testing.assert_allclose(s[:, 1:].mean(0), MU[1:], atol=0.05)


def test_bounds_are_the_unbounded_samples_kept_inside(fitted):
    """Truncation by rejection: the same distribution as the unbounded model's draws that fall
    inside, here a cut through the middle of theta_1's posterior."""
    plain = fitted.posterior().sample(6000, observed=X_EDGE, random_state=1)
    kept = plain[plain[:, 1] >= MU[1]]
    s = bounded(fitted, {1: (MU[1], np.inf)}).posterior().sample(3000, observed=X_EDGE,
                                                                 random_state=2)
    assert (s[:, 1] >= MU[1]).all()
    # two samples of one distribution: means within 4 standard errors
    se = np.sqrt(kept[:, 1].var() / len(kept) + s[:, 1].var() / len(s))
    assert abs(kept[:, 1].mean() - s[:, 1].mean()) < 4 * se
    # the half-normal above the mean: mean MU + 0.1 sqrt(2 / pi)
    assert abs(s[:, 1].mean() - (MU[1] + 0.1 * np.sqrt(2 / np.pi))) < 0.02


def test_log_prob_is_minus_infinity_outside_and_renormalised_inside(fitted):
    """theta_0 | x_0 = 1.2 is N(0.2, 0.1): bounds at 0.2 keep about half the model's mass.
    Inside, log_prob is the model's raised by minus the log of the share of its draws inside
    (1,000 draws here, checked against 4,000 others); normalise=False keeps the model's own
    density."""
    est = bounded(fitted, {0: (-1.0, 0.2)})
    x_o = np.array([1.2, 0.9, 1.3])
    theta = np.array([[0.1, -0.1, 0.3], [0.3, -0.1, 0.3], [-1.2, -0.1, 0.3]])
    post = est.posterior()
    lp = post.log_prob(theta, observed=x_o, mass_draws=1000)
    assert np.isneginf(lp[1:]).all()
    ref = fitted.posterior().log_prob(theta[:1], observed=x_o)
    np.testing.assert_allclose(post.log_prob(theta[:1], observed=x_o, normalise=False), ref)
    plain = fitted.posterior().sample(4000, observed=x_o, random_state=3)
    share = (plain[:, 0] <= 0.2).mean()
    assert 0.3 < share < 0.7  # the bounds cut the posterior: the correction is not small
    assert abs((lp[0] - ref[0]) + np.log(share)) < 0.14  # 4 standard errors
    # deterministic, and a row's density does not depend on the other rows
    np.testing.assert_array_equal(post.log_prob(theta, observed=x_o, mass_draws=1000), lp)
    two = post.log_prob(theta[[0, 0]], observed=np.stack([x_o, x_o + [0.0, 0.1, 0.0]]),
                        mass_draws=1000)
    assert two[0] == lp[0] and np.isfinite(two[1])
    # the joint (score_samples) too: a row with theta_0 outside has no density
    rows = np.array([[0.1, -0.1, 0.3, 1.2, 0.9, 1.3], [0.7, -0.1, 0.3, 1.7, 0.9, 1.3]])
    joint = est.score_samples(rows.reshape(2, 2, 3))
    assert np.isfinite(joint[0]) and np.isneginf(joint[1])
    assert joint[0] > fitted.score_samples(rows[:1].reshape(1, 2, 3))[0]  # mass below one


def test_truncated_log_prob_integrates_to_one():
    """One column, U(0, 1), bounded by its box: the model spills several per cent of its mass
    outside, and the truncated, renormalised density integrates to one over the box."""
    u = np.random.default_rng(0).uniform(0, 1, (3000, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = SimformerEstimator(variables=None, bounds={0: (0.0, 1.0)}, max_epochs=30,
                                 d_model=16, n_layers=1, n_heads=2, random_state=0).fit(u)
    grid = np.linspace(0, 1, 2001)[1:-1]
    step = grid[1] - grid[0]
    assert abs(np.exp(est.score_samples(grid[:, None])).sum() * step - 1) < 0.03
    raw = est.condition(np.zeros(1, dtype=bool)).log_prob(grid[:, None], normalise=False)
    assert np.exp(raw).sum() * step < 0.97
    # folded (the same fit): the spilled mass is put back next to the edges, and the density
    # of the folded draws integrates to one as it is
    folded = np.exp(est.set_params(support="fold").score_samples(grid[:, None]))
    assert abs(folded.sum() * step - 1) < 0.03
    near_edges = (grid < 0.05) | (grid > 0.95)
    assert folded[near_edges].mean() > np.exp(raw[near_edges]).mean() * 1.1
    draws = est.sample(20000, random_state=0)[:, 0]
    assert (draws >= 0).all() and (draws <= 1).all()
    # the density is that of the folded draws: mass within 0.05 of an edge, both ways
    assert abs(np.mean((draws < 0.05) | (draws > 0.95)) - folded[near_edges].sum() * step) \
        < 0.02
    est.set_params(support="truncate")
    with pytest.raises(ValueError, match="none of the 200 draws"):
        est.set_params(bounds={0: (5.0, 6.0)}).condition(np.zeros(1, dtype=bool)).log_prob(
            [[5.5]], mass_draws=200)


def test_folded_samples_are_the_unbounded_draws_reflected_inside(fitted):
    """support="fold": the same draws as the unbounded model's, those outside reflected at
    the edge they crossed (here 1, and 0.35 from above for column 2): nothing redrawn."""
    plain = fitted.posterior().sample(4000, observed=X_EDGE, random_state=1)
    assert (plain[:, 0] > 1).mean() > 0.02 and (plain[:, 2] > 0.35).mean() > 0.1
    est = bounded(fitted, {"v0": (-1.0, 1.0), 2: (-np.inf, 0.35)}).set_params(support="fold")
    s = est.posterior().sample(4000, observed=X_EDGE, random_state=1)
    expected = plain.copy()
    expected[:, 0] = np.where(plain[:, 0] > 1, 2 - plain[:, 0], plain[:, 0])
    expected[:, 2] = np.where(plain[:, 2] > 0.35, 0.7 - plain[:, 2], plain[:, 2])
    np.testing.assert_allclose(s, expected, atol=1e-5)
    assert (np.abs(s[:, 0]) <= 1).all() and (s[:, 2] <= 0.35).all()


def test_folded_log_prob_adds_the_mirror_images_near_an_edge(fitted):
    """At a value near the edge the folded density is the model's at the value plus at its
    mirror image across the edge; far from the edge (deeper inside than any draw spilled
    over it) it is the model's own; outside it is -inf."""
    est = bounded(fitted, {"v0": (-1.0, 1.0)}).set_params(support="fold")
    post, plain = est.posterior(), fitted.posterior()
    theta = np.array([[0.97, -0.1, 0.3], [0.2, -0.1, 0.3], [1.01, -0.1, 0.3]])
    lp = post.log_prob(theta, observed=X_EDGE)
    mirror = theta[:1].copy()
    mirror[0, 0] = 2 - mirror[0, 0]
    own = plain.log_prob(theta[:2], observed=X_EDGE)
    np.testing.assert_allclose(
        lp[0], np.logaddexp(own[0], plain.log_prob(mirror, observed=X_EDGE)[0]), rtol=1e-6)
    np.testing.assert_allclose(lp[1], own[1], rtol=1e-6)
    assert np.isneginf(lp[2])
    # rows are independent of each other and of how they are batched
    np.testing.assert_allclose(post.log_prob(theta[[1, 0]], observed=X_EDGE), lp[[1, 0]],
                               rtol=1e-6)


def test_map_and_iid_samples_stay_inside_when_folded(fitted):
    est = bounded(fitted, {"v0": (-1.0, 1.0), 2: (-np.inf, 0.35)}).set_params(support="fold")
    post = est.posterior()
    mode = post.map(observed=X_EDGE, random_state=0, n_iter=20)
    assert (np.abs(mode) <= 1.0).all() and mode[2] <= 0.35
    trials = X_EDGE + 0.05 * np.random.default_rng(0).standard_normal((2, 3))
    s = post.sample(100, trials, iid=True, random_state=0)
    assert (np.abs(s) <= 1.0).all() and (s[:, 2] <= 0.35).all()
    with pytest.raises(ValueError, match="support"):
        est.set_params(support="reflect").posterior()


def test_map_and_iid_samples_stay_inside(fitted):
    est = bounded(fitted, {"v0": (-1.0, 1.0), 2: (-np.inf, 0.35)})
    post = est.posterior()
    mode = post.map(observed=X_EDGE, random_state=0, n_iter=20)
    assert (np.abs(mode) <= 1.0).all() and mode[2] <= 0.35  # v0 and column 2: both apply
    trials = X_EDGE + 0.05 * np.random.default_rng(0).standard_normal((2, 3))
    s = post.sample(100, trials, iid=True, random_state=0)
    assert s.shape == (100, 3)
    assert (np.abs(s) <= 1.0).all() and (s[:, 2] <= 0.35).all()


def test_bounds_of_observed_columns_do_not_apply(fitted):
    """A bound on x does not constrain the posterior, whose x is given; the likelihood's x is
    bounded."""
    est = bounded(fitted, {"v1": (0.0, 1.0)})
    s = est.posterior().sample(50, observed=X_EDGE, random_state=0)  # x_0 = 1.95 is given
    assert s.shape == (50, 3)
    x = est.likelihood().sample(500, observed=[0.1, -0.05, 0.0], random_state=0)
    assert (x >= 0).all() and (x <= 1).all()


@pytest.mark.parametrize("bounds, match", [
    ({9: (0.0, 1.0)}, "not one of"),
    ({"nope": (0.0, 1.0)}, "unknown column or variable"),
    ({0: (0.5, 0.1)}, "low < high"),
    ({0: 3.0}, r"\(low, high\)"),
    ({"v0": (-1, 1), 0: (2, 3)}, "leave no room"),
    ([(0, 1)], "dict"),
])
def test_bad_bounds_fail_clearly(fitted, bounds, match):
    with pytest.raises(ValueError, match=match):
        bounded(fitted, bounds).posterior()


def test_bad_bounds_fail_at_fit():
    X = np.random.default_rng(0).normal(size=(40, 2))
    with pytest.raises(ValueError, match="unknown column"):
        SimformerEstimator(bounds={"nope": (0, 1)}, max_epochs=1, d_model=8, n_layers=1,
                           n_heads=1).fit(X)


def test_bounds_survive_both_file_formats(fitted, tmp_path):
    import joblib

    est = bounded(fitted, {"v0": (-1.0, 1.0), 4: (-np.inf, 2.0)})
    save(est, tmp_path / "m.skf")
    joblib.dump(est, tmp_path / "m.joblib")
    for back in (load(tmp_path / "m.skf"), joblib.load(tmp_path / "m.joblib")):
        assert back.bounds == est.bounds
        s = back.posterior().sample(200, observed=X_EDGE, random_state=0)
        assert (np.abs(s) <= 1).all()


@pytest.mark.parametrize("prior, low, high", [
    (torch.distributions.Independent(
        torch.distributions.Uniform(torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 3.0])), 1),
     [-1, 0], [1, 3]),
    (torch.distributions.Uniform(torch.tensor([-2.0, -2.0]), torch.tensor([2.0, 2.0])),
     [-2, -2], [2, 2]),
    (torch.distributions.Independent(torch.distributions.Gamma(
        torch.ones(2), torch.ones(2)), 1), [0, 0], [np.inf, np.inf]),
    (scipy.stats.uniform(loc=[-1, 0], scale=[2, 5]), [-1, 0], [1, 5]),
])
def test_prior_box_reads_the_support(prior, low, high):
    lo, hi = prior_box(prior, 2)
    np.testing.assert_allclose(lo, low)
    np.testing.assert_allclose(hi, high)


@pytest.mark.parametrize("prior", [
    lambda n, rng: rng.uniform(-1, 1, (n, 2)),
    torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2)),
    scipy.stats.norm(),
    scipy.stats.multivariate_normal(np.zeros(2)),
])
def test_prior_box_says_none_when_the_prior_states_no_bound(prior):
    assert prior_box(prior, 2) is None


def _rounds(prior, bounds=None, support="transform"):
    from skformer.sequential import rounds

    def simulator(theta, rng):
        return theta + 0.1 * rng.standard_normal(theta.shape)

    est = SimformerEstimator(max_epochs=2, random_state=0, bounds=bounds, support=support,
                             **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rounds(est, simulator, prior, observed=[0.95, 0.0], n_rounds=2,
                      simulations_per_round=200, truncation="box", n_posterior_samples=100,
                      random_state=0, verbose=0)


def test_rounds_bound_theta_by_a_box_prior():
    box = torch.distributions.Independent(
        torch.distributions.Uniform(-torch.ones(2), torch.ones(2)), 1)
    result = _rounds(box)
    assert result.estimator.bounds == {0: (-1.0, 1.0), 1: (-1.0, 1.0)}
    s = result.posterior().sample(200, observed=[0.95, 0.0], random_state=0)
    assert (np.abs(s) <= 1).all()
    assert result.estimator.support_ == {"theta[0]": (-1.0, 1.0), "theta[1]": (-1.0, 1.0)}
    # the user's own bounds win; narrower than the prior's draws, they cannot be learnt in
    # ("transform") but can truncate; a callable prior states none
    with pytest.raises(ValueError, match="outside its bounds"):
        _rounds(box, bounds={0: (-0.5, 0.5)})
    narrow = _rounds(box, bounds={0: (-0.5, 0.5)}, support="truncate")
    assert narrow.estimator.bounds == {0: (-0.5, 0.5)} and narrow.estimator.support_ == {}
    assert _rounds(lambda n, rng: rng.uniform(-1, 1, (n, 2))).estimator.bounds is None


def test_several_observations_are_bounded_in_one_batch(fitted):
    """A 2-D ``observed`` is sampled in batches over every observation still short of rows:
    each gets its own truncated posterior (here one at the prior's edge, one inside)."""
    est = bounded(fitted, {"v0": (-1.0, 1.0)})
    observed = np.array([X_EDGE, [1.2, 0.9, 1.3], [0.1, 0.05, 1.0]])
    s = est.posterior().sample(400, observed=observed, random_state=0)
    assert s.shape == (3, 400, 3)
    assert (np.abs(s) <= 1.0).all()
    for row, x in zip(s, observed, strict=True):
        alone = est.posterior().sample(400, observed=x, random_state=1)
        np.testing.assert_allclose(row.mean(0), alone.mean(0), atol=0.03)
    np.testing.assert_allclose(s[1].mean(0), observed[1] - 1.0, atol=0.05)


def test_each_observation_gets_its_rows_or_a_clear_error():
    from skformer.guidance import LinearConstraints, sample_each_satisfying

    cons = LinearConstraints(torch.tensor([[1.0]]), torch.tensor([0.0]), torch.tensor([np.inf]))
    g = torch.Generator().manual_seed(0)
    shift = torch.tensor([2.0, -1.0])  # acceptance about 1.0 and 0.16

    def draw(groups, k):
        return torch.randn(len(groups), k, 1, generator=g) + shift[groups][:, None, None]

    out = sample_each_satisfying(draw, cons, 200, 2)
    assert out.shape == (2, 200, 1) and (out >= 0).all()
    assert out[0].mean() > out[1].mean()  # each group keeps its own distribution
    def hopeless_second(groups, k):  # observation 1 lies far below the bound
        return draw(groups, k) - 5.0 * torch.as_tensor(groups == 1)[:, None, None]

    with pytest.raises(ValueError, match="observation 1"):
        sample_each_satisfying(hopeless_second, cons, 50, 2, max_rounds=2)
