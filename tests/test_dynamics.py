"""The dynamics contract: preconditioning, targets, losses at the known optimum, noise levels.

For unit Gaussian data the ideal network is known exactly (tests/_gaussian.py), and so is the
smallest possible loss: E Var[F_target | x] = Var(x0 | x) / c_out^2, which is 1 at every noise
level for the score method and (1 + sigma)^2 / (1 + sigma^2) for flow matching.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from skformer.dynamics import (
    DYNAMICS,
    METHODS,
    Dynamics,
    FlowDynamics,
    ScoreDynamics,
    make_dynamics,
)
from skformer.dynamics.base import masked_mean

from _gaussian import OracleNetwork

ALL = [ScoreDynamics("ve"), ScoreDynamics("vp"), FlowDynamics()]
IDS = ["score-ve", "score-vp", "flow"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_registry_and_contract():
    assert METHODS == ("score", "flow")
    for name, cls in DYNAMICS.items():
        assert issubclass(cls, Dynamics) and cls.name == name
    with pytest.raises(TypeError):
        Dynamics()  # abstract: a method must say its preconditioning, noise and target


@pytest.mark.parametrize("dynamics", ALL, ids=IDS)
def test_config_round_trip(dynamics):
    again = make_dynamics(dynamics.name, dynamics.config())
    assert again == dynamics and again.config() == dynamics.config()
    assert all(isinstance(v, (int, float, str)) for v in dynamics.config().values())


@pytest.mark.parametrize(
    ("method", "config", "match"),
    [
        ("magic", {}, "method must be one of"),
        ("score", {"sde": "sub-vp"}, "sde"),
        ("score", {"sigma_min": 0.0}, "sigma_min"),
        ("score", {"sigma_min": 2.0, "sigma_max": 1.0}, "sigma_min"),
        ("score", {"sigma_max": math.inf}, "sigma_max"),
        ("score", {"p_std": -1.0}, "p_std"),
        ("score", {"beta_d": float("nan")}, "beta_d"),
        ("score", {"t_eps": 1.0}, "t_eps"),
        ("flow", {"sde": "ve"}, "does not take"),
    ],
)
def test_bad_configs(method, config, match):
    with pytest.raises(ValueError, match=match):
        make_dynamics(method, config)


@pytest.mark.parametrize("dynamics", ALL, ids=IDS)
def test_target_inverts_the_preconditioning(dynamics):
    """With F equal to its target, D(x0 + sigma eps) = x0 exactly: c_skip x + c_out F = x0."""
    g = _gen(1)
    x0, eps = torch.randn(64, 5, generator=g), torch.randn(64, 5, generator=g)
    sigma = torch.exp(torch.linspace(-6, 4, 64))
    c_skip, c_out, c_in, c_noise = dynamics.preconditioning(sigma)
    x = x0 + sigma[:, None] * eps
    d = c_skip[:, None] * x + c_out[:, None] * dynamics.target(x0, eps, sigma)
    torch.testing.assert_close(d, x0, atol=1e-4, rtol=1e-4)
    # unit-variance inputs for unit-variance data: c_in^2 (1 + sigma^2) = 1
    torch.testing.assert_close(c_in**2 * (1 + sigma**2), torch.ones(64))
    assert c_noise.shape == (64,) and torch.isfinite(c_noise).all()


def test_paper_preconditioning_of_the_score_method():
    sigma = torch.tensor([0.1, 1.0, 10.0])
    c_skip, c_out, c_in, c_noise = ScoreDynamics().preconditioning(sigma)
    torch.testing.assert_close(c_skip, 1 / (sigma**2 + 1))
    torch.testing.assert_close(c_out, sigma / torch.sqrt(sigma**2 + 1))
    torch.testing.assert_close(c_in, 1 / torch.sqrt(sigma**2 + 1))
    torch.testing.assert_close(c_noise, torch.log(sigma) / 4)


def test_flow_denoiser_is_x_t_minus_t_v():
    """In its own variables: x_t = (1 - t) x0 + t eps, D = x_t - t v(x_t)."""
    fd = FlowDynamics()
    sigma = torch.tensor([0.25, 1.0, 3.0])
    t = sigma / (1 + sigma)
    c_skip, c_out, _, c_noise = fd.preconditioning(sigma)
    torch.testing.assert_close(c_skip, 1 - t)
    torch.testing.assert_close(c_out, -t)
    torch.testing.assert_close(c_noise, 4 * t - 2)


def _oracle_loss(dynamics, sigma: float, shift: float = 0.0, n: int = 20_000, seed: int = 0):
    """Mean loss of the exact network (plus ``shift``) on unit Gaussian data at one sigma."""
    oracle = OracleNetwork(dynamics, np.zeros(2), np.eye(2))

    def net(x_in, c_noise, observed, edges):
        return oracle(x_in, c_noise, observed, edges) + shift

    g = _gen(seed)
    x0, eps = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
    observed = torch.zeros(n, 2, dtype=torch.bool)
    sig = torch.full((n,), sigma)
    return dynamics.loss(net, x0, observed, None, sig, eps).mean().item()


@pytest.mark.parametrize("dynamics", ALL, ids=IDS)
@pytest.mark.parametrize("sigma", [0.05, 1.0, 8.0])
def test_loss_of_the_exact_network_is_the_irreducible_minimum(dynamics, sigma):
    """The minimum is 1 (score) or (1 + sigma)^2 / (1 + sigma^2) (flow); the Monte Carlo
    standard error of a mean of 20,000 chi-square-like terms is under 1.5 %: tolerance 5 %."""
    minimum = 1.0 if dynamics.name == "score" else (1 + sigma) ** 2 / (1 + sigma**2)
    assert _oracle_loss(dynamics, sigma) == pytest.approx(minimum, rel=0.05)


@pytest.mark.parametrize("dynamics", ALL, ids=IDS)
def test_moving_away_from_the_exact_network_costs_its_square(dynamics):
    """On the same draws, F + delta costs delta^2 more, up to 2 delta E[F - target] ~ 0."""
    base = _oracle_loss(dynamics, 0.7)
    worse = _oracle_loss(dynamics, 0.7, shift=0.3)
    assert worse - base == pytest.approx(0.09, abs=0.02)


@pytest.mark.parametrize("dynamics", ALL, ids=IDS)
def test_loss_equals_the_denoiser_error_over_c_out_squared(dynamics):
    """The F-space loss is ||D - x0||^2 / c_out^2 (computed here the long way)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))

    def F(x_in, c_noise, observed, edges):
        return net(x_in * (1 + 0.1 * c_noise[:, None]))

    g = _gen(2)
    x0, eps = torch.randn(32, 4, generator=g), torch.randn(32, 4, generator=g)
    sigma = torch.exp(torch.randn(32, generator=g))
    observed = torch.rand(32, 4, generator=g) < 0.3
    loss = dynamics.loss(F, x0, observed, None, sigma, eps)
    x = torch.where(observed, x0, x0 + sigma[:, None] * eps)
    d = dynamics.denoise(F, x, sigma, observed, None)
    c_out = dynamics.preconditioning(sigma)[1]
    long_way = masked_mean((d - x0) ** 2 / c_out[:, None] ** 2, ~observed)
    torch.testing.assert_close(loss, long_way, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dynamics", ALL, ids=IDS)
def test_observed_entries_carry_no_loss_and_pass_through(dynamics):
    g = _gen(3)
    x0, eps = torch.randn(16, 4, generator=g), torch.randn(16, 4, generator=g)
    sigma = torch.full((16,), 0.5)
    observed = torch.tensor([True, False, True, False]).expand(16, 4)

    def net_a(x_in, c_noise, obs, edges):
        return torch.zeros_like(x_in)

    def net_b(x_in, c_noise, obs, edges):  # differs only on observed entries
        return torch.where(obs, torch.full_like(x_in, 7.0), torch.zeros_like(x_in))

    la = dynamics.loss(net_a, x0, observed, None, sigma, eps)
    lb = dynamics.loss(net_b, x0, observed, None, sigma, eps)
    torch.testing.assert_close(la, lb)
    d = dynamics.denoise(net_b, x0 + eps, sigma, observed, None)
    torch.testing.assert_close(d[:, [0, 2]], (x0 + eps)[:, [0, 2]], rtol=0, atol=0)
    all_observed = torch.ones(16, 4, dtype=torch.bool)
    assert (dynamics.loss(net_a, x0, all_observed, None, sigma, eps) == 0).all()


def test_training_noise_levels():
    """VE: log sigma ~ N(p_mean, p_std^2); flow: logit(t) ~ N(p_mean, p_std^2) with a share
    of uniform t = sigma / (1 + sigma) (default), or all uniform; VP: the schedule between
    t_eps and 1. Kolmogorov-Smirnov p-values over 20,000 draws."""
    score = ScoreDynamics("ve", p_mean=-1.2, p_std=1.4)
    log_sigma = torch.log(score.training_sigmas(20_000, _gen(4))).numpy()
    assert stats.kstest(log_sigma, stats.norm(-1.2, 1.4).cdf).pvalue > 1e-3
    sigma = FlowDynamics(time_sampling="uniform").training_sigmas(20_000, _gen(5))
    assert stats.kstest((sigma / (1 + sigma)).numpy(), stats.uniform().cdf).pvalue > 1e-3
    flow = FlowDynamics()
    assert (flow.time_sampling, flow.uniform_fraction) == ("logit-normal", 0.25)
    t = (lambda s: (s / (1 + s)).numpy())(flow.training_sigmas(20_000, _gen(8)))
    normal = stats.norm(-1.2, 1.4)

    def mixture_cdf(v):
        return 0.25 * v + 0.75 * normal.cdf(np.log(v) - np.log1p(-v))

    assert stats.kstest(t, mixture_cdf).pvalue > 1e-3
    assert stats.kstest(np.log(t) - np.log1p(-t), normal.cdf).pvalue < 1e-6  # not LN alone
    pure = FlowDynamics(uniform_fraction=0).training_sigmas(20_000, _gen(9))
    assert stats.kstest(torch.log(pure).numpy(), normal.cdf).pvalue > 1e-3
    with pytest.raises(ValueError, match="uniform_fraction"):
        FlowDynamics(uniform_fraction=1.5)
    vp = ScoreDynamics("vp")
    s = vp.training_sigmas(20_000, _gen(6))
    lo = float(vp._vp_sigma(torch.tensor(vp.t_eps, dtype=torch.float64)))
    assert s.min() >= lo * 0.999 and s.max() <= vp.sigma_start * 1.001


def _cdf(dynamics):
    """The CDF of the training noise levels of ``dynamics`` (VE, flow without its uniform
    share, VP), as a function of sigma."""
    if isinstance(dynamics, FlowDynamics) or dynamics.sde == "ve":
        return lambda s: stats.norm(dynamics.p_mean, dynamics.p_std).cdf(np.log(s))
    grid = np.linspace(dynamics.t_eps, 1, 200_001)
    sig = dynamics._vp_sigma(torch.as_tensor(grid, dtype=torch.float64)).numpy()
    return lambda s: (np.interp(s, sig, grid) - dynamics.t_eps) / (1 - dynamics.t_eps)


@pytest.mark.parametrize("dynamics", [ScoreDynamics("ve", stratified=True),
                                      ScoreDynamics("vp", stratified=True),
                                      FlowDynamics(uniform_fraction=0, stratified=True)],
                         ids=IDS)
def test_stratified_noise_levels_cover_every_stratum(dynamics):
    """stratified=True: a batch of n has exactly one noise level in each n-quantile of the
    distribution (independent draws leave about a third of the strata empty), in a random
    order, with the same distribution across batches; the setting persists in the config."""
    cdf = _cdf(dynamics)
    n = 256
    levels = dynamics.training_sigmas(n, _gen(0)).numpy()
    strata = np.floor(cdf(levels) * n).astype(int)
    assert sorted(strata) == list(range(n))
    assert not (np.diff(strata) > 0).all()  # not in order: rows get levels at random
    plain = type(dynamics)(**{**dynamics.config(), "stratified": False})
    empty = n - len(set(np.floor(cdf(plain.training_sigmas(n, _gen(0)).numpy()) * n)))
    assert empty > n / 5
    pooled = np.concatenate([dynamics.training_sigmas(n, _gen(s)).numpy() for s in range(40)])
    assert stats.kstest(cdf(pooled), stats.uniform().cdf).pvalue > 1e-3
    assert type(dynamics)(**dynamics.config()).stratified is True
    assert make_dynamics(dynamics.name, {"stratified": True}).stratified is True
    with pytest.raises(ValueError, match="stratified"):
        type(dynamics)(stratified="yes")


@pytest.mark.parametrize("dynamics", ALL, ids=IDS)
@pytest.mark.parametrize("steps", [1, 2, 20])
def test_time_grid(dynamics, steps):
    grid = dynamics.time_grid(steps, "cpu")
    assert grid.shape == (steps + 1,) and grid[-1] == 0
    assert grid[0] == pytest.approx(dynamics.sigma_start, rel=1e-5)
    assert (grid[:-1] > grid[1:]).all()


@pytest.mark.parametrize("dynamics", ALL, ids=IDS)
def test_prior(dynamics):
    z = dynamics.prior_sample((30_000, 2), _gen(7))
    std = math.sqrt(dynamics.sigma_start**2 + 1)
    assert abs(z.std().item() / std - 1) < 0.02
    expected = stats.norm(0, std).logpdf(z[:5].numpy()).sum(-1)
    np.testing.assert_allclose(dynamics.prior_log_prob(z[:5]).numpy(), expected, rtol=1e-5)
