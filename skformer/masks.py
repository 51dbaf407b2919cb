"""Training-time condition and edge masks.

During training every sample gets its own condition mask (True = observed), so that one network
learns every conditional of the joint. A sampler here is a callable ``(generator, n) -> masks``
returning a bool tensor of shape (n, n_variables) or (n, n_columns) on the CPU; the estimator
builds one from its ``condition_masks`` / ``edge_masks`` parameters with
:func:`condition_sampler` and :func:`edge_sampler`, and :class:`~skformer.layout.Layout`
expands the result to columns.

Named condition-mask generators:

``"bernoulli"``
    Each variable observed with probability 0.5; a draw with everything observed gets one
    variable, chosen uniformly, flipped to latent (the seed tutorial's default).
``"structured"``
    The Simformer paper's per-sample mixture, in equal parts: the joint (nothing observed), the
    posterior and the likelihood (from ``posterior_latent`` / ``posterior_observed``), and
    Bernoulli(0.3) and Bernoulli(0.7) masks, each with the same all-observed fix.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from skformer.layout import Layout, _as_bool_array

__all__ = ["condition_sampler", "edge_sampler", "CONDITION_MASK_NAMES"]

CONDITION_MASK_NAMES = ("bernoulli", "structured")

Sampler = Callable[[torch.Generator, int], torch.Tensor]


def _fix_all_observed(masks: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip one uniformly chosen entry to latent in rows where every entry is observed."""
    full = masks.all(dim=1)
    if full.any():
        pick = torch.randint(masks.shape[1], (masks.shape[0],), generator=gen)
        flip = torch.nn.functional.one_hot(pick, masks.shape[1]).bool() & full[:, None]
        masks = masks & ~flip
    return masks


def _bernoulli(p: float, n_vars: int) -> Sampler:
    def sample(gen: torch.Generator, n: int) -> torch.Tensor:
        return _fix_all_observed(torch.rand(n, n_vars, generator=gen) < p, gen)

    return sample


def _structured(n_vars: int, latent: list[int], observed: list[int]) -> Sampler:
    posterior = torch.zeros(n_vars, dtype=torch.bool)
    posterior[observed] = True
    likelihood = torch.zeros(n_vars, dtype=torch.bool)
    likelihood[latent] = True
    fixed = torch.stack([torch.zeros(n_vars, dtype=torch.bool), posterior, likelihood])

    def sample(gen: torch.Generator, n: int) -> torch.Tensor:
        kind = torch.randint(5, (n,), generator=gen)
        u = torch.rand(n, n_vars, generator=gen)
        p = torch.where(kind == 3, 0.3, 0.7)[:, None]
        random = u < p
        masks = torch.where((kind < 3)[:, None], fixed[kind.clamp(max=2)], random)
        return _fix_all_observed(masks, gen)

    return sample


def _from_collection(stack: torch.Tensor) -> Sampler:
    def sample(gen: torch.Generator, n: int) -> torch.Tensor:
        return stack[torch.randint(stack.shape[0], (n,), generator=gen)]

    return sample


def _checked_callable(fn, layout: Layout, what: str) -> Sampler:
    def sample(gen: torch.Generator, n: int) -> torch.Tensor:
        out = torch.as_tensor(_as_bool_array(fn(gen, n), what))
        if out.ndim == 1:
            out = out.expand(n, -1)
        if out.ndim != 2 or out.shape[0] != n or out.shape[1] not in (
            layout.n_variables,
            layout.n_columns,
        ):
            raise ValueError(
                f"{what} callable must return a bool array of shape (n, {layout.n_variables}) "
                f"for n={n}; got shape {tuple(out.shape)}."
            )
        return out

    return sample


def condition_sampler(
    spec, layout: Layout, posterior_latent: list[int], posterior_observed: list[int]
) -> Sampler:
    """Build the training-time condition-mask sampler from the ``condition_masks`` parameter.

    ``spec`` is a name from :data:`CONDITION_MASK_NAMES`, a callable ``(generator, n)`` returning
    bool masks of shape (n, n_variables), a collection of masks (one drawn per sample), or one
    mask. Fixed masks are validated here, once: each needs at least one latent entry.
    """
    V = layout.n_variables
    if isinstance(spec, str):
        if spec == "bernoulli":
            return _bernoulli(0.5, V)
        if spec == "structured":
            return _structured(V, posterior_latent, posterior_observed)
        raise ValueError(
            f"condition_masks must be one of {CONDITION_MASK_NAMES}, a callable, a collection of "
            f"masks or one mask; got the string {spec!r}."
        )
    if callable(spec):
        return _checked_callable(spec, layout, "condition_masks")
    stack = _stack_masks(spec, "condition_masks")
    if stack.ndim == 1:
        stack = stack[None]
    if stack.ndim != 2:
        raise ValueError(
            f"condition_masks as masks must have shape ({V},) or (n_masks, {V}); "
            f"got shape {stack.shape}."
        )
    for m in stack:
        layout.condition_columns(m)  # validates length, values, something latent
    # kept at the level given (variables or columns): Layout.condition_batch expands both
    return _from_collection(torch.as_tensor(stack))


def edge_sampler(spec, layout: Layout) -> Callable[[torch.Generator, torch.Tensor], torch.Tensor]:
    """Build the training-time edge-mask sampler from the ``edge_masks`` parameter.

    Returns None for full attention, else a callable ``(generator, condition_masks)`` giving
    (n, n_columns, n_columns) bool masks. ``spec`` is None, one (V, V) or (T, T) matrix, a
    collection of them (one drawn per sample), or a callable of the condition masks.
    """
    if spec is None:
        return None
    if callable(spec):

        def from_callable(gen: torch.Generator, cond: torch.Tensor) -> torch.Tensor:
            out = torch.as_tensor(_as_bool_array(spec(cond), "edge_masks"))
            if out.ndim == 2:
                out = out.expand(cond.shape[0], -1, -1)
            if out.ndim != 3 or out.shape[0] != cond.shape[0]:
                raise ValueError(
                    "edge_masks callable must return a bool array of shape (n, V, V) or (V, V); "
                    f"got shape {tuple(out.shape)}."
                )
            return layout.edge_batch(out)

        return from_callable
    stack = _stack_masks(spec, "edge_masks")
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(
            "edge_masks must be None, a (V, V) matrix, a collection of them or a callable; "
            f"got an array of shape {stack.shape}."
        )
    cols = torch.as_tensor(np.stack([layout.edge_columns(m) for m in stack]))
    if cols.shape[0] == 1:
        return lambda gen, cond: cols.expand(cond.shape[0], -1, -1)
    pick = _from_collection(cols)
    return lambda gen, cond: pick(gen, cond.shape[0])


def _stack_masks(spec, what: str) -> np.ndarray:
    if isinstance(spec, (set, frozenset)):
        spec = list(spec)
    if isinstance(spec, (list, tuple)) and spec and not np.isscalar(spec[0]):
        spec = [_as_bool_array(m, what) for m in spec]
        shapes = {m.shape for m in spec}
        if len(shapes) != 1:
            raise ValueError(f"{what}: all masks in the collection need one shape; got {shapes}.")
        return np.stack(spec)
    return _as_bool_array(spec, what)
