"""Training-time condition and edge masks.

During training every row gets its own condition mask (True = observed), so that one network
learns every conditional of the joint, and optionally its own attention (edge) mask.
:class:`TrainingMasks` turns the estimator's ``condition_masks`` / ``edge_masks`` parameters
into draws on the training device; :class:`~skformer.layout.Layout` expands them to columns.

Named condition-mask generators:

``"bernoulli"``
    Each variable observed with probability 0.5; a draw with everything observed gets one
    variable, chosen uniformly, flipped to latent (the seed tutorial's default).
``"uniform"``
    Each row observes each variable with its own probability p ~ U(0, 1) (every number of
    observed variables equally likely), with the same all-observed fix.
``"structured"``
    The Simformer paper's per-row mixture, in equal parts: the joint (nothing observed), the
    posterior and the likelihood (from ``posterior_latent`` / ``posterior_observed``), and
    Bernoulli(0.3) and Bernoulli(0.7) masks, each with the same all-observed fix. Without a
    declared posterior split it serves every conditional alike: the joint in one part in five,
    Bernoulli(0.3) and Bernoulli(0.7) masks in two each.

Tokens of several columns (``tokens`` other than "column"): with a named generator, one row in
:data:`WITHIN_FRACTION` draws its mask per column instead (each row observes each column with
its own probability p ~ U(0, 1), the "uniform" draw over columns), so that the network learns
the conditionals that observe part of a token, and of a variable.

A user's callable ``condition_masks(rng, n)`` receives a ``numpy.random.Generator`` and returns
a numpy-compatible bool array of shape (n, n_variables); a callable ``edge_masks(masks)``
receives those condition masks as a numpy bool array and returns (n, V, V) or (V, V) bools.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from skformer._utils import make_generator
from skformer.graph import DAG
from skformer.layout import Layout, as_bool_array

__all__ = ["CONDITION_MASK_NAMES", "TrainingMasks", "condition_sampler", "edge_sampler"]

CONDITION_MASK_NAMES = ("bernoulli", "uniform", "structured")

WITHIN_FRACTION = 0.2
"""The share of training rows whose condition mask is drawn per column when tokens carry
several columns (one part in five, as each part of the "structured" mixture)."""

ConditionSampler = Callable[[int], torch.Tensor]
"""``n -> (n, n_variables)`` or ``(n, n_columns)`` bool tensor on the training device."""
EdgeSampler = Callable[[torch.Tensor], torch.Tensor]
"""condition masks as drawn ``(n, ...)`` -> ``(n, n_columns, n_columns)`` bool tensor."""


def fix_all_observed(masks: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip one uniformly chosen entry to latent in rows where every entry is observed."""
    pick = torch.randint(masks.shape[1], (masks.shape[0],), generator=gen, device=masks.device)
    flip = torch.nn.functional.one_hot(pick, masks.shape[1]).bool()
    return masks & ~(flip & masks.all(dim=1, keepdim=True))


def _bernoulli(p: float, n_vars: int, gen: torch.Generator) -> ConditionSampler:
    def sample(n: int) -> torch.Tensor:
        u = torch.rand(n, n_vars, generator=gen, device=gen.device)
        return fix_all_observed(u < p, gen)

    return sample


def _uniform(n_vars: int, gen: torch.Generator) -> ConditionSampler:
    def sample(n: int) -> torch.Tensor:
        p = torch.rand(n, 1, generator=gen, device=gen.device)
        u = torch.rand(n, n_vars, generator=gen, device=gen.device)
        return fix_all_observed(u < p, gen)

    return sample


def _structured(n_vars: int, split: tuple[list[int], list[int]] | None,
                gen: torch.Generator) -> ConditionSampler:
    fixed = torch.zeros(3, n_vars, dtype=torch.bool, device=gen.device)  # joint
    if split is not None:
        latent, observed = split
        fixed[1, observed] = True  # posterior: x observed
        fixed[2, latent] = True  # likelihood: theta observed
    # without a split, parts 1 and 2 are Bernoulli(0.3) and Bernoulli(0.7) masks instead
    n_fixed = 3 if split is not None else 1

    def sample(n: int) -> torch.Tensor:
        kind = torch.randint(5, (n,), generator=gen, device=gen.device)
        u = torch.rand(n, n_vars, generator=gen, device=gen.device)
        p = torch.where(kind % 2 == 1, 0.3, 0.7)[:, None]
        masks = torch.where((kind < n_fixed)[:, None], fixed[kind.clamp(max=n_fixed - 1)],
                            u < p)
        return fix_all_observed(masks, gen)

    return sample


def _from_stack(stack: torch.Tensor, gen: torch.Generator) -> ConditionSampler:
    def sample(n: int) -> torch.Tensor:
        return stack[torch.randint(stack.shape[0], (n,), generator=gen, device=gen.device)]

    return sample


def _from_user_callable(fn, layout: Layout, rng: np.random.Generator,
                        device) -> ConditionSampler:
    def sample(n: int) -> torch.Tensor:
        out = as_bool_array(fn(rng, n), "condition_masks")
        if out.ndim == 1:
            out = np.broadcast_to(out, (n, out.shape[0]))
        if out.ndim != 2 or out.shape[0] != n or out.shape[1] not in (
            layout.n_variables,
            layout.n_columns,
        ):
            raise ValueError(
                f"condition_masks callable must return a bool array of shape (n, "
                f"{layout.n_variables}) for n={n}; got shape {out.shape}."
            )
        return torch.as_tensor(np.ascontiguousarray(out), device=device)

    return sample


def _generator(seed: int, device, kept: list | None) -> torch.Generator:
    """A seeded torch generator, also appended to ``kept`` (so that its owner can save and
    restore the stream)."""
    gen = make_generator(seed, device)
    if kept is not None:
        kept.append(gen)
    return gen


def condition_sampler(spec, layout: Layout, split: tuple[list[int], list[int]] | None,
                      seed: int, device: torch.device | str = "cpu",
                      generators: list | None = None) -> ConditionSampler:
    """The training-time condition-mask sampler for the ``condition_masks`` parameter.

    ``split`` is the (latent, observed) variables of the posterior, or None when none is
    declared (the "structured" masks then serve every conditional alike).

    ``spec`` is a name from :data:`CONDITION_MASK_NAMES`, a callable ``(rng, n)`` returning
    bool masks of shape (n, n_variables), a collection of masks (one drawn per row), or one
    mask. Fixed masks are validated here, once: each needs at least one latent entry. The
    sampler draws from its own generator, seeded with ``seed``, on ``device``, which is
    appended to ``generators`` when given.
    """
    V = layout.n_variables
    if isinstance(spec, str):
        gen = _generator(seed, device, generators)
        if spec == "bernoulli":
            return _bernoulli(0.5, V, gen)
        if spec == "uniform":
            return _uniform(V, gen)
        if spec == "structured":
            return _structured(V, split, gen)
        raise ValueError(
            f"condition_masks must be one of {CONDITION_MASK_NAMES}, a callable, a collection of "
            f"masks or one mask; got the string {spec!r}."
        )
    if callable(spec):
        rng = np.random.default_rng(seed)
        if generators is not None:
            generators.append(rng)
        return _from_user_callable(spec, layout, rng, device)
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
    # kept at the level given (variables or columns): Layout.expand_condition expands both
    return _from_stack(torch.as_tensor(stack, device=device),
                       _generator(seed, device, generators))


def edge_sampler(spec, layout: Layout, seed: int, device: torch.device | str = "cpu",
                 generators: list | None = None) -> EdgeSampler | None:
    """The training-time edge-mask sampler for the ``edge_masks`` parameter.

    Returns None for full attention, else a callable of the condition masks as drawn, giving
    (n, n_columns, n_columns) bool masks on ``device``. ``spec`` is None, one (V, V) or (T, T)
    matrix, a collection of them (one drawn per row), a callable of the condition masks, or a
    :class:`~skformer.graph.DAG` (each row's mask follows its condition mask).
    """
    if spec is None:
        return None
    if isinstance(spec, DAG):
        parents = spec.parent_matrix(layout.n_variables, layout.names)

        def from_dag(cond: torch.Tensor) -> torch.Tensor:
            return layout.expand_edges(spec.masks(parents, layout.variable_condition(cond)))

        return from_dag
    if callable(spec):

        def from_callable(cond: torch.Tensor) -> torch.Tensor:
            out = as_bool_array(spec(cond.cpu().numpy()), "edge_masks")
            if out.ndim == 2:
                out = np.broadcast_to(out, (cond.shape[0], *out.shape))
            if out.ndim != 3 or out.shape[0] != cond.shape[0]:
                raise ValueError(
                    "edge_masks callable must return a bool array of shape (n, V, V) or (V, V); "
                    f"got shape {out.shape}."
                )
            return layout.expand_edges(torch.as_tensor(np.ascontiguousarray(out), device=device))

        return from_callable
    stack = _stack_masks(spec, "edge_masks")
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(
            "edge_masks must be None, a (V, V) matrix, a collection of them or a callable; "
            f"got an array of shape {stack.shape}."
        )
    cols = torch.as_tensor(np.stack([layout.edge_columns(m) for m in stack]), device=device)
    if cols.shape[0] == 1:
        return lambda cond: cols.expand(cond.shape[0], -1, -1)
    pick = _from_stack(cols, _generator(seed, device, generators))
    return lambda cond: pick(cond.shape[0])


def _stack_masks(spec, what: str) -> np.ndarray:
    if isinstance(spec, (set, frozenset)):
        spec = sorted(spec, key=lambda m: tuple(np.asarray(m).ravel().tolist()))
    if isinstance(spec, (list, tuple)) and spec and not np.isscalar(spec[0]):
        spec = [as_bool_array(m, what) for m in spec]
        shapes = {m.shape for m in spec}
        if len(shapes) != 1:
            raise ValueError(f"{what}: all masks in the collection need one shape; got {shapes}.")
        return np.stack(spec)
    return as_bool_array(spec, what)


class TrainingMasks:
    """Each training row's condition mask and edge mask, drawn on the training device.

    Parameters
    ----------
    condition_masks, edge_masks
        The estimator's parameters of these names.
    layout : Layout
    split : (list of int, list of int) or None
        Latent and observed variables of the posterior, for the "structured" masks; None when
        no split is declared.
    seed : int
        Seeds this object's own generators (one stream of the fit's seed tree).
    device : torch.device
    within : bool, default=False
        Draw :data:`WITHIN_FRACTION` of the rows' masks per column (tokens of several
        columns), when ``condition_masks`` is a named generator.

    Calling it with ``n`` gives ``(observed, edges)``: a bool tensor of shape (n, n_columns),
    True = observed, and a bool tensor of shape (n, n_columns, n_columns) or None.
    """

    def __init__(self, condition_masks, edge_masks, layout: Layout,
                 split: tuple[list[int], list[int]] | None, seed: int,
                 device: torch.device | str, within: bool = False):
        within = within and isinstance(condition_masks, str) and layout.n_columns > 1
        seeds = np.random.SeedSequence(seed).generate_state(2 + within, dtype=np.uint64) >> 1
        self.layout = layout
        self._generators: list = []
        self._condition = condition_sampler(condition_masks, layout, split, int(seeds[0]),
                                            device, self._generators)
        self._edges = edge_sampler(edge_masks, layout, int(seeds[1]), device, self._generators)
        self._dag = isinstance(edge_masks, DAG)
        self._within = None
        if within:
            gen = _generator(int(seeds[2]), device, self._generators)
            self._within = (_uniform(layout.n_columns, gen), gen)

    def get_state(self) -> list:
        """The state of every random stream the masks draw from (see :meth:`set_state`)."""
        return [g.get_state() if isinstance(g, torch.Generator) else
                copy.deepcopy(g.bit_generator.state) for g in self._generators]

    def set_state(self, state: list) -> None:
        """Put the random streams back where :meth:`get_state` found them."""
        for g, st in zip(self._generators, state, strict=True):
            if isinstance(g, torch.Generator):
                g.set_state(st)
            else:
                g.bit_generator.state = st

    def __call__(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        drawn = self._condition(n)
        observed = self.layout.expand_condition(drawn)
        if self._within is not None:
            per_column, gen = self._within
            pick = torch.rand(n, 1, generator=gen, device=gen.device) < WITHIN_FRACTION
            observed = torch.where(pick, per_column(n), observed)
            if self._dag:  # the DAG's mask for the mask drawn (a split variable: latent)
                drawn = observed
        edges = None if self._edges is None else self._edges(drawn)
        return observed, edges
