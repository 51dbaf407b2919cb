"""Positions: where (or when) each reading of a function-valued variable was taken.

A variable with positions (``fit(X, positions={"x": T})``) is a function sampled at its
columns' positions: its columns share one identity in the network, one mean and one scale in
the standardiser, and each carries its position, which the network embeds
(:class:`~skformer.network.FourierPosition`). Its number of columns is then free: a
conditional may read it at any other positions (:meth:`PositionTable.layout_at`).

Three pieces, none of which knows the estimator:

- :func:`parse_positions` validates a user's ``positions`` argument against a
  :class:`~skformer.layout.Layout` (numpy in, numpy out; clear errors for wrong shapes and
  non-finite values).
- :class:`PositionTable` (an ``nn.Module`` of buffers, part of the fitted model) holds which
  variables carry positions, their training range and the training positions of those that
  every row shared; it maps positions to the network's standard units.
- :class:`PositionedNetwork` binds one set of tokens (positions and identities) to a network,
  so that everything that calls ``network(x, t, observed, edges)`` works on it unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from skformer._utils import MAX_STANDARD_UNITS, real_array
from skformer.layout import Layout

__all__ = ["PositionTable", "PositionedNetwork", "parse_positions", "RANGE_SLACK",
           "MAX_POSITION_DIM"]

MAX_POSITION_DIM = 16
"""Most coordinates a position may have (``fit`` refuses more, and so does every loader)."""

RANGE_SLACK = 0.05
"""Positions beyond the training range by more than this share of its width warn that the
model extrapolates."""


def _variable(layout: Layout, key) -> int:
    if isinstance(key, str):
        if key not in layout.names:
            raise ValueError(f"positions names an unknown variable {key!r}; the variables are "
                             f"{list(layout.names)}.")
        return layout.names.index(key)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool) \
            and -layout.n_variables <= key < layout.n_variables:
        return int(key) % layout.n_variables
    raise ValueError(f"positions keys must be variable names {list(layout.names)} or indexes; "
                     f"got {key!r}.")


def parse_positions(positions, layout: Layout, n_rows: int | None,
                    sizes: dict[int, int] | None = None) -> dict[int, np.ndarray]:
    """A user's ``positions`` mapping -> ``{variable index: float64 array}``.

    Each value holds the positions of that variable's columns, one scalar or one small vector
    (``dim`` coordinates) per column:

    - shared by every row: shape ``(k,)`` (scalars) or ``(k, dim)``;
    - one set per row (``n_rows`` given): ``(n_rows, k)`` or ``(n_rows, k, dim)``.

    ``k`` is the variable's number of columns (``sizes[v]`` when given: a new set of tokens,
    any ``k >= 1``). Returned arrays are ``(k, dim)`` (shared) or ``(n_rows, k, dim)`` (per
    row). NaN is allowed per row (an absent reading) and nowhere else; infinities never.
    A 2-D array of shape ``(n_rows, k)`` with ``n_rows == k`` is taken per row; give shared
    vectors as ``(1, k, dim)`` then.
    """
    if not isinstance(positions, dict) or not positions:
        raise ValueError(f"positions must be a non-empty mapping from variable names to arrays; "
                         f"got {positions!r}.")
    out: dict[int, np.ndarray] = {}
    for key, value in positions.items():
        v = _variable(layout, key)
        name = layout.names[v]
        if v in out:
            raise ValueError(f"positions gives variable {name!r} twice.")
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        kind = getattr(getattr(value, "dtype", None), "kind", "")
        if kind == "b":
            raise ValueError(f"positions[{name!r}] holds booleans; positions are numbers.")
        if kind in ("M", "m"):
            raise ValueError(f"positions[{name!r}] holds dates or time spans; give numbers "
                             "(e.g. days since a reference date) so that their unit is yours.")
        # masked readings are absent (NaN); complex and non-numbers refused
        arr = real_array(value, f"positions[{name!r}]")
        k = len(layout.groups[v]) if sizes is None else sizes.get(v)
        per_row = False
        if arr.ndim == 1:
            arr = arr[:, None]
        elif arr.ndim == 2 and n_rows is not None and arr.shape[0] == n_rows \
                and (k is None or arr.shape[1] == k) and (n_rows != 1 or k != 1):
            # one row's (1, k) is its own set; (1, 1) reads the same either way: shared
            arr, per_row = arr[:, :, None], True
        elif arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        elif arr.ndim == 3 and n_rows is not None and arr.shape[0] == n_rows:
            per_row = True
        elif arr.ndim != 2:
            arr = None
        shape = None if arr is None else arr.shape[1 if per_row else 0]
        if arr is None or (k is not None and shape != k) or shape == 0 or arr.shape[-1] == 0:
            want = "(k,) or (k, dim) for k readings" if k is None else (
                f"({k},) or ({k}, dim) shared by all rows")
            if n_rows is not None and k is not None:
                want += f", or ({n_rows}, {k}) or ({n_rows}, {k}, dim) one set per row"
            raise ValueError(f"positions[{name!r}] must have shape {want}; got shape "
                             f"{np.shape(value)}.")
        if np.isinf(arr).any():
            raise ValueError(f"positions[{name!r}] holds infinite values.")
        nan = np.isnan(arr)
        if nan.any() and not per_row:
            raise ValueError(f"positions[{name!r}] holds NaN; only per-row positions may mark "
                             "an absent reading with NaN.")
        if per_row and not np.array_equal(nan.any(-1), nan.all(-1)):
            raise ValueError(f"positions[{name!r}] holds positions with some coordinates NaN "
                             "and others not: NaN marks a whole reading absent.")
        if arr.shape[-1] > MAX_POSITION_DIM:
            raise ValueError(f"positions[{name!r}] has {arr.shape[-1]} coordinates per "
                             f"reading; at most {MAX_POSITION_DIM} are supported.")
        out[v] = arr
    dims = {a.shape[-1] for a in out.values()}
    if len(dims) > 1:
        raise ValueError(f"every variable's positions must have the same number of "
                         f"coordinates; got {sorted(dims)}.")
    return out


class PositionTable(nn.Module):
    """Which variables carry positions, their training range, and shared training positions.

    Parameters
    ----------
    variables : list of int
        Indexes of the variables with positions, in increasing order.
    low, high : tensor of shape (len(variables), dim)
        Each one's smallest and largest training position per coordinate.
    default : tensor of shape (n_columns, dim)
        The training columns' positions where every row shared them, NaN elsewhere (columns
        without positions, and variables whose positions were given per row).
    shared : list of int
        The variables (of ``variables``) whose positions every training row shared: a
        conditional keeps them when it names no positions for them.
    seen : (ndarray, ndarray) or None
        The range of every position trained on, low and high of shape (len(variables), dim),
        when later fits (``warm_start``, ``partial_fit``) reached beyond ``low`` and ``high``;
        None: ``low`` and ``high``.

    Positions map to standard units per variable and coordinate, ``(p - mid) / half`` with the
    first fit's range: its midpoint and half width (1 where the range is a point), so that
    its positions lie in [-1, 1]. Later fits keep these units (the network learnt them) and
    widen ``seen``, the range that :meth:`outside` judges extrapolation by.
    """

    def __init__(self, variables: list[int], low: torch.Tensor, high: torch.Tensor,
                 default: torch.Tensor, shared: list[int],
                 seen: tuple[np.ndarray, np.ndarray] | None = None):
        super().__init__()
        self.variables = [int(v) for v in variables]
        self.shared = [int(v) for v in shared]
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float64).clone())
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float64).clone())
        self.register_buffer("default", torch.as_tensor(default, dtype=torch.float64).clone())
        self.seen = None if seen is None else tuple(np.array(a, dtype=np.float64) for a in seen)

    @property
    def dim(self) -> int:
        return int(self.low.shape[1])

    def seen_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Low and high of every position trained on, each (len(variables), dim)."""
        if self.seen is not None:
            return self.seen
        return self.low.cpu().numpy(), self.high.cpu().numpy()

    def widen(self, other: PositionTable) -> None:
        """Take in the range of a later fit's positions (``other``, the same variables)."""
        low, high = self.seen_range()
        other_low, other_high = other.seen_range()
        self.seen = (np.minimum(low, other_low), np.maximum(high, other_high))

    def describe(self) -> dict:
        """JSON values that rebuild this table's structure (the buffers hold the numbers)."""
        out = {"variables": list(self.variables), "dim": self.dim, "shared": list(self.shared)}
        if self.seen is not None:
            out["seen"] = [self.seen[0].tolist(), self.seen[1].tolist()]
        return out

    @classmethod
    def skeleton(cls, description, n_columns: int) -> PositionTable:
        """An empty table of the described structure, for ``load_state_dict``."""
        keys = {"variables", "dim", "shared"}
        if not isinstance(description, dict) or not keys <= set(description) <= {*keys, "seen"}:
            raise ValueError(f"positions must be a mapping with 'variables', 'dim' and "
                             f"'shared' (and optionally 'seen'); got {description!r}.")
        variables, dim, shared = (description[k] for k in ("variables", "dim", "shared"))
        def indexes(v) -> bool:
            return (isinstance(v, list) and all(type(i) is int and i >= 0 for i in v)
                    and v == sorted(set(v)))

        if not (indexes(variables) and variables and indexes(shared)
                and set(shared) <= set(variables) and type(dim) is int
                and 1 <= dim <= MAX_POSITION_DIM):
            raise ValueError(f"positions must name distinct variable indexes, a dim in "
                             f"1..{MAX_POSITION_DIM} and the shared ones among the variables; "
                             f"got {description!r}.")
        V = len(variables)
        seen = description.get("seen")
        if seen is not None:
            try:
                seen = np.array(seen, dtype=np.float64)
            except (TypeError, ValueError):
                seen = None
            if seen is None or seen.shape != (2, V, dim) or not np.isfinite(seen).all() \
                    or (seen[0] > seen[1]).any():
                raise ValueError(f"positions' seen range must be [low, high], each "
                                 f"{V} lists of {dim} finite numbers with low <= high; got "
                                 f"{description['seen']!r}.")
            seen = (seen[0], seen[1])
        return cls(variables, torch.zeros(V, dim), torch.ones(V, dim),
                   torch.zeros(n_columns, dim), shared, seen)

    # ------------------------------------------------------------------ units
    def _row(self, v: int) -> int:
        return self.variables.index(v)

    def _standard64(self, v: int, positions) -> torch.Tensor:
        r = self._row(v)
        mid = self.low[r] / 2 + self.high[r] / 2  # halves first: no overflow near 1.8e308
        half = self.high[r] / 2 - self.low[r] / 2
        half = torch.where(half > 0, half, 1.0)
        p = torch.as_tensor(positions, device=self.low.device).to(torch.float64)
        return (p - mid) / half

    def standard(self, v: int, positions: torch.Tensor) -> torch.Tensor:
        """Positions of variable ``v`` (any leading shape, last axis ``dim``) -> standard
        units (float32; NaN stays NaN)."""
        return self._standard64(v, positions).to(torch.float32)

    def check_representable(self, v: int, positions: np.ndarray, name: str) -> None:
        """Refuse positions of variable ``v`` so far outside its training range that the
        network's float32 arithmetic cannot take them (more than
        :data:`~skformer._utils.MAX_STANDARD_UNITS` half-widths from its middle: the network
        would answer NaN)."""
        r = self._row(v)
        if bool((self._standard64(v, positions).abs() > MAX_STANDARD_UNITS).any()):
            raise ValueError(
                f"positions of {name!r} lie so far outside the training range "
                f"[{self.low[r].tolist()}, {self.high[r].tolist()}] (more than "
                f"{MAX_STANDARD_UNITS:g} of its half-widths from its middle) that the "
                "network's float32 arithmetic cannot take them."
            )

    def columns(self, layout: Layout, per_column: torch.Tensor) -> torch.Tensor:
        """Positions in data units of shape (..., n_columns, dim), NaN for columns without
        one -> standard units, each column by its variable's range."""
        out = torch.full(per_column.shape, math.nan, dtype=torch.float32,
                         device=per_column.device)
        for v in self.variables:
            cols = list(layout.groups[v])
            out[..., cols, :] = self.standard(v, per_column[..., cols, :])
        return out

    def outside(self, v: int, positions: np.ndarray) -> bool:
        """Whether any of ``positions`` (..., dim) lies outside variable ``v``'s training
        range, widened by :data:`RANGE_SLACK` of its width at each end (training positions
        drawn from [0, 20] span a little less than it)."""
        r = self._row(v)
        low, high = (a[r] for a in self.seen_range())
        with np.errstate(over="ignore"):  # ranges near float64's limits: inf slack is fine
            slack = RANGE_SLACK * (high - low)
            p = positions[~np.isnan(positions).any(-1)]
            return bool(((p < low - slack) | (p > high + slack)).any())


class PositionedNetwork(nn.Module):
    """A network that embeds positions, bound to one set of tokens.

    Parameters
    ----------
    network : MaskedTransformer
        With ``position_dim > 0``; shared, not copied.
    positions : tensor of shape (tokens, dim)
        Standard units, NaN for tokens without a position.
    identities : long tensor of shape (tokens,)
        Each token's identity in ``network``.

    ``forward(x, t, observed, edges)`` is the network's for these tokens, every row alike.
    """

    def __init__(self, network: nn.Module, positions: torch.Tensor, identities: torch.Tensor):
        super().__init__()
        self.network = network
        self.register_buffer("positions", positions.to(torch.float32))
        self.register_buffer("identities", identities.to(torch.long))

    @property
    def n_token_slots(self) -> int:
        return int(self.identities.shape[0])

    def forward(self, x, t, observed, edges=None):
        return self.network(x, t, observed, edges,
                            positions=self.positions.expand(x.shape[0], -1, -1),
                            identities=self.identities)
