"""Sampling under interval and linear-inequality constraints (Gloeckler et al. 2024, sec. 3.4).

Knowledge such as ``low <= w @ x <= high`` enters in two steps: the denoiser is *guided*
towards the region (the gradient of a soft indicator of it, taken through the denoiser, is
added to the score), and samples still outside are *rejected* and redrawn, so every returned
sample satisfies the constraints. This module works in the standardised units of the network
and knows nothing of the estimator: it wraps a ``denoise(x, sigma)`` callable and a
``draw(n)`` sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LinearConstraints", "intersect", "parse_constraints", "sample_each_satisfying",
           "sample_satisfying"]


@dataclass(frozen=True)
class LinearConstraints:
    """``low <= warp(x) @ A.T <= high`` row-wise, over all columns of standardised ``x``.

    ``warp`` (None: the identity) maps standardised values to the units the constraints are
    linear in, when the standardisation is not affine (columns modelled in the logit of their
    box); it must be differentiable and keep ``x``'s dtype.
    """

    A: torch.Tensor  # (n_constraints, n_columns)
    low: torch.Tensor  # (n_constraints,)
    high: torch.Tensor  # (n_constraints,)
    warp: Callable | None = None

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        return (x if self.warp is None else self.warp(x)) @ self.A.T.to(x.dtype)

    def satisfied(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean (n,) of the rows of ``x`` inside every constraint."""
        y = self._linear(x)
        return ((y >= self.low.to(x.dtype)) & (y <= self.high.to(x.dtype))).all(dim=1)

    def guide(self, denoise: Callable, observed: torch.Tensor) -> Callable:
        """``denoise`` plus sigma^2 times the gradient of a soft indicator of the region.

        The soft edges are about as wide as the denoiser's uncertainty at the noise level: a
        gentle push that keeps the shape inside the region; rejection then makes it exact.
        Observed columns are left as they are.
        """

        def guided(x, sigma):
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                d = denoise(xg, sigma)
                y = self._linear(d)
                width = self.A.norm(dim=1) * (sigma + 0.01)
                inside = F.logsigmoid((y - self.low) / width) + F.logsigmoid(
                    (self.high - y) / width)
                (g,) = torch.autograd.grad(inside.sum(), xg)
            return torch.where(observed, x, d.detach() + sigma**2 * g)

        return guided


def intersect(*regions: LinearConstraints | None) -> LinearConstraints | None:
    """The region inside every one of ``regions`` (None ones left out; None if all are)."""
    given = [r for r in regions if r is not None]
    if len(given) <= 1:
        return given[0] if given else None
    if any(r.warp != given[0].warp for r in given):
        raise ValueError("regions with different warps cannot be intersected.")
    return LinearConstraints(torch.cat([r.A for r in given]), torch.cat([r.low for r in given]),
                             torch.cat([r.high for r in given]), given[0].warp)


def parse_constraints(constraints, column_names, observed_columns, mean: torch.Tensor,
                      scale: torch.Tensor, warp: Callable | None = None) -> LinearConstraints:
    """``{column: (low, high)}`` and / or ``[(weights, low, high), ...]`` in data units ->
    :class:`LinearConstraints` in standardised units (``x_data = x * scale + mean``, after
    ``warp`` where one is given; see :class:`LinearConstraints`).

    Columns are indexes of the joint vector or names from ``column_names``; constraints may
    involve latent columns only (those not in ``observed_columns``). ``mean`` and ``scale``
    (tensors of shape (n_columns,)) give the device of the result.
    """
    T = len(column_names)
    if isinstance(constraints, dict):
        items = list(constraints.items())
    elif isinstance(constraints, (list, tuple)):
        items = [(None, c) for c in constraints]
    else:
        raise ValueError(
            "constraints must be a dict {column: (low, high)} or a list of "
            f"(weights, low, high); got {type(constraints).__name__}."
        )
    if not items:
        raise ValueError("constraints is empty: give at least one interval or inequality.")
    rows, lows, highs = [], [], []
    for key, spec in items:
        if key is not None:
            weights = np.zeros(T)
            weights[_column_index(key, column_names)] = 1.0
            try:
                low, high = spec
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"constraint for column {key} must be (low, high); got {spec!r}."
                ) from err
        else:
            try:
                weights, low, high = spec
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"a linear constraint must be (weights, low, high); got {spec!r}."
                ) from err
            weights = np.asarray(weights, dtype=np.float64).reshape(-1)
            if weights.shape != (T,) or not np.isfinite(weights).all() or not weights.any():
                raise ValueError(
                    f"constraint weights must be {T} finite numbers, not all zero; got "
                    f"{weights!r}."
                )
        low, high = float(low), float(high)
        if np.isnan(low) or np.isnan(high) or not low < high:
            raise ValueError(f"a constraint needs low < high; got low={low}, high={high}.")
        if np.any(weights[observed_columns] != 0):
            raise ValueError(
                "constraints may only involve latent columns; observed columns "
                f"{[column_names[i] for i in observed_columns if weights[i] != 0]} are fixed."
            )
        rows.append(weights)
        lows.append(low)
        highs.append(high)
    mean, scale = mean.double(), scale.double()
    A = torch.as_tensor(np.stack(rows), dtype=torch.float64, device=mean.device)
    offset = A @ mean
    low = torch.tensor(lows, dtype=torch.float64, device=mean.device) - offset
    high = torch.tensor(highs, dtype=torch.float64, device=mean.device) - offset
    return LinearConstraints((A * scale).float(), low.float(), high.float(), warp)


def _column_index(key, column_names) -> int:
    if isinstance(key, str):
        if key not in column_names:
            raise ValueError(f"constraints names an unknown column {key!r}.")
        return column_names.index(key)
    T = len(column_names)
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 <= key < T:
        raise ValueError(f"constraint column {key!r} is not one of the {T} columns.")
    return int(key)


def sample_satisfying(draw: Callable[[int], torch.Tensor], constraints: LinearConstraints,
                      n: int, max_rounds: int = 20) -> torch.Tensor:
    """``n`` rows of ``draw(k)`` (k samples) inside the constraints, redrawing the rest.

    Each round draws enough for the acceptance rate seen so far (20 % spare, at most 20 n).
    """
    return sample_each_satisfying(lambda groups, k: draw(k)[None], constraints, n, 1,
                                  max_rounds)[0]


def sample_each_satisfying(draw: Callable[[np.ndarray, int], torch.Tensor],
                           constraints: LinearConstraints, n: int, n_groups: int,
                           max_rounds: int = 20) -> torch.Tensor:
    """``n`` rows inside the constraints for each of ``n_groups`` groups (observations), in
    one batch per round: ``draw(groups, k)`` returns k rows for each group listed, shape
    (len(groups), k, columns), and only groups still short of ``n`` are drawn again.

    Each round draws enough for the lowest acceptance rate seen so far among the groups drawn
    (20 % spare, at most 20 n). Returns shape (n_groups, n, columns). Raises a ValueError as
    soon as a group has accepted nothing after 20 n draws (the region holds next to no mass:
    more rounds would only spend time), or is short after ``max_rounds``.
    """
    kept: list[list[torch.Tensor]] = [[] for _ in range(n_groups)]
    have = np.zeros(n_groups, dtype=np.int64)
    drawn = np.zeros(n_groups, dtype=np.int64)
    for _ in range(max_rounds):
        need = np.flatnonzero(have < n)
        if not need.size:
            break
        rate = np.where(drawn[need] > 0, np.maximum(have[need] / np.maximum(drawn[need], 1),
                                                    0.01), 1.0)
        want = int(min(np.ceil(1.2 * (n - have[need]) / rate).max() + 8, 20 * n))
        x = draw(need, want)
        ok = constraints.satisfied(x.reshape(-1, x.shape[-1])).view(len(need), want)
        for j, g in enumerate(need):
            kept[g].append(x[j][ok[j]])
            have[g] += int(ok[j].sum())
            drawn[g] += want
        empty = np.flatnonzero((have == 0) & (drawn >= 20 * n))
        if empty.size:
            raise ValueError(
                f"none of {int(drawn[empty[0]])} samples satisfied the constraints or bounds: "
                "the region holds no mass of this conditional that sampling can find"
                + ("." if n_groups == 1 else f" (observation {int(empty[0])}).")
                + " Check the bounds or constraints against the training data's range.")
    if (have < n).any():
        worst = int(have.min())
        raise ValueError(
            f"only {worst} of {n} samples satisfied the constraints or bounds after "
            f"{max_rounds} rounds of sampling: the region holds almost no mass of this "
            "conditional" + ("." if n_groups == 1 else
                             f" for observation {int(np.argmin(have))}."))
    return torch.stack([torch.cat(k)[:n] for k in kept])
