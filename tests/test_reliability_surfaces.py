"""Nothing silently broken, second pass: positions, rounds, bounds, warm starts and files.

One test (or a parametrized group) per class of bad input found by probing the surfaces added
last as a careless user would: values that overflow once standardised, unbounded work from one
argument, fit accepting what load refuses, errors after the expensive part, causes dropped,
docstrings that disagree with behaviour, and silent surprises in warm fits. Tiny models only.
"""

from __future__ import annotations

import pickle
import time
import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

import skformer.model
from skformer import SimformerEstimator, load, save, simulate
from skformer.sequential import N_PILOT, rounds

from _data import TINY

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def quiet_fit(est, X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, **kw)


def weights(est) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in est.model_.state_dict().items()}


def same_weights(a, b) -> bool:
    """Bit for bit, NaN equal to NaN (per-row positions leave the shared ones NaN)."""
    def same(x, y):
        if not x.is_floating_point():
            return torch.equal(x, y)
        return x.shape == y.shape and bool(((x == y) | (x.isnan() & y.isnan())).all())

    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------- function-valued data
K = 5


def curves(n: int, seed: int = 0, span: float = 1.0):
    """theta ~ N(0, 1); K readings x(t) = theta t + 0.1 noise at times t ~ U(0, span)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n, 1))
    t = rng.uniform(0, span, size=(n, K))
    return np.hstack([theta, theta * t + 0.1 * rng.normal(size=t.shape)]), t


def positional(**kw) -> SimformerEstimator:
    params = dict(TINY, d_model=16, n_layers=1, variables={"theta": 1, "x": K},
                  random_state=0, device="cpu", max_epochs=1)
    params.update(kw)
    return SimformerEstimator(**params)


@pytest.fixture(scope="module")
def fitted_curves() -> SimformerEstimator:
    X, t = curves(300)
    return quiet_fit(positional(), X, positions={"x": t})


# 1 ---------------------------------------------------- values that overflow once standardised
@pytest.mark.parametrize("value", [1e39, -1e300, 1e30, 1e13])
def test_positions_the_network_cannot_take_are_refused(fitted_curves, value):
    """Training times lie in [0, 1]: 1e13 is 2e13 half-widths out, beyond the 1e12 that the
    network's float32 layer norms take (at 1e30 it answered NaN, silently)."""
    with pytest.raises(ValueError, match=r"positions of 'x' lie so far outside.*float32"):
        fitted_curves.condition(["x"], positions={"x": [0.5, value]})
    with pytest.raises(ValueError, match="so far outside"):
        fitted_curves.likelihood(positions={"x": [value]})


def test_positions_far_out_but_within_the_limit_warn_and_answer(fitted_curves):
    with pytest.warns(UserWarning, match="extrapolates"):
        post = fitted_curves.condition(["x"], positions={"x": [0.5, 4e11]})
    assert np.isfinite(post.sample(5, observed=[0.1, 0.2], random_state=0)).all()
    assert np.isfinite(post.log_prob([[0.3]], observed=[0.1, 0.2]))


@pytest.mark.parametrize("value", [1e20, -1e14, 1e39])
def test_observed_and_density_values_the_network_cannot_take_are_refused(fitted_curves, value):
    """Observed values (and latent values of a density) at 1e20 gave NaN samples and NaN
    densities without a word; beyond 1e12 standard deviations they are refused."""
    post = fitted_curves.condition(["x"], positions={"x": np.linspace(0, 1, K)})
    with pytest.raises(ValueError, match=r"observed holds values so far .* 'x\[4\]'"):
        post.sample(2, observed=[0, 0, 0, 0, value], random_state=0)
    with pytest.raises(ValueError, match="values holds values so far"):
        post.log_prob([[value]], observed=np.zeros(K))
    samples = post.sample(2, observed=[0, 0, 0, 0, 1e9], random_state=0)
    assert np.isfinite(samples).all()


def test_a_training_range_near_float64s_limits_standardises_finitely():
    """Positions spanning about -1.4e308..1.4e308: the range's width overflows float64, its
    halves do not; the model trains and samples finite values."""
    X, t = curves(100)
    t = (t - 0.5) * 1.7e308 * 1.7
    assert np.isinf(t.max() - t.min())
    est = quiet_fit(positional(), X, positions={"x": t})
    z = est.model_.positions.standard(1, torch.as_tensor(t[:3, :, None]))
    assert torch.isfinite(z).all() and z.abs().max() <= 1
    post = est.condition(["x"], positions={"x": [0.0, 1e308]})
    assert np.isfinite(post.sample(5, observed=[0.1, 0.2], random_state=0)).all()


# 2 ----------------------------------------------------------- unbounded work from one argument
def test_a_conditional_with_too_many_tokens_is_refused_at_once(fitted_curves):
    """16,384 tokens of a 2-head network: one row's attention alone would take 4 GiB. Refused
    when the conditional is built, in well under a second, naming tokens and memory."""
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"has 16385 tokens.*4 GiB.*MAX_ATTENTION_BYTES"):
        fitted_curves.condition(["x"], positions={"x": np.linspace(0, 1, 16_384)})
    assert time.perf_counter() - start < 2


def test_attention_is_cut_into_calls_within_the_memory_limit(fitted_curves, monkeypatch):
    """With the limit lowered to what 3 rows of a 400-token conditional need, sampling makes
    calls of at most 3 rows; a log density, whose backward pass keeps every copy, is refused."""
    t = np.linspace(0, 1, 399)
    post = fitted_curves.condition([False] + [True] * 399, positions={"x": t})
    model = post._model
    row = model._attention_row_bytes()
    assert row == 2 * 4 * 2 * 400 * 400  # scores and softmax, float32, 2 heads
    monkeypatch.setattr(skformer.model, "MAX_ATTENTION_BYTES", 3 * row)
    assert model.rows_per_chunk() == 3
    seen = []
    forward = model.network.forward

    def spy(x, *args, **kw):
        seen.append(x.shape[0])
        return forward(x, *args, **kw)

    monkeypatch.setattr(model.network, "forward", spy)
    samples = post.sample(7, observed=np.zeros(399), random_state=0, steps=2)
    assert samples.shape == (7, 1) and np.isfinite(samples).all()
    assert max(seen) <= 3
    monkeypatch.setattr(skformer.model, "MAX_ATTENTION_BYTES", row // 2)
    with pytest.raises(ValueError, match="has 400 tokens"):
        fitted_curves.condition([False] + [True] * 399, positions={"x": t})


def test_bounds_that_exclude_every_training_row_fail_fast():
    """theta lives in [-1, 1]; bounds (5, 6) hold none of the model's mass: sampling gives up
    after two rounds of drawing instead of twenty."""
    rng = np.random.default_rng(0)
    theta = rng.uniform(-1, 1, size=(400, 1))
    X = np.hstack([theta, theta + 0.1 * rng.normal(size=theta.shape)])
    est = quiet_fit(SimformerEstimator(**{**TINY, "d_model": 16, "n_layers": 1}, max_epochs=1,
                                       random_state=0, device="cpu", bounds={0: (5.0, 6.0)}), X)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="none of .* samples satisfied the constraints or bounds"):
        est.condition([False, True]).sample(200, observed=[0.0], random_state=0, steps=5)
    assert time.perf_counter() - start < 5


# 3 ------------------------------------------------------------ fit accepts what load refuses
@pytest.mark.parametrize("param, value", [("d_model", 16_386), ("n_layers", 1_025),
                                          ("n_heads", 1_025)])
def test_fit_refuses_architectures_no_loader_restores(param, value):
    est = SimformerEstimator(**{**TINY, param: value})
    with pytest.raises(ValueError, match=param):
        est.fit(np.zeros((10, 2)))
    assert "model_" not in est.__dict__


def test_fit_refuses_positions_of_more_coordinates_than_load_restores():
    X, _ = curves(50)
    with pytest.raises(ValueError, match="17 coordinates per reading; at most 16"):
        positional().fit(X, positions={"x": np.zeros((K, 17))})


@pytest.mark.parametrize("fmt", ["pickle", "joblib", "skf"])
def test_positions_of_16_coordinates_round_trip(fmt, tmp_path):
    X, _ = curves(60)
    P = np.random.default_rng(1).uniform(size=(K, 16))
    est = quiet_fit(positional(), X, positions={"x": P})
    path = tmp_path / "model"
    if fmt == "pickle":
        back = pickle.loads(pickle.dumps(est))
    elif fmt == "joblib":
        joblib.dump(est, path)
        back = joblib.load(path)
    else:
        save(est, path)
        back = load(path)
    a = est.condition(["x"]).sample(3, observed=np.zeros(K), random_state=0)
    b = back.condition(["x"]).sample(3, observed=np.zeros(K), random_state=0)
    np.testing.assert_array_equal(a, b)


# 4 ------------------------------------------------------------ errors after the expensive part
PRIOR_SD = 2.0


def prior(n, rng):
    return PRIOR_SD * rng.standard_normal((n, 1))


class Counting:
    """A simulator x = theta + 0.3 noise (``width`` copies) that counts its simulations."""

    def __init__(self, width: int = 1, fail: BaseException | None = None, output=None):
        self.width, self.fail, self.output, self.n = width, fail, output, 0

    def __call__(self, theta, rng):
        self.n += len(theta)
        if self.fail is not None:
            raise self.fail
        if self.output is not None:
            return self.output
        return np.repeat(theta, self.width, axis=1) + 0.3 * rng.standard_normal(
            (len(theta), self.width))


def tiny_rounds(simulator, observed=(0.5,), **kw):
    est = kw.pop("estimator", None) or SimformerEstimator(
        **{**TINY, "d_model": 16, "n_layers": 1}, max_epochs=1, random_state=0, device="cpu")
    args = dict(n_rounds=2, simulations_per_round=100, truncation="box",
                n_posterior_samples=100, random_state=0, verbose=0)
    args.update(kw)
    return rounds(est, simulator, prior, observed, **args)


@pytest.mark.parametrize("kw, match", [
    (dict(warm_params={"learning_rat": 1e-3}), r"warm_params names \['learning_rat'\]"),
    (dict(warm_params={"d_model": 8}), "may not change"),
    (dict(warm_params={"learning_rate": -1.0}), "warm_params: .*learning_rate"),
    (dict(n_rounds=1, warm_params={"learnin_rate": 1e-3}), "learnin_rate"),  # no warm round
    (dict(initial=np.zeros((20, 3))), r"initial must have shape \(n, 2\)"),
    (dict(initial=[["a", "b"]]), "initial must be an array of numbers"),
    (dict(initial=np.full((5, 2), np.nan)), "non-finite parameters"),
    (dict(estimator=SimformerEstimator(bounds={"theta": (1.0, 0.0)})), "low < high"),
    (dict(estimator=SimformerEstimator(bounds={"thet": (0.0, 1.0)})), "unknown column"),
    (dict(estimator=SimformerEstimator(learning_rate=-1.0)), "learning_rate"),
    (dict(estimator=SimformerEstimator(training_options={"ema": 0.9})), "does not take"),
    (dict(estimator=SimformerEstimator(variables=[1, 1, 1])), "sum to the number of columns"),
    (dict(observed=["a"]), "observed must be a vector of numbers"),
])
def test_rounds_refuse_bad_arguments_before_simulating(kw, match):
    sim = Counting()
    with pytest.raises(ValueError, match=match):
        tiny_rounds(sim, **kw)
    assert sim.n == 0


@pytest.mark.parametrize("observed, width", [((0.5, 0.5), 1), ((0.5,), 3)])
def test_rounds_check_the_simulator_against_observed_on_a_pilot(observed, width):
    """An observation of the wrong length, or a simulator of the wrong width: refused after
    the pilot's 8 simulations, which the error carries."""
    sim = Counting(width=width)
    with pytest.raises(ValueError, match=f"returns {width} values of x .* observed has "
                                         f"{len(observed)}") as info:
        tiny_rounds(sim, observed=observed)
    assert sim.n == N_PILOT
    kept = info.value.rounds_result
    [(theta, x)] = kept.pending
    assert theta.shape == (N_PILOT, 1) and x.shape == (N_PILOT, width)
    assert len(kept.X) == 0 and kept.history == []


def test_a_simulator_that_changes_width_after_the_pilot_keeps_every_simulation():
    class Changing(Counting):
        def __call__(self, theta, rng):
            self.width = 1 if self.n == 0 else 2
            return super().__call__(theta, rng)

    sim = Changing()
    with pytest.raises(ValueError, match="returns 2 values of x") as info:
        tiny_rounds(sim)
    pending = info.value.rounds_result.pending
    assert [(t.shape, x.shape) for t, x in pending] == [((N_PILOT, 1), (N_PILOT, 1)),
                                                         ((100 - N_PILOT, 1),
                                                          (100 - N_PILOT, 2))]


def test_rounds_bounds_by_the_variable_names_its_docstring_promises():
    """The clone names the variables theta and x: bounds by those names work, and are the
    box every posterior sample stays in."""
    result = tiny_rounds(Counting(), estimator=SimformerEstimator(
        **{**TINY, "d_model": 16, "n_layers": 1}, max_epochs=1, random_state=0, device="cpu",
        bounds={"theta": (-1.0, 1.5)}))
    assert result.estimator.layout_.names == ("theta", "x")
    samples = result.posterior().sample(200, observed=[0.5], random_state=0)
    assert samples.min() >= -1.0 and samples.max() <= 1.5
    assert len(result.X) == 200 and np.bincount(result.round_of_row).tolist() == [100, 100]


def test_initial_simulations_and_the_pilot_make_round_0():
    rng = np.random.default_rng(3)
    theta = prior(50, rng)
    initial = np.hstack([theta, theta + 0.3 * rng.standard_normal(theta.shape)])
    sim = Counting()
    result = tiny_rounds(sim, initial=initial, n_rounds=1)
    assert sim.n == N_PILOT
    np.testing.assert_array_equal(result.X[:50], initial)
    assert len(result.X) == 50 + N_PILOT and result.history[0].n_simulations == 50 + N_PILOT


# 5 --------------------------------------------------------------------------- the cause dropped
class SimulatorBroke(Exception):
    pass


def test_a_simulator_that_always_raises_is_reported_with_its_own_error():
    sim = Counting(fail=SimulatorBroke("no licence for the solver"))
    with pytest.raises(RuntimeError, match="every one of the 8 pilot") as info:
        tiny_rounds(sim)
    cause = info.value.__cause__
    assert isinstance(cause, SimulatorBroke) and "no licence" in str(cause)
    assert sim.n == 2 * N_PILOT  # the batch, then each row alone
    with pytest.raises(RuntimeError, match="SimulatorBroke.*no licence") as info:
        simulate(Counting(fail=SimulatorBroke("no licence")), prior, 20, random_state=0)
    assert isinstance(info.value.__cause__, SimulatorBroke)


@pytest.mark.parametrize("output", ["abc", {"x": 1}, None])
def test_a_simulator_that_returns_no_numbers_is_a_bad_output_not_a_failure(output):
    def sim(theta):
        return output if output is not None else [["a"]] * len(theta)

    with pytest.raises(ValueError, match="the simulator returned .* not an array of numbers"):
        simulate(sim, prior, 20, random_state=0)
    with pytest.raises(ValueError, match="not an array of numbers") as info:
        tiny_rounds(lambda theta, rng: sim(theta))
    assert not hasattr(info.value, "rounds_result")  # nothing usable ran


# 6 -------------------------------------------------------- docstring and behaviour disagree
def test_variables_as_a_dict_of_sizes_means_sizes_as_the_list_does():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 5))
    by_dict = quiet_fit(SimformerEstimator(**TINY, max_epochs=1, variables={"theta": 2, "x": 3},
                                           device="cpu", random_state=0), X)
    by_list = quiet_fit(SimformerEstimator(**TINY, max_epochs=1, variables=[2, 3],
                                           device="cpu", random_state=0), X)
    assert by_dict.layout_.groups == by_list.layout_.groups == ((0, 1), (2, 3, 4))
    assert by_dict.layout_.names == ("theta", "x")
    assert by_dict.condition(["x"]).latent_names == ["theta[0]", "theta[1]"]
    # a single column's index as a one-element list; the old bare-index dicts still read so
    legacy = quiet_fit(SimformerEstimator(**TINY, max_epochs=1, device="cpu",
                                          variables={"a": 1, "b": 0, "c": 2, "d": 3, "e": 4}),
                       X)
    assert legacy.layout_.groups == ((1,), (0,), (2,), (3,), (4,))
    with pytest.raises(ValueError, match="mixes sizes and lists of columns"):
        SimformerEstimator(variables={"theta": 2, "x": [2, 3, 4]}).fit(X)
    with pytest.raises(ValueError, match="sum to the number of columns"):
        SimformerEstimator(variables={"theta": 2, "x": 20}).fit(X)


# 7 ------------------------------------------------------------ silent surprises in warm fits
def test_a_warm_fit_on_wider_positions_widens_the_range_it_judges_by(fitted_curves, tmp_path):
    X, t = curves(300, seed=1, span=10.0)
    est = pickle.loads(pickle.dumps(fitted_curves)).set_params(warm_start=True)
    units = est.model_.positions.standard(1, torch.tensor([[5.0]]))
    quiet_fit(est, X, positions={"x": t})
    # the network's units stay the first fit's; the range it was trained on grows
    assert torch.equal(est.model_.positions.standard(1, torch.tensor([[5.0]])), units)
    low, high = est.model_.positions.seen_range()
    assert low[0, 0] < 0.05 and high[0, 0] > 9.5
    save(est, tmp_path / "warm.skf")
    for model in (est, load(tmp_path / "warm.skf"), pickle.loads(pickle.dumps(est))):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # trained there: no extrapolation warning
            model.condition(["x"], positions={"x": [8.0]})
        with pytest.warns(UserWarning, match="extrapolates"):
            model.condition(["x"], positions={"x": [30.0]})
    with pytest.warns(UserWarning, match="extrapolates"):  # the first fit never saw 8
        fitted_curves.condition(["x"], positions={"x": [8.0]})


def test_partial_fit_takes_a_new_batch_size_between_calls():
    X, t = curves(256)
    est = positional(batch_size=64).partial_fit(X, positions={"x": t})
    assert est._partial.steps == 4 and est.batch_size_ == 64
    est.set_params(batch_size=32).partial_fit(X, positions={"x": t})
    assert est._partial.steps == 4 + 8 and est.batch_size_ == 32
    est.set_params(batch_size="auto").partial_fit(X, positions={"x": t})
    assert est._partial.steps == 12 + 8  # "auto" keeps what it resolved to


def test_a_refused_partial_fit_leaves_every_random_stream_where_it_was(monkeypatch):
    """An interrupted call draws masks and noise, then is undone: the next call trains exactly
    as it would have without the refused one."""
    X, t = curves(256)
    a = positional(batch_size=64, condition_masks="uniform").partial_fit(X, positions={"x": t})
    b = positional(batch_size=64, condition_masks="uniform").partial_fit(X, positions={"x": t})
    real, calls = a._partial.step_fn, []

    def interrupted(batch, lr):
        calls.append(1)
        real(batch, lr)
        raise KeyboardInterrupt

    monkeypatch.setattr(a._partial, "step_fn", interrupted)
    with pytest.raises(KeyboardInterrupt):
        a.partial_fit(X, positions={"x": t})
    assert calls == [1]
    monkeypatch.setattr(a._partial, "step_fn", real)
    a.partial_fit(X, positions={"x": t})
    b.partial_fit(X, positions={"x": t})
    assert same_weights(weights(a), weights(b))


def test_a_one_row_chunk_with_its_own_positions_is_taken():
    X, t = curves(256)
    est = positional(batch_size=64).partial_fit(X, positions={"x": t})
    est.partial_fit(X[:1], positions={"x": t[:1]})
    assert est.n_training_rows_ == 257
    with pytest.raises(ValueError, match=r"\(1, 5\) or \(1, 5, dim\) one set per row; got "
                                         r"shape \(1, 4\)"):
        est.partial_fit(X[:1], positions={"x": t[:1, :4]})
