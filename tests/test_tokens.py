"""Tokens that carry several columns: masks that observe part of a token, ``tokens="auto"``,
``tokens="column"`` as before, training masks within tokens, persistence of grouped models."""

from __future__ import annotations

import io
import os
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch

from skformer import SimformerEstimator, load, save
from skformer.layout import Layout, auto_token_count
from skformer.masks import WITHIN_FRACTION, TrainingMasks
from skformer.network import MaskedTransformer

DATA = os.path.join(os.path.dirname(__file__), "data")
NOISE = 0.3


def _pairs(n: int, seed: int) -> np.ndarray:
    """theta ~ N(0, I_2), x = theta + 0.3 eps: two variables of two columns."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((n, 2))
    return np.hstack([theta, theta + NOISE * rng.standard_normal((n, 2))])


def _fit(n: int = 2000, **params) -> SimformerEstimator:
    small = dict(variables=[2, 2], d_model=32, n_layers=3, n_heads=2, max_epochs=60,
                 batch_size=128, device="cpu", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SimformerEstimator(**{**small, **params}).fit(_pairs(n, 0))


@pytest.fixture(scope="module")
def grouped() -> SimformerEstimator:
    """One token per variable, briefly trained (for what does not depend on accuracy)."""
    return _fit(300, tokens="variable", max_epochs=2)


# ------------------------------------------------------------------ masks inside tokens
def test_a_mask_observing_part_of_a_token_matches_the_exact_conditional():
    """Observe theta_0 and x_1: x_0 | theta_0 ~ N(theta_0, 0.09), theta_1 | x_1 ~
    N(x_1 / 1.09, 0.09 / 1.09), both latent columns sharing a token with an observed one.

    Over seeds 0-2 (1000 rows, 40 epochs, two layers) the means are within 0.07 and the
    spreads within 0.98-1.08 of the exact ones; a model that ignored the observed column of
    its own token would give x_0 mean 0 and spread 1.04 (3.5 times the exact 0.3), as one
    token per group throughout nearly does (the "mlp" design: spreads 1.2-1.4 times too
    wide)."""
    grouped = _fit(1000, tokens="variable", max_epochs=40, n_layers=2)
    assert grouped.token_columns_ == [[0, 1], [2, 3]]
    mask = np.array([True, False, False, True])
    theta0, x1 = 0.8, -0.6
    draws = grouped.condition(mask).sample(4000, observed=[theta0, x1], random_state=1)
    cond = grouped.condition(mask)
    assert [list(cond.latent_columns), list(cond.observed_columns)] == [[1, 2], [0, 3]]
    mean = np.array([x1 / (1 + NOISE**2), theta0])  # latent columns in order: theta_1, x_0
    std = np.array([NOISE / np.sqrt(1 + NOISE**2), NOISE])
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.1)
    np.testing.assert_allclose(draws.std(0) / std, 1.0, atol=0.2)
    lp = cond.log_prob(draws[:200], observed=[theta0, x1])
    assert np.isfinite(lp).all()


def test_a_split_token_is_answered_for_every_mask_of_its_columns(grouped):
    """Every mask with something latent is answered (none refused), with the right width."""
    for bits in range(15):
        mask = np.array([bool(bits >> i & 1) for i in range(4)])
        cond = grouped.condition(mask)
        out = cond.sample(3, observed=np.zeros(mask.sum()), random_state=0)
        assert out.shape == (3, 4 - mask.sum())


def test_an_edge_mask_must_still_treat_a_tokens_columns_alike(grouped):
    edges = np.ones((4, 4), dtype=bool)
    edges[0, 1] = False  # column 0 may not see column 1: they share a token
    with pytest.raises(ValueError, match="edge_mask differs between columns of one token"):
        grouped.condition([False, True], edge_mask=edges)


# ------------------------------------------------------------------ training masks
def _split_share(within: bool, condition_masks="structured") -> float:
    layout = Layout.from_spec(6, [3, 3])
    masks = TrainingMasks(condition_masks, None, layout, ([0], [1]), 0, "cpu", within=within)
    observed, _ = masks(20_000)
    split = [(observed[:, list(g)].any(1) & ~observed[:, list(g)].all(1)) for g in layout.groups]
    return float((split[0] | split[1]).float().mean())


def test_training_masks_split_variables_only_for_grouped_tokens():
    assert _split_share(within=False) == 0.0
    share = _split_share(within=True)
    # a row drawn per column splits some variable unless all its columns agree per variable
    assert 0.5 * WITHIN_FRACTION < share <= WITHIN_FRACTION
    # a user's own masks are used as given
    assert _split_share(True, condition_masks=[[False, True]]) == 0.0


def test_masks_drawn_within_tokens_are_seeded_and_keep_something_latent():
    layout = Layout.from_spec(6, [3, 3])
    a = TrainingMasks("structured", None, layout, ([0], [1]), 3, "cpu", within=True)(500)[0]
    b = TrainingMasks("structured", None, layout, ([0], [1]), 3, "cpu", within=True)(500)[0]
    assert torch.equal(a, b)
    assert not a.all(1).any()


# ------------------------------------------------------------------ tokens="auto"
@pytest.mark.parametrize("width, count", [(1, 1), (2, 1), (8, 1), (9, 2), (10, 2), (16, 2),
                                          (17, 3), (32, 4), (96, 4), (1000, 4)])
def test_auto_token_count(width, count):
    assert auto_token_count(width) == count


def test_auto_chunks_wide_variables_and_keeps_columns_with_positions():
    layout = Layout.from_spec(104, [8, 96])
    tokens = layout.token_columns("auto")
    assert [len(t) for t in tokens] == [8, 24, 24, 24, 24]
    assert sorted(c for t in tokens for c in t) == list(range(104))
    assert layout.token_columns("auto", positions=True) == [[c] for c in range(104)]
    assert layout.token_columns("column") == [[c] for c in range(104)]
    assert [len(t) for t in layout.token_columns(40)] == [8, 32, 32, 32]


def test_auto_keeps_one_token_per_column_for_narrow_data():
    assert Layout.from_spec(8, [4, 4]).token_columns("auto") == [[c] for c in range(8)]
    assert [len(t) for t in Layout.from_spec(9, [4, 5]).token_columns("auto")] == [4, 5]
    assert [len(t) for t in Layout.from_spec(9, [4, 5]).token_columns("variable")] == [4, 5]
    assert Layout.from_spec(4, [2, 2]).token_columns("variable") == [[0, 1], [2, 3]]


def test_auto_with_positions_fits_one_token_per_reading():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 1 + 9))  # wider than AUTO_MIN_COLUMNS
    est = SimformerEstimator(variables=[1, 9], tokens="auto", d_model=8, n_layers=1, n_heads=2,
                             max_epochs=1, device="cpu", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, positions={1: np.linspace(0, 1, 9)})
    assert est.token_columns_ == [[c] for c in range(10)]


# ------------------------------------------------------------------ column: as before
def test_one_token_per_column_reproduces_the_previous_model():
    """tokens="column" fits the model it fitted before tokens could be split: the same loss
    curve and draws as the code of commit 0f4c486 (tests/data/make_token_files.py), to float32
    rounding (accumulation order differs between CPUs)."""
    ref = np.load(os.path.join(DATA, "skformer-0.2-tokens.npz"))
    rng = np.random.default_rng(7)
    theta = rng.uniform(-1, 1, size=(300, 3))
    X = np.stack([theta, theta + 1 + 0.1 * rng.standard_normal(theta.shape)], axis=1)
    est = SimformerEstimator(tokens="column", d_model=16, n_layers=1, n_heads=2, max_epochs=3,
                             batch_size=64, sampling_steps=7, device="cpu", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X)
    np.testing.assert_allclose(est.loss_curve_, ref["column_loss"], rtol=1e-4)
    draws = est.posterior().sample(20, observed=np.ones(3), random_state=0)
    np.testing.assert_allclose(draws, ref["column_draws"], atol=1e-3)


# ------------------------------------------------------------------ persistence
def test_grouped_models_persist_in_every_format(grouped, tmp_path):
    rows = _pairs(5, 9)
    expected = grouped.score_samples(rows)
    draws = grouped.condition([True, False, False, True]).sample(5, observed=[0.1, 0.2],
                                                                random_state=0)
    save(grouped, tmp_path / "m.skf")
    buf = io.BytesIO()
    joblib.dump(grouped, buf)
    buf.seek(0)
    for est in (load(tmp_path / "m.skf"), pickle.loads(pickle.dumps(grouped)), joblib.load(buf)):
        assert est.token_columns_ == grouped.token_columns_
        assert est.model_.network.config() == grouped.model_.network.config()
        np.testing.assert_allclose(est.score_samples(rows), expected, rtol=1e-5, atol=1e-5)
        got = est.condition([True, False, False, True]).sample(5, observed=[0.1, 0.2],
                                                              random_state=0)
        np.testing.assert_allclose(got, draws, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["skf", "pkl"])
def test_grouped_models_written_before_still_load(fmt):
    """One token per variable from commit 0f4c486, whose tokens embedded their columns
    through one linear map: the same log densities (a deterministic function of the
    weights)."""
    path = os.path.join(DATA, f"skformer-0.2-variable.{fmt}")
    if fmt == "skf":
        est = load(path)
    else:
        with open(path, "rb") as fh:
            est = pickle.load(fh)
    ref = np.load(os.path.join(DATA, "skformer-0.2-tokens.npz"))
    assert est.model_.network.config().get("group_embedding", "linear") == "linear"
    np.testing.assert_allclose(est.score_samples(ref["rows"]), ref["log_prob"], atol=1e-4)
    # and it now answers a mask that observes part of a token
    assert est.condition([True, False, False, False, True, True]).sample(
        4, observed=np.zeros(3), random_state=0).shape == (4, 3)


def test_a_network_refuses_an_unknown_group_embedding():
    with pytest.raises(ValueError, match="group_embedding"):
        MaskedTransformer(4, 8, 1, 2, groups=[[0, 1], [2, 3]], group_embedding="conv")


@pytest.mark.parametrize("design, message", [
    ("conv", "group_embedding must be one of"),
    ("readout", "weights do not fit"),  # a design whose weights the file does not hold
])
def test_load_refuses_a_group_embedding_it_cannot_build(design, message, tmp_path):
    from test_persistence import build_file, split_file

    with open(os.path.join(DATA, "skformer-0.2-variable.skf"), "rb") as fh:
        version, header, payload = split_file(fh.read())
    header["model"]["network"]["group_embedding"] = design
    (tmp_path / "crafted.skf").write_bytes(build_file(version, header, payload))
    with pytest.raises(ValueError, match=message):
        load(tmp_path / "crafted.skf")
