"""Declared structure: DAG validation and the attention masks it implies, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skformer import SimformerEstimator, load, save
from skformer.graph import DAG
from skformer.layout import Layout
from skformer.masks import TrainingMasks

T, F = True, False


def m(*rows):
    return np.array(rows, dtype=bool)


# ---------------------------------------------------------------------------------- by hand
def test_chain_faithful():
    """0 -> 1 -> 2. Nothing observed: each attends to its parent. z2 observed: its latent
    ancestors 0 and 1 attend to it and to each other."""
    dag = DAG({1: [0], 2: [1]}, inversion="faithful")
    np.testing.assert_array_equal(dag.mask([F, F, F], 3), m([T, F, F], [T, T, F], [F, T, T]))
    np.testing.assert_array_equal(dag.mask([F, F, T], 3), m([T, T, T], [T, T, T], [F, T, T]))
    # z1 observed: only 0 is a latent ancestor of it
    np.testing.assert_array_equal(dag.mask([F, T, F], 3), m([T, T, F], [T, T, F], [F, T, T]))


def test_faithful_ancestors_count_only_through_latent_paths():
    """0 -> 1 -> 2 -> 3 with 1 and 3 observed: z0 reaches 3 only through the observed z1 (it
    is d-separated from z3), so it attends to z1 but not to z3; z2 attends to z3."""
    dag = DAG({1: [0], 2: [1], 3: [2]}, inversion="faithful")
    np.testing.assert_array_equal(dag.mask([F, T, F, T], 4),
                                  m([T, T, F, F], [T, T, F, F], [F, T, T, T], [F, F, T, T]))


def test_collider_faithful_couples_the_causes():
    """0 -> 2 <- 1: observing the common effect 2 makes 0 and 1 attend to each other."""
    dag = DAG({2: [0, 1]}, inversion="faithful")
    np.testing.assert_array_equal(dag.mask([F, F, F], 3), m([T, F, F], [F, T, F], [T, T, T]))
    np.testing.assert_array_equal(dag.mask([F, F, T], 3), m([T, T, T], [T, T, T], [T, T, T]))


@pytest.mark.parametrize("observed", [[F, F, F, F], [T, F, F, T], [F, T, T, F]])
def test_moral_graph_is_fixed_markov_blankets(observed):
    """0 -> 2 <- 1, 2 -> 3: the moral graph joins 0-2, 1-2, 2-3 and the co-parents 0-1."""
    dag = DAG({2: [0, 1], 3: [2]}, inversion="moral")
    expected = m([T, T, T, F], [T, T, T, F], [T, T, T, T], [F, F, T, T])
    np.testing.assert_array_equal(dag.mask(observed, 4), expected)


def test_batched_masks_follow_each_rows_condition():
    dag = DAG({1: [0], 2: [1], 3: [1]})
    P = dag.parent_matrix(4)
    rows = torch.tensor([[F, F, F, F], [F, F, T, F], [T, F, F, T]])
    out = dag.masks(P, rows)
    for r, observed in enumerate(rows.numpy()):
        np.testing.assert_array_equal(out[r].numpy(), dag.mask(observed, 4))


# ---------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("parents", "match"),
    [
        ({0: [1], 1: [0]}, r"cycle: a -> b -> a|cycle: b -> a -> b"),
        ({1: [0], 2: [1], 0: [2]}, "cycle"),
        ({0: [0]}, "its own parent"),
        ({1: ["nope"]}, "unknown variable 'nope'"),
        ({5: [0]}, "outside the 3 variables"),
        ({1: [0.5]}, "by index or name"),
    ],
)
def test_refusals(parents, match):
    with pytest.raises(ValueError, match=match):
        DAG(parents).parent_matrix(3, ["a", "b", "c"])


def test_constructor_refusals():
    with pytest.raises(ValueError, match="inversion"):
        DAG({}, inversion="magic")
    with pytest.raises(ValueError, match="mapping"):
        DAG([(1, 0)])
    for heads in (-1, 1.5, "all", True):
        with pytest.raises(ValueError, match="heads must be"):
            DAG({1: [0]}, heads=heads)


def test_names_and_bare_parents():
    dag = DAG({"x": "theta", "y": ["x", "theta"]})
    P = dag.parent_matrix(3, ["theta", "x", "y"])
    np.testing.assert_array_equal(P, m([F, F, F], [T, F, F], [T, T, F]))
    assert DAG.from_dict(dag.to_dict()) == dag


# ---------------------------------------------------------------------------------- in use
def test_training_masks_follow_the_dag_row_by_row():
    layout = Layout.from_spec(4, [1, 1, 2], names=["a", "b", "c"])
    dag = DAG({"b": ["a"], "c": ["b"]})
    masks = TrainingMasks("bernoulli", dag, layout, None, seed=0, device="cpu")
    observed, edges = masks(64)
    assert edges.shape == (64, 4, 4)
    for r in range(64):
        variables = layout.variable_condition(observed[r].numpy())
        expected = layout.edge_columns(dag.mask(variables, 3, layout.names))
        np.testing.assert_array_equal(edges[r].numpy(), expected)


def chain_data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    z0 = rng.normal(size=n)
    z1 = z0 + 0.5 * rng.normal(size=n)
    z2 = z1 + 0.5 * rng.normal(size=n)
    return np.stack([z0, z1, z2], axis=1)


def test_an_estimator_with_a_dag_uses_its_masks_and_keeps_them(tmp_path):
    import pickle

    est = SimformerEstimator(edge_masks=DAG({1: [0], 2: [1]}), max_epochs=2, d_model=16,
                             n_layers=1, n_heads=2, random_state=0, device="cpu")
    est.fit(chain_data())
    cond = est.condition([F, F, T])
    assert est.edge_masks.inversion == "moral"  # the default: each variable's Markov blanket
    np.testing.assert_array_equal(cond.edge_mask, m([T, T, F], [T, T, T], [F, T, T]))
    given = est.condition([F, F, T], edge_mask=np.ones((3, 3), bool))
    assert given.edge_mask.all()  # an explicit edge_mask wins
    save(est, tmp_path / "dag.skf")
    for loaded in (load(tmp_path / "dag.skf"), pickle.loads(pickle.dumps(est))):
        assert loaded.edge_masks == est.edge_masks
        np.testing.assert_array_equal(loaded.condition([F, F, T]).edge_mask, cond.edge_mask)


def test_a_bad_dag_is_refused_at_fit():
    est = SimformerEstimator(edge_masks=DAG({0: [1], 1: [0]}), max_epochs=1)
    with pytest.raises(ValueError, match="cycle"):
        est.fit(chain_data(50))


def test_edge_heads_apply_to_a_declared_dag_only_and_warm_starts_keep_their_own(monkeypatch):
    """``network.EDGE_HEADS`` restricts heads only where the edge masks come from a DAG: an
    explicit matrix binds every head, as before. A model fitted under one setting continues
    (warm start) under another with its own."""
    import skformer.network as network

    monkeypatch.setattr(network, "EDGE_HEADS", "half")
    small = dict(max_epochs=1, d_model=16, n_layers=1, n_heads=4, random_state=0, device="cpu")
    with_dag = SimformerEstimator(edge_masks=DAG({1: [0], 2: [1]}), **small).fit(chain_data(64))
    assert with_dag.model_.network.edge_heads == 2
    matrix = np.ones((3, 3), dtype=bool)
    with_matrix = SimformerEstimator(edge_masks=matrix, **small).fit(chain_data(64))
    assert with_matrix.model_.network.edge_heads is None
    monkeypatch.setattr(network, "EDGE_HEADS", None)
    with_dag.set_params(warm_start=True).fit(chain_data(64))
    assert with_dag.model_.network.edge_heads == 2 and len(with_dag.loss_curve_) == 2


def test_a_dag_declares_its_heads_and_keeps_them_through_persistence(tmp_path, monkeypatch):
    """``DAG(..., heads=k)`` restricts k heads of a new network whatever ``network.EDGE_HEADS``
    says ("half": n_heads // 2; more than n_heads: all); the DAG, heads included, survives
    ``get_params``/``clone``, pickle and the pickle-free format, and older DAG pickles (no
    ``heads``) load as every head."""
    import pickle

    from sklearn.base import clone

    import skformer.network as network

    monkeypatch.setattr(network, "EDGE_HEADS", 3)  # the DAG's own setting wins
    small = dict(max_epochs=1, d_model=16, n_layers=1, n_heads=4, random_state=0, device="cpu")
    for heads, used in ((1, 1), ("half", 2), (9, None)):
        est = SimformerEstimator(edge_masks=DAG({1: [0], 2: [1]}, heads=heads), **small)
        assert est.fit(chain_data(64)).model_.network.edge_heads == used, heads
    assert est.edge_masks != DAG({1: [0], 2: [1]}) and "heads=9" in repr(est.edge_masks)
    assert clone(est).edge_masks == est.edge_masks
    save(est, tmp_path / "heads.skf")
    for loaded in (load(tmp_path / "heads.skf"), pickle.loads(pickle.dumps(est))):
        assert loaded.edge_masks.heads == 9 and loaded.edge_masks == est.edge_masks
    old = DAG({1: [0]})
    del old.__dict__["heads"]  # as pickled before heads existed
    assert pickle.loads(pickle.dumps(old)).heads is None
    assert "heads" not in DAG({1: [0]}).to_dict()  # descriptions without heads stay as they were


# ------------------------------------------------------------- against exact Gaussian algebra
def _linear_gaussian(rng, V: int = 6):
    """A random DAG over V variables (edges i -> j for i < j, each with probability 0.4) with
    random weights bounded away from zero and unit noise: its parents and joint covariance and
    precision."""
    W = np.zeros((V, V))
    for j in range(V):
        for i in range(j):
            if rng.random() < 0.4:
                W[j, i] = rng.choice([-1, 1]) * rng.uniform(0.5, 1.5)
    A = np.linalg.inv(np.eye(V) - W)
    cov = A @ A.T
    parents = {j: [int(i) for i in np.flatnonzero(W[j])] for j in range(V) if W[j].any()}
    return parents, cov, np.linalg.inv(cov)


def test_moral_masks_are_the_exact_full_conditionals():
    """Under the moral inversion each variable attends to exactly the variables its exact full
    conditional p(z_i | all others) depends on: the support of the joint precision of a
    linear-Gaussian DAG (generic weights)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        parents, _, precision = _linear_gaussian(rng)
        mask = DAG(parents, inversion="moral").mask(np.zeros(6, bool), 6)
        np.testing.assert_array_equal(mask, np.abs(precision) > 1e-9)


def test_faithful_masks_attend_only_to_observed_values_the_exact_conditional_reads():
    """Under the faithful inversion a latent variable attends to an observed one only where the
    exact conditional mean E[z_latent | z_observed] of a linear-Gaussian DAG reads it (a
    non-zero coefficient); the moral inversion attends to its whole Markov blanket, and reads
    observed values that the conditional does not need somewhere among these cases."""
    rng = np.random.default_rng(1)
    moral_extra = 0
    for _ in range(40):
        parents, cov, _ = _linear_gaussian(rng)
        observed = rng.random(6) < 0.5
        if observed.all() or not observed.any():
            continue
        lat, obs = np.flatnonzero(~observed), np.flatnonzero(observed)
        reads = np.abs(cov[np.ix_(lat, obs)] @ np.linalg.inv(cov[np.ix_(obs, obs)])) > 1e-9
        faithful = DAG(parents, inversion="faithful").mask(observed, 6)[np.ix_(lat, obs)]
        assert not (faithful & ~reads).any(), (parents, observed)
        moral = DAG(parents, inversion="moral").mask(observed, 6)[np.ix_(lat, obs)]
        moral_extra += int((moral & ~reads).sum())
    assert moral_extra > 0
