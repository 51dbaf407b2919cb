"""skformer.simulate: seeded chunks through joblib, failures reported and kept as missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skformer import BoxUniform, simulate


def uniform_prior(n, rng):
    return rng.uniform(-1, 1, size=(n, 2))


def noisy(theta, rng):
    return theta + 0.1 * rng.standard_normal(theta.shape)


def global_noise(theta):  # draws from numpy's and torch's global generators
    return theta + np.random.standard_normal(theta.shape) + torch.randn(theta.shape).numpy()


def fails_above(theta, rng):  # a batched simulator that raises when any theta_0 > 0.8
    if (theta[:, 0] > 0.8).any():
        raise RuntimeError("solver blew up")
    return noisy(theta, rng)


def test_rows_are_theta_then_x_and_follow_the_simulator():
    X = simulate(noisy, uniform_prior, 300, chunk_size=64, random_state=0)
    assert X.shape == (300, 4) and X.dtype == np.float64
    assert np.all(np.abs(X[:, :2]) <= 1)
    resid = X[:, 2:] - X[:, :2]
    assert abs(resid.std() - 0.1) < 0.01 and abs(resid.mean()) < 0.01


@pytest.mark.parametrize("simulator", [noisy, global_noise])
def test_the_result_depends_on_the_seed_and_chunks_not_on_the_workers(simulator):
    one = simulate(simulator, uniform_prior, 250, chunk_size=50, random_state=3)
    two = simulate(simulator, uniform_prior, 250, chunk_size=50, random_state=3, n_jobs=2)
    np.testing.assert_array_equal(one, two)
    other = simulate(simulator, uniform_prior, 250, chunk_size=50, random_state=4)
    assert not np.allclose(one, other)
    # the chunks draw independent noise: no chunk repeats another's
    noise = one[:, 2:] - one[:, :2]
    assert not np.allclose(noise[:50], noise[50:100])


def test_global_generators_are_left_as_they_were():
    np.random.seed(1)
    torch.manual_seed(1)
    simulate(global_noise, uniform_prior, 20, random_state=0)
    after = (np.random.standard_normal(), torch.randn(()).item())
    np.random.seed(1)
    torch.manual_seed(1)
    assert after == (np.random.standard_normal(), torch.randn(()).item())


def test_torch_and_scipy_priors():
    stats = pytest.importorskip("scipy.stats")
    box = BoxUniform(low=-torch.ones(3), high=torch.ones(3))
    X = simulate(lambda t: t ** 2, box, 200, random_state=0)
    assert X.shape == (200, 6) and np.all(np.abs(X[:, :3]) <= 1)
    np.testing.assert_allclose(X[:, 3:], X[:, :3] ** 2, rtol=1e-6)
    np.testing.assert_array_equal(X, simulate(lambda t: t ** 2, box, 200, random_state=0))
    # scipy: a 1-D prior becomes one column; the simulator may return torch tensors
    Y = simulate(lambda t: torch.as_tensor(2 * t), stats.norm(0, 1), 100, random_state=0)
    assert Y.shape == (100, 2)
    np.testing.assert_allclose(Y[:, 1], 2 * Y[:, 0])
    assert abs(Y[:, 0].mean()) < 0.3


def test_a_chunk_that_raises_is_simulated_row_by_row_and_its_failures_kept_as_missing():
    with pytest.warns(RuntimeWarning, match=r"(\d+) of 400 simulations failed \(\1 raised"):
        X = simulate(fails_above, uniform_prior, 400, chunk_size=50, random_state=0)
    bad = X[:, 0] > 0.8
    assert 20 < bad.sum() < 80
    assert np.isnan(X[bad, 2:]).all() and np.isfinite(X[~bad]).all()
    # rows of chunks that did not raise are as in a run without failures
    clean = simulate(noisy, uniform_prior, 400, chunk_size=50, random_state=0)
    np.testing.assert_array_equal(X[:, :2], clean[:, :2])
    with pytest.warns(RuntimeWarning, match="dropped"):
        dropped = simulate(fails_above, uniform_prior, 400, chunk_size=50, random_state=0,
                           on_failure="drop")
    np.testing.assert_array_equal(dropped, X[~bad])
    with pytest.raises(RuntimeError, match="solver blew up"):
        simulate(fails_above, uniform_prior, 400, chunk_size=50, random_state=0,
                 on_failure="raise")


def test_non_finite_entries_become_missing_and_the_warning_counts_them():
    def partly(theta):
        x = np.column_stack([theta[:, 0], np.log(theta[:, 1]), 1 / theta[:, 0].clip(0)])
        return x  # log of a negative: NaN in column 1; 1/0: infinity in column 2

    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning) as record:
        X = simulate(partly, uniform_prior, 200, random_state=0)
    message = str(record[0].message)
    n_bad = int(((X[:, 1] < 0) | (X[:, 0] <= 0)).sum())
    assert message.startswith(f"{n_bad} of 200 simulations failed (0 raised, {n_bad} returned")
    assert "in some entries only" in message
    assert np.isnan(X[X[:, 1] < 0, 3]).all() and np.isnan(X[X[:, 0] <= 0, 4]).all()
    assert not np.isinf(X).any()
    np.testing.assert_array_equal(X[:, 2], X[:, 0])  # the good column is untouched
    with np.errstate(all="ignore"), pytest.raises(ValueError, match="non-finite"):
        simulate(partly, uniform_prior, 200, random_state=0, on_failure="raise")


def test_missing_simulations_train_as_missing_data():
    from skformer import SimformerEstimator

    from _data import TINY

    with pytest.warns(RuntimeWarning):
        X = simulate(fails_above, uniform_prior, 400, chunk_size=20, random_state=0)
    est = SimformerEstimator(max_epochs=2, random_state=0, device="cpu", **TINY)
    with pytest.warns(Warning):
        est.fit(X)
    assert est.model_.missing_seen.tolist() == [False, False, True, True]


def test_clear_errors():
    with pytest.raises(ValueError, match="n_simulations"):
        simulate(noisy, uniform_prior, 0)
    with pytest.raises(ValueError, match="chunk_size"):
        simulate(noisy, uniform_prior, 10, chunk_size=0)
    with pytest.raises(ValueError, match="on_failure"):
        simulate(noisy, uniform_prior, 10, on_failure="ignore")
    with pytest.raises(TypeError, match="prior"):
        simulate(noisy, 3.0, 10)
    with pytest.raises(ValueError, match="one simulation per row"):
        simulate(lambda t: t[:1], uniform_prior, 10)
    with pytest.raises(ValueError, match="non-finite parameters"):
        simulate(noisy, lambda n, rng: np.full((n, 2), np.nan), 10)
    with pytest.raises(RuntimeError, match="every one"):
        simulate(lambda t: 1 / 0, uniform_prior, 10)
