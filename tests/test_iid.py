"""iid trials: composition arithmetic, known-prior denoisers, exact-network and trained-model
posteriors given N trials, the user-facing errors and the sbi facade."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import integrate

from skformer import BoxUniform, Simformer, SimformerEstimator
from skformer._utils import make_generator
from skformer.dynamics import FlowDynamics, ScoreDynamics
from skformer.dynamics.compose import (
    Composition,
    gaussian_prior_denoiser,
    prior_denoiser,
    uniform_prior_denoiser,
)
from skformer.layout import Layout
from skformer.model import SimformerModel, Standardiser
from skformer.network import LATENT, MISSING, OBSERVED
from skformer.training import TrainConfig, _left_out

from _gaussian import OracleNetwork


def gaussian_iid_posterior(joint_cov, latent, observed, trials):
    """Exact p(latent | N trials of the observed columns) for a zero-mean Gaussian joint."""
    s_ll = joint_cov[np.ix_(latent, latent)]
    s_ol = joint_cov[np.ix_(observed, latent)]
    k = s_ol @ np.linalg.inv(s_ll)  # E[x | L] = k L
    r = joint_cov[np.ix_(observed, observed)] - k @ s_ol.T
    info = k.T @ np.linalg.inv(r)
    precision = np.linalg.inv(s_ll) + len(trials) * info @ k
    cov = np.linalg.inv(precision)
    return cov @ info @ trials.sum(0), cov


# ------------------------------------------------------------------------ the arithmetic
def _gauss_denoiser(mean, cov):
    return gaussian_prior_denoiser(torch.as_tensor(mean), torch.as_tensor(cov))


@pytest.mark.parametrize("n_trials", [1, 2, 7])
def test_gauss_composition_of_exact_gaussian_denoisers_is_exact(n_trials):
    """With Gaussian single-trial posteriors and their exact precisions, the composed denoiser
    equals the N-trial posterior's at every noise level (Linhart et al. 2024)."""
    rng = np.random.default_rng(0)
    d = 2
    a = rng.normal(size=(d, d))
    p0 = a @ a.T + np.eye(d)
    m0 = rng.normal(size=d)
    infos, means = [], []
    for _ in range(n_trials):
        b = rng.normal(size=(d, d))
        infos.append(b @ b.T)
        means.append(rng.normal(size=d))
    trial_prec = np.stack([p0 + L for L in infos])
    trial_mean = [np.linalg.solve(p, p0 @ m0 + L @ mu)
                  for p, L, mu in zip(trial_prec, infos, means, strict=True)]
    prec = p0 + sum(infos)
    mean = np.linalg.solve(prec, p0 @ m0 + sum(L @ mu for L, mu in zip(infos, means,
                                                                        strict=True)))
    exact = _gauss_denoiser(mean, np.linalg.inv(prec))
    comp = Composition("gauss", n_trials, torch.as_tensor(trial_prec), torch.as_tensor(p0))
    x = torch.as_tensor(rng.normal(size=(5, d)) * 3, dtype=torch.float32)
    for sigma in (1e-3, 0.1, 1.0, 10.0, 40.0):
        s = torch.tensor(sigma)
        trials = torch.stack([_gauss_denoiser(m, np.linalg.inv(p))(x, s)
                              for m, p in zip(trial_mean, trial_prec, strict=True)])
        prior = _gauss_denoiser(m0, np.linalg.inv(p0))(x, s)
        got = comp(x, trials, prior, s)
        np.testing.assert_allclose(got, exact(x, s), atol=2e-4 * max(1.0, sigma), rtol=1e-3)


def test_fnpe_is_the_plain_sum_exact_at_small_noise_only():
    p0, L = np.eye(1), 4 * np.eye(1)
    post = _gauss_denoiser(np.array([0.8]), np.linalg.inv(p0 + L))
    prior = _gauss_denoiser(np.zeros(1), np.linalg.inv(p0))
    exact = _gauss_denoiser(np.array([1.6 * 4 / 9]), np.linalg.inv(p0 + 2 * L))
    # two trials of the same information: posterior precision 1 + 2 * 4, mean 2 * 4 * 0.8 / 9
    # (single-trial mean 0.8 = 4 x / 5 with x = 1)
    post = _gauss_denoiser(np.array([0.8]), np.linalg.inv(p0 + L))
    exact = _gauss_denoiser(np.array([8 / 9]), np.linalg.inv(p0 + 2 * L))
    comp = Composition("fnpe", 2)
    x = torch.tensor([[0.3], [2.0]])
    for sigma, close in ((1e-3, True), (3.0, False)):
        s = torch.tensor(sigma)
        got = comp(x, torch.stack([post(x, s), post(x, s)]), prior(x, s), s)
        assert torch.allclose(got, exact(x, s), atol=1e-3) is close


def test_composition_rejects_bad_arguments():
    with pytest.raises(ValueError, match="iid_method must be one of"):
        Composition("sum", 2)
    with pytest.raises(ValueError, match="at least one trial"):
        Composition("fnpe", 0)
    with pytest.raises(ValueError, match="needs the trial and prior precisions"):
        Composition("gauss", 2)


def test_gauss_weights_stay_finite_when_estimated_precisions_fall_below_the_prior():
    """Estimated trial precisions below the prior's (noise, or an uninformative trial with a
    bounded prior) make sbi's Λ indefinite; the PSD projection keeps the result finite."""
    p0 = torch.eye(2) * 3.0
    trial = torch.stack([torch.eye(2) * 2.0, torch.eye(2) * 2.5, torch.eye(2) * 3.1])
    comp = Composition("gauss", 3, trial, p0)
    x = torch.randn(4, 2)
    for sigma in (40.0, 1.0, 0.3, 1e-3):
        out = comp(x, torch.randn(3, 4, 2), torch.randn(4, 2), torch.tensor(sigma))
        assert torch.isfinite(out).all()


# ------------------------------------------------------------------------ known priors
def _truncated_mean(z, low, high, sigma):
    w = lambda t: math.exp(-0.5 * ((t - z) / sigma) ** 2)  # noqa: E731
    num = integrate.quad(lambda t: t * w(t), low, high, points=[z] if low < z < high else None)
    den = integrate.quad(w, low, high, points=[z] if low < z < high else None)
    return num[0] / den[0]


@pytest.mark.parametrize("sigma", [0.01, 0.3, 2.0, 40.0])
def test_uniform_prior_denoiser_is_the_truncated_normal_mean(sigma):
    low, high = torch.tensor([-1.0]), torch.tensor([2.0])
    denoise = uniform_prior_denoiser(low, high)
    for z in (-1.5, -0.99, 0.0, 1.9, 2.4):
        if sigma < 0.05 and not -1.2 < z < 2.2:
            continue  # quad cannot see a normal this narrow this far from the box
        got = float(denoise(torch.tensor([[z]]), torch.tensor(sigma)))
        assert got == pytest.approx(_truncated_mean(z, -1.0, 2.0, sigma), abs=2e-5)


def test_uniform_prior_denoiser_is_finite_far_outside_the_box():
    denoise = uniform_prior_denoiser(torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0]))
    x = torch.tensor([[1e4, -1e4], [50.0, 1.0]])
    out = denoise(x, torch.tensor(1e-3))
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out[0], [1.0, -1.0], atol=1e-6)


def test_prior_denoiser_reads_torch_distributions_in_standard_units():
    mean, scale = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor(
        [2.0, 0.5], dtype=torch.float64)
    mvn = torch.distributions.MultivariateNormal(torch.tensor([1.0, -2.0]),
                                                 torch.diag(torch.tensor([4.0, 0.25])))
    denoise, precision = prior_denoiser(mvn, mean, scale)
    np.testing.assert_allclose(precision, np.eye(2), atol=1e-12)  # N(0, I) in standard units
    x = torch.tensor([[2.0, -1.0]])
    np.testing.assert_allclose(denoise(x, torch.tensor(1.0)), x / 2, atol=1e-6)
    normal = torch.distributions.Independent(
        torch.distributions.Normal(torch.tensor([1.0, -2.0]), torch.tensor([2.0, 0.5])), 1)
    np.testing.assert_allclose(prior_denoiser(normal, mean, scale)[1], np.eye(2), atol=1e-12)
    box = BoxUniform(torch.tensor([-1.0, -3.0]), torch.tensor([3.0, -1.0]))
    with pytest.raises(ValueError, match="bounded"):
        prior_denoiser(box, mean, scale)
    denoise, precision = prior_denoiser(box, mean, scale, bounded=True)
    # standard units: [-1, 1] and [-2, 2]; uniform variance w^2 / 12
    np.testing.assert_allclose(np.diag(precision), [12 / 4, 12 / 16])
    assert float(denoise(torch.tensor([[5.0, 0.0]]), torch.tensor(1e-3))[0, 0]) == \
        pytest.approx(1.0)
    with pytest.raises(TypeError, match="Normal, MultivariateNormal or Uniform"):
        prior_denoiser(torch.distributions.Gamma(torch.ones(2), torch.ones(2)), mean, scale)
    with pytest.raises(ValueError, match="3 dimensions but the conditional 2"):
        prior_denoiser(BoxUniform(-torch.ones(3), torch.ones(3)), mean, scale, bounded=True)


# ------------------------------------------------------------------------ exact network
# joint of theta (2 columns) and x = A theta + noise (2 columns), zero mean, standard units
_A = np.array([[1.0, 0.5], [0.0, 1.0]])
_S_THETA = np.array([[1.0, 0.3], [0.3, 0.8]])
JOINT = np.block([[_S_THETA, _S_THETA @ _A.T],
                  [_A @ _S_THETA, _A @ _S_THETA @ _A.T + 0.25 * np.eye(2)]])


def oracle_model(dynamics, device) -> SimformerModel:
    net = OracleNetwork(dynamics, np.zeros(4), JOINT)
    model = SimformerModel(net, dynamics, Standardiser(torch.zeros(4), torch.ones(4)),
                           Layout.from_spec(4), marginal_fraction=0.1)
    # the oracle is Python-bound, not cache-bound like a network: one call per solver step
    # instead of 512-row chunks (the chunks only split network calls: the samples are the same)
    model.rows_per_chunk = lambda: 1 << 20
    return model.to(device)


def _trials(n, seed=0):
    rng = np.random.default_rng(seed)
    theta = np.array([0.6, -0.4])
    return theta @ _A.T + 0.5 * rng.normal(size=(n, 2))


def _sample_iid(model, trials, n, device, method="gauss", prior=None, seed=1, latent=(0, 1),
                observed=(2, 3)):
    states = torch.full((len(trials), 4), LATENT, dtype=torch.uint8, device=device)
    states[:, list(observed)] = OBSERVED
    rows = torch.zeros(len(trials), 4, dtype=torch.float64, device=device)
    rows[:, list(observed)] = torch.as_tensor(trials, device=device)
    x = model.sample_iid(states, rows, n, steps=30, solver="dpm",
                         generator=make_generator(seed, device), method=method, prior=prior)
    return x.cpu().numpy()[:, list(latent)]


@pytest.mark.parametrize("dynamics", [ScoreDynamics(), FlowDynamics()], ids=["score", "flow"])
@pytest.mark.parametrize("n_trials", [1, 5, 20])
def test_iid_samples_of_an_exact_network_match_the_exact_posterior(dynamics, n_trials,
                                                                    device):
    """The composed sampler with an exact single-trial network (prior from its own marginal,
    precisions estimated from draws) gives the N-trial posterior's mean and covariance."""
    model = oracle_model(dynamics, device)
    trials = _trials(n_trials)
    mean, cov = gaussian_iid_posterior(JOINT, [0, 1], [2, 3], trials)
    s = _sample_iid(model, trials, 4000, device)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(s.mean(0) - mean) < 0.1 * sd + 4 * sd / math.sqrt(4000))
    np.testing.assert_allclose(s.std(0), sd, rtol=0.1)
    np.testing.assert_allclose(np.corrcoef(s.T)[0, 1], cov[0, 1] / sd.prod(), atol=0.08)


def test_iid_with_a_known_prior_matches_the_model_prior(device):
    model = oracle_model(ScoreDynamics(), device)
    trials = _trials(5)
    mean, cov = gaussian_iid_posterior(JOINT, [0, 1], [2, 3], trials)
    prior = torch.distributions.MultivariateNormal(torch.zeros(2),
                                                   torch.as_tensor(_S_THETA, dtype=torch.float32))
    s = _sample_iid(model, trials, 4000, device, prior=prior)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(s.mean(0) - mean) < 0.1 * sd + 4 * sd / math.sqrt(4000))
    np.testing.assert_allclose(s.std(0), sd, rtol=0.1)


def test_iid_under_another_condition_mask(device):
    """Any mask: the trials observe column 3 only; columns 0-2 are the shared latent."""
    model = oracle_model(ScoreDynamics(), device)
    rng = np.random.default_rng(3)
    trials = 0.7 + 0.6 * rng.normal(size=(8, 1))
    mean, cov = gaussian_iid_posterior(JOINT, [0, 1, 2], [3], trials)
    s = _sample_iid(model, trials, 4000, device, latent=(0, 1, 2), observed=(3,))
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(s.mean(0) - mean) < 0.1 * sd + 4 * sd / math.sqrt(4000))
    np.testing.assert_allclose(s.std(0), sd, rtol=0.1)


def test_fnpe_collapses_without_correction(device):
    """The documented reason "gauss" is the default: the plain sum is far too narrow."""
    model = oracle_model(ScoreDynamics(), device)
    trials = _trials(5)
    _, cov = gaussian_iid_posterior(JOINT, [0, 1], [2, 3], trials)
    s = _sample_iid(model, trials, 2000, device, method="fnpe")
    assert np.all(s.std(0) < 0.5 * np.sqrt(np.diag(cov)))


# ------------------------------------------------------------------------ a trained model
@pytest.fixture(scope="module")
def gaussian_fit(device, built_once):
    """theta ~ N(0, 1), x = theta + 0.5 noise: a tiny model trained on single trials."""
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(3000, 1))
    X = np.hstack([theta, theta + 0.5 * rng.normal(size=theta.shape)])

    def build():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # 1,024 validation rows (the default 4,096 gives the same weights here, slower)
            return SimformerEstimator(d_model=32, n_layers=2, max_epochs=60, random_state=0,
                                      posterior_latent=[0], posterior_observed=[1],
                                      device=device,
                                      training_options={"validation_rows": 1024}).fit(X)

    return built_once(f"iid-gaussian-{device}", build)


@pytest.mark.parametrize("n_trials", [1, 5, 20])
def test_trained_model_iid_posterior_of_a_gaussian(gaussian_fit, n_trials):
    rng = np.random.default_rng(n_trials)
    trials = 0.8 + 0.5 * rng.normal(size=(n_trials, 1))
    precision = 1 + n_trials / 0.25
    mean, sd = trials.sum() / 0.25 / precision, precision**-0.5
    # 2000 draws: their Monte-Carlo error (0.02 sd) is far inside the tolerances below
    s = gaussian_fit.posterior().sample(2000, trials, iid=True, random_state=0)
    assert s.shape == (2000, 1)
    # a tiny model's small per-trial errors add up over the trials (the exact-network tests
    # above check the composition itself tightly)
    tol_mean, tol_sd = {1: (0.2, 0.1), 5: (0.5, 0.2), 20: (1.0, 0.3)}[n_trials]
    assert abs(s.mean() - mean) < tol_mean * sd
    assert s.std() == pytest.approx(sd, rel=tol_sd)


def test_trained_model_iid_posterior_under_a_uniform_prior(device):
    """The seed task's model in one dimension: theta ~ U(-1, 1), x = theta + 1 + 0.1 noise;
    10 trials near the edge give a truncated normal. Fitted on 2,000 of the 3,000 rows for
    40 epochs, scored on 1,024 validation rows: over random states 0-2 of the fit the
    statistics below reach at most 0.68 of their tolerances (0.72 with all 3,000 rows, 60
    epochs and 4,096 validation rows)."""
    from scipy.stats import truncnorm

    rng = np.random.default_rng(1)
    theta = rng.uniform(-1, 1, size=(3000, 1))
    X = np.hstack([theta, theta + 1 + 0.1 * rng.normal(size=theta.shape)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = SimformerEstimator(d_model=32, n_layers=2, max_epochs=40, random_state=0,
                                 posterior_latent=[0], posterior_observed=[1], device=device,
                                 training_options={"validation_rows": 1024}).fit(X[:2000])
    trials = 0.95 + 1 + 0.1 * rng.normal(size=(10, 1))
    mu, sd = trials.mean() - 1, 0.1 / math.sqrt(10)
    exact = truncnorm((-1 - mu) / sd, (1 - mu) / sd, loc=mu, scale=sd)
    # 1000 draws: their Monte-Carlo error (0.03 sd of the model's spread) is ~1 % of the
    # tolerances below
    s = est.posterior().sample(1000, trials, iid=True, random_state=0)
    assert abs(s.mean() - exact.mean()) < 2.5 * exact.std()
    assert s.std() < 2.5 * exact.std()
    assert np.mean(s > 1.05) < 0.05  # the box edge is (nearly) respected
    with pytest.raises(ValueError, match="bounded"):
        est.posterior().sample(10, trials, iid=True, prior=BoxUniform(-torch.ones(1),
                                                                      torch.ones(1)))


# ------------------------------------------------------------------------ the API
def test_iid_errors_are_clear(gaussian_fit):
    post = gaussian_fit.posterior()
    with pytest.raises(ValueError, match="shape"):
        post.sample(10, np.zeros((3, 2)), iid=True)
    with pytest.raises(ValueError, match="N = 0"):
        post.sample(10, np.zeros((0, 1)), iid=True)
    with pytest.raises(ValueError, match="hold no value"):
        post.sample(10, np.array([[0.1], [np.nan], [0.3]]), iid=True)
    with pytest.raises(ValueError, match="iid_method must be one of"):
        post.sample(10, np.zeros((3, 1)), iid=True, iid_method="jac")
    with pytest.raises(ValueError, match="constraints are not available"):
        post.sample(10, np.zeros((3, 1)), iid=True, constraints={0: (0, 1)})
    with pytest.raises(ValueError, match="only with iid=True"):
        post.sample(10, np.zeros(1), prior=BoxUniform(-torch.ones(1), torch.ones(1)))
    with pytest.raises(TypeError, match="Normal, MultivariateNormal or Uniform"):
        post.sample(10, np.zeros((3, 1)), iid=True,
                    prior=torch.distributions.Gamma(torch.ones(1), torch.ones(1)))
    with pytest.raises(ValueError, match="observes none"):
        gaussian_fit.condition([False, False]).sample(10, None, iid=True)


def test_iid_needs_marginals_or_a_prior(gaussian_fit):
    """A model trained without marginal rows (as saved before iid trials) cannot supply the
    prior: it says so, and a known prior still works."""
    import copy

    est = copy.deepcopy(gaussian_fit)
    est.model_.marginal_fraction = 0.0
    with pytest.raises(ValueError, match="without marginal rows"):
        est.posterior().sample(10, np.zeros((3, 1)), iid=True)
    prior = torch.distributions.Normal(torch.zeros(1), torch.ones(1))
    assert est.posterior().sample(10, np.zeros((3, 1)), iid=True, prior=prior).shape == (10, 1)


def test_iid_trials_with_missing_entries_leave_them_out(device):
    """A model that saw x's second column missing in training leaves it out of a trial."""
    rng = np.random.default_rng(2)
    theta = rng.normal(size=(2000, 1))
    X = np.hstack([theta, theta + 0.5 * rng.normal(size=(2000, 2))])
    X[rng.random(2000) < 0.3, 2] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = SimformerEstimator(d_model=16, n_layers=1, max_epochs=5, random_state=0,
                                 variables=[1, 1, 1], posterior_latent=[0],
                                 posterior_observed=[1, 2], device=device).fit(X)
    trials = np.array([[0.5, 0.4], [0.6, np.nan], [0.3, 0.7]])
    s = est.posterior().sample(50, trials, iid=True, random_state=0)
    assert s.shape == (50, 1) and np.isfinite(s).all()
    with pytest.raises(ValueError, match="never saw missing"):  # column 1 never was
        est.posterior().sample(50, np.array([[np.nan, 0.4], [0.6, 0.5]]), iid=True)


def test_iid_is_reproducible_and_marginal_fraction_persists(gaussian_fit, tmp_path):
    from skformer import load, save

    trials = np.array([[0.9], [1.1], [0.7]])
    a = gaussian_fit.posterior().sample(50, trials, iid=True, random_state=4)
    b = gaussian_fit.posterior().sample(50, trials, iid=True, random_state=4)
    np.testing.assert_array_equal(a, b)
    path = tmp_path / "m.skf"
    save(gaussian_fit, path)
    again = load(path)
    assert again.model_.marginal_fraction == pytest.approx(0.1)
    np.testing.assert_allclose(again.posterior().sample(50, trials, iid=True, random_state=4),
                               a, atol=1e-5)


def test_sbi_facade_takes_several_rows_of_x_as_iid_trials(gaussian_fit):
    """sbi's convention: an x with several rows is a set of iid trials."""
    from skformer.compat import TorchConditional

    post = TorchConditional(gaussian_fit.posterior())
    x = torch.tensor([[0.9], [1.1], [0.7], [1.0]])
    s = post.sample((300,), x=x)
    assert s.shape == (300, 1)
    direct = gaussian_fit.posterior().sample(300, x.numpy(), iid=True, random_state=5)
    torch.manual_seed(0)
    assert abs(float(s.mean()) - direct.mean()) < 0.1
    assert isinstance(Simformer, type)


# ------------------------------------------------------------------------ training rows
def test_marginal_rows_leave_the_observed_columns_out():
    gen = torch.Generator().manual_seed(0)
    observed = torch.rand(20_000, 4, generator=gen) < 0.5
    left = _left_out(observed, None, 0.1, gen)
    marginal_rows = left.any(1)
    assert bool((left <= observed).all())  # only observed entries are left out
    assert bool((left[marginal_rows] == observed[marginal_rows]).all())  # all of a row's
    share = marginal_rows.float().mean() / observed.any(1).float().mean()
    assert float(share) == pytest.approx(0.1, abs=0.01)
    assert _left_out(observed, None, 0.0, gen) is None
    missing = torch.zeros_like(observed)
    missing[0, 0] = True
    assert bool(_left_out(observed, missing, 0.0, gen)[0, 0])
    assert TrainConfig().marginal_fraction == pytest.approx(0.1)
    assert int(MISSING) == 2


def test_map_given_iid_trials_is_near_the_exact_posterior_mode(gaussian_fit):
    trials = 0.8 + 0.5 * np.random.default_rng(7).normal(size=(5, 1))
    precision = 1 + 5 / 0.25
    mode, sd = trials.sum() / 0.25 / precision, precision**-0.5
    got = gaussian_fit.posterior().map(trials, iid=True, n_init=128, n_keep=4, n_iter=100,
                                       random_state=0)
    assert got.shape == (1,)
    assert abs(got[0] - mode) < 0.5 * sd
    with pytest.raises(ValueError, match="iid=True"):
        gaussian_fit.posterior().map(trials)


def test_information_below_the_noise_floor_is_dropped():
    """Estimated trial precisions barely above the prior's in one direction (noise) add no
    information there; a real gain in another direction is kept."""
    p0 = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    trial = torch.diag(torch.tensor([4.0 * 1.05, 1.0 + 3.0], dtype=torch.float64))[None]
    kept = Composition("gauss", 1, trial, p0, noise_floor=0.1).information[0]
    np.testing.assert_allclose(kept, np.diag([0.0, 3.0]), atol=1e-9)
    raw = Composition("gauss", 1, trial, p0).information[0]
    np.testing.assert_allclose(raw, np.diag([0.2, 3.0]), atol=1e-9)
