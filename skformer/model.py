"""The fitted model as one ``nn.Module``: network, dynamics, standardiser and column layout.

:class:`SimformerModel` is what inference and persistence work with below the numpy /
scikit-learn layer. It takes and returns tensors in the user's units on its own device, and
``.to(device)`` moves everything it holds: the network's weights and the standardiser's
buffers. Standardisation happens here (:class:`Standardiser`) and nowhere else.

A condition is a bool tensor of shape (n_columns,), True = observed; an edge mask is a bool
tensor of shape (n_columns, n_columns) or None (full attention). Column masks come from
:class:`~skformer.layout.Layout`, which validates users' masks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from skformer._utils import DTYPE
from skformer.dynamics import Dynamics, make_dynamics
from skformer.dynamics.solvers import Denoiser, log_density, solve, with_divergence
from skformer.guidance import LinearConstraints, intersect, sample_each_satisfying
from skformer.layout import Layout
from skformer.network import (
    GROUP_EMBEDDINGS,
    LATENT,
    MISSING,
    OBSERVED,
    PRECISIONS,
    MaskedTransformer,
    float32,
)
from skformer.positions import PositionedNetwork, PositionTable

__all__ = ["Standardiser", "SimformerModel", "MAX_ARCHITECTURE", "MAX_ATTENTION_BYTES"]

MAX_ARCHITECTURE = {"d_model": 16_384, "n_layers": 1_024, "n_heads": 1_024}
"""Largest network a description may ask for (checked before anything is allocated)."""

MAX_ATTENTION_BYTES = 2 * 2**30
"""Most memory the attention of one network call may take (its scores and their softmax, per
layer; every layer's for a log density's backward pass): sampling and scoring cut their rows
into calls that fit, and a conditional with so many tokens that one row does not fit is
refused (:meth:`SimformerModel.check_attention`)."""

CPU_CHUNK_ROWS = 512
"""Most rows per network call on a CPU when sampling and scoring (see
``SimformerModel.rows_per_chunk``)."""


EDGE = 1e-7
"""How close to an edge of its box a bounded value is read (as a fraction of the box): values on
the edge (or rounded onto it) map to the logit of this fraction instead of an infinity."""

BOX_STIFFNESS = 0.0
"""``k`` of the map that new models learn a boxed column in, ``y = k (u - 1/2) + logit(u)`` at
the position ``u`` in the box: 0 is the logit; a large ``k`` keeps the map nearly affine
inside the box and stretches only the last ``1 / k`` or so near each edge. Each model keeps its
own (it is saved with the box)."""


class Standardiser(nn.Module):
    """The per-column map to standard units: ``z = (x - mean) / scale``, or, for a column with a
    modelled box ``(low, high)``, ``z = (logit((x - low) / (high - low)) - mean) / scale``.

    Buffers are float64 so that data far from zero (a mean of 1e6 with a spread of 1e-3)
    keep their resolution; the standardised values are the network's dtype. A boxed column
    is modelled in the unbounded space of its logit (its known support): whatever the network
    says, :meth:`inverse` lands inside the box, and :meth:`log_abs_det_at` gives the
    Jacobian that keeps a density proper in data units. ``mean`` and ``scale`` of a boxed
    column are those of its logits.

    Parameters
    ----------
    mean, scale : tensor of shape (n_columns,)
        ``scale`` positive.
    low, high : tensor of shape (n_columns,), optional
        The box of each column, ``-inf`` / ``inf`` (the default) for a column without one. A
        column is boxed when both are finite; one-sided bounds are not modelled here.

    Examples
    --------
    >>> st = Standardiser(torch.zeros(2), torch.ones(2), low=torch.tensor([0.0, -math.inf]),
    ...                   high=torch.tensor([1.0, math.inf]))
    >>> st.inverse(st(torch.tensor([[0.25, 3.0]]))).round(decimals=4).tolist()
    [[0.25, 3.0]]
    >>> far = st.inverse(torch.tensor([[-50.0, 0.0], [50.0, 0.0]]))  # any value: in the box
    >>> bool(((far[:, 0] >= 0) & (far[:, 0] <= 1)).all())
    True
    """

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor,
                 low: torch.Tensor | None = None, high: torch.Tensor | None = None,
                 stiffness: float | None = None):
        super().__init__()
        self.stiffness = float(BOX_STIFFNESS if stiffness is None else stiffness)
        if not (math.isfinite(self.stiffness) and self.stiffness >= 0):
            raise ValueError(f"the box map's stiffness must be finite and >= 0; got "
                             f"{self.stiffness!r}.")
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64).clone())
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float64).clone())
        n = self.mean.shape
        low = torch.full(n, -math.inf) if low is None else low
        high = torch.full(n, math.inf) if high is None else high
        # the box travels in the model's description, not its weights: files keep their tensors
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float64).clone()
                             .to(self.mean.device), persistent=False)
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float64).clone()
                             .to(self.mean.device), persistent=False)
        boxed = torch.isfinite(self.low) & torch.isfinite(self.high)
        if self.mean.device.type != "meta" and not bool((self.high[boxed] > self.low[boxed])
                                                        .all()):
            raise ValueError("a box needs low < high in every column.")

    @classmethod
    def from_data(cls, X: torch.Tensor, tied: list[list[int]] | None = None,
                  low: torch.Tensor | None = None, high: torch.Tensor | None = None,
                  stiffness: float | None = None) -> Standardiser:
        """Column means and standard deviations of ``X`` (n_rows, n_columns), missing entries
        (NaN) left out; a column that is constant (its spread within 1e-12 of its mean's
        magnitude) keeps scale 1. The columns of each group in ``tied`` (the readings of one
        function) share one mean and scale, those of all their entries. With a box (``low``,
        ``high``), a boxed column's mean and scale are those of its logits, and ``X`` must lie
        inside the box.

        Each column is divided by its largest magnitude first, so that squares cannot overflow:
        any finite float64 data (1e300 included) gives a finite mean and scale.
        """
        X = X.to(torch.float64)
        boxed = cls(torch.zeros(X.shape[1]), torch.ones(X.shape[1]), low, high, stiffness)
        if boxed.bounded:
            outside = ~boxed.inside(X) & ~torch.isnan(X)
            if bool(outside.any()):
                bad = outside.any(0).nonzero().flatten().tolist()
                raise ValueError(f"columns {bad} hold values outside their box.")
            out = cls._moments(boxed.unbound(X), tied)
            return cls(out.mean, out.scale, boxed.low, boxed.high, boxed.stiffness)
        return cls._moments(X, tied)

    @classmethod
    def _moments(cls, X: torch.Tensor, tied: list[list[int]] | None) -> Standardiser:
        if tied:
            out = cls._moments(X, None)
            for cols in tied:
                pooled = cls._moments(X[:, list(cols)].reshape(-1, 1), None)
                out.mean[list(cols)] = pooled.mean
                out.scale[list(cols)] = pooled.scale
            return out
        present = ~torch.isnan(X)
        if not bool(present.any(0).all()):
            empty = (~present.any(0)).nonzero().flatten().tolist()
            raise ValueError(f"columns {empty} hold no value (all missing).")
        peak = torch.where(present, X.abs(), 0.0).amax(0).clamp(
            min=torch.finfo(torch.float64).tiny)
        unit = torch.where(present, X / peak, 0.0)
        count = present.sum(0)
        mean = unit.sum(0) / count
        spread = torch.where(present, unit - mean, 0.0)
        mean, scale = mean * peak, torch.sqrt((spread**2).sum(0) / count) * peak
        # constant columns (to rounding, relative to their value) keep scale 1; a spread of
        # 1e-39 around 0 is data, not rounding
        scale = torch.where(scale <= 1e-12 * mean.abs(), 1.0, scale)
        if not bool(torch.isfinite(mean).all() and torch.isfinite(scale).all()):
            bad = (~(torch.isfinite(mean) & torch.isfinite(scale))).nonzero().flatten().tolist()
            raise ValueError(f"the mean or spread of columns {bad} is not finite in float64.")
        return cls(mean, scale)

    def _pick(self, columns):
        if columns is None:
            return self.mean, self.scale
        return self.mean[columns], self.scale[columns]

    def _box(self, columns):
        """(low, high, boxed) of ``columns``, ``boxed`` True where both bounds are finite."""
        low, high = (self.low, self.high) if columns is None else (self.low[columns],
                                                                   self.high[columns])
        return low, high, torch.isfinite(low) & torch.isfinite(high)

    def boxed(self, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean per column of ``columns`` (all when None): True where both bounds are finite,
        so the column is modelled in the logit of its box."""
        return self._box(columns)[2]

    @property
    def bounded(self) -> bool:
        """Whether any column is modelled in the logit of its box."""
        return bool(self.boxed().any())

    def inside(self, x: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean, like ``x`` (data units): the entries inside their box (NaN: False)."""
        low, high, _ = self._box(columns)
        x = x.to(torch.float64)
        return (x >= low) & (x <= high)

    def _position(self, x: torch.Tensor, columns) -> tuple[torch.Tensor, torch.Tensor]:
        """(position in the box, clipped to [EDGE, 1 - EDGE], boxed) of data units ``x``."""
        low, high, boxed = self._box(columns)
        width = torch.where(boxed, high - low, 1.0)
        u = (x.to(torch.float64) - torch.where(boxed, low, 0.0)) / width
        return u.clamp(EDGE, 1 - EDGE), boxed

    def unbound(self, x: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Data units -> the unbounded units that ``mean`` and ``scale`` standardise (float64):
        ``k (u - 1/2) + logit(u)`` of the position ``u`` in the box for boxed columns
        (``k`` = ``stiffness``), the value itself otherwise."""
        x = x.to(torch.float64)
        if not self.bounded:
            return x
        u, boxed = self._position(x, columns)
        y = self.stiffness * (u - 0.5) + torch.log(u) - torch.log1p(-u)
        return torch.where(boxed, y, x)

    def _logit_of(self, y: torch.Tensor) -> torch.Tensor:
        """The logit ``t`` with ``k (sigmoid(t) - 1/2) + t = y`` (``t = y`` for ``k = 0``):
        bisection (the left side grows with slope at least 1, so ``t`` lies within ``k / 2`` of
        ``y``), then one Newton step that carries the gradient ``dt/dy`` exactly."""
        k = self.stiffness
        if k == 0:
            return y
        with torch.no_grad():
            lo, hi = y - k / 2, y + k / 2
            for _ in range(60):
                mid = (lo + hi) / 2
                above = mid + k * (torch.sigmoid(mid) - 0.5) > y
                lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
            t = ((lo + hi) / 2).detach()
        s = torch.sigmoid(t)
        return t - (t + k * (s - 0.5) - y) / (1 + k * s * (1 - s))

    def bound(self, y: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`unbound`'s inverse (float64): boxed columns land inside their box."""
        y = y.to(torch.float64)
        if not self.bounded:
            return y
        low, high, boxed = self._box(columns)
        u = torch.sigmoid(self._logit_of(torch.where(boxed, y, 0.0)))
        inner = torch.where(boxed, low, 0.0) + torch.where(boxed, high - low, 1.0) * u
        return torch.where(boxed, torch.minimum(torch.maximum(inner, low), high), y)

    def forward(self, x: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Data units -> standard units (the network's dtype); ``columns`` selects the columns
        that the last axis of ``x`` holds (default: all, in order)."""
        mean, scale = self._pick(columns)
        return ((self.unbound(x, columns) - mean) / scale).to(DTYPE)

    def inverse(self, z: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Standard units -> data units (float64)."""
        mean, scale = self._pick(columns)
        return self.bound(z.to(torch.float64) * scale + mean, columns)

    def log_abs_det(self, columns: torch.Tensor | None = None) -> torch.Tensor:
        """``log |dz/dx|`` of the affine part of :meth:`forward` over ``columns``:
        ``-sum(log scale)`` (the whole of it without a box; see :meth:`log_abs_det_at`)."""
        return -torch.log(self._pick(columns)[1]).sum()

    def log_abs_det_at(self, x: torch.Tensor, columns: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """``log |dz/dx|`` of :meth:`forward` per entry of ``x`` (data units, float64): ``-log
        scale``, and for a boxed column also ``log(k + 1 / (u (1 - u))) - log(high - low)`` at
        its position ``u`` in the box."""
        out = -torch.log(self._pick(columns)[1]).expand(x.shape)
        if not self.bounded:
            return out
        low, high, boxed = self._box(columns)
        u, _ = self._position(x, columns)
        slope = torch.log(self.stiffness + 1 / (u * (1 - u)))
        return out + torch.where(boxed, slope - torch.log(torch.where(boxed, high - low, 1.0)),
                                 0.0)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(centre, scale) in data units of a local affine picture of :meth:`inverse` at
        ``z = 0``: the map itself without a box. Constraints written in data units are read in
        these units and warped by :meth:`to_affine` (:mod:`skformer.guidance`)."""
        if not self.bounded:
            return self.mean, self.scale
        boxed = self.boxed()
        s = torch.sigmoid(self._logit_of(torch.where(boxed, self.mean, 0.0)))
        du = 1 / (self.stiffness + 1 / (s * (1 - s)))  # du/dy at the mean
        slope = torch.where(boxed, (self.high - self.low) * du * self.scale, self.scale)
        return self.bound(self.mean), slope

    def to_affine(self, z: torch.Tensor) -> torch.Tensor:
        """Standard units over all columns -> the units of :meth:`affine` (differentiable, in
        ``z``'s dtype): ``z`` itself for unboxed columns."""
        centre, slope = self.affine()
        return ((self.inverse(z) - centre) / slope).to(z.dtype)

    def box(self) -> dict[int, tuple[float, float]]:
        """``{column: (low, high)}`` of the boxed columns."""
        boxed = self.boxed()
        return {int(c): (float(self.low[c]), float(self.high[c]))
                for c in boxed.nonzero().flatten().tolist()}


def fold_into(x: torch.Tensor, fold: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
              ) -> torch.Tensor:
    """``x`` (rows, columns) with each value of ``fold``'s columns that lies outside its
    ``[low, high]`` reflected at the edge it crossed (again at the other edge, should that
    land outside it): the mass a model spilled over an edge put back just inside it. None:
    ``x`` as it is."""
    if fold is None:
        return x
    columns, low, high = fold
    low, high = low.to(x.dtype), high.to(x.dtype)
    v = x[:, columns]
    for _ in range(16):  # a value 16 box widths out is folded in: more than any sample
        below, above = v < low, v > high
        if not bool((below | above).any()):
            break
        v = torch.where(below, 2 * low - v, v)
        v = torch.where(v > high, 2 * high - v, v)
    out = x.clone()
    out[:, columns] = torch.minimum(torch.maximum(v, low), high)  # (16 folds: the edge)
    return out


class SimformerModel(nn.Module):
    """A fitted Simformer: masked Transformer, dynamics, standardiser and column layout.

    Parameters
    ----------
    network : MaskedTransformer
    dynamics : Dynamics
    standardiser : Standardiser
    layout : Layout
    marginal_fraction : float, default=0.0
        Share of training rows that left their observed columns out (see
        :class:`~skformer.training.TrainConfig`); above 0 the network knows the marginals of
        latent columns alone, which iid-trial sampling needs (:meth:`sample_iid`).
    positions : PositionTable, optional
        The variables whose columns carry positions (a network with ``position_dim > 0``).
        Such a model is used through :meth:`at`, which binds one set of tokens.
    """

    def __init__(self, network: MaskedTransformer, dynamics: Dynamics,
                 standardiser: Standardiser, layout: Layout, marginal_fraction: float = 0.0,
                 positions: PositionTable | None = None):
        super().__init__()
        self.network = network
        self.standardiser = standardiser
        self.dynamics = dynamics
        self.layout = layout
        self.marginal_fraction = float(marginal_fraction)
        self.positions = positions
        # which columns the model saw missing in training: it can leave only those out
        self.register_buffer("missing_seen",
                             torch.zeros(layout.n_columns, dtype=torch.bool,
                                         device=standardiser.mean.device))

    @property
    def device(self) -> torch.device:
        return self.standardiser.mean.device

    @property
    def n_columns(self) -> int:
        return self.layout.n_columns

    @property
    def precision(self) -> str:
        """The network's arithmetic, one of ``network.PRECISIONS`` (bf16 only where the device
        has bf16 units; log densities always in float32)."""
        return getattr(self.network, "precision", "float32")

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {value!r}.")
        self.network.precision = value

    # ------------------------------------------------------------------ tokens with positions
    def at(self, given: dict[int, np.ndarray] | None = None) -> SimformerModel:
        """This model over one set of tokens: itself when no variable carries positions, else
        a view (sharing the weights) whose positional variables have the columns ``given``.

        given : ``{variable index: (k, dim) positions in data units}`` for positional
        variables; the others keep their training positions, which needs them to have been
        shared by every training row. In the view, variables lie in order, each one's columns
        next to each other; a positional variable's columns share its standardiser entries,
        and the network may leave any of them out (they were left out at random in training).
        """
        table = self.positions
        given = dict(given or {})
        if table is None:
            if given:
                raise ValueError("this model was fitted without positions.")
            return self
        layout, device = self.layout, self.device
        ids = self.network._ids(device)
        columns, pos, sizes = [], [], []
        for v, g in enumerate(layout.groups):
            g = list(g)
            if v not in table.variables:
                if v in given:
                    raise ValueError(f"variable {layout.names[v]!r} had no positions in "
                                     "training; it cannot take any now.")
                columns += g
                pos.append(torch.full((len(g), table.dim), math.nan, device=device))
                sizes.append(len(g))
                continue
            if v in given:
                p = torch.as_tensor(given[v], dtype=torch.float64, device=device)
            elif v in table.shared:
                p = table.default[g]
            else:
                raise ValueError(
                    f"variable {layout.names[v]!r} was fitted with positions per row, so it "
                    f"has no positions of its own: pass positions={{{layout.names[v]!r}: ...}}."
                )
            columns += [g[0]] * p.shape[0]
            pos.append(table.standard(v, p))
            sizes.append(p.shape[0])
        src = torch.as_tensor(columns, device=device)
        labels = None
        if layout.column_labels is not None:
            labels = []
            for v, k in enumerate(sizes):
                labels += ([layout.column_labels[c] for c in layout.groups[v]]
                           if v not in table.variables
                           else [f"{layout.names[v]}[{i}]" for i in range(k)])
        view_layout = Layout.from_spec(len(columns), sizes, names=list(layout.names),
                                       column_labels=labels)
        network = PositionedNetwork(self.network, torch.cat(pos), ids[src])
        view = SimformerModel(network, self.dynamics,
                              Standardiser(self.standardiser.mean[src],
                                           self.standardiser.scale[src],
                                           self.standardiser.low[src],
                                           self.standardiser.high[src],
                                           self.standardiser.stiffness),
                              view_layout, self.marginal_fraction)
        positional = torch.as_tensor(
            [v in table.variables for v in view_layout.column_variable], device=device)
        view.missing_seen = self.missing_seen[src] | positional
        return view.to(device).requires_grad_(False).eval()

    def _net_size(self, name: str) -> int:
        """The network's ``n_heads`` or ``n_layers`` (1 for a network that states none)."""
        return int(getattr(getattr(self.network, "network", self.network), name, 1))

    def _attention_row_bytes(self) -> int:
        """Bytes of one row's attention in one layer: scores and softmax, float32."""
        T = getattr(self.network, "n_token_slots", self.n_columns)
        return 2 * 4 * self._net_size("n_heads") * T * T

    def attention_bytes(self, rows: int, backward: bool = False) -> int:
        """Memory of the attention of ``rows`` rows in one call: one layer's, or every
        layer's when a backward pass keeps them (training, log densities)."""
        return rows * self._attention_row_bytes() * (
            self._net_size("n_layers") if backward else 1)

    def check_attention(self, copies: int = 1, backward: bool = False,
                        what: str = "this conditional") -> None:
        """Refuse work whose attention for a single row (``copies`` rows with a backward
        pass through every layer: a log density's divergence) exceeds
        :data:`MAX_ATTENTION_BYTES`, naming the tokens and the memory it would take."""
        layers = self._net_size("n_layers") if backward else 1
        need = self.attention_bytes(copies, backward)
        if need > MAX_ATTENTION_BYTES:
            T = getattr(self.network, "n_token_slots", self.n_columns)
            extra = (f" x {copies} copies (one per latent column: divergence='hutchinson' "
                     f"needs n_probes copies) x {layers} layers kept for the backward pass"
                     if backward else "")
            raise ValueError(
                f"{what} has {T} tokens: the attention of a single row would take "
                f"{need / 2**30:.3g} GiB{extra}, beyond the limit of "
                f"{MAX_ATTENTION_BYTES / 2**30:g} GiB (skformer.model.MAX_ATTENTION_BYTES). "
                "Ask for fewer positions (or columns) per conditional."
            )

    def rows_per_chunk(self) -> int:
        """Rows per network call: on a GPU as many as keep attention activations to a few
        hundred MB; on a CPU at most :data:`CPU_CHUNK_ROWS`, whose activations stay in the
        core's caches (``benchmarks/cpu_profile.py``: 10,000 samples of a 4-token model in
        6.4 s instead of 8.7 s with chunks of 16,384 rows; no change at 20 tokens). Never
        more than keeps one call's attention within :data:`MAX_ATTENTION_BYTES` (at least
        one row)."""
        T = getattr(self.network, "n_token_slots", self.n_columns)
        rows = max(64, int(2**22 // (T * max(T, 64))))
        rows = min(rows, max(1, MAX_ATTENTION_BYTES // self._attention_row_bytes()))
        return min(rows, CPU_CHUNK_ROWS) if self.device.type == "cpu" else rows

    # ------------------------------------------------------------------ the denoiser
    def denoiser(self, states: torch.Tensor, edges: torch.Tensor | None) -> Denoiser:
        """``D(x, sigma)`` in standard units for column states of shape (columns,) (every row
        alike) or (rows, columns) (one per row; a batch of k times as many rows is taken as k
        copies of them)."""
        net, dynamics = self.network, self.dynamics

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            s = states
            if s.ndim == 2 and s.shape[0] != x.shape[0]:
                s = s.repeat(x.shape[0] // s.shape[0], 1)
            return dynamics.denoise(net, x, sigma.expand(x.shape[0]), s, edges)

        return denoise

    def _states(self, states: torch.Tensor, rows: int) -> torch.Tensor:
        """Column states as ``uint8`` of shape (rows, columns): a bool condition (True =
        observed) or states, for every row alike or one per row."""
        if states.dtype == torch.bool:
            states = states.to(torch.uint8) * OBSERVED
        return states.to(self.device).expand(rows, self.n_columns)

    def _standard(self, states: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Values of shape (rows, columns) in data units -> standard units; missing entries
        (which have no value) and NaN become 0."""
        z = self.standardiser(values)
        return torch.where((states == OBSERVED) | (states == LATENT), z, 0.0).nan_to_num(0.0)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, states: torch.Tensor, values: torch.Tensor, n: int, *,
               edges: torch.Tensor | None = None, steps: int, solver: str,
               generator: torch.Generator, guide: LinearConstraints | None = None,
               support: LinearConstraints | None = None,
               fold: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
               ) -> torch.Tensor:
        """``n`` joint samples per observation.

        Parameters
        ----------
        states : tensor
            Column states, bool of shape (columns,) (True = observed) or ``uint8`` of shape
            (n_observations, columns) (``LATENT``, ``OBSERVED``, ``MISSING`` of
            :mod:`skformer.network`).
        values : tensor of shape (n_observations, columns)
            Data units: the observed entries are read, the others ignored.
        n : int
            Samples per observation.
        edges : tensor or None
            Attention mask over columns.
        steps : int
        solver : str
        generator : torch.Generator
        guide : LinearConstraints or None
            Constraints in standard units (see :mod:`skformer.guidance`): sampling is guided
            towards them and samples outside are redrawn.
        support : LinearConstraints or None
            A region in standard units that samples must lie in, by rejection alone (no
            guidance): the distribution truncated to it.
        fold : (columns, low, high) or None
            Bounds in standard units (``-inf`` / ``inf`` for an open side) that samples are
            folded into (see :func:`fold`) before ``guide`` and ``support`` are checked.

        Returns
        -------
        tensor of shape (n_observations, n, columns)
            float64, in data units; observed entries as given, missing ones 0 in standard
            units.
        """
        states = self._states(states, values.shape[0])
        z = self._standard(states, values)
        region = intersect(guide, support)
        if region is None:
            x = fold_into(self._sample_standardised(states, z, n, edges, steps, solver,
                                                    generator), fold)
        else:
            def draw(groups, k):  # k samples for each observation listed in groups
                i = torch.as_tensor(groups, device=z.device)
                return fold_into(self._sample_standardised(
                    states[i], z[i], k, edges, steps, solver, generator, guide),
                    fold).view(len(i), k, -1)

            x = sample_each_satisfying(draw, region, n, z.shape[0]).flatten(0, 1)
        return self.standardiser.inverse(x).view(z.shape[0], n, self.n_columns)

    def _sample_standardised(self, states, z, n, edges, steps, solver, gen,
                             guide: LinearConstraints | None = None) -> torch.Tensor:
        """(n_observations * n, columns) samples in standard units."""
        grid = self.dynamics.time_grid(steps, self.device)
        rows_states = states.repeat_interleave(n, dim=0)
        rows_z = z.repeat_interleave(n, dim=0)
        out = []
        chunk = self.rows_per_chunk()
        for start in range(0, rows_z.shape[0], chunk):
            s, r = rows_states[start : start + chunk], rows_z[start : start + chunk]
            latent = s == LATENT
            noise = self.dynamics.prior_sample(r.shape, gen)
            denoise = self.denoiser(s, edges)
            if guide is not None:
                denoise = guide.guide(denoise, ~latent)
            out.append(solve(denoise, torch.where(latent, noise, r), grid, solver, gen,
                             ~latent))
        return torch.cat(out)

    # ------------------------------------------------------------------ iid trials
    @torch.no_grad()
    def sample_iid(self, states: torch.Tensor, values: torch.Tensor, n: int, *,
                   edges: torch.Tensor | None = None, steps: int, solver: str,
                   generator: torch.Generator, method: str = "gauss", prior=None,
                   n_estimate: int = 1024, pooled: bool = True, noise_floor: float = 2.0
                   ) -> torch.Tensor:
        """``n`` samples of the latent columns given ``N`` iid trials of the observed ones.

        The single-trial denoisers (one per trial, from the network) and the prior's are
        composed into the denoiser of the N-trial posterior (:mod:`skformer.dynamics.compose`)
        and the usual solvers integrate it.

        Parameters
        ----------
        states : uint8 tensor of shape (N, columns)
            Each trial's column states: ``LATENT`` for the latent columns (the same in every
            trial), ``OBSERVED`` or ``MISSING`` for the others.
        values : tensor of shape (N, columns)
            Data units; each trial's observed entries are read.
        n : int
        edges, steps, solver, generator
            As in :meth:`sample`.
        method : {"gauss", "fnpe"}
        prior : torch distribution over the latent columns (data units), optional
            A known prior. None: the model's own, the marginal of the latent columns with the
            others left out, which needs a model trained with marginal rows
            (``marginal_fraction > 0``).
        n_estimate : int
            Samples per trial (and 4 times as many of the prior) from which "gauss" estimates
            precisions (1024: on the seed task, 256 gave C2ST 0.561 and 1024 0.534 at N = 5;
            an exact network's 20-trial posterior correlation was off by up to 0.09 with 1024
            prior draws and 0.02 with 4096).
        pooled : bool
            One posterior precision for all trials, from every trial's draws about its own
            mean (less noise than one per trial, which added up over the trials).
        noise_floor : float
            Trial information below this many standard errors of the estimated prior
            precision (relative, per direction) is dropped as noise (see
            :class:`~skformer.dynamics.compose.Composition`).

        Returns
        -------
        tensor of shape (n, columns)
            float64, data units; observed entries are those of the first trial.
        """
        states = self._states(states, values.shape[0])
        if states.shape[0] == 1:  # one trial: the single-trial posterior, no composition
            return self.sample(states, values, n, edges=edges, steps=steps, solver=solver,
                               generator=generator)[0]
        denoise, latent_row, z = self.iid_denoiser(
            states, values, edges=edges, steps=steps, solver=solver, generator=generator,
            method=method, prior=prior, n_estimate=n_estimate, pooled=pooled,
            noise_floor=noise_floor)
        return self.solve_composed(denoise, latent_row, z, n, steps=steps, solver=solver,
                                   generator=generator)

    @torch.no_grad()
    def solve_composed(self, denoise: Denoiser, latent_row: torch.Tensor, z: torch.Tensor,
                       n: int, *, steps: int, solver: str, generator: torch.Generator
                       ) -> torch.Tensor:
        """``n`` samples (data units, (n, columns)) from :meth:`iid_denoiser`'s output."""
        grid = self.dynamics.time_grid(steps, self.device)
        chunk = max(1, self.rows_per_chunk() // (z.shape[0] + 1))
        C = self.n_columns
        out = []
        for start in range(0, n, chunk):
            k = min(chunk, n - start)
            x0 = torch.where(latent_row, self.dynamics.prior_sample((k, C), generator), z[0])
            out.append(solve(denoise, x0, grid, solver, generator, ~latent_row))
        return self.standardiser.inverse(torch.cat(out))

    @torch.no_grad()
    def iid_denoiser(self, states: torch.Tensor, values: torch.Tensor, *,
                     edges: torch.Tensor | None, steps: int, solver: str,
                     generator: torch.Generator, method: str = "gauss", prior=None,
                     n_estimate: int = 1024, pooled: bool = True, noise_floor: float = 2.0
                     ) -> tuple[Denoiser, torch.Tensor, torch.Tensor]:
        """The composed denoiser of N trials (arguments as in :meth:`sample_iid`), over full
        rows in standard units: ``(denoise, latent columns (columns,) bool, the trials in
        standard units (N, columns))``. With "gauss" it first draws ``n_estimate`` samples
        per trial and of the prior to estimate precisions; information below ``noise_floor``
        standard errors of the prior's precision is dropped as noise."""
        from skformer.dynamics.compose import Composition, precision_of, prior_denoiser

        states = self._states(states, values.shape[0])
        N, C = states.shape
        latent_row = states[0] == LATENT
        if not bool((states == LATENT).eq(latent_row).all()):
            raise ValueError("every trial must have the same latent columns.")
        lat = latent_row.nonzero().flatten()
        z = self._standard(states, values)
        prior_states = torch.where(latent_row, LATENT, MISSING).to(torch.uint8)[None]
        known = None
        if prior is not None and bool(self.standardiser.boxed(lat).any()):
            raise ValueError(
                "prior= gives the latent columns' prior in data units, but this model draws "
                f"columns {self.standardiser.boxed(lat).nonzero().flatten().tolist()} of "
                "them in the logit of their box: leave prior=None (the model's own prior), "
                "or refit with support='truncate'.")
        if prior is not None:
            known, p0 = prior_denoiser(prior, self.standardiser.mean[lat],
                                       self.standardiser.scale[lat])
        elif self.marginal_fraction <= 0:
            raise ValueError(
                "this model was trained without marginal rows (marginal_fraction=0, e.g. saved "
                "by skformer before iid trials), so it does not know the prior of its latent "
                "columns: pass prior=, or refit."
            )
        if method == "fnpe":
            composition = Composition(method, N)
        else:
            m = max(8, int(n_estimate))
            draws = self._sample_standardised(states, z, m, edges, steps, solver, generator)
            draws = draws.view(N, m, C)[..., lat]
            if pooled:  # one precision from every trial's draws, each about its own mean
                pooled_draws = (draws - draws.mean(1, keepdim=True)).reshape(N * m, -1)
                trial_precisions = precision_of(pooled_draws).expand(N, -1, -1)
            else:
                trial_precisions = precision_of(draws)
            if known is None:  # 4x the draws: its errors weigh on every trial's information
                prior_draws = self._sample_standardised(prior_states, z[:1] * 0, 4 * m, edges,
                                                        steps, solver, generator)
                p0 = precision_of(prior_draws[:, lat])
            # the prior's precision from 4m draws has relative errors of about sqrt(2 / 4m)
            floor = 0.0 if known is not None else noise_floor * math.sqrt(2 / (4 * m))
            composition = Composition(method, N, trial_precisions, p0, floor)
        denoise = self._iid_denoiser(states, z, prior_states, lat, composition, known, edges)
        return denoise, latent_row, z

    def _iid_denoiser(self, states, z, prior_states, lat, composition, known, edges) -> Denoiser:
        """The composed denoiser over full rows: latent entries composed, the others passed."""
        net, dynamics = self.network, self.dynamics
        N, C = states.shape
        chunk = self.rows_per_chunk()

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            r = x.shape[0]
            blocks = [states.repeat_interleave(r, 0)]
            values = [torch.where(states == LATENT, 0.0, z).repeat_interleave(r, 0)]
            if known is None:
                blocks.append(prior_states.expand(r, C))
                values.append(torch.zeros(r, C, device=x.device, dtype=x.dtype))
            big_states = torch.cat(blocks)  # trial-major: r rows per trial, then the prior's
            big_x = torch.where(big_states == LATENT, x.repeat(N + (known is None), 1),
                                torch.cat(values))
            out = torch.cat([
                dynamics.denoise(net, big_x[i : i + chunk],
                                 sigma.reshape(-1)[:1].expand(big_x[i : i + chunk].shape[0]),
                                 big_states[i : i + chunk], edges)
                for i in range(0, big_x.shape[0], chunk)
            ])
            trials = out[: N * r, lat].view(N, r, -1)
            prior = known(x[:, lat], sigma) if known is not None else out[N * r :, lat]
            d = x.clone()
            d[:, lat] = composition(x[:, lat], trials, prior, sigma)
            return d

        return denoise

    # ------------------------------------------------------------------ densities
    def log_prob(self, states: torch.Tensor, values: torch.Tensor, *,
                 edges: torch.Tensor | None = None, steps: int, solver: str = "dpm",
                 probes: torch.Tensor | None = None) -> torch.Tensor:
        """Log density of each row's latent entries given its observed ones, by the
        probability-flow ODE (missing entries are marginalised: the network leaves them out).

        Parameters
        ----------
        states : tensor
            As in :meth:`sample`, (columns,) or one row of states per row of values.
        values : tensor of shape (n, columns)
            Data units, latent and observed entries filled.
        edges, steps, solver
            As in :meth:`sample` (``solver``: an ODE solver).
        probes : tensor of shape (n_probes, columns) or None
            None for the exact divergence, or Hutchinson probes (see
            :func:`~skformer.dynamics.solvers.with_divergence`).

        Returns
        -------
        tensor of shape (n,)
            float64, in the units of ``values``.
        """
        states = self._states(states, values.shape[0])
        z = self._standard(states, values)
        latent_rows = states == LATENT
        latent = latent_rows.any(0).nonzero().flatten()  # missing entries cancel in the trace
        copies = latent.shape[0] if probes is None else probes.shape[0]
        self.check_attention(copies, backward=True, what="this log density")
        budget = MAX_ATTENTION_BYTES // self.attention_bytes(copies, backward=True)
        chunk = max(1, min(self.rows_per_chunk() // (2 * copies), budget))
        grid = self.dynamics.time_grid(steps, self.device).flip(0)[1:]  # sigma_min ... start
        out = []
        for i in range(0, z.shape[0], chunk):
            s, L = states[i : i + chunk], latent_rows[i : i + chunk]
            denoise_div = with_divergence(self.denoiser(s, edges), latent, probes)
            with torch.no_grad(), float32():
                x_T, integral = log_density(denoise_div, z[i : i + chunk], grid, solver)
            prior = self.dynamics.prior_log_prob(x_T[..., None])  # per entry
            out.append(torch.where(L, prior, 0.0).sum(-1) + integral)
        log_det = torch.where(latent_rows, self.standardiser.log_abs_det_at(values), 0.0).sum(-1)
        return torch.cat(out).double() + log_det

    # ------------------------------------------------------------------ mode
    def climb(self, states: torch.Tensor, values: torch.Tensor, start: torch.Tensor, *,
              edges: torch.Tensor | None = None, n_iter: int = 200,
              learning_rate: float = 0.01, denoise: Denoiser | None = None) -> torch.Tensor:
        """Adam ascent of latent ``start`` values along the learned score.

        The score ``(D(x, sigma) - x) / sigma^2`` is taken while sigma anneals from 0.5 to
        0.02 standard units (smoothing that steadies the score without moving the mode of a
        Gaussian). states : one row of column states, as in :meth:`sample`; values : (1,
        columns) data units, the observed entries read; start : (n, n_latent) data units for
        the latent columns; denoise : another denoiser over full rows (default: this
        model's for ``states``), e.g. :meth:`iid_denoiser`'s. Returns the climbed values,
        float64, data units.
        """
        states = self._states(states, 1)
        latent = (states[0] == LATENT).nonzero().flatten()
        z = self.standardiser(start, latent).requires_grad_(True)
        states = states.expand(z.shape[0], -1)
        x = self._standard(states, values.expand(z.shape[0], -1)).clone()
        denoise = self.denoiser(states, edges) if denoise is None else denoise
        opt = torch.optim.Adam([z], lr=learning_rate)
        for sigma in np.geomspace(0.5, 0.02, n_iter):
            with torch.no_grad():
                x[:, latent] = z
                d = denoise(x, torch.tensor(float(sigma), device=self.device))
                score = (d[:, latent] - z) / sigma**2
            opt.zero_grad()
            z.grad = -(score + self._jacobian_score(z, latent))
            opt.step()
        return self.standardiser.inverse(z.detach(), latent)

    def _jacobian_score(self, z: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """The gradient in standard units of ``log |dz/dx|`` at ``z``: what turns the mode
        of the standardised density into the mode in data units (0 without a box)."""
        st = self.standardiser
        if not bool(st.boxed(latent).any()):
            return torch.zeros_like(z)
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            log_det = st.log_abs_det_at(st.inverse(zz, latent), latent).sum()
            (g,) = torch.autograd.grad(log_det, zz)
        return g.to(z.dtype)

    # ------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        """What rebuilds this model besides its ``state_dict``: JSON values only."""
        out = {
            "layout": self.layout.to_dict(),
            "dynamics": {"method": self.dynamics.name, "config": self.dynamics.config()},
            "network": self.network.config(),
            "training": {"marginal_fraction": self.marginal_fraction},
        }
        if self.precision != "float32":  # files of float32 models read as before
            out["training"]["precision"] = self.precision
        if self.positions is not None:
            out["positions"] = self.positions.describe()
        if self.standardiser.bounded:  # files without a box read as before
            out["support"] = {"box": [[c, low, high] for c, (low, high)
                                      in self.standardiser.box().items()],
                              "stiffness": self.standardiser.stiffness}
        return out

    @classmethod
    def from_description(cls, description: Any, state_dict: dict[str, torch.Tensor],
                         device: torch.device) -> SimformerModel:
        """Rebuild a model from :meth:`describe` and a ``state_dict``; raise ValueError for
        anything inconsistent.

        The architecture is checked against the tensors on the ``meta`` device first, so a
        description asking for a network larger than the weights it comes with allocates
        nothing; the tensors given then become the weights (no initialisation, so the global
        torch RNG is left untouched). The model is in eval mode, without gradients, on
        ``device``.
        """
        if not isinstance(description, dict):
            raise ValueError(f"a model description must be a mapping; got {description!r}.")
        layout = Layout.from_dict(description.get("layout"))
        spec = description.get("dynamics")
        if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
            raise ValueError(f"dynamics must be a mapping with 'method' and 'config'; got "
                             f"{spec!r}.")
        dynamics = make_dynamics(spec.get("method"), spec["config"])
        arch = description.get("network")
        keys = ("n_tokens", "d_model", "n_layers", "n_heads")
        optional = {"groups", "identities", "position_dim", "group_embedding", "edge_heads"}
        if not isinstance(arch, dict) or not set(keys) <= set(arch) <= {*keys, *optional} \
                or not all(type(arch[k]) is int and arch[k] >= 1 for k in keys):
            raise ValueError(f"the network description needs positive integers {keys} (and "
                             f"optionally {sorted(optional)}); got {arch!r}.")
        ids = arch.get("identities")
        if ids is not None and not (isinstance(ids, list) and len(ids) == arch["n_tokens"]
                                    and all(type(i) is int and 0 <= i < arch["n_tokens"]
                                            for i in ids)):
            raise ValueError(f"network identities must be one index per column; got {ids!r}.")
        pdim = arch.get("position_dim", 0)
        table = None
        if "positions" in description:
            table = PositionTable.skeleton(description["positions"], layout.n_columns)
            if any(v >= layout.n_variables for v in table.variables):
                raise ValueError(f"positions name variables {table.variables} of a layout "
                                 f"with {layout.n_variables}.")
        if (table.dim if table is not None else 0) != pdim:
            raise ValueError(f"the network embeds positions of dimension {pdim!r} but the "
                             f"model describes {table.describe() if table else 'none'}.")
        if arch.get("group_embedding", "linear") not in GROUP_EMBEDDINGS or (
                "group_embedding" in arch and "groups" not in arch):
            raise ValueError(f"network group_embedding must be one of {GROUP_EMBEDDINGS}, with "
                             f"groups; got {arch.get('group_embedding')!r}.")
        groups = arch.get("groups")
        if groups is not None and not (isinstance(groups, list) and all(
                isinstance(g, list) and all(type(c) is int for c in g) for g in groups)):
            raise ValueError(f"network groups must be lists of column indexes; got {groups!r}.")
        too_big = {k: arch[k] for k, v in MAX_ARCHITECTURE.items() if arch[k] > v}
        if too_big:
            raise ValueError(f"the network asks for {too_big}, beyond the limits "
                             f"{MAX_ARCHITECTURE}.")
        if arch["n_tokens"] != layout.n_columns:
            raise ValueError(f"the network has {arch['n_tokens']} tokens but the layout "
                             f"{layout.n_columns} columns.")
        if arch["d_model"] % arch["n_heads"]:
            raise ValueError(f"d_model ({arch['d_model']}) must be divisible by n_heads "
                             f"({arch['n_heads']}).")
        T = layout.n_columns
        with torch.device("meta"):
            skeleton = cls(MaskedTransformer(**arch), dynamics,
                           Standardiser(torch.zeros(T), torch.ones(T)), layout,
                           positions=table)
        expected = {k: (tuple(v.shape), v.dtype) for k, v in skeleton.state_dict().items()}
        got = {k: (tuple(v.shape), v.dtype) for k, v in state_dict.items()}
        if expected != got:
            missing = sorted(set(expected) - set(got))
            unexpected = sorted(set(got) - set(expected))
            wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
            raise ValueError(
                f"the weights do not fit a model with network {arch}: missing {missing}, "
                f"unexpected {unexpected}, wrong shape or dtype "
                f"{[(k, expected[k], got[k]) for k in wrong]}."
            )
        # shared training positions are NaN for the columns without one (never infinite)
        bad = [k for k, v in state_dict.items() if v.is_floating_point()
               and not bool((torch.isfinite(v) | (torch.isnan(v) if k == "positions.default"
                                                  else False)).all())]
        if bad:
            raise ValueError(f"the weights hold non-finite values in {bad}.")
        scale = state_dict["standardiser.scale"]
        if not bool((scale > 0).all()) or not bool((scale < math.inf).all()):
            raise ValueError(f"standardiser scales must be positive and finite; got "
                             f"{scale.tolist()}.")
        training = description.get("training", {})  # absent in files before iid trials
        fraction = training.get("marginal_fraction", 0.0) if isinstance(training, dict) else None
        if type(fraction) not in (int, float) or not 0 <= fraction < 1:
            raise ValueError(f"training must be a mapping with a marginal_fraction in [0, 1); "
                             f"got {training!r}.")
        skeleton.marginal_fraction = float(fraction)
        precision = training.get("precision", "float32")
        if precision not in PRECISIONS:
            raise ValueError(f"training precision must be one of {PRECISIONS}; got "
                             f"{precision!r}.")
        low, high, stiffness = _read_support(description.get("support"), T)
        # the checked tensors become the weights: no second initialisation, no RNG use
        skeleton.load_state_dict(state_dict, assign=True)
        skeleton.standardiser.low, skeleton.standardiser.high = low, high
        skeleton.standardiser.stiffness = stiffness
        skeleton.precision = precision
        return skeleton.to(device).requires_grad_(False).eval()


def _read_support(support: Any, n_columns: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A description's ``support``, ``{"box": [[column, low, high], ...], "stiffness": k}``
    (None: no box) -> (low, high) per column (infinite where there is no box) and ``k``;
    ValueError for anything else."""
    low = torch.full((n_columns,), -math.inf, dtype=torch.float64)
    high = torch.full((n_columns,), math.inf, dtype=torch.float64)
    if support is None:
        return low, high, 0.0
    stiffness = support.get("stiffness") if isinstance(support, dict) else None
    if not (isinstance(support, dict) and set(support) == {"box", "stiffness"}
            and isinstance(support["box"], list) and type(stiffness) in (int, float)
            and math.isfinite(stiffness) and stiffness >= 0):
        raise ValueError(f"support must be {{'box': [[column, low, high], ...], 'stiffness': "
                         f"k >= 0}}; got {support!r}.")
    for entry in support["box"]:
        ok = (isinstance(entry, list) and len(entry) == 3 and type(entry[0]) is int
              and 0 <= entry[0] < n_columns
              and all(type(v) in (int, float) and math.isfinite(v) for v in entry[1:])
              and entry[1] < entry[2] and math.isinf(low[entry[0]]))
        if not ok:
            raise ValueError(f"support entries must be [column, low, high] with low < high, "
                             f"finite, one per column; got {entry!r}.")
        low[entry[0]], high[entry[0]] = float(entry[1]), float(entry[2])
    return low, high, float(stiffness)
