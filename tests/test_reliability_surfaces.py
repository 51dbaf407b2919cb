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


def test_complex_numbers_are_refused_not_cast(fitted_curves):
    """numpy casts complex to float with a ComplexWarning, dropping the imaginary part."""
    with pytest.raises(ValueError, match=r"positions\['x'\] holds complex"):
        fitted_curves.condition(["x"], positions={"x": np.array([0.1, 0.5]) + 1j})
    post = fitted_curves.condition(["x"], positions={"x": [0.1, 0.5]})
    with pytest.raises(ValueError, match="observed holds complex"):
        post.sample(2, observed=np.array([0.1, 0.2]) + 0j)
    with pytest.raises(ValueError, match="values holds complex"):
        post.log_prob(torch.tensor([[0.1 + 1j]]), observed=[0.1, 0.2])


def test_a_training_range_near_float64s_limits_standardises_finitely():
    """Positions spanning about -1.4e308..1.4e308: the range's width overflows float64, its
    halves do not; the model trains and samples finite values."""
    X, t = curves(100)
    t = (t - 0.5) * 1.7e308 * 1.7
    assert np.isinf(t.max() - t.min())
    est = quiet_fit(positional(), X, positions={"x": t})
    z = est.model_.positions.standard(1, torch.as_tensor(t[:3, :, None]))
    assert torch.isfinite(z).all() and z.abs().max() <= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor numpy's overflow warnings on the way
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


@pytest.mark.parametrize("call, name", [
    (lambda est, post: post.sample(10**12, observed=np.zeros(K)), "n_samples=1,000,000,000,000"),
    (lambda est, post: post.sample(10**8, observed=np.zeros((10**5, K))), "100,000 observ"),
    (lambda est, post: post.map(np.zeros(K), n_init=10**13), "n_init"),
    (lambda est, post: post.sample(3, observed=np.zeros(K), steps=10**12), "steps must be at most"),
    (lambda est, post: post.log_prob([[0.0]], np.zeros(K), steps=10**9), "steps must be at most"),
])
def test_sample_sizes_no_machine_holds_are_refused_naming_the_argument(fitted_curves, call,
                                                                       name):
    """They ended in the allocator's RuntimeError ("can't allocate memory")."""
    post = fitted_curves.condition(["x"], positions={"x": np.linspace(0, 1, K)})
    start = time.perf_counter()
    with pytest.raises(ValueError, match=name):
        call(fitted_curves, post)
    assert time.perf_counter() - start < 2


def test_a_training_step_no_machine_holds_is_refused_before_training():
    """20,000 columns, one token each: a step of 64 rows would keep about 800 GB of attention
    for its backward pass. Refused naming batch_size and the tokens, in seconds."""
    X = np.random.default_rng(0).normal(size=(80, 20_000))
    est = SimformerEstimator(**{**TINY, "batch_size": 64}, max_epochs=1, device="cpu")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"a training step of 64 rows \(batch_size\) over "
                                         r"20000 tokens .* GB"):
        est.fit(X)
    assert time.perf_counter() - start < 20 and "model_" not in est.__dict__
    with pytest.raises(ValueError, match="a training step of 64 rows"):
        est.partial_fit(X)
    assert "model_" not in est.__dict__


def test_rounds_refuse_a_budget_no_machine_holds_before_simulating():
    sim = Counting()
    with pytest.raises(ValueError, match="simulations_per_round=10,000,000,000,000"):
        tiny_rounds(sim, simulations_per_round=10**13)
    assert sim.n == 0


def test_bounds_that_exclude_every_training_row_fail_fast():
    """theta lives in [-1, 1]; bounds (5, 6) hold none of the model's mass. Learnt as the
    support, the fit refuses them at once; as a truncation, sampling gives up after two rounds
    of drawing instead of twenty."""
    rng = np.random.default_rng(0)
    theta = rng.uniform(-1, 1, size=(400, 1))
    X = np.hstack([theta, theta + 0.1 * rng.normal(size=theta.shape)])
    params = dict(**{**TINY, "d_model": 16, "n_layers": 1}, max_epochs=1, random_state=0,
                  device="cpu", bounds={0: (5.0, 6.0)})
    with pytest.raises(ValueError, match="400 value.* outside its bounds"):
        SimformerEstimator(**params, support="transform").fit(X)
    est = quiet_fit(SimformerEstimator(**params, support="truncate"), X)
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
    draw = kw.pop("prior", prior)
    est = kw.pop("estimator", None) or SimformerEstimator(
        **{**TINY, "d_model": 16, "n_layers": 1}, max_epochs=1, random_state=0, device="cpu")
    args = dict(n_rounds=2, simulations_per_round=100, truncation="box",
                n_posterior_samples=100, random_state=0, verbose=0)
    args.update(kw)
    return rounds(est, simulator, draw, observed, **args)


@pytest.mark.parametrize("kw, match", [
    (dict(warm_params={"learning_rat": 1e-3}), r"warm_params names \['learning_rat'\]"),
    (dict(warm_params={"d_model": 8}), "may not change"),
    (dict(warm_params={"learning_rate": -1.0}), "warm_params: .*learning_rate"),
    (dict(n_rounds=1, warm_params={"learnin_rate": 1e-3}), "learnin_rate"),  # no warm round
    (dict(n_rounds=2, warm_params={"training_options": {"bad": 1}}), "warm_params: .*bad"),
    (dict(warm_params={"training_options": {"ema_decay": 2.0}}), "warm_params: .*ema_decay"),
    (dict(warm_params={"warm_start": False}), "may not set"),
    (dict(estimator=SimformerEstimator(dynamics_options={"bad": 1})), "does not take"),
    (dict(initial=np.zeros((20, 3))), r"initial must have shape \(n, 2\)"),
    (dict(initial=[["a", "b"]]), "initial must be an array of numbers"),
    (dict(initial=np.full((5, 2), np.nan)), "non-finite parameters"),
    (dict(estimator=SimformerEstimator(bounds={"theta": (1.0, 0.0)})), "low < high"),
    (dict(estimator=SimformerEstimator(bounds={"thet": (0.0, 1.0)})), "unknown column"),
    (dict(estimator=SimformerEstimator(learning_rate=-1.0)), "learning_rate"),
    (dict(estimator=SimformerEstimator(training_options={"ema": 0.9})), "does not take"),
    (dict(estimator=SimformerEstimator(variables=[1, 1, 1])), "sum to the number of columns"),
    (dict(observed=["a"]), "observed must be a vector of numbers"),
    (dict(chunk_size=0), "chunk_size must be a positive int"),
    (dict(chunk_size=-1), "chunk_size"),
    (dict(n_jobs=0), "n_jobs must be None or a non-zero int"),
    (dict(box_margin=np.inf), "box_margin must be a finite number"),
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
        bounds={"theta": (-1.0, 1.5)}, support="truncate"))  # a Gaussian prior: draws outside
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


@pytest.mark.parametrize("output, match", [
    ("abc", "not an array of numbers"), ({"x": 1}, "not an array of numbers"),
    (None, "not an array of numbers"), ("empty", "no values per simulation"),
])
def test_a_simulator_that_returns_no_numbers_is_a_bad_output_not_a_failure(output, match):
    def sim(theta):
        if output == "empty":
            return np.empty((len(theta), 0))
        return output if output is not None else [["a"]] * len(theta)

    with pytest.raises(ValueError, match=f"the simulator returned .*{match}"):
        simulate(sim, prior, 20, random_state=0)
    with pytest.raises(ValueError, match=match) as info:
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


# ------------------------------------------------ second probe: what a fresh probe still found
@pytest.mark.parametrize("variables", [[[0, 2], [1, 3]], {"a": [1], "b": [0], "c": [2, 3]},
                                       {"a": 3, "b": 1, "c": 2, "d": 0}])
def test_columns_out_of_order_save_and_load_in_every_format(variables, tmp_path):
    """One token per column, variables not in column order: the .skf loader compared the
    tokens' order (variable by variable) with the network's (column by column) and refused."""
    X = np.random.default_rng(0).normal(size=(100, 4))
    est = quiet_fit(SimformerEstimator(**TINY, max_epochs=1, device="cpu", random_state=0,
                                       variables=variables), X)
    save(est, tmp_path / "m.skf")
    joblib.dump(est, tmp_path / "m.joblib")
    for back in (load(tmp_path / "m.skf"), joblib.load(tmp_path / "m.joblib"),
                 pickle.loads(pickle.dumps(est))):
        np.testing.assert_array_equal(back.sample(3, random_state=0),
                                      est.sample(3, random_state=0))


@pytest.mark.parametrize("change, match", [
    (dict(bounds={0: (1.0, -1.0)}), "need low < high"),
    (dict(sampling_steps=0), "sampling_steps"),
    (dict(variables=[1, 1, 1, 1]), "do not lay out"),
    (dict(d_model=64), "do not describe the model"),
])
def test_save_refuses_what_load_would_refuse_and_writes_nothing(change, match, tmp_path):
    X = np.random.default_rng(0).normal(size=(100, 3))
    est = quiet_fit(SimformerEstimator(**TINY, max_epochs=1, device="cpu", random_state=0), X)
    est.set_params(**change)
    with pytest.raises(ValueError, match=f"save\\(\\) refuses .*{match}"):
        save(est, tmp_path / "m.skf")
    assert not (tmp_path / "m.skf").exists()


def test_an_interrupted_round_keeps_its_finished_chunks():
    """chunk_size=10: the pilot, then round 0's chunks; the 4th call (round 0's 3rd chunk) is
    interrupted: the pilot and round 0's two finished chunks are in pending."""
    class Interrupted(Counting):
        calls = 0

        def __call__(self, theta, rng):
            Interrupted.calls += 1
            if Interrupted.calls == 4:
                raise KeyboardInterrupt
            return super().__call__(theta, rng)

    with pytest.raises(KeyboardInterrupt) as info:
        tiny_rounds(Interrupted(), chunk_size=10)
    pending = info.value.rounds_result.pending
    assert [len(theta) for theta, _ in pending] == [N_PILOT, 10, 10]
    for theta, x in pending:
        np.testing.assert_allclose(x, theta, atol=6 * 0.3)


def test_no_more_workers_than_chunks(monkeypatch):
    import skformer.simulation as simulation

    asked = []
    real = simulation.joblib.Parallel

    def parallel(n_jobs=None, **kw):
        asked.append(n_jobs)
        return real(n_jobs=1, **kw)

    monkeypatch.setattr(simulation.joblib, "Parallel", parallel)
    simulate(Counting(), prior, 30, n_jobs=64, chunk_size=10, random_state=0)
    assert asked == [3]


@pytest.mark.parametrize("bad_prior, match", [
    (lambda n, rng: 1.0, r"the prior returned shape \(\) for"),
    (lambda n, rng: np.full((n, 1), "a"), "not an array of numbers"),
    (lambda n, rng: np.empty((n, 0)), "no parameters per draw"),
    (lambda n, rng: rng.normal(size=(n, 1)) + 1j, "the prior returned complex"),
])
def test_a_bad_prior_is_named(bad_prior, match):
    sim = Counting()
    with pytest.raises(ValueError, match=match):
        rounds(SimformerEstimator(), sim, bad_prior, [0.5], n_rounds=2, verbose=0)
    assert sim.n == 0


def test_a_prior_whose_width_changes_is_named_and_its_simulations_kept():
    def changing(n, rng):
        changing.calls += 1
        return rng.normal(size=(n, 1 if changing.calls <= 2 else 2))

    changing.calls = 0
    with pytest.raises(ValueError, match="the prior returned 2 parameters per draw; its "
                                         "earlier draws had 1") as info:
        tiny_rounds(Counting(), n_rounds=2, prior=changing)
    kept = info.value.rounds_result
    assert len(kept.X) == 100 and len(kept.history) == 1


@pytest.mark.parametrize("kw, match", [
    (dict(random_state=-1), r"random_state must be an int in \[0, 2\*\*63\)"),
    (dict(initial=np.zeros((5, 2)) + 1j), "initial holds complex"),
    (dict(observed=[0.5 + 1j]), "observed holds complex"),
])
def test_more_rounds_arguments_refused_before_simulating(kw, match):
    sim = Counting()
    with pytest.raises(ValueError, match=match):
        tiny_rounds(sim, **kw)
    assert sim.n == 0


def test_a_simulator_returning_complex_numbers_is_a_bad_output():
    with pytest.raises(ValueError, match="the simulator returned complex"):
        tiny_rounds(Counting(output=np.zeros((8, 1)) + 1j))


def test_masked_positions_are_absent_readings_and_dates_are_refused():
    X, t = curves(200)
    masked = np.ma.masked_array(t, mask=t > 0.9)
    a = quiet_fit(positional(), X, positions={"x": masked})
    b = quiet_fit(positional(), X, positions={"x": np.where(t > 0.9, np.nan, t)})
    assert same_weights(weights(a), weights(b))
    c = quiet_fit(positional(), X, positions={"x": t})
    assert not same_weights(weights(a), weights(c))
    days = np.datetime64("2026-01-01") + np.arange(K).astype("timedelta64[D]")
    with pytest.raises(ValueError, match="dates or time spans; give numbers"):
        positional().fit(X, positions={"x": days})
    with pytest.raises(ValueError, match="dates or time spans"):
        positional().fit(X, positions={"x": np.arange(K).astype("timedelta64[s]")})


@pytest.mark.parametrize("variables, match", [
    ([True, True, True, True], "booleans"),
    ([[0.0, 1.0], [2.0, 3.0]], "integers, in order"),
    ([[True, False], [2, 3]], "integers, in order"),
    ({"t": {0, 1}, "x": [2, 3]}, r"variables\['t'\] must be a size or a list"),
])
def test_variables_of_the_wrong_kind_are_refused(variables, match):
    with pytest.raises(ValueError, match=match):
        SimformerEstimator(variables=variables).fit(np.zeros((10, 4)))


def test_variables_by_name_and_index_in_one_list_keep_the_index():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(np.random.default_rng(0).normal(size=(50, 3)), columns=["a", "b", "c"])
    est = quiet_fit(SimformerEstimator(**TINY, max_epochs=1, device="cpu",
                                       variables={"t": ["a", 1], "x": ["c"]}), df)
    assert est.layout_.groups == ((0, 1), (2,))


def test_a_warm_fit_refuses_positions_the_model_cannot_take_and_changes_nothing(fitted_curves):
    X, t = curves(100, seed=2)
    est = pickle.loads(pickle.dumps(fitted_curves)).set_params(warm_start=True)
    before = weights(est)
    with pytest.raises(ValueError, match="positions of 'x' lie so far outside"):
        est.fit(X, positions={"x": t * 1e14})
    with pytest.raises(ValueError, match="positions of 'x' lie so far outside"):
        est.partial_fit(X, positions={"x": t * 1e14})
    assert same_weights(weights(est), before) and est.n_iter_ == fitted_curves.n_iter_


def test_a_warm_fit_refuses_rows_far_outside_the_models_units_and_changes_nothing(
        fitted_curves):
    """Rows 1e20 times the first fit's scale only warned that training diverged, and appended
    NaN to the loss curves."""
    X, t = curves(100, seed=2)
    est = pickle.loads(pickle.dumps(fitted_curves)).set_params(warm_start=True)
    before, curve = weights(est), list(est.loss_curve_)
    with pytest.raises(ValueError, match="X holds values more than 1e\\+12 standard deviations"):
        est.fit(X * 1e20, positions={"x": t})
    with pytest.raises(ValueError, match="X holds values more than"):
        est.partial_fit(X * 1e20, positions={"x": t})
    assert same_weights(weights(est), before) and est.loss_curve_ == curve


# ------------------------------------------------------ third probe: set_params after a fit, ...
def small_fit(**kw) -> SimformerEstimator:
    X = np.random.default_rng(0).normal(size=(200, 4))
    return quiet_fit(SimformerEstimator(**{**TINY, "d_model": 16, "n_layers": 1}, max_epochs=1,
                                        device="cpu", random_state=0, **kw), X)


@pytest.mark.parametrize("device", ["cuda:-1", "cuda:abc", " cpu"])
def test_a_malformed_device_set_after_the_fit_loses_no_model(device, tmp_path):
    est = small_fit()
    est.set_params(device=device)
    with pytest.raises(ValueError, match="save\\(\\) refuses .*device must be"):
        save(est, tmp_path / "m.skf")
    with pytest.warns(RuntimeWarning, match="loads on the CPU"):
        back = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(back.sample(2, random_state=0), est.sample(2, random_state=0))


def test_the_sbi_facade_keeps_its_parameters_when_a_call_is_refused():
    from skformer import Simformer

    rng = np.random.default_rng(0)
    theta = rng.normal(size=(200, 1, 1))
    sims = torch.as_tensor(np.concatenate([theta, theta + 0.1], axis=1))
    s = Simformer(d_model=16, n_layers=1, n_heads=2, device="cpu", random_state=0)
    s.append_simulations(sims)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.train(max_num_epochs=1)
    before = s.estimator.get_params()
    with pytest.raises(ValueError, match="max_epochs"):
        s.train(max_num_epochs=0)
    with pytest.raises(ValueError, match="foo"):
        s.train(learning_rate=2.0, foo=1)
    with pytest.raises(ValueError, match="condition_masks"):
        s.append_simulations(sims, condition_masks="nope")
    assert s.estimator.get_params() == before and len(s._inputs) == 1
    with pytest.raises(ValueError, match="inputs must"):
        s.append_simulations(None)
    with pytest.raises(ValueError, match=r"inputs must have shape .* got \(0, 2, 1\)"):
        s.append_simulations(sims[:0])


def test_a_schedule_of_a_billion_epochs_still_trains():
    """Its warm-up was 2 % of the schedule: the learning rate stayed near 0 and early stopping
    ended the fit untrained, with converged_ True and no warning."""
    rng = np.random.default_rng(0)
    theta = rng.uniform(-1, 1, size=(600, 1))
    X = np.hstack([theta, theta + 0.1 * rng.normal(size=theta.shape)])
    est = SimformerEstimator(**{**TINY, "d_model": 16, "n_layers": 1}, max_epochs=10**9,
                             n_iter_no_change=3, device="cpu", random_state=0).fit(X)
    assert est.converged_ and est.best_epoch_ >= 20  # past the warm-up of 20 epochs
    assert min(est.validation_scores_) < 0.8 * est.validation_scores_[0]


@pytest.mark.parametrize("latent", [np.array([True, False, False, False]), [True], True, [1.7]])
def test_posterior_indexes_refuse_booleans_and_floats(latent):
    with pytest.raises(ValueError, match="posterior_latent must be (a list of variable "
                                         "indexes|an int, not a boolean)"):
        SimformerEstimator(posterior_latent=latent).fit(np.zeros((20, 4)))


def test_a_prior_that_breaks_iid_sampling_is_named(fitted_curves):
    post = fitted_curves.condition(["x"], positions={"x": np.linspace(0, 1, K)})
    prior = torch.distributions.Normal(torch.zeros(1), torch.full((1,), 1e30))
    with pytest.raises(ValueError, match="non-finite values, from the prior given"):
        post.sample(2, np.zeros((2, K)), iid=True, prior=prior, random_state=0)


def test_masked_entries_are_missing_in_fit_and_not_observed_at_inference():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    mask = np.zeros_like(X, dtype=bool)
    mask[::7, 2] = True
    hidden = np.where(mask, 1e6, X)  # what the mask hides must not be trained on
    a = quiet_fit(SimformerEstimator(**TINY, max_epochs=1, device="cpu", random_state=0),
                  np.ma.masked_array(hidden, mask))
    b = quiet_fit(SimformerEstimator(**TINY, max_epochs=1, device="cpu", random_state=0),
                  np.where(mask, np.nan, X))
    np.testing.assert_array_equal(a.mean_, b.mean_)
    post = a.condition([False, True, True])
    masked = np.ma.masked_array([0.1, 1e6], mask=[False, True])
    np.testing.assert_array_equal(post.sample(3, masked, random_state=0),
                                  post.sample(3, [0.1, np.nan], random_state=0))


def test_threads_beyond_the_limit_are_refused_also_after_the_fit():
    with pytest.raises(ValueError, match="n_threads"):
        SimformerEstimator(n_threads=100_000).fit(np.zeros((20, 2)))
    est = small_fit()
    est.set_params(n_threads=0)
    with pytest.raises(ValueError, match=r"n_threads must be None or an int in \[1, 1024\]"):
        est.sample(2)


def test_probes_and_simulations_no_machine_holds_are_refused(fitted_curves):
    post = fitted_curves.condition(["x"], positions={"x": np.linspace(0, 1, K)})
    with pytest.raises(ValueError, match="n_probes copies"):
        post.log_prob([[0.0]], np.zeros(K), divergence="hutchinson", n_probes=10**9)
    with pytest.raises(ValueError, match="n_simulations=1,000,000,000,000"):
        simulate(Counting(), prior, 10**12)


def test_named_observed_values_are_read_by_name():
    """A pandas Series or DataFrame labelled by column names was read by position."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(200, 4)), columns=["t0", "t1", "x0", "x1"])
    est = quiet_fit(SimformerEstimator(**TINY, max_epochs=1, device="cpu", random_state=0), df)
    post = est.condition(["x0", "x1"])
    by_order = post.sample(3, [0.1, 0.2], random_state=0)
    np.testing.assert_array_equal(
        post.sample(3, pd.Series({"x1": 0.2, "x0": 0.1}), random_state=0), by_order)
    np.testing.assert_array_equal(
        post.sample(3, pd.DataFrame({"x1": [0.2], "x0": [0.1]}), random_state=0), by_order[None])
    np.testing.assert_array_equal(post.sample(3, pd.Series([0.1, 0.2]), random_state=0),
                                  by_order)  # unlabelled: by position
    with pytest.raises(ValueError, match=r"observed is labelled \['x0', 'x2'\]"):
        post.sample(3, pd.Series({"x0": 0.1, "x2": 0.2}))
    values = pd.DataFrame({"t1": [0.0], "t0": [0.5]})
    np.testing.assert_array_equal(post.log_prob(values, [0.1, 0.2]),
                                  post.log_prob([[0.5, 0.0]], [0.1, 0.2]))


@pytest.mark.parametrize("param", ["batch_size", "tokens", "n_iter_no_change", "n_threads",
                                   "max_epochs"])
def test_booleans_are_not_ints(param):
    with pytest.raises(ValueError, match=f"{param} must be an int, not a boolean"):
        SimformerEstimator(**{param: True}).fit(np.zeros((20, 2)))


def test_call_arguments_of_the_wrong_kind_are_named(fitted_curves):
    post = fitted_curves.condition(["x"], positions={"x": np.linspace(0, 1, K)})
    with pytest.raises(ValueError, match="iid must be True or False"):
        post.sample(2, np.zeros(K), iid="yes")
    with pytest.raises(ValueError, match="learning_rate must be a positive finite number"):
        post.map(np.zeros(K), learning_rate="0.1")
    with pytest.raises(ValueError, match="learning_rate must be"):
        post.map(np.zeros(K), learning_rate=np.inf)
    with pytest.raises(ValueError, match=r"random_state must be an int in \[0, 2\*\*63\)"):
        post.sample(2, np.zeros(K), random_state=2**70)
    with pytest.raises(ValueError, match="observed must be an array of numbers"):
        post.sample(2, ["a"] * K)


# ----------------------------------------------------------------------------- a third probe
def test_partial_fit_on_a_fitted_model_checks_its_parameters():
    """scikit-learn's _fit_context skips validation for partial_fit once fitted: a negative
    learning rate trained uphill."""
    X, t = curves(128)
    est = positional(batch_size=64).partial_fit(X, positions={"x": t})
    before = weights(est)
    est.set_params(learning_rate=-1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        est.partial_fit(X, positions={"x": t})
    assert same_weights(weights(est), before) and est.n_iter_ == 1


def test_a_continuing_fit_without_positions_says_so(fitted_curves):
    X, _ = curves(100, seed=3)
    est = pickle.loads(pickle.dumps(fitted_curves)).set_params(warm_start=True)
    with pytest.raises(ValueError, match=r"fitted with positions for \['x'\].*pass positions"):
        est.fit(X)
    with pytest.raises(ValueError, match="pass positions"):
        est.partial_fit(X)
    plain = small_fit(warm_start=True)
    with pytest.raises(ValueError, match="fitted without positions"):
        plain.fit(np.zeros((50, 4)), positions={"v3": [0.0]})


def test_per_row_positions_at_a_conditional_are_named(fitted_curves):
    with pytest.raises(ValueError, match=r"positions\['x'\] of shape \(2, 5\) reads as 2 "
                                         r"readings .* not one per row"):
        fitted_curves.condition(["x"], positions={"x": np.tile(np.linspace(0, 1, K), (2, 1))})
    with pytest.raises(ValueError, match=r"positions\['x'\] holds booleans"):
        fitted_curves.condition(["x"], positions={"x": np.ones(K, bool)})


@pytest.mark.parametrize("spec", [("0", "0.5"), (False, True), (torch.tensor(0.0), 1.0)])
def test_bounds_must_be_numbers(spec):
    with pytest.raises(ValueError, match="must be \\(low, high\\), two numbers"):
        small_fit(bounds={0: spec})


def test_warm_params_with_a_device_no_fit_takes_are_refused_before_simulating():
    sim = Counting()
    with pytest.raises(ValueError, match="warm_params: .*device"):
        tiny_rounds(sim, warm_params={"device": "meta"})
    assert sim.n == 0


def test_a_scipy_prior_with_vector_parameters_draws_vectors():
    stats = pytest.importorskip("scipy.stats")
    result = tiny_rounds(Counting(), observed=[0.5, 0.5], n_rounds=1,
                         prior=stats.uniform(loc=[-2, -2], scale=[4, 4]))
    assert result.X.shape == (100, 4) and result.n_theta == 2
    assert result.X[:, :2].min() >= -2 and result.X[:, :2].max() <= 2


def test_a_round_whose_every_simulation_failed_stops_and_keeps_them():
    class Failing(Counting):
        def __call__(self, theta, rng):
            x = super().__call__(theta, rng)
            return x if self.n <= 100 else np.full_like(x, np.nan)

    with pytest.raises(ValueError, match="every one of the 100 simulations of round 1 failed") \
            as info:
        tiny_rounds(Failing())
    kept = info.value.rounds_result
    assert len(kept.X) == 100 and kept.failed.shape == (100, 2)


def test_rounds_plot_names_bad_arguments():
    result = tiny_rounds(Counting(), n_rounds=1)
    for kw, match in [(dict(columns=[5]), "columns"), (dict(columns=["theta"]), "columns"),
                      (dict(labels=["a", "b"]), "labels"), (dict(truth=[0.1, 0.2]), "truth")]:
        with pytest.raises(ValueError, match=match):
            result.plot(**kw)
