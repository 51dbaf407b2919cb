"""skformer.diagnostics: known answers from exact and deliberately wrong Gaussian samplers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from skformer.diagnostics import check_sbc, coverage, draw_samples, sbc, tarp

NOISE = 0.5  # theta ~ N(0, I_2), x = theta + N(0, NOISE^2 I_2)
POST_SD = NOISE / np.sqrt(1 + NOISE**2)


def test_pairs(n=300, seed=0, d=2):
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((n, d))
    return theta, theta + NOISE * rng.standard_normal((n, d))


test_pairs.__test__ = False  # a helper, not a test


class Gaussian:
    """theta | x ~ N(x / (1 + NOISE^2) + shift, (scale * POST_SD)^2): exact for scale 1, shift
    0; shrunk (scale < 1), widened (scale > 1) or biased (shift != 0) otherwise."""

    def __init__(self, scale=1.0, shift=0.0, batched=True):
        self.scale, self.shift, self.batched, self.calls = scale, shift, batched, 0

    def _mean(self, observed):
        return np.asarray(observed) / (1 + NOISE**2) + self.shift

    def sample(self, n, observed=None, random_state=None):
        self.calls += 1
        obs = np.asarray(observed, dtype=float)
        if obs.ndim == 2 and not self.batched:
            raise ValueError("one observation at a time")
        rng = np.random.default_rng(random_state)
        sd = self.scale * POST_SD
        if obs.ndim == 1:
            return self._mean(obs) + sd * rng.standard_normal((n, obs.shape[0]))
        return self._mean(obs)[:, None, :] + sd * rng.standard_normal((len(obs), n, obs.shape[1]))

    def log_prob(self, values, observed):
        sd = self.scale * POST_SD
        return stats.norm.logpdf(values, self._mean(observed), sd).sum(axis=1)


def test_an_exact_sampler_passes_sbc():
    theta, x = test_pairs()
    ranks = sbc(Gaussian(), theta, x, n_samples=200, random_state=0)
    assert ranks.shape == (300, 2) and ranks.dtype.kind == "i"
    assert ranks.min() >= 0 and ranks.max() <= 200
    report = check_sbc(ranks, 200)
    assert (report["ks_pvalues"] > 0.01).all(), report
    assert (report["c2st_ranks"] < 0.6).all(), report
    assert np.all(np.abs(report["mean_rank"] - 0.5) < 0.05)


@pytest.mark.parametrize("wrong, shape", [(Gaussian(scale=0.5), "U"),
                                          (Gaussian(scale=2.0), "hump"),
                                          (Gaussian(shift=POST_SD), "slope")])
def test_shrunk_widened_and_biased_samplers_are_flagged(wrong, shape):
    theta, x = test_pairs()
    ranks = sbc(wrong, theta, x, n_samples=200, random_state=0)
    report = check_sbc(ranks, 200)
    assert (report["ks_pvalues"] < 1e-4).all(), report
    assert (report["c2st_ranks"] > 0.6).all(), report
    u = ranks / 200
    edges = ((u < 0.1) | (u > 0.9)).mean()
    if shape == "U":  # truths outside the too-narrow samples: ranks pile up at both ends
        assert edges > 0.4
    elif shape == "hump":
        assert edges < 0.05 and ((u > 0.3) & (u < 0.7)).mean() > 0.6
    else:  # samples above the truth: low ranks
        assert (report["mean_rank"] < 0.35).all()


def test_sbc_is_reproducible_and_batches_observations():
    theta, x = test_pairs(n=50)
    sampler = Gaussian()
    a = sbc(sampler, theta, x, n_samples=100, random_state=1)
    assert sampler.calls == 1  # one call for all 50 observations
    np.testing.assert_array_equal(a, sbc(Gaussian(), theta, x, n_samples=100, random_state=1))
    assert not np.array_equal(a, sbc(Gaussian(), theta, x, n_samples=100, random_state=2))


def test_a_sampler_of_one_observation_at_a_time_still_works():
    theta, x = test_pairs(n=40)
    sampler = Gaussian(batched=False)
    samples = draw_samples(sampler, x, 30, random_state=0)
    assert samples.shape == (40, 30, 2) and sampler.calls == 41  # a batched try, then one each
    report = check_sbc(sbc(Gaussian(batched=False), *test_pairs(), n_samples=100,
                           random_state=0), 100)
    assert (report["ks_pvalues"] > 0.01).all()


@pytest.mark.parametrize("method, d", [("log_prob", 2), ("kde", 2), ("kde", 4)])
def test_coverage_of_an_exact_sampler_is_on_the_diagonal(method, d):
    # in 4-D a density estimate that scores its own samples is visibly biased (0.34 at 0.5)
    theta, x = test_pairs(d=d)
    levels, cov = coverage(Gaussian(), theta, x, n_samples=200, random_state=0, method=method)
    np.testing.assert_allclose(levels, np.linspace(0, 1, 21))
    band = 2.6 * np.sqrt(levels * (1 - levels) / 300) + 0.02  # 99 % binomial + KDE/MC error
    assert np.all(np.abs(cov - levels) <= band), np.c_[levels, cov]


@pytest.mark.parametrize("method", ["log_prob", "kde"])
def test_coverage_flags_over_and_under_confidence(method):
    theta, x = test_pairs()
    _, narrow = coverage(Gaussian(scale=0.5), theta, x, levels=[0.5, 0.9], n_samples=200,
                         random_state=0, method=method)
    _, wide = coverage(Gaussian(scale=2.0), theta, x, levels=[0.5, 0.9], n_samples=200,
                       random_state=0, method=method)
    assert narrow[0] < 0.3 and narrow[1] < 0.6  # exact: 0.5 and 0.9
    assert wide[0] > 0.8 and wide[1] > 0.98


def test_coverage_auto_uses_log_prob_when_there_is_one():
    class SamplesOnly:
        def sample(self, n, observed=None, random_state=None):
            return Gaussian().sample(n, observed, random_state)

    theta, x = test_pairs(n=100)
    with_density = coverage(Gaussian(), theta, x, n_samples=100, random_state=0)
    assert np.array_equal(with_density[1], coverage(Gaussian(), theta, x, n_samples=100,
                                                    random_state=0, method="log_prob")[1])
    assert np.array_equal(coverage(SamplesOnly(), theta, x, n_samples=100, random_state=0)[1],
                          coverage(Gaussian(), theta, x, n_samples=100, random_state=0,
                                   method="kde")[1])


def test_tarp_of_an_exact_sampler_is_on_the_diagonal_and_flags_wrong_ones():
    theta, x = test_pairs(n=400)
    levels, ecp = tarp(Gaussian(), theta, x, n_samples=200, random_state=0)
    band = 2.6 * np.sqrt(levels * (1 - levels) / 400) + 0.01
    assert np.all(np.abs(ecp - levels) <= band), np.c_[levels, ecp]
    for wrong in (Gaussian(scale=0.5), Gaussian(scale=2.0), Gaussian(shift=POST_SD)):
        _, bad = tarp(wrong, theta, x, n_samples=200, random_state=0)
        assert np.max(np.abs(bad - levels)) > 0.15, type(wrong)


def test_tarp_z_scores_references_with_the_truths():
    # the same problem with theta's second column in units 1000 times larger: distances are
    # taken in z-scores, so the curve is the same
    theta, x = test_pairs(n=200)

    class Scaled(Gaussian):
        def sample(self, n, observed=None, random_state=None):
            return super().sample(n, observed, random_state) * np.array([1.0, 1000.0])

    refs = np.random.default_rng(5).uniform(-2, 2, size=theta.shape)
    _, plain = tarp(Gaussian(), theta, x, n_samples=100, random_state=0, references=refs)
    _, scaled = tarp(Scaled(), theta * [1, 1000], x, n_samples=100, random_state=0,
                     references=refs * [1, 1000])
    np.testing.assert_allclose(plain, scaled)


def test_one_set_of_samples_serves_every_check():
    theta, x = test_pairs(n=100)
    samples = draw_samples(Gaussian(), x, 150, random_state=3)
    np.testing.assert_array_equal(sbc(None, theta, x, n_samples=150, samples=samples,
                                      random_state=0),
                                  sbc(None, theta, x, n_samples=150, samples=samples,
                                      random_state=0))
    kde = coverage(None, theta, x, samples=samples)
    exact = coverage(Gaussian(), theta, x, samples=samples, method="log_prob")
    assert np.max(np.abs(kde[1] - exact[1])) < 0.1
    assert tarp(None, theta, x, samples=samples, random_state=0)[1].shape == (21,)
    with pytest.raises(ValueError, match="samples must have shape"):
        sbc(None, theta, x, samples=samples[:50])


def test_clear_errors():
    theta, x = test_pairs(n=10)
    with pytest.raises(ValueError, match="rows"):
        sbc(Gaussian(), theta, x[:5])
    with pytest.raises(ValueError, match="finite"):
        sbc(Gaussian(), np.full_like(theta, np.nan), x)
    with pytest.raises(ValueError, match="latent columns"):
        sbc(Gaussian(), theta[:, :1], x, n_samples=10)
    with pytest.raises(ValueError, match="n_samples"):
        sbc(Gaussian(), theta, x, n_samples=0)
    with pytest.raises(ValueError, match="levels"):
        coverage(Gaussian(), theta, x, levels=[1.5])
    with pytest.raises(ValueError, match="method"):
        coverage(Gaussian(), theta, x, method="hpd")
    with pytest.raises(ValueError, match="0..10"):
        check_sbc(np.array([[11]]), 10)


def test_non_finite_and_complex_input_is_refused_not_ranked():
    """NaN samples gave every rank 0 and a coverage curve; complex latent values were cast to
    their real part with only numpy's warning."""
    theta, x = test_pairs(n=10)
    samples = draw_samples(Gaussian(), x, 20, random_state=0)
    bad = samples.copy()
    bad[0, 0, 0] = np.nan
    for check in (sbc, coverage, tarp):
        with pytest.raises(ValueError, match="samples hold non-finite"):
            check(None, theta, x, samples=bad)
    with pytest.raises(ValueError, match="latent holds complex"):
        sbc(Gaussian(), theta + 1j, x, n_samples=20)
    with pytest.raises(ValueError, match="levels"):
        coverage(None, theta, x, samples=samples, levels=[np.nan])
    with pytest.raises(ValueError, match="references must be finite"):
        tarp(None, theta, x, samples=samples, references=np.full_like(theta, np.nan))


def test_diagnostics_of_a_fitted_model_for_any_condition_mask():
    import warnings

    from skformer import SimformerEstimator

    from _data import TINY

    rng = np.random.default_rng(0)
    theta = rng.standard_normal((1500, 2))
    X = np.hstack([theta, theta + NOISE * rng.standard_normal(theta.shape)])
    est = SimformerEstimator(max_epochs=30, random_state=0, device="cpu", **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X)
    test_theta, test_x = test_pairs(n=60, seed=1)
    post = est.condition([False, False, True, True])
    ranks = sbc(post, test_theta, test_x, n_samples=100, random_state=0)
    assert ranks.shape == (60, 2)
    np.testing.assert_array_equal(ranks, sbc(post, test_theta, test_x, n_samples=100,
                                             random_state=0))
    assert (check_sbc(ranks, 100)["ks_pvalues"] > 1e-3).all()
    # another conditional of the same model: theta_0 and x_1 given theta_1 and x_0
    mixed = est.condition([False, True, True, False])
    latent, observed = np.c_[test_theta[:, 0], test_x[:, 1]], np.c_[test_theta[:, 1], test_x[:, 0]]
    levels, ecp = tarp(mixed, latent, observed, n_samples=100, random_state=0)
    assert ecp.shape == levels.shape and np.all(np.abs(ecp - levels) < 0.3)


def test_plots_draw_the_ranks_the_curves_and_the_uniform_band():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skformer.plot import coverage_plot, sbc_rank_plot, tarp_plot

    theta, x = test_pairs()
    ranks = sbc(Gaussian(scale=0.5), theta, x, n_samples=200, random_state=0)
    axes = sbc_rank_plot(ranks, 200, names=["a", "b"])
    assert [ax.get_title() for ax in axes] == ["a", "b"]
    bars = axes[0].containers[0]  # the histogram's
    assert sum(p.get_height() for p in bars) == 300  # every rank in a bin
    axes = sbc_rank_plot(ranks, 200, kind="ecdf")
    curve = axes[0].get_lines()[0].get_ydata()
    assert curve.max() > 0.1  # a U shape: the ECDF rises fast, then flattens
    levels, cov = coverage(Gaussian(), theta, x, n_samples=100, random_state=0)
    ax = coverage_plot(levels, cov, n_tests=300)
    np.testing.assert_allclose(ax.get_lines()[-1].get_ydata(), cov)
    ax = tarp_plot(*tarp(Gaussian(), theta, x, n_samples=100, random_state=0), n_tests=300)
    assert ax.get_ylabel() == "expected coverage (TARP)"
    with pytest.raises(ValueError, match="kind"):
        sbc_rank_plot(ranks, 200, kind="violin")
    plt.close("all")
