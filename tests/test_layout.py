"""Tests for :class:`skformer.layout.Layout`: variables <-> columns, mask normalisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from skformer.layout import Layout

# ---------------------------------------------------------------------------- fixtures / helpers


@pytest.fixture
def blocks() -> Layout:
    """Two contiguous variables: columns (0, 1) and (2, 3, 4)."""
    return Layout.from_spec(5, [2, 3], names=["theta", "x"])


@pytest.fixture
def interleaved() -> Layout:
    """Two non-contiguous variables: columns (0, 2) and (1, 3)."""
    return Layout.from_spec(4, [[0, 2], [1, 3]], names=["a", "b"])


def _expand_edges(edges_vv: np.ndarray, c2v: np.ndarray) -> np.ndarray:
    """Reference expansion of a (V, V) edge mask to (T, T), written as an explicit loop."""
    T = len(c2v)
    out = np.zeros((T, T), dtype=bool)
    for i in range(T):
        for j in range(T):
            out[i, j] = bool(edges_vv[c2v[i], c2v[j]]) or i == j
    return out


# ---------------------------------------------------------------------------- from_spec


@pytest.mark.parametrize("n_columns", [1, 3, 6])
def test_from_spec_none_gives_one_variable_per_column(n_columns):
    layout = Layout.from_spec(n_columns)
    assert layout.groups == tuple((j,) for j in range(n_columns))
    assert layout.names == tuple(f"v{j}" for j in range(n_columns))
    assert layout.n_variables == layout.n_columns == n_columns
    np.testing.assert_array_equal(layout.column_variable, np.arange(n_columns))
    assert layout.column_names == [f"v{j}" for j in range(n_columns)]


@pytest.mark.parametrize(
    ("sizes", "groups"),
    [
        ([2, 3], ((0, 1), (2, 3, 4))),
        ((1, 1, 3), ((0,), (1,), (2, 3, 4))),
        ([5], ((0, 1, 2, 3, 4),)),
        ([np.int64(4), np.int32(1)], ((0, 1, 2, 3), (4,))),
    ],
)
def test_from_spec_sizes(sizes, groups):
    layout = Layout.from_spec(5, sizes)
    assert layout.groups == groups
    assert all(type(c) is int for g in layout.groups for c in g)
    assert layout.n_variables == len(sizes)
    assert layout.n_columns == 5


@pytest.mark.parametrize(
    ("spec", "column_variable"),
    [
        ([[0, 2], [1, 3]], [0, 1, 0, 1]),
        ([[3], [0, 1, 2]], [1, 1, 1, 0]),
        (([2, 0], (3, 1)), [0, 1, 0, 1]),
        ([np.array([1, 3]), [2], [0]], [2, 0, 1, 0]),
    ],
)
def test_from_spec_index_lists(spec, column_variable):
    layout = Layout.from_spec(4, spec)
    assert layout.groups == tuple(tuple(int(c) for c in g) for g in spec)
    np.testing.assert_array_equal(layout.column_variable, column_variable)
    assert layout.column_variable.dtype == np.int64


def test_from_spec_names_are_strings():
    layout = Layout.from_spec(3, [1, 2], names=[0, "x"])
    assert layout.names == ("0", "x")


@pytest.mark.parametrize(
    ("variables", "names", "match"),
    [
        ([2, 2], None, r"sum to the number of columns \(5\); got \[2, 2\] \(sum 4\)"),
        ([2, 4], None, r"sum to the number of columns \(5\)"),
        ([0, 5], None, r"must be positive"),
        ([-1, 6], None, r"must be positive"),
        ([], None, r"at least one variable; got an empty list"),
        ("ab", None, r"variables must be None, a list of group sizes"),
        (5, None, r"variables must be None, a list of group sizes"),
        ({"a": [0]}, None, r"variables must be None, a list of group sizes"),
        ([[0, 1], 2], None, r"list of sizes or a list of lists of column indexes"),
        ([[0, 1], [2, 3]], None, r"cover each of the 5 columns exactly once"),
        ([[0, 1, 2], [2, 3, 4]], None, r"cover each of the 5 columns exactly once"),
        ([[0, 1, 2, 3], [4, 5]], None, r"cover each of the 5 columns exactly once"),
        ([[0, 1, 2, 3, 4], []], None, r"cover each of the 5 columns exactly once"),
        ([[-1, 0, 1, 2, 3]], None, r"cover each of the 5 columns exactly once"),
        ([2, 3], ["a"], r"2 variables but 1 names"),
        (None, ["a", "b"], r"5 variables but 2 names"),
    ],
)
def test_from_spec_invalid(variables, names, match):
    with pytest.raises(ValueError, match=match):
        Layout.from_spec(5, variables, names=names)


# ---------------------------------------------------------------------------- columns


def test_column_variable_and_names(blocks, interleaved):
    np.testing.assert_array_equal(blocks.column_variable, [0, 0, 1, 1, 1])
    assert blocks.column_names == ["theta[0]", "theta[1]", "x[0]", "x[1]", "x[2]"]
    np.testing.assert_array_equal(interleaved.column_variable, [0, 1, 0, 1])
    assert interleaved.column_names == ["a[0]", "b[0]", "a[1]", "b[1]"]


def test_column_names_single_column_variables_have_no_index():
    layout = Layout.from_spec(4, [[2], [0, 3], [1]], names=["s", "m", "t"])
    assert layout.column_names == ["m[0]", "t", "s", "m[1]"]


# ---------------------------------------------------------------------------- condition_columns


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        ([True, False], [1, 1, 0, 0, 0]),
        ([False, True], [0, 0, 1, 1, 1]),
        ([0, 1], [0, 0, 1, 1, 1]),
        (np.array([1.0, 0.0]), [1, 1, 0, 0, 0]),
        (torch.tensor([False, True]), [0, 0, 1, 1, 1]),
        ([[True, False]], [1, 1, 0, 0, 0]),
        ([True, False, True, False, False], [1, 0, 1, 0, 0]),
        (np.array([0, 0, 0, 0, 1]), [0, 0, 0, 0, 1]),
        (torch.zeros(5, dtype=torch.bool), [0, 0, 0, 0, 0]),
    ],
)
def test_condition_columns_variable_and_column_masks(blocks, mask, expected):
    cols = blocks.condition_columns(mask)
    assert isinstance(cols, np.ndarray)
    assert cols.dtype == bool
    assert cols.shape == (5,)
    np.testing.assert_array_equal(cols, np.asarray(expected, dtype=bool))


def test_condition_columns_non_contiguous(interleaved):
    np.testing.assert_array_equal(interleaved.condition_columns([True, False]), [1, 0, 1, 0])
    np.testing.assert_array_equal(interleaved.condition_columns([False, True]), [0, 1, 0, 1])


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        ([True], r"length 2 \(one per variable\) or 5 \(one per column\); got length 1"),
        ([True, False, True], r"got length 3"),
        ([False] * 6, r"got length 6"),
        ([0, 2], r"must hold booleans \(or 0 / 1\)"),
        ([0.5, 0.0], r"must hold booleans"),
        (["yes", "no"], r"names 'yes', which is neither a variable"),
        ([[True], [False, True]], r"must be an array of booleans"),
        ([None, True], r"must be an array of booleans"),
        ([True, True], r"at least one must be latent"),
        ([1, 1, 1, 1, 1], r"at least one must be latent"),
        (torch.ones(5, dtype=torch.bool), r"at least one must be latent"),
    ],
)
def test_condition_columns_invalid(blocks, mask, match):
    with pytest.raises(ValueError, match=match):
        blocks.condition_columns(mask)


def test_condition_columns_length_error_when_one_column_per_variable():
    layout = Layout.from_spec(3)
    with pytest.raises(ValueError, match=r"length 3 \(one per variable\); got length 2") as info:
        layout.condition_columns([True, False])
    assert "per column" not in str(info.value)


# ---------------------------------------------------------------------------- edge_columns


def test_edge_columns_none(blocks):
    assert blocks.edge_columns(None) is None


@pytest.mark.parametrize("layout_name", ["blocks", "interleaved"])
@pytest.mark.parametrize(
    "edges_vv",
    [
        np.array([[1, 0], [1, 1]]),
        np.array([[0, 1], [0, 0]]),
        np.zeros((2, 2), dtype=bool),
        torch.tensor([[True, False], [False, True]]),
    ],
)
def test_edge_columns_from_variable_matrix(request, layout_name, edges_vv):
    layout = request.getfixturevalue(layout_name)
    cols = layout.edge_columns(edges_vv)
    T = layout.n_columns
    assert cols.shape == (T, T)
    assert cols.dtype == bool
    expected = _expand_edges(np.asarray(edges_vv), layout.column_variable)
    np.testing.assert_array_equal(cols, expected)


def test_edge_columns_from_column_matrix_forces_diagonal(blocks):
    rng = np.random.default_rng(0)
    edges = rng.random((5, 5)) < 0.3
    np.fill_diagonal(edges, False)
    original = edges.copy()
    cols = blocks.edge_columns(edges)
    assert np.diag(cols).all()
    off = ~np.eye(5, dtype=bool)
    np.testing.assert_array_equal(cols[off], edges[off])
    np.testing.assert_array_equal(edges, original)  # the input is not modified in place


def test_edge_columns_all_false_becomes_identity(blocks):
    np.testing.assert_array_equal(blocks.edge_columns(np.zeros((5, 5))), np.eye(5, dtype=bool))


@pytest.mark.parametrize(
    ("edges", "match"),
    [
        (np.ones((3, 3)), r"shape \(2, 2\) or \(5, 5\); got \(3, 3\)"),
        (np.ones((2, 5)), r"got \(2, 5\)"),
        (np.ones(4), r"got \(4,\)"),
        (np.ones((1, 2, 2)), r"got \(1, 2, 2\)"),
        (np.full((2, 2), 3), r"edge_mask must hold booleans"),
    ],
)
def test_edge_columns_invalid(blocks, edges, match):
    with pytest.raises(ValueError, match=match):
        blocks.edge_columns(edges)


def test_edge_columns_shape_error_when_one_column_per_variable():
    with pytest.raises(ValueError, match=r"shape \(3, 3\); got \(2, 2\)") as info:
        Layout.from_spec(3).edge_columns(np.ones((2, 2)))
    assert " or " not in str(info.value)


# ---------------------------------------------------------------------------- batches


def _as(kind: str, arr: np.ndarray):
    return torch.as_tensor(arr) if kind == "torch" else arr


def _np(arr) -> np.ndarray:
    return arr.numpy() if isinstance(arr, torch.Tensor) else arr


ARRAY_KINDS = ["numpy", "torch"]


@pytest.mark.parametrize("kind", ARRAY_KINDS)
@pytest.mark.parametrize("layout_name", ["blocks", "interleaved"])
def test_expand_condition_from_variables(request, layout_name, kind):
    layout = request.getfixturevalue(layout_name)
    masks = np.random.default_rng(1).random((16, layout.n_variables)) < 0.5
    cols = layout.expand_condition(_as(kind, masks))
    assert type(cols) is type(_as(kind, masks))
    assert tuple(cols.shape) == (16, layout.n_columns)
    np.testing.assert_array_equal(_np(cols), masks[:, layout.column_variable])


@pytest.mark.parametrize("kind", ARRAY_KINDS)
def test_expand_condition_columns_pass_through(blocks, kind):
    masks = np.random.default_rng(2).random((7, 5)) < 0.5
    np.testing.assert_array_equal(_np(blocks.expand_condition(_as(kind, masks))), masks)


@pytest.mark.parametrize("kind", ARRAY_KINDS)
@pytest.mark.parametrize("shape", [(4, 3), (4, 1), (4, 6)])
def test_expand_condition_invalid(blocks, shape, kind):
    with pytest.raises(ValueError, match=rf"2 \(variables\) or 5 \(columns\).*{shape[1]}\)"):
        blocks.expand_condition(_as(kind, np.zeros(shape, dtype=bool)))


@pytest.mark.parametrize("kind", ARRAY_KINDS)
@pytest.mark.parametrize("layout_name", ["blocks", "interleaved"])
def test_expand_edges_from_variables(request, layout_name, kind):
    layout = request.getfixturevalue(layout_name)
    V, T = layout.n_variables, layout.n_columns
    masks = np.random.default_rng(3).random((6, V, V)) < 0.5
    cols = layout.expand_edges(_as(kind, masks))
    assert tuple(cols.shape) == (6, T, T)
    for b in range(6):
        expected = _expand_edges(masks[b], layout.column_variable)
        np.testing.assert_array_equal(_np(cols[b]), expected)
        np.testing.assert_array_equal(_np(cols[b]), layout.edge_columns(masks[b]))


@pytest.mark.parametrize("kind", ARRAY_KINDS)
def test_expand_edges_columns_get_diagonal(blocks, kind):
    masks = np.zeros((3, 5, 5), dtype=bool)
    masks[1, 0, 4] = True
    cols = _np(blocks.expand_edges(_as(kind, masks)))
    eye = np.eye(5, dtype=bool)
    np.testing.assert_array_equal(cols[0], eye)
    np.testing.assert_array_equal(cols[2], eye)
    assert cols[1, 0, 4] and cols[1].sum() == 6


@pytest.mark.parametrize("kind", ARRAY_KINDS)
@pytest.mark.parametrize("shape", [(2, 3, 3), (2, 2, 5), (2, 5, 4)])
def test_expand_edges_invalid(blocks, shape, kind):
    with pytest.raises(ValueError, match=r"\(2, 2\) or \(5, 5\) per mask"):
        blocks.expand_edges(_as(kind, np.ones(shape, dtype=bool)))


def test_expand_on_the_test_device(blocks, device):
    """Tensors stay on their device; the column index is made once per device."""
    masks = torch.ones(3, 2, dtype=torch.bool, device=device)
    assert blocks.expand_condition(masks).device == masks.device
    assert blocks.expand_edges(torch.ones(3, 2, 2, dtype=torch.bool, device=device)).device \
        == masks.device


# ---------------------------------------------------------------------------- variable_indexes


@pytest.mark.parametrize(
    ("idx", "expected"),
    [
        (0, [0]),
        (np.int64(2), [2]),
        ([0, 2], [0, 2]),
        ([-1], [2]),
        ([-3, -2], [0, 1]),
        ((1,), [1]),
        (np.array([2, -1]), [2, 2]),
        ([], []),
    ],
)
def test_variable_indexes(idx, expected):
    layout = Layout.from_spec(3)
    out = layout.variable_indexes(idx, "posterior_latent")
    assert out == expected
    assert all(type(i) is int for i in out)


@pytest.mark.parametrize(
    ("idx", "match"),
    [
        ([3], r"posterior_latent holds indexes \[3\] outside the 3 variables"),
        ([0, -4, 5], r"indexes \[-4, 5\] outside the 3 variables"),
        (7, r"indexes \[7\]"),
        (1.5, r"posterior_latent must be a list of variable indexes or names; got 1\.5"),
        (None, r"must be a list of variable indexes or names; got None"),
        ([[0, 1]], r"must be a list of variable indexes"),
    ],
)
def test_variable_indexes_invalid(idx, match):
    with pytest.raises(ValueError, match=match):
        Layout.from_spec(3).variable_indexes(idx, "posterior_latent")


# ---------------------------------------------------------------------------- serialisation


@pytest.mark.parametrize(
    ("n_columns", "variables", "names"),
    [(3, None, None), (5, [2, 3], ["theta", "x"]), (4, [[0, 2], [1, 3]], None)],
)
def test_dict_round_trip(n_columns, variables, names):
    layout = Layout.from_spec(n_columns, variables, names=names)
    d = layout.to_dict()
    assert d == json.loads(json.dumps(d))  # plain JSON-able types only
    again = Layout.from_dict(json.loads(json.dumps(d)))
    assert again == layout
    assert hash(again) == hash(layout)
    np.testing.assert_array_equal(again.column_variable, layout.column_variable)
    assert again.column_names == layout.column_names


@pytest.mark.parametrize(
    "d",
    [None, {"groups": [[0, 1], [1, 2]], "names": ["a", "b"]}, {"groups": [[0]], "names": [1]},
     {"groups": [["0"]], "names": ["a"]}, {"groups": [[0], [1]], "names": ["a"]}],
    ids=["none", "overlap", "name not str", "index not int", "names short"],
)
def test_from_dict_checks_its_input(d):
    with pytest.raises(ValueError):
        Layout.from_dict(d)



def test_names_address_variables_and_columns(blocks):
    assert blocks.variable_indexes(["x", 0], "posterior_latent") == [1, 0]
    np.testing.assert_array_equal(blocks.condition_columns(["x"]),
                                  [False, False, True, True, True])
    np.testing.assert_array_equal(blocks.condition_columns("theta[1]"),
                                  [False, True, False, False, False])
    with pytest.raises(ValueError, match="at least one must be latent"):
        blocks.condition_columns(["theta", "x"])
