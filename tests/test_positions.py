"""Positions (function-valued and irregular data): tokens that carry where they were read.

The trained checks use a Gaussian linear model of a function, whose every conditional is
exact: theta = (a, b) ~ N(0, I) and readings x(t) = a + b t + 0.2 noise at times t ~ U(0, 1),
six per simulation, each absent with probability 0.2. The model is trained on per-row times
and asked about readings at times it never saw.
"""

import pickle
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.exceptions import ConvergenceWarning

from skformer import SimformerEstimator, load, save
from skformer.network import FourierPosition, MaskedTransformer
from skformer.positions import parse_positions
from skformer.training import TrainConfig, _mixed, _subsets

from _data import TINY

SIG = 0.2
K = 6


def function_data(n, seed=0, absent=0.2):
    """(X of shape (n, 2 + K), times of shape (n, K) with NaN for absent readings)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n, 2))
    t = rng.uniform(0, 1, size=(n, K))
    x = theta[:, :1] + theta[:, 1:] * t + SIG * rng.normal(size=t.shape)
    t[rng.uniform(size=t.shape) < absent] = np.nan
    return np.hstack([theta, x]), t


def design(t):
    return np.stack([np.ones_like(t), t], 1)


def exact_posterior(t, x):
    """Mean and covariance of theta given readings x at times t."""
    A = design(t)
    cov = np.linalg.inv(np.eye(2) + A.T @ A / SIG**2)
    return cov @ A.T @ x / SIG**2, cov


def estimator(**kw):
    params = dict(TINY, variables={"theta": [0, 1], "x": list(range(2, 2 + K))},
                  random_state=0, device="cpu", max_epochs=2)
    params.update(kw)
    return SimformerEstimator(**params)


def quiet_fit(est, X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, **kw)


@pytest.fixture(scope="module")
def trained(built_once):
    X, t = function_data(3000)
    return built_once("positions-trained",
                      lambda: quiet_fit(estimator(max_epochs=40), X, positions={"x": t}))


# ---------------------------------------------------------------------- trained: exact answers
def test_posterior_from_readings_at_new_times(trained):
    t_new, x_o = np.array([0.1, 0.5, 0.9]), np.array([0.3, 0.8, 1.4])
    post = trained.condition(["x"], positions={"x": t_new})
    assert post.observed_names == ["x[0]", "x[1]", "x[2]"]
    samples = post.sample(4000, observed=x_o, random_state=0)
    mean, cov = exact_posterior(t_new, x_o)
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.1)
    np.testing.assert_allclose(samples.std(0), np.sqrt(np.diag(cov)), rtol=0.2)
    corr = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
    assert abs(np.corrcoef(samples.T)[0, 1] - corr) < 0.1


def test_likelihood_as_a_function_on_a_dense_grid(trained):
    grid = np.linspace(0, 1, 9)  # more readings than any training row had
    lik = trained.likelihood(positions={"x": grid})
    samples = lik.sample(4000, observed=[0.5, -1.0], random_state=0)
    assert samples.shape == (4000, 9)
    np.testing.assert_allclose(samples.mean(0), 0.5 - grid, atol=0.1)
    np.testing.assert_allclose(samples.std(0), SIG, rtol=0.25)


def test_function_and_parameters_at_once_per_column_mask(trained):
    """Readings at 3 times observed, the function at 2 other times and theta latent."""
    t_obs, x_o, t_pred = np.array([0.1, 0.5, 0.9]), np.array([0.3, 0.8, 1.4]), [0.3, 0.7]
    times = np.r_[t_obs, t_pred]
    mask = np.array([False, False, True, True, True, False, False])  # per column
    cond = trained.condition(mask, positions={"x": times})
    samples = cond.sample(4000, observed=x_o, random_state=1)
    mean, cov = exact_posterior(t_obs, x_o)
    B = design(np.asarray(t_pred))
    pred_mean, pred_sd = B @ mean, np.sqrt(np.diag(B @ cov @ B.T) + SIG**2)
    np.testing.assert_allclose(samples[:, 2:].mean(0), pred_mean, atol=0.1)
    np.testing.assert_allclose(samples[:, 2:].std(0), pred_sd, rtol=0.2)
    np.testing.assert_allclose(samples[:, :2].mean(0), mean, atol=0.1)


def test_log_prob_at_new_times_matches_the_exact_density(trained):
    t_new, x_o = np.array([0.1, 0.5, 0.9]), np.array([0.3, 0.8, 1.4])
    post = trained.condition(["x"], positions={"x": t_new})
    mean, cov = exact_posterior(t_new, x_o)
    theta = np.random.default_rng(1).multivariate_normal(mean, cov, size=100)
    d = theta - mean
    exact = -0.5 * np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d) \
        - 0.5 * np.log(np.linalg.det(2 * np.pi * cov))
    got = post.log_prob(theta, observed=x_o)
    # stated tolerance for this tiny model (40 epochs; its posterior correlation is -0.78
    # against the exact -0.82): 0.48 nats mean absolute error, 0.34 against a Gaussian fitted
    # to its own samples, so the rest is the model, not the density computation
    assert np.abs(got - exact).mean() < 0.6
    assert abs(np.mean(got - exact)) < 0.3
    assert spearmanr(got, exact)[0] > 0.8


def test_an_absent_reading_is_left_out(trained):
    """NaN in observed at a positional column: the reading is not there (no token attends to
    it; the network learnt subsets of readings), so the posterior is the one given the other
    readings alone, up to Monte Carlo error."""
    t_new = np.array([0.1, 0.5, 0.9])
    with_nan = trained.condition(["x"], positions={"x": t_new}).sample(
        4000, observed=[0.3, np.nan, 1.4], random_state=0)
    without = trained.condition(["x"], positions={"x": t_new[[0, 2]]}).sample(
        4000, observed=[0.3, 1.4], random_state=1)
    sd = without.std(0)
    assert np.all(np.abs(with_nan.mean(0) - without.mean(0)) < 0.1 * sd)  # 6 MC errors
    np.testing.assert_allclose(with_nan.std(0), sd, rtol=0.08)
    informative = trained.condition(["x"], positions={"x": t_new}).sample(
        4000, observed=[0.3, 3.0, 1.4], random_state=0)  # the reading, were it there
    assert np.abs(informative.mean(0) - without.mean(0)).max() > sd.max()


def test_map_guidance_iid_and_diagnostics_work_on_a_conditional_at_new_positions(trained):
    from skformer.diagnostics import coverage

    t_new, x_o = np.array([0.1, 0.5, 0.9]), np.array([0.3, 0.8, 1.4])
    post = trained.condition(["x"], positions={"x": t_new})
    mean, cov = exact_posterior(t_new, x_o)
    sd = np.sqrt(np.diag(cov))
    mode = post.map(x_o, random_state=0)  # a Gaussian's mode is its mean
    # the climb reads the learnt score at small noise levels, where a tiny 40-epoch model is
    # least accurate (test_engine states 0.75 sd too): 0.3 and 0.6 sd off here
    assert np.all(np.abs(mode - mean) < 0.75 * sd), (mode, mean)
    guided = post.sample(2000, observed=x_o, constraints={"theta[0]": (0.3, np.inf)},
                         random_state=0)
    assert guided[:, 0].min() >= 0.3 - 1e-6
    # three iid trials of three readings each: the exact posterior of all nine
    trials = np.array([x_o, x_o + 0.2, x_o - 0.1])
    iid = post.sample(2000, observed=trials, iid=True, random_state=0)
    mean3, cov3 = exact_posterior(np.tile(t_new, 3), trials.ravel())
    assert np.all(np.abs(iid.mean(0) - mean3) < 0.5 * np.sqrt(np.diag(cov3)))
    np.testing.assert_allclose(iid.std(0), np.sqrt(np.diag(cov3)), rtol=0.35)
    # coverage of pairs simulated at these times (KDE regions: log densities by ODE for 40 x
    # 101 points would cost more than the rest of the test)
    rng = np.random.default_rng(5)
    theta = rng.normal(size=(40, 2))
    x = theta[:, :1] + theta[:, 1:] * t_new + SIG * rng.normal(size=(40, 3))
    levels, empirical = coverage(post, theta, x, levels=[0.5, 0.9], n_samples=100, method="kde",
                                 random_state=0)
    assert np.all(np.abs(empirical - levels) < 0.2), empirical


# ---------------------------------------------------------------------- fast: rules and errors
def test_shared_positions_serve_the_training_columns_without_positions():
    X, t = function_data(300, absent=0)
    est = quiet_fit(estimator(), X, positions={"x": t[0]})
    cond = est.condition(["x"])  # the training times
    assert cond.sample(3, observed=X[0, 2:], random_state=0).shape == (3, 2)
    assert est.sample(2, random_state=0).shape == (2, 2 + K)
    assert est.condition(["x"], positions={"x": [0.5]}).observed_names == ["x"]


def test_per_row_positions_need_positions_at_inference():
    X, t = function_data(300)
    est = quiet_fit(estimator(), X, positions={"x": t})
    with pytest.raises(ValueError, match="per row.*positions="):
        est.condition(["x"])
    with pytest.raises(ValueError, match="per row"):
        est.sample(2)
    with pytest.raises(ValueError, match="per row"):
        est.posterior()


def test_a_variable_with_shared_positions_keeps_them_next_to_one_with_positions_per_row():
    """A function-valued parameter on a fixed grid, readings at random times."""
    X, t = function_data(300)
    grid = np.array([0.0, 1.0])
    est = quiet_fit(estimator(), X, positions={"theta": grid, "x": t})
    cond = est.condition(["x"], positions={"x": [0.2, 0.4, 0.6]})
    assert cond.latent_names == ["theta[0]", "theta[1]"]
    assert cond.sample(2, observed=[0.0, 0.1, 0.2], random_state=0).shape == (2, 2)
    finer = est.condition(["x"], positions={"theta": [0.0, 0.5, 1.0], "x": [0.3]})
    assert finer.latent_names == ["theta[0]", "theta[1]", "theta[2]"]
    with pytest.raises(ValueError, match="'x' was fitted with positions per row"):
        est.condition(["x"])
    assert est.model_.positions.shared == [0]


def test_theta_keeps_its_columns_next_to_a_new_set_of_readings():
    X, t = function_data(300)
    est = quiet_fit(estimator(), X, positions={"x": t})
    cond = est.condition([True, False], positions={"x": np.linspace(0, 1, 11)})
    assert cond.latent_names == [f"x[{i}]" for i in range(11)]
    assert cond.observed_names == ["theta[0]", "theta[1]"]
    assert cond.sample(2, observed=[0.0, 1.0], random_state=0).shape == (2, 11)


@pytest.mark.parametrize("positions, match", [
    ({"x": np.zeros(K - 1)}, "must have shape"),
    ({"x": np.zeros((7, K))}, "must have shape"),
    ({"x": np.full(K, np.inf)}, "infinite"),
    ({"x": np.r_[np.nan, np.zeros(K - 1)]}, "only per-row"),
    ({"y": np.zeros(K)}, "unknown variable 'y'"),
    ({"x": np.full((20, K), np.nan)}, "all NaN"),
    ({"x": "later"}, "array of numbers"),
    ({}, "non-empty mapping"),
])
def test_bad_positions_in_fit_are_refused_and_nothing_changes(positions, match):
    X, _ = function_data(20)
    est = estimator()
    with pytest.raises(ValueError, match=match):
        est.fit(X, positions=positions)
    assert not hasattr(est, "model_")


def test_bad_positions_at_inference():
    X, t = function_data(300)
    est = quiet_fit(estimator(), X, positions={"x": t})
    with pytest.raises(ValueError, match="no positions in training"):
        est.condition(["x"], positions={"theta": [0.0, 1.0], "x": [0.5]})
    with pytest.raises(ValueError, match="2 coordinates, but the model was fitted with "
                                         "positions of 1"):
        est.condition(["x"], positions={"x": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="holds NaN"):
        est.condition(["x"], positions={"x": [0.5, np.nan]})
    with pytest.raises(ValueError, match="condition_mask must have length"):
        est.condition(np.ones(2 + K, dtype=bool), positions={"x": [0.5, 0.6]})
    plain = quiet_fit(estimator(variables=[2, K]), X)
    with pytest.raises(ValueError, match="fitted without"):
        plain.condition([False, True], positions={"v1": [0.5]})
    with pytest.raises(ValueError, match="tokens='column'"):
        estimator(tokens="variable").fit(X, positions={"x": t})


def test_positions_outside_the_training_range_warn_and_inside_do_not():
    X, t = function_data(300)
    est = quiet_fit(estimator(), X, positions={"x": t})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est.condition(["x"], positions={"x": [0.0, 1.0]})  # the range's ends
    with pytest.warns(UserWarning, match="extrapolates"):
        est.condition(["x"], positions={"x": [0.5, 3.0]})


def test_an_absent_position_makes_its_value_absent():
    """A reading whose position is NaN is ignored, whatever value X holds there."""
    X, t = function_data(300)
    X_nan = X.copy()
    X_nan[:, 2:][np.isnan(t)] = np.nan
    X_junk = X.copy()
    X_junk[:, 2:][np.isnan(t)] = 1e6
    a = quiet_fit(estimator(), X_nan, positions={"x": t})
    b = quiet_fit(estimator(), X_junk, positions={"x": t})
    np.testing.assert_array_equal(a.mean_, b.mean_)
    assert a.loss_curve_ == b.loss_curve_


def test_readings_of_one_function_share_one_standardisation():
    X, t = function_data(300)
    est = quiet_fit(estimator(), X, positions={"x": t})
    assert np.unique(est.mean_[2:]).size == 1 and np.unique(est.scale_[2:]).size == 1
    assert np.unique(est.mean_[:2]).size == 2


@pytest.mark.parametrize("fmt", ["pickle", "skf"])
def test_round_trip_keeps_the_position_embedding(fmt, tmp_path):
    X, t = function_data(300)
    est = quiet_fit(estimator(), X, positions={"x": t})
    if fmt == "pickle":
        back = pickle.loads(pickle.dumps(est))
    else:
        save(est, tmp_path / "m.skf")
        back = load(tmp_path / "m.skf")
    assert back.model_.describe() == est.model_.describe()
    kw = dict(positions={"x": [0.25, 0.75]})
    a = est.condition(["x"], **kw).sample(5, observed=[0.1, 0.2], random_state=3)
    b = back.condition(["x"], **kw).sample(5, observed=[0.1, 0.2], random_state=3)
    np.testing.assert_array_equal(a, b)


def test_shared_positions_round_trip(tmp_path):
    X, t = function_data(300, absent=0)
    est = quiet_fit(estimator(), X, positions={"x": t[0]})
    save(est, tmp_path / "m.skf")
    back = load(tmp_path / "m.skf")
    np.testing.assert_array_equal(est.sample(3, random_state=0), back.sample(3, random_state=0))


def test_warm_start_and_partial_fit_take_positions():
    X, t = function_data(400)
    est = quiet_fit(estimator(warm_start=True), X[:300], positions={"x": t[:300]})
    first = len(est.loss_curve_)
    quiet_fit(est, X, positions={"x": t})
    assert len(est.loss_curve_) > first
    with pytest.raises(ValueError, match="fitted with positions for .* pass positions"):
        est.fit(X)
    chunks = estimator()
    for rows in (slice(0, 200), slice(200, 400)):
        chunks.partial_fit(X[rows], positions={"x": t[rows]})
    assert chunks.n_iter_ == 2
    assert chunks.condition(["x"], positions={"x": [0.5]}).sample(
        2, observed=[0.1], random_state=0).shape == (2, 2)


def test_parse_positions_shapes():
    from skformer.layout import Layout

    layout = Layout.from_spec(5, [2, 3], names=["theta", "x"])
    assert parse_positions({"x": [0, 1, 2]}, layout, 4)[1].shape == (3, 1)
    assert parse_positions({"x": np.zeros((3, 2))}, layout, 4)[1].shape == (3, 2)
    assert parse_positions({"x": np.zeros((4, 3))}, layout, 4)[1].shape == (4, 3, 1)
    assert parse_positions({1: np.zeros((4, 3, 2))}, layout, 4)[1].shape == (4, 3, 2)
    assert parse_positions({"x": np.zeros((1, 3, 2))}, layout, 3)[1].shape == (3, 2)
    with pytest.raises(ValueError, match="some coordinates NaN"):
        parse_positions({"x": np.r_[[[[0, np.nan]] * 3], np.zeros((3, 3, 2))]}, layout, 4)
    with pytest.raises(ValueError, match="gives variable 'x' twice"):
        parse_positions({"x": [0, 1, 2], 1: [0, 1, 2]}, layout, 4)


# ---------------------------------------------------------------------- the pieces below
def test_fourier_position_embeds_nan_as_nothing_and_depends_on_position():
    torch.manual_seed(0)
    emb = FourierPosition(1, 8)
    out = emb(torch.tensor([[[0.1], [np.nan], [0.7]]]))
    assert torch.all(out[0, 1] == 0)
    assert not torch.allclose(out[0, 0], out[0, 2])


def test_network_with_positions_needs_them_and_takes_any_number_of_tokens():
    torch.manual_seed(0)
    net = MaskedTransformer(4, d_model=16, n_layers=1, n_heads=2, identities=[0, 1, 1, 1],
                            position_dim=1)
    x, t = torch.randn(2, 4), torch.zeros(2)
    observed = torch.zeros(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="pass positions="):
        net(x, t, observed)
    pos = torch.tensor([[np.nan], [0.0], [0.5], [1.0]]).expand(2, -1, -1)
    assert net(x, t, observed, positions=pos).shape == (2, 4)
    ids = torch.tensor([0] + [1] * 9)
    more = torch.cat([pos[:, :1], torch.linspace(-1, 1, 9).view(1, 9, 1).expand(2, -1, -1)], 1)
    out = net(torch.randn(2, 10), t, torch.zeros(10, dtype=torch.bool), positions=more,
              identities=ids)
    assert out.shape == (2, 10)
    with pytest.raises(ValueError, match="no groups"):
        MaskedTransformer(4, 16, 1, 2, groups=[[0, 1], [2, 3]], position_dim=1)


def test_training_subsets_leave_out_readings_at_the_stated_rate():
    config = TrainConfig(subset_columns=(1, 2, 3), subset_fraction=0.5)
    gen = torch.Generator().manual_seed(0)
    dropped = _subsets(None, (20000, 4), config, gen)
    assert not dropped[:, 0].any()
    # half the rows drop each column with p ~ U(0, 1): a quarter of the entries in all
    assert abs(dropped[:, 1:].float().mean().item() - 0.25) < 0.01
    assert dropped[:, 1:].all(1).float().mean() > 0.05  # some rows keep no reading at all


def test_training_mixes_observed_and_latent_readings_of_one_function():
    config = TrainConfig(subset_columns=(1, 2, 3), mixed_fraction=0.5)
    gen = torch.Generator().manual_seed(0)
    observed = torch.ones(20000, 4, dtype=torch.bool)
    mixed = _mixed(observed, config, gen)
    assert mixed[:, 0].all()
    assert abs((~mixed[:, 1:]).float().mean().item() - 0.25) < 0.01
    partly = mixed[:, 1:].any(1) & ~mixed[:, 1:].all(1)
    assert partly.float().mean() > 0.2  # rows that observe some readings and predict others
    assert not _mixed(torch.zeros(5, 4, dtype=torch.bool), config, gen).any()


def test_grid_search_passes_shared_positions_to_every_fold():
    from sklearn.model_selection import GridSearchCV

    X, t = function_data(120, absent=0)
    search = GridSearchCV(estimator(max_epochs=1), {"d_model": [8, 16]}, cv=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, positions={"x": t[0]})
    assert np.isfinite(search.best_score_)
    assert search.best_estimator_.model_.positions.shared == [1]
