"""The torch-level model: standardiser, devices, descriptions, and inference with an exact
network (a Gaussian joint, so every conditional is known) instead of a trained one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from skformer._utils import make_generator
from skformer.dynamics import FlowDynamics, ScoreDynamics
from skformer.layout import Layout
from skformer.model import SimformerModel, Standardiser
from skformer.network import MaskedTransformer

from _gaussian import OracleNetwork, conditional_gaussian

# a correlated Gaussian joint in data units, far from zero and of unequal scales
DATA_MEAN = np.array([100.0, -3.0, 0.02])
DATA_SCALE = np.array([5.0, 0.1, 0.01])
CORR = np.array([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]])
DATA_COV = CORR * np.outer(DATA_SCALE, DATA_SCALE)


# ---------------------------------------------------------------------------------- standardiser
def test_standardiser_round_trip_and_log_det():
    X = torch.as_tensor(np.random.default_rng(0).normal(DATA_MEAN, DATA_SCALE, (5000, 3)))
    st = Standardiser.from_data(X)
    np.testing.assert_allclose(st.mean.numpy(), X.numpy().mean(0))
    np.testing.assert_allclose(st.scale.numpy(), X.numpy().std(0))
    z = st(X)
    assert z.dtype == torch.float32
    np.testing.assert_allclose(z.double().std(0, correction=0).numpy(), 1.0, atol=1e-6)
    # float32 standard units: data back to 1e-6 of each column's scale
    np.testing.assert_allclose((st.inverse(z).numpy() - X.numpy()) / DATA_SCALE, 0, atol=1e-6)
    cols = torch.tensor([2, 0])
    np.testing.assert_allclose(st(X[:, [2, 0]], cols).numpy(), z[:, [2, 0]].numpy())
    assert st.log_abs_det(cols).item() == pytest.approx(-np.log(st.scale.numpy()[[2, 0]]).sum())


def test_standardiser_keeps_resolution_far_from_zero():
    """A mean of 1e6 and a spread of 1e-3: float32 arithmetic would lose it all."""
    rng = np.random.default_rng(1)
    X = torch.as_tensor(1e6 + 1e-3 * rng.standard_normal((1000, 1)))
    z = Standardiser.from_data(X)(X)
    assert z.std().item() == pytest.approx(1.0, rel=1e-3)


def test_constant_columns_keep_scale_one():
    X = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]], dtype=torch.float64)
    st = Standardiser.from_data(X)
    assert st.scale[1] == 1.0 and torch.isfinite(st(X)).all()


# ---------------------------------------------------------------------------------- one module
def _model(dynamics=None, T=3) -> SimformerModel:
    torch.manual_seed(0)
    return SimformerModel(MaskedTransformer(T, 16, 1, 2), dynamics or ScoreDynamics(),
                          Standardiser(torch.zeros(T), torch.ones(T)), Layout.from_spec(T))


def test_to_moves_everything(device):
    model = _model().to(device)
    assert model.device == device
    assert all(t.device == device for t in model.state_dict().values())
    keys = set(model.state_dict())
    assert {"standardiser.mean", "standardiser.scale"} < keys
    assert all(k.startswith(("network.", "standardiser.")) or k == "missing_seen" for k in keys)


def test_description_round_trip(device):
    model = _model(FlowDynamics(sigma_max=20.0))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    again = SimformerModel.from_description(model.describe(), state, device)
    assert again.dynamics == model.dynamics and again.layout == model.layout
    for k, v in again.state_dict().items():
        torch.testing.assert_close(v.cpu(), state[k], rtol=0, atol=0)
    assert not again.training and not any(p.requires_grad for p in again.parameters())


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d, s: d["network"].update(n_layers=2), "missing"),
        (lambda d, s: d["network"].update(d_model=15), "divisible"),
        (lambda d, s: d["network"].update(extra=1), "positive integers"),
        (lambda d, s: d.update(dynamics={"method": "score"}), "config"),
        (lambda d, s: s["standardiser.scale"].fill_(0.0), "positive"),
        (lambda d, s: s["network.head.weight"].fill_(np.inf), "non-finite"),
        (lambda d, s: s.update({"standardiser.mean": torch.zeros(3)}), "dtype"),
    ],
)
def test_from_description_refuses_inconsistent_input(edit, match):
    model = _model()
    desc, state = model.describe(), {k: v.clone() for k, v in model.state_dict().items()}
    edit(desc, state)
    with pytest.raises(ValueError, match=match):
        SimformerModel.from_description(desc, state, torch.device("cpu"))


# ---------------------------------------------------------------------------------- inference
def oracle_model(dynamics, device) -> SimformerModel:
    """A model whose network is exact for DATA_COV after standardisation."""
    std_cov = DATA_COV / np.outer(DATA_SCALE, DATA_SCALE)
    net = OracleNetwork(dynamics, np.zeros(3), std_cov)
    model = SimformerModel(net, dynamics, Standardiser(torch.as_tensor(DATA_MEAN),
                                                       torch.as_tensor(DATA_SCALE)),
                           Layout.from_spec(3))
    return model.to(device)


CASES = [np.array([False, True, False]), np.array([False, False, False]),
         np.array([True, False, True])]


@pytest.mark.parametrize("dynamics", [ScoreDynamics(), FlowDynamics()], ids=["score", "flow"])
@pytest.mark.parametrize("mask", CASES, ids=["one observed", "joint", "two observed"])
def test_samples_and_densities_of_an_exact_network_are_exact(dynamics, mask, device):
    """Standardisation, the joint vector, the solver and the density all in place: samples
    have the exact conditional's mean and covariance, and log_prob its log density."""
    model = oracle_model(dynamics, device)
    values = DATA_MEAN[mask] + 0.5 * DATA_SCALE[mask]
    mean, cov = conditional_gaussian(DATA_MEAN, DATA_COV, mask, values)
    condition = torch.as_tensor(mask, device=device)
    row = np.full(3, np.nan)
    row[mask] = values
    observed = torch.as_tensor(row[None], device=device)
    x = model.sample(condition, observed, 4000, steps=30, solver="dpm",
                     generator=make_generator(0, device))
    assert x.shape == (1, 4000, 3) and x.dtype == torch.float64
    x = x[0].cpu().numpy()
    np.testing.assert_array_equal(x[:, mask], np.broadcast_to(values, (4000, mask.sum())))
    lat = x[:, ~mask]
    sd = np.sqrt(np.diag(cov))
    assert (np.abs(lat.mean(0) - mean) < 5 * sd / np.sqrt(4000)).all(), (lat.mean(0), mean)
    np.testing.assert_allclose(lat.std(0) / sd, 1, atol=0.05)
    points = torch.as_tensor(x[:50], device=device)  # latent draws beside the observed values
    logp = model.log_prob(condition, points, steps=30).cpu().numpy()
    exact = multivariate_normal(mean, cov).logpdf(lat[:50])
    # the ODE error of 30 DPM steps and float32 arithmetic: a few hundredths of a nat, up to
    # 0.06 for draws in the tails
    np.testing.assert_allclose(logp, exact, atol=0.08)
    assert np.abs(logp - exact).mean() < 0.03


def test_climb_finds_the_mode_of_an_exact_network(device):
    model = oracle_model(ScoreDynamics(), device)
    mask = np.array([False, True, False])
    values = DATA_MEAN[mask] + DATA_SCALE[mask]
    mean, _ = conditional_gaussian(DATA_MEAN, DATA_COV, mask, values)
    start = torch.as_tensor(mean + 3 * DATA_SCALE[~mask] * np.array([[1, -1], [-1, 1.0]]),
                            device=device)
    row = np.zeros((1, 3))
    row[0, mask] = values
    out = model.climb(torch.as_tensor(mask, device=device), torch.as_tensor(row, device=device),
                      start, n_iter=400, learning_rate=0.05).cpu().numpy()
    assert (np.abs(out - mean) < 0.05 * DATA_SCALE[~mask]).all(), (out, mean)


@pytest.mark.parametrize("dynamics", [ScoreDynamics(), FlowDynamics()], ids=["score", "flow"])
def test_missing_entries_give_the_exact_marginal_conditional(dynamics, device):
    """Column 1 missing (state 2), column 2 observed: samples and densities of column 0 are
    those of p(x0 | x2), with x1 marginalised, per row of states."""
    from skformer.network import LATENT, MISSING, OBSERVED

    model = oracle_model(dynamics, device)
    states = torch.tensor([[LATENT, MISSING, OBSERVED]], dtype=torch.uint8, device=device)
    x2 = DATA_MEAN[2] - DATA_SCALE[2]
    mean, cov = conditional_gaussian(DATA_MEAN[[0, 2]], DATA_COV[np.ix_([0, 2], [0, 2])],
                                     np.array([False, True]), np.array([x2]))
    rows = torch.tensor([[np.nan, np.nan, x2]], dtype=torch.float64, device=device)
    x = model.sample(states, rows, 4000, steps=30, solver="dpm",
                     generator=make_generator(1, device))[0].cpu().numpy()
    assert abs(x[:, 0].mean() - mean[0]) < 5 * np.sqrt(cov[0, 0] / 4000)
    assert abs(x[:, 0].std() / np.sqrt(cov[0, 0]) - 1) < 0.05
    points = torch.as_tensor(x[:40], device=device)
    logp = model.log_prob(states.expand(40, -1), points, steps=30).cpu().numpy()
    exact = multivariate_normal(mean[0], cov[0, 0]).logpdf(x[:40, 0])
    np.testing.assert_allclose(logp, exact, atol=0.05)


# ---------------------------------------------------------------------------------- a known box
BOXED_MEAN, BOXED_SCALE = np.array([-0.7, 2.0]), np.array([0.8, 0.5])  # of (logit u0, x1)
BOXED_CORR = np.array([[1.0, 0.6], [0.6, 1.0]])
LOW, HIGH = np.array([2.0, -np.inf]), np.array([4.0, np.inf])  # column 0 in the box (2, 4)


def boxed_oracle(device) -> SimformerModel:
    """A model exact for a logit-normal column 0 in the box (2, 4) beside a normal column 1:
    (logit((x0 - 2) / 2), x1) is Gaussian."""
    dynamics = ScoreDynamics()
    st = Standardiser(torch.as_tensor(BOXED_MEAN), torch.as_tensor(BOXED_SCALE),
                      torch.as_tensor(LOW), torch.as_tensor(HIGH))
    net = OracleNetwork(dynamics, np.zeros(2), BOXED_CORR)
    return SimformerModel(net, dynamics, st, Layout.from_spec(2)).to(device)


def boxed_exact(x0: np.ndarray, x1: float) -> np.ndarray:
    """log p(x0 | x1) of the logit-normal column, in data units."""
    from scipy.stats import norm

    cov = BOXED_CORR * np.outer(BOXED_SCALE, BOXED_SCALE)
    mean, var = conditional_gaussian(BOXED_MEAN, cov, np.array([False, True]), np.array([x1]))
    u = (x0 - LOW[0]) / (HIGH[0] - LOW[0])
    y = np.log(u) - np.log1p(-u)
    return norm(mean[0], np.sqrt(var[0, 0])).logpdf(y) - np.log(u * (1 - u) * 2.0)


def test_an_exact_network_in_a_box_gives_exact_densities_and_mode(device):
    """Samples stay in the box with the logit-normal's spread, log_prob is the logit-normal
    density in data units (the transform's Jacobian), and the climb finds its mode in data
    units, not the mode of the logits (which is further from the edge)."""
    model = boxed_oracle(device)
    mask = torch.tensor([False, True], device=device)
    x1 = 1.6
    row = torch.tensor([[np.nan, x1]], dtype=torch.float64, device=device)
    x = model.sample(mask, row, 4000, steps=30, solver="dpm",
                     generator=make_generator(0, device))[0, :, 0].cpu().numpy()
    assert ((x > 2) & (x < 4)).all()
    grid = np.linspace(2.001, 3.999, 1999)
    exact = boxed_exact(grid, x1)
    exact_draws = np.random.default_rng(0).choice(grid, 4000, p=np.exp(exact) / np.exp(exact)
                                                  .sum())
    assert abs(np.median(x) - np.median(exact_draws)) < 0.03
    points = torch.tensor([[2.2, x1], [2.5, x1], [2.8, x1], [3.1, x1]], dtype=torch.float64,
                          device=device)
    logp = model.log_prob(mask, points, steps=30).cpu().numpy()
    np.testing.assert_allclose(logp, boxed_exact(points[:, 0].cpu().numpy(), x1), atol=0.08)
    start = torch.tensor([[2.9], [3.5]], dtype=torch.float64, device=device)
    mode = model.climb(mask, row.nan_to_num(0.0), start, n_iter=400,
                       learning_rate=0.05).cpu().numpy()[:, 0]
    data_mode, logit_mode = grid[np.argmax(exact)], grid[np.argmax(exact + np.log(
        (grid - 2) / 2 * (1 - (grid - 2) / 2)))]
    assert abs(logit_mode - data_mode) > 0.08  # the two modes are far apart here
    np.testing.assert_allclose(mode, data_mode, atol=0.02)
