"""Columns, variables and tokens: the one place where masks are normalised and validated.

A *column* is one scalar of the joint vector. A *variable* is a group of columns that masks
address as one unit (all of theta, say). A *token* of the network carries one column or a chunk
of one variable's columns (:meth:`Layout.token_columns`); masks stay per column whatever the
tokens. Masks may be given per variable or per column; :class:`Layout` expands variable masks
to column masks here and nowhere else, for numpy arrays and torch tensors alike, and names the
expected shapes in its errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

__all__ = ["Layout", "as_bool_array", "auto_token_count"]


AUTO_COLUMNS_PER_TOKEN = 8
AUTO_TOKENS_PER_VARIABLE = 4
AUTO_MIN_COLUMNS = 8
"""Under ``tokens="auto"``, data of at most this many columns keeps one token per column:
grouping 4-6 columns saved only 1.0-1.3x a step and cost gaussian_mixture 0.08 in C2ST
(docs/speed.md)."""


def auto_token_count(width: int) -> int:
    """Tokens of a variable of ``width`` columns under ``tokens="auto"``: chunks of at most
    :data:`AUTO_COLUMNS_PER_TOKEN` columns, and at most :data:`AUTO_TOKENS_PER_VARIABLE`
    tokens (wider chunks beyond that), so that a step's cost stays near that of one token per
    variable however wide the data (a curve of 96 readings: 4 tokens, not 96)."""
    return max(1, min(AUTO_TOKENS_PER_VARIABLE, -(-int(width) // AUTO_COLUMNS_PER_TOKEN)))


def as_bool_array(mask, what: str) -> np.ndarray:
    """A user's mask (bools or 0 / 1; numpy, torch or nested lists) -> numpy bool array."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    try:
        arr = np.asarray(mask)
    except Exception as err:  # ragged lists and the like
        raise ValueError(f"{what} must be an array of booleans; got {mask!r}.") from err
    if arr.dtype == object:
        raise ValueError(f"{what} must be an array of booleans; got {mask!r}.")
    if arr.dtype != bool:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{what} must hold booleans (or 0 / 1); got values {np.unique(arr)}.")
        arr = arr.astype(bool)
    return arr


def _is_names(value) -> bool:
    """A name, or a non-empty list / tuple of names."""
    if isinstance(value, str):
        return True
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(v, str) for v in value))


def _eye_like(n: int, array):
    if isinstance(array, torch.Tensor):
        return torch.eye(n, dtype=torch.bool, device=array.device)
    return np.eye(n, dtype=bool)


@dataclass(frozen=True)
class Layout:
    """How the columns of the joint vector group into variables.

    Parameters
    ----------
    groups : tuple of tuple of int
        For each variable, the indexes of its columns. Together they partition the columns.
    names : tuple of str
        One name per variable.
    column_labels : tuple of str or None
        One name per column (a DataFrame's column names), or None to name columns after their
        variables.

    Examples
    --------
    >>> layout = Layout.from_spec(5, [2, 3], names=["theta", "x"])
    >>> layout.column_names
    ['theta[0]', 'theta[1]', 'x[0]', 'x[1]', 'x[2]']
    >>> layout.condition_columns([False, True]).tolist()
    [False, False, True, True, True]
    """

    groups: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]
    column_labels: tuple[str, ...] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_spec(
        cls, n_columns: int, variables=None, names: Sequence[str] | None = None,
        column_labels: Sequence[str] | None = None,
    ) -> Layout:
        """Build a layout for ``n_columns`` from the ``variables`` parameter.

        ``variables`` is None (one variable per column), a list of sizes of consecutive groups
        (``[3, 3]``), or a list of lists of column indexes that together cover every column once
        (``[[0, 2], [1, 3]]``). ``column_labels`` names the columns themselves (distinct).
        """
        if variables is None:
            groups = tuple((j,) for j in range(n_columns))
        else:
            if isinstance(variables, (str, bytes)) or not isinstance(variables, Sequence):
                raise ValueError(
                    "variables must be None, a list of group sizes or a list of lists of column "
                    f"indexes; got {variables!r}."
                )
            if len(variables) == 0:
                raise ValueError("variables must name at least one variable; got an empty list.")
            if any(isinstance(v, (bool, np.bool_)) for v in variables):
                raise ValueError(f"variables holds booleans: {variables!r}; give sizes or "
                                 "lists of column indexes.")
            if all(isinstance(v, (int, np.integer)) for v in variables):
                sizes = [int(v) for v in variables]
                if min(sizes) < 1 or sum(sizes) != n_columns:
                    raise ValueError(
                        f"variables as group sizes must be positive and sum to the number of "
                        f"columns ({n_columns}); got {sizes} (sum {sum(sizes)})."
                    )
                edges = np.cumsum([0, *sizes])
                groups = tuple(tuple(range(a, b))
                               for a, b in zip(edges[:-1], edges[1:], strict=True))
            else:
                def index(c) -> int:
                    if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)):
                        raise TypeError(c)
                    return int(c)

                try:
                    if any(isinstance(g, (set, frozenset, str)) for g in variables):
                        raise TypeError(variables)
                    groups = tuple(tuple(index(c) for c in g) for g in variables)
                except TypeError as err:
                    raise ValueError(
                        "variables must be a list of sizes or a list of lists of column indexes "
                        f"(integers, in order); got {variables!r}."
                    ) from err
                flat = sorted(c for g in groups for c in g)
                if any(len(g) == 0 for g in groups) or flat != list(range(n_columns)):
                    raise ValueError(
                        "variables as lists of column indexes must cover each of the "
                        f"{n_columns} columns exactly once; got {variables!r}."
                    )
        if names is None:
            names = tuple(f"v{i}" for i in range(len(groups)))
        names = tuple(str(n) for n in names)
        if len(names) != len(groups):
            raise ValueError(f"{len(groups)} variables but {len(names)} names.")
        if column_labels is not None:
            column_labels = tuple(str(c) for c in column_labels)
            if len(column_labels) != n_columns or len(set(column_labels)) != n_columns:
                raise ValueError(f"column labels must be {n_columns} distinct names; got "
                                 f"{list(column_labels)}.")
        return cls(groups=groups, names=names, column_labels=column_labels)

    def to_dict(self) -> dict:
        """A JSON-ready description (see :meth:`from_dict`)."""
        out = {"groups": [list(g) for g in self.groups], "names": list(self.names)}
        if self.column_labels is not None:
            out["column_names"] = list(self.column_labels)
        return out

    @classmethod
    def from_dict(cls, d) -> Layout:
        """Inverse of :meth:`to_dict`; checks that the groups partition the columns."""
        if not isinstance(d, dict) or not isinstance(d.get("groups"), list):
            raise ValueError(f"a layout must be a mapping with 'groups' and 'names'; got {d!r}.")
        groups = d["groups"]
        if not all(isinstance(g, list) and all(type(c) is int for c in g) for g in groups):
            raise ValueError(f"layout groups must be lists of column indexes; got {groups!r}.")
        names = d.get("names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"layout names must be a list of strings; got {names!r}.")
        labels = d.get("column_names")
        if labels is not None and (not isinstance(labels, list)
                                   or not all(isinstance(c, str) for c in labels)):
            raise ValueError(f"layout column names must be a list of strings; got {labels!r}.")
        n_columns = sum(len(g) for g in groups)
        return cls.from_spec(n_columns, groups, names, labels)

    # ------------------------------------------------------------------ sizes and names
    @property
    def n_variables(self) -> int:
        return len(self.groups)

    @property
    def n_columns(self) -> int:
        return sum(len(g) for g in self.groups)

    @cached_property
    def column_variable(self) -> np.ndarray:
        """For each column, the index of its variable: int array of shape (n_columns,)."""
        out = np.empty(self.n_columns, dtype=np.int64)
        for v, g in enumerate(self.groups):
            out[list(g)] = v
        out.setflags(write=False)
        return out

    def _column_variable_like(self, array):
        """:attr:`column_variable` as an index for ``array``: the numpy array, or a tensor on
        ``array``'s device (made once per device)."""
        if not isinstance(array, torch.Tensor):
            return self.column_variable
        cache = self.__dict__.setdefault("_index_cache", {})
        if array.device not in cache:
            cache[array.device] = torch.tensor(self.column_variable, device=array.device)
        return cache[array.device]

    @property
    def column_names(self) -> list[str]:
        """One name per column: its label (a DataFrame's column name) when there is one, else
        the variable name, with ``[k]`` for multi-column variables."""
        if self.column_labels is not None:
            return list(self.column_labels)
        out = [""] * self.n_columns
        for name, g in zip(self.names, self.groups, strict=True):
            for k, c in enumerate(g):
                out[c] = name if len(g) == 1 else f"{name}[{k}]"
        return out

    def variable_indexes(self, idx, what: str) -> list[int]:
        """Validate a list of variable indexes or names (e.g. ``posterior_latent``)."""
        if isinstance(idx, (int, np.integer, str, bool, np.bool_)):
            idx = [idx]
        try:
            idx = list(idx)
        except TypeError as err:
            raise ValueError(f"{what} must be a list of variable indexes or names; got "
                             f"{idx!r}.") from err
        if any(isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer, str))
               for i in idx):
            raise ValueError(f"{what} must be a list of variable indexes (integers) or names; "
                             f"got {idx!r} (a boolean mask is not a list of indexes).")
        out = [self._variable_index(i, what) if isinstance(i, str) else int(i) for i in idx]
        bad = [i for i in out if not -self.n_variables <= i < self.n_variables]
        if bad:
            raise ValueError(
                f"{what} holds indexes {bad} outside the {self.n_variables} variables."
            )
        return [i % self.n_variables for i in out]

    def _variable_index(self, name: str, what: str) -> int:
        if name not in self.names:
            raise ValueError(f"{what} names an unknown variable {name!r}; the variables are "
                             f"{list(self.names)}.")
        return self.names.index(name)

    def columns_of(self, names, what: str = "condition_mask") -> np.ndarray:
        """Bool mask (n_columns,) of the columns that variable or column names stand for."""
        if isinstance(names, str):
            names = [names]
        out = np.zeros(self.n_columns, dtype=bool)
        column_names = self.column_names
        for name in names:
            if name in self.names:
                out[list(self.groups[self.names.index(name)])] = True
            elif name in column_names:
                out[column_names.index(name)] = True
            else:
                raise ValueError(
                    f"{what} names {name!r}, which is neither a variable {list(self.names)} "
                    f"nor a column {column_names}."
                )
        return out

    # ------------------------------------------------------------------ expansion
    def expand_condition(self, masks):
        """Condition masks of shape (..., n_variables) or (..., n_columns) -> (..., n_columns).

        Works on numpy arrays and torch tensors alike. A variable mask wins where both sizes
        agree (one column per variable, in any order).
        """
        n = masks.shape[-1]
        if n == self.n_variables:
            return masks[..., self._column_variable_like(masks)]
        if n == self.n_columns:
            return masks
        raise ValueError(
            f"condition masks must have {self.n_variables} (variables) or {self.n_columns} "
            f"(columns) entries; got shape {tuple(masks.shape)}."
        )

    def expand_edges(self, masks):
        """Edge masks of shape (..., V, V) or (..., T, T) -> (..., T, T), diagonal set.

        ``[..., i, j]`` True lets token i attend to token j; every token attends to itself.
        """
        V, T = self.n_variables, self.n_columns
        if tuple(masks.shape[-2:]) == (V, V):
            c2v = self._column_variable_like(masks)
            masks = masks[..., c2v[:, None], c2v[None, :]]
        elif tuple(masks.shape[-2:]) != (T, T):
            expected = f"({V}, {V})" + (f" or ({T}, {T})" if T != V else "")
            raise ValueError(
                f"edge masks must have shape {expected} per mask; got {tuple(masks.shape)}."
            )
        return masks | _eye_like(T, masks)

    def variable_condition(self, masks):
        """Condition masks at either level (..., V) or (..., T) -> (..., V): a variable is
        observed when all its columns are."""
        if masks.shape[-1] == self.n_variables:
            return masks
        cols = self.expand_condition(masks)
        if isinstance(cols, torch.Tensor):
            return torch.stack([cols[..., list(g)].all(-1) for g in self.groups], -1)
        return np.stack([cols[..., list(g)].all(-1) for g in self.groups], -1)

    # ------------------------------------------------------------------ exchangeable variables
    def exchangeable_sets(self, spec) -> list[list[int]]:
        """Validate ``exchangeable`` (None, or a list of sets of variables, each a list of
        indexes or names) -> sets of variable indexes, each of at least two variables of one
        size, no variable in two sets."""
        if spec is None:
            return []
        if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
            raise ValueError(f"exchangeable must be a list of sets of variables (lists of "
                             f"indexes or names), e.g. [['x1', 'x2', 'x3']]; got {spec!r}.")
        sets, seen = [], {}
        for k, members in enumerate(spec):
            if isinstance(members, (str, bytes, int, np.integer)) or not isinstance(
                    members, Sequence):
                raise ValueError(f"exchangeable[{k}] must be a list of variables; got "
                                 f"{members!r} (give sets as lists: [['x1', 'x2']]).")
            idx = self.variable_indexes(members, f"exchangeable[{k}]")
            if len(idx) < 2 or len(set(idx)) != len(idx):
                raise ValueError(f"exchangeable[{k}] must name at least two distinct variables; "
                                 f"got {list(members)!r}.")
            sizes = {self.names[v]: len(self.groups[v]) for v in idx}
            if len(set(sizes.values())) > 1:
                raise ValueError(f"exchangeable variables must have the same number of columns; "
                                 f"exchangeable[{k}] has {sizes}.")
            for v in idx:
                if v in seen:
                    raise ValueError(f"variable {self.names[v]!r} is in exchangeable[{seen[v]}] "
                                     f"and exchangeable[{k}]; a variable belongs to one set.")
                seen[v] = k
            sets.append(idx)
        return sets

    def shared_columns(self, sets: Sequence[Sequence[int]],
                       whole: Sequence[int] = ()) -> list[list[int]]:
        """Classes of columns that share one identity and one standardisation: the k-th column
        of every variable of an exchangeable set (``sets``, from :meth:`exchangeable_sets`),
        and all the columns of each variable in ``whole`` (variables with positions, whose
        readings sample one function). Only classes of two or more columns are returned."""
        parent = list(range(self.n_columns))

        def find(c: int) -> int:
            while parent[c] != c:
                parent[c] = parent[parent[c]]
                c = parent[c]
            return c

        def join(a: int, b: int) -> None:
            parent[find(a)] = find(b)

        for members in sets:
            first = self.groups[members[0]]
            for v in members[1:]:
                for a, b in zip(first, self.groups[v], strict=True):
                    join(a, b)
        for v in whole:
            for c in self.groups[v][1:]:
                join(self.groups[v][0], c)
        classes: dict[int, list[int]] = {}
        for c in range(self.n_columns):
            classes.setdefault(find(c), []).append(c)
        return [cols for cols in classes.values() if len(cols) > 1]

    def column_identities(self, shared: Sequence[Sequence[int]]) -> list[int] | None:
        """The identity of each column given the classes of :meth:`shared_columns`: numbered in
        column order, one per class (None when no column shares one)."""
        if not shared:
            return None
        owner = {c: min(cols) for cols in shared for c in cols}
        ids: dict[int, int] = {}
        return [ids.setdefault(owner.get(c, c), len(ids)) for c in range(self.n_columns)]

    # ------------------------------------------------------------------ tokens
    def token_columns(self, tokens, positions: bool = False) -> list[list[int]]:
        """The columns of each token: every variable cut into consecutive chunks.

        ``tokens``: "column" (one token per column), "variable" (one per variable), an int k
        (chunks of at most k columns), or "auto" (:func:`auto_token_count` tokens per
        variable; one per column when ``positions``, which need them, and for data of at most
        :data:`AUTO_MIN_COLUMNS` columns). Tokens never mix variables.
        """
        narrow = positions or self.n_columns <= AUTO_MIN_COLUMNS

        def count(width: int) -> int:
            if tokens == "auto":
                return width if narrow else auto_token_count(width)
            k = {"column": 1, "variable": width}.get(tokens, tokens)
            return -(-width // int(k))
        return [[int(c) for c in chunk] for g in self.groups
                for chunk in np.array_split(np.asarray(g), count(len(g)))]

    # ------------------------------------------------------------------ one user mask
    def condition_columns(self, condition_mask) -> np.ndarray:
        """Validate one condition mask (True = observed) -> column mask of shape (n_columns,).

        Accepts one entry per variable or one per column, or the names of the observed variables
        (or columns). Raises ``ValueError`` for any other length, for non-boolean values,
        unknown names, and when nothing is left latent.
        """
        if _is_names(condition_mask):
            arr = self.columns_of(condition_mask)
        else:
            arr = as_bool_array(condition_mask, "condition_mask").reshape(-1)
        V, T = self.n_variables, self.n_columns
        if arr.shape[0] not in (V, T):
            expected = f"{V} (one per variable)" + (f" or {T} (one per column)" if T != V else "")
            raise ValueError(
                f"condition_mask must have length {expected}; got length {arr.shape[0]}."
            )
        cols = self.expand_condition(arr)
        if cols.all():
            raise ValueError(
                "condition_mask marks every variable as observed (True); at least one must be "
                "latent (False) to have something to sample."
            )
        return cols

    def edge_columns(self, edge_mask) -> np.ndarray | None:
        """Validate one edge mask -> column matrix of shape (n_columns, n_columns), or None."""
        if edge_mask is None:
            return None
        arr = as_bool_array(edge_mask, "edge_mask")
        V, T = self.n_variables, self.n_columns
        if arr.shape not in ((V, V), (T, T)):
            expected = f"({V}, {V})" + (f" or ({T}, {T})" if T != V else "")
            raise ValueError(f"edge_mask must have shape {expected}; got {arr.shape}.")
        return self.expand_edges(arr)
