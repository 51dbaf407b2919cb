"""Tests for :mod:`skformer.masks`: training-time condition and edge mask samplers.

Samplers own their generators, seeded by the ``seed`` they are built with; statistical checks use
a fixed seed and ``N_DRAWS`` samples, so they are deterministic; each tolerance is stated next to
the standard error it covers.
"""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import pytest
import torch

from skformer.layout import Layout
from skformer.masks import (
    CONDITION_MASK_NAMES,
    TrainingMasks,
    condition_sampler,
    edge_sampler,
    fix_all_observed,
)

N_DRAWS = 20_000


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def draw(spec, layout: Layout, n: int, seed: int = 0, latent=(0,), observed=(1, 2)):
    """``n`` condition masks from a sampler built for ``spec`` with ``seed`` (no split when
    ``latent`` is None)."""
    split = None if latent is None else (list(latent), list(observed))
    return condition_sampler(spec, layout, split, seed)(n)


@pytest.fixture
def layout() -> Layout:
    """Three variables over five columns: (0, 1), (2,), (3, 4)."""
    return Layout.from_spec(5, [2, 1, 2], names=["theta", "s", "x"])


def _rows_as_tuples(masks: torch.Tensor) -> list[tuple[bool, ...]]:
    return [tuple(bool(v) for v in row) for row in masks.tolist()]


# ---------------------------------------------------------------------------- named samplers


def test_condition_mask_names():
    assert set(CONDITION_MASK_NAMES) == {"bernoulli", "uniform", "structured"}


@pytest.mark.parametrize("name", CONDITION_MASK_NAMES)
@pytest.mark.parametrize("n", [1, 7, 64])
def test_named_sampler_shape_and_dtype(layout, name, n):
    masks = draw(name, layout, n)
    assert isinstance(masks, torch.Tensor)
    assert masks.dtype == torch.bool
    assert masks.shape == (n, layout.n_variables)
    assert masks.device.type == "cpu"
    assert layout.expand_condition(masks).shape == (n, layout.n_columns)


@pytest.mark.parametrize("name", CONDITION_MASK_NAMES)
def test_named_sampler_draws_on_the_device(layout, name, device):
    masks = condition_sampler(name, layout, ([0], [1, 2]), 0, device)(64)
    assert masks.device == device and masks.shape == (64, 3)


@pytest.mark.parametrize("name", CONDITION_MASK_NAMES)
def test_samplers_leave_global_rng_alone(layout, name):
    state = torch.get_rng_state()
    draw(name, layout, 1000, 0, [0], [1, 2])
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("n_vars", [1, 2, 4, 7])
def test_bernoulli_never_all_observed(n_vars):
    layout = Layout.from_spec(n_vars)
    masks = draw("bernoulli", layout, N_DRAWS, 1, [0], [])
    assert not masks.all(dim=1).any()


@pytest.mark.parametrize("n_vars", [2, 4, 7])
def test_bernoulli_observed_rate(n_vars):
    """Observed rate is 0.5 less the all-observed fix: 0.5 - 2**-V / V.

    Standard error of the overall rate <= sqrt(0.25 / (N * V)) <= 0.0025; tolerance 0.01.
    Per variable the standard error is sqrt(0.25 / N) ~ 0.0035; tolerance 0.02.
    """
    layout = Layout.from_spec(n_vars)
    masks = draw("bernoulli", layout, N_DRAWS, 2, [0], [])
    expected = 0.5 - 2.0**-n_vars / n_vars
    assert abs(masks.float().mean().item() - expected) < 0.01
    per_var = masks.float().mean(dim=0)
    assert (per_var - expected).abs().max().item() < 0.02
    assert abs(masks.float().mean().item() - 0.5) < 0.26  # "near 0.5" even for V = 2 (0.375)


def test_bernoulli_count_distribution():
    """Rows with V - 1 observed get the fixed all-observed rows too: (V + 1) / 2**V.

    For V = 4 that is 5 / 16 = 0.3125; standard error ~ 0.0033, tolerance 0.015.
    """
    V = 4
    masks = draw("bernoulli", Layout.from_spec(V), N_DRAWS, 3, [0], [])
    counts = np.bincount(masks.sum(dim=1).numpy(), minlength=V + 1) / N_DRAWS
    assert counts[V] == 0
    assert abs(counts[V - 1] - (V + 1) / 2**V) < 0.015
    for k in range(V - 1):
        assert abs(counts[k] - comb(V, k) / 2**V) < 0.015


# ---------------------------------------------------------------------------- all-observed fix


@pytest.mark.parametrize("n_vars", [1, 2, 5])
def test_fix_all_observed_flips_exactly_one(n_vars):
    raw = torch.rand(500, n_vars, generator=_gen(4)) < 0.7
    raw[::3] = True  # make sure there are plenty of full rows
    full = raw.all(dim=1)
    fixed = fix_all_observed(raw.clone(), _gen(5))
    assert fixed.dtype == torch.bool and fixed.shape == raw.shape
    assert torch.equal(fixed[~full], raw[~full])
    assert (fixed[full].sum(dim=1) == n_vars - 1).all()
    assert not fixed.all(dim=1).any()
    assert not (fixed & ~raw).any()  # only True -> False flips


def test_fix_all_observed_no_full_rows_is_identity():
    # it draws a pick for every row whether or not one is full: asking first would cost a
    # host synchronisation per batch on a GPU
    raw = torch.tensor([[True, False, True], [False, False, False]])
    assert torch.equal(fix_all_observed(raw, _gen(6)), raw)


def test_fix_all_observed_picks_uniformly():
    """Each of V = 4 positions is flipped with probability 1/4; SE ~ 0.003, tolerance 0.015."""
    fixed = fix_all_observed(torch.ones(N_DRAWS, 4, dtype=torch.bool), _gen(7))
    rates = (~fixed).float().mean(dim=0)
    assert torch.allclose(rates, torch.full((4,), 0.25), atol=0.015)


# ---------------------------------------------------------------------------- structured


def _bernoulli_pattern_prob(pattern: tuple[bool, ...], p: float) -> float:
    """P(a Bernoulli(p) draw, after the all-observed fix, equals ``pattern``)."""
    V, k = len(pattern), sum(pattern)
    if k == V:
        return 0.0
    prob = p**k * (1 - p) ** (V - k)
    if k == V - 1:
        prob += p**V / V
    return prob


@pytest.mark.parametrize(
    ("n_vars", "latent", "observed", "max_extra"),
    [(6, [0, 1], [2, 3, 4, 5], 0.025), (5, [4], [0, 2], 0.04), (3, [0], [1, 2], 0.08)],
)
def test_structured_frequencies(n_vars, latent, observed, max_extra):
    """Joint, posterior and likelihood masks each come up 1/5 of the time.

    A Bernoulli(0.3) or (0.7) draw can coincide with one of them, so the exact expectation is
    1/5 plus that term (at most ``max_extra``, smaller for more variables); the frequencies of
    all 2**V patterns are compared with the exact expectation. Every pattern's standard error
    is <= sqrt(0.25 * 0.75 / N) ~ 0.0031; tolerance 0.015.
    """
    layout = Layout.from_spec(n_vars)
    masks = draw("structured", layout, N_DRAWS, 8, latent, observed)
    assert not masks.all(dim=1).any()

    joint = tuple([False] * n_vars)
    posterior = tuple(v in observed for v in range(n_vars))
    likelihood = tuple(v in latent for v in range(n_vars))
    special = {joint, posterior, likelihood}
    assert len(special) == 3

    def expected(pattern):
        bern = sum(_bernoulli_pattern_prob(pattern, p) for p in (0.3, 0.7))
        return ((pattern in special) + bern) / 5

    patterns = list(itertools.product([False, True], repeat=n_vars))
    assert abs(sum(expected(p) for p in patterns) - 1.0) < 1e-12  # the model is a distribution

    counts: dict[tuple[bool, ...], int] = {}
    for row in _rows_as_tuples(masks):
        counts[row] = counts.get(row, 0) + 1
    for pattern in special:
        assert 0.2 <= expected(pattern) <= 0.2 + max_extra  # "roughly 1/5"
        assert abs(counts.get(pattern, 0) / N_DRAWS - expected(pattern)) < 0.015
    worst = max(abs(counts.get(p, 0) / N_DRAWS - expected(p)) for p in patterns)
    assert worst < 0.015


def test_structured_observed_rate():
    """Mean observed rate of the mixture; SE < 0.002, tolerance 0.008."""
    V, latent, observed = 6, [0, 1], [2, 3, 4, 5]
    masks = draw("structured", Layout.from_spec(V), N_DRAWS, 9, latent, observed)
    fixed_rate = (0 + len(observed) / V + len(latent) / V) / 5
    bern_rate = sum(p - p**V / V for p in (0.3, 0.7)) / 5
    assert abs(masks.float().mean().item() - (fixed_rate + bern_rate)) < 0.008


# ---------------------------------------------------------------------------- collections


@pytest.mark.parametrize(
    "spec",
    [
        [[True, False, False], [False, True, True], [True, True, False]],
        np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0]]),
        torch.tensor([[True, False, False], [False, True, True], [True, True, False]]),
        {(True, False, False), (False, True, True), (True, True, False)},
        (np.array([1, 0, 0]), [0, 1, 1], torch.tensor([1, 1, 0])),
    ],
    ids=["lists", "ndarray", "tensor", "set", "mixed-tuple"],
)
def test_collection_draws_given_masks_uniformly(layout, spec):
    """Three masks, each drawn with probability 1/3; SE ~ 0.0033, tolerance 0.015."""
    given = [(True, False, False), (False, True, True), (True, True, False)]
    given_cols = {tuple(layout.condition_columns(m).tolist()): i for i, m in enumerate(given)}
    masks = draw(spec, layout, N_DRAWS, 10, [0], [1, 2])
    assert masks.dtype == torch.bool
    assert masks.shape[0] == N_DRAWS
    assert masks.shape[1] in (layout.n_variables, layout.n_columns)
    cols = layout.expand_condition(masks)
    assert cols.shape == (N_DRAWS, layout.n_columns)
    which = [given_cols.get(row, -1) for row in _rows_as_tuples(cols)]
    freq = np.bincount(np.array(which) + 1, minlength=4) / N_DRAWS
    assert freq[0] == 0  # nothing outside the collection
    np.testing.assert_allclose(freq[1:], 1 / 3, atol=0.015)


def test_collection_of_column_masks(layout):
    spec = [[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]]
    masks = draw(spec, layout, 2000, 11, [0], [1, 2])
    cols = layout.expand_condition(masks)
    rows = set(_rows_as_tuples(cols))
    assert rows == {tuple(bool(v) for v in m) for m in spec}


@pytest.mark.parametrize("n_masks", [1, 2])
def test_collection_survives_condition_batch_with_reordered_single_column_variables(n_masks):
    # e.g. a DataFrame with columns ["x", "theta"] and variables={"theta": ["theta"], "x": ["x"]}
    layout = Layout.from_spec(3, [[2], [0], [1]], names=["theta", "x", "y"])
    given = [[False, True, True], [False, False, True]][:n_masks]
    masks = draw(given, layout, 200, 16, [0], [1, 2])
    rows = set(_rows_as_tuples(layout.expand_condition(masks)))
    assert rows == {tuple(layout.condition_columns(m).tolist()) for m in given}


@pytest.mark.parametrize(
    "spec",
    [[False, True, True], np.array([0, 1, 1]), [[False, True, True]], (0, 1, 1)],
    ids=["list", "ndarray", "nested", "tuple"],
)
def test_fixed_mask(layout, spec):
    masks = draw(spec, layout, 50, 12, [0], [1, 2])
    cols = layout.expand_condition(masks)
    expected = torch.as_tensor(layout.condition_columns([False, True, True]))
    assert cols.shape == (50, layout.n_columns)
    assert (cols == expected).all()


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ([[True, False, False], [True, True, True]], r"at least one must be latent"),
        ([True, True, True], r"at least one must be latent"),
        ([[1, 0, 1, 1, 1], [1, 1, 1, 1, 1]], r"at least one must be latent"),
        ([[True, False], [False, True]], r"length 3 \(one per variable\) or 5"),
        ([[True, False, False], [True, False]], r"all masks in the collection need one shape"),
        (np.zeros((2, 2, 3), dtype=bool), r"shape \(3,\) or \(n_masks, 3\)"),
        ([[0, 2, 0]], r"must hold booleans"),
        ("gaussian", r"must be one of \('bernoulli', 'uniform', 'structured'\).*'gaussian'"),
        ("Bernoulli", r"got the string 'Bernoulli'"),
        ("", r"got the string ''"),
        (None, r"must be an array of booleans"),
        (True, r"condition_masks as masks must have shape"),
    ],
)
def test_condition_sampler_invalid(layout, spec, match):
    with pytest.raises(ValueError, match=match):
        condition_sampler(spec, layout, ([0], [1, 2]), 0)


# ---------------------------------------------------------------------------- callables


def test_callable_receives_a_numpy_generator_and_n(layout):
    calls = []

    def fn(rng, n):
        calls.append((rng, n))
        return rng.random((n, 3)) < 0.5

    masks = draw(fn, layout, 9, seed=13)
    assert len(calls) == 1 and calls[0][1] == 9
    assert isinstance(calls[0][0], np.random.Generator)
    assert masks.shape == (9, 3) and masks.dtype == torch.bool
    again = draw(fn, layout, 9, seed=13)
    assert torch.equal(masks, again)  # seeded: the same seed gives the same masks


@pytest.mark.parametrize(
    "ret",
    [
        lambda n: np.tile([True, False, False], (n, 1)),
        lambda n: torch.tensor([[1, 0, 0]] * n),
        lambda n: [True, False, False],
        lambda n: np.tile([1, 1, 0, 0, 0], (n, 1)),
    ],
    ids=["ndarray", "int-tensor", "one-mask", "columns"],
)
def test_callable_outputs_are_normalised(layout, ret):
    masks = draw(lambda g, n: ret(n), layout, 6)
    assert masks.dtype == torch.bool
    assert masks.shape[0] == 6
    cols = layout.expand_condition(masks)
    assert (cols == torch.tensor([True, True, False, False, False])).all()


@pytest.mark.parametrize(
    ("ret", "match"),
    [
        (lambda n: np.ones((n, 4), dtype=bool), r"shape \(n, 3\) for n=6; got shape \(6, 4\)"),
        (lambda n: np.ones((n + 1, 3), dtype=bool), r"got shape \(7, 3\)"),
        (lambda n: np.ones((n, 3, 1), dtype=bool), r"got shape \(6, 3, 1\)"),
        (lambda n: np.ones(2, dtype=bool), r"got shape \(6, 2\)"),
        (lambda n: np.full((n, 3), 5), r"must hold booleans"),
        (lambda n: None, r"must be an array of booleans"),
    ],
)
def test_callable_bad_output(layout, ret, match):
    sample = condition_sampler(lambda g, n: ret(n), layout, ([0], [1, 2]), 0)
    with pytest.raises(ValueError, match=match):
        sample(6)


# ---------------------------------------------------------------------------- edge samplers


def _cond(layout: Layout, n: int) -> torch.Tensor:
    return torch.rand(n, layout.n_variables, generator=_gen(14)) < 0.5


def test_edge_sampler_none(layout):
    assert edge_sampler(None, layout, 0) is None


@pytest.mark.parametrize("level", ["variables", "columns"])
def test_edge_sampler_fixed(layout, level):
    vv = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=bool)  # causal over variables
    c2v = layout.column_variable
    spec = vv if level == "variables" else vv[np.ix_(c2v, c2v)]
    sample = edge_sampler(spec, layout, 0)
    out = sample(_cond(layout, 8))
    expected = torch.as_tensor(layout.edge_columns(vv))
    assert out.dtype == torch.bool
    assert out.shape == (8, 5, 5)
    assert (out == expected).all()
    assert out[:, torch.arange(5), torch.arange(5)].all()


def test_edge_sampler_fixed_forces_diagonal(layout):
    out = edge_sampler(np.zeros((3, 3), dtype=bool), layout, 0)(_cond(layout, 4))
    assert out.shape == (4, 5, 5)
    # the column diagonal is set, nothing else (not even the other column of the same variable)
    assert (out == torch.eye(5, dtype=torch.bool)).all()


def test_edge_sampler_collection(layout):
    """Two matrices, each drawn with probability 1/2; SE ~ 0.0035, tolerance 0.015."""
    a = np.ones((3, 3), dtype=bool)
    b = np.eye(3, dtype=bool)
    sample = edge_sampler([a, b], layout, 15)
    out = sample(_cond(layout, N_DRAWS))
    assert out.shape == (N_DRAWS, 5, 5) and out.dtype == torch.bool
    ca, cb = (torch.as_tensor(layout.edge_columns(m)) for m in (a, b))
    is_a = (out == ca).flatten(1).all(dim=1)
    is_b = (out == cb).flatten(1).all(dim=1)
    assert (is_a ^ is_b).all()
    assert abs(is_a.float().mean().item() - 0.5) < 0.015


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (np.ones((4, 4)), r"edge_mask must have shape \(3, 3\) or \(5, 5\); got \(4, 4\)"),
        (np.ones((2, 2, 3, 3)), r"edge_masks must be None, a \(V, V\) matrix"),
        (np.ones(3), r"edge_masks must be None, a \(V, V\) matrix"),
        ([np.ones((3, 3)), np.ones((5, 5))], r"all masks in the collection need one shape"),
        (np.full((3, 3), 2), r"must hold booleans"),
    ],
)
def test_edge_sampler_invalid(layout, spec, match):
    with pytest.raises(ValueError, match=match):
        edge_sampler(spec, layout, 0)


@pytest.mark.parametrize("per_sample", [True, False])
def test_edge_sampler_callable(layout, per_sample):
    seen = []

    def fn(cond):
        seen.append(cond)
        # each latent variable only attends to itself and observed variables
        vv = np.broadcast_to(cond[:, None, :], (cond.shape[0], 3, 3))
        return vv if per_sample else vv[0]

    cond = _cond(layout, 10)
    out = edge_sampler(fn, layout, 0)(cond)
    assert len(seen) == 1 and isinstance(seen[0], np.ndarray)  # numpy masks for user code
    np.testing.assert_array_equal(seen[0], cond.numpy())
    assert out.shape == (10, 5, 5) and out.dtype == torch.bool
    for b in range(10):
        vv = cond[b if per_sample else 0][None, :].expand(3, -1).numpy()
        np.testing.assert_array_equal(out[b].numpy(), layout.edge_columns(vv))


@pytest.mark.parametrize(
    ("ret", "match"),
    [
        (lambda c: np.ones((c.shape[0] + 1, 3, 3)), r"shape \(n, V, V\) or \(V, V\); got"),
        (lambda c: np.ones(3), r"got shape \(3,\)"),
        (lambda c: np.ones((c.shape[0], 4, 4)),
         r"edge masks must have shape \(3, 3\) or \(5, 5\)"),
        (lambda c: np.full((3, 3), 7), r"must hold booleans"),
    ],
)
def test_edge_sampler_callable_bad_output(layout, ret, match):
    sample = edge_sampler(ret, layout, 0)
    with pytest.raises(ValueError, match=match):
        sample(_cond(layout, 4))


# ---------------------------------------------------------------------------- determinism


CONDITION_SPECS = {
    "bernoulli": "bernoulli",
    "structured": "structured",
    "collection": [[True, False, False], [False, True, True], [False, False, True]],
    "callable": lambda rng, n: rng.random((n, 3)) < 0.4,
}


@pytest.mark.parametrize("name", list(CONDITION_SPECS))
def test_condition_sampler_deterministic(layout, name):
    a = draw(CONDITION_SPECS[name], layout, 256, seed=21)
    b = draw(CONDITION_SPECS[name], layout, 256, seed=21)
    c = draw(CONDITION_SPECS[name], layout, 256, seed=22)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the seed is really what drives the draws


def test_edge_sampler_deterministic(layout):
    spec = [np.ones((3, 3)), np.eye(3), np.tril(np.ones((3, 3)))]
    cond = _cond(layout, 256)
    a, b, c = (edge_sampler(spec, layout, seed)(cond) for seed in (23, 23, 24))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_training_masks_expand_and_pair_condition_with_edges(layout):
    """Edges come from the condition masks as drawn, and both reach the columns."""
    def edges(cond):
        return np.broadcast_to(cond[:, None, :], (cond.shape[0], 3, 3))

    masks = TrainingMasks("bernoulli", edges, layout, ([0], [1, 2]), seed=3, device="cpu")
    observed, e = masks(50)
    assert observed.shape == (50, 5) and e.shape == (50, 5, 5)
    for b in range(50):
        vv = observed[b, [0, 2, 3]].numpy()  # one column of each variable
        np.testing.assert_array_equal(
            e[b].numpy(), layout.edge_columns(np.broadcast_to(vv, (3, 3))))
    again = TrainingMasks("bernoulli", edges, layout, ([0], [1, 2]), seed=3, device="cpu")(50)
    assert torch.equal(again[0], observed) and torch.equal(again[1], e)


def test_uniform_masks_make_every_count_of_observed_variables_alike():
    """p ~ U(0, 1) per row: the number k of observed variables among V is uniform on 0..V
    before the all-observed fix, which moves the k = V mass to k = V - 1: 1/(V+1) each, and
    2/(V+1) at V - 1. SE ~ 0.003; tolerance 0.015."""
    V = 4
    counts = np.bincount(draw("uniform", Layout.from_spec(V), N_DRAWS, 17).sum(1).numpy(),
                         minlength=V + 1) / N_DRAWS
    expected = np.full(V + 1, 1 / (V + 1))
    expected[V - 1], expected[V] = 2 / (V + 1), 0
    np.testing.assert_allclose(counts, expected, atol=0.015)


def test_structured_without_a_split_serves_every_conditional():
    """No posterior split: the joint in 1/5 of rows, Bernoulli(0.3) and (0.7) in 2/5 each.
    Observed rate 2/5 * (0.3 + 0.7) less the all-observed fix; SE < 0.003, tolerance 0.01."""
    V = 6
    masks = draw("structured", Layout.from_spec(V), N_DRAWS, 18, latent=None, observed=None)
    joint = (~masks).all(1).float().mean().item()
    assert abs(joint - (0.2 + 0.4 * 0.7**V + 0.4 * 0.3**V)) < 0.01
    rate = 0.4 * sum(p - p**V / V for p in (0.3, 0.7))
    assert abs(masks.float().mean().item() - rate) < 0.01
