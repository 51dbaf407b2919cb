"""Declared structure: a DAG over the variables, turned into attention (edge) masks.

A user who knows how the simulator generates its variables (``x`` depends on ``theta``, a chain
``z1 -> z2 -> z3``) says so with :class:`DAG`, given as ``edge_masks=``. The network then
attends only along the dependencies that matter for each conditional (Gloeckler et al. 2024,
sec. 3.3):

``"moral"`` (the default)
    The fixed moralised graph: a variable attends to its parents, its children and its
    children's other parents (its Markov blanket), whatever is observed. Chosen as the default
    by evidence: on gaussian_dag its random conditionals match full attention's where
    "faithful" loses 0.05 in C2ST, and on slcp it gains (docs/missing_data.md).
``"faithful"``
    Condition-aware, as in the Simformer paper's code: a variable attends to itself and its
    parents; when a variable is observed, each of its latent ancestors also attends to it and
    to every other latent ancestor of it (observing a common effect couples its causes). An
    ancestor counts only through a path of latent variables: one whose every path to the
    observed variable passes through another observed variable learns nothing from it (it is
    d-separated), so it does not attend to it (the paper's code omits this refinement). A
    latent variable never attends to its latent children, whose noisy values carry
    information about it at every noise level, so the network must route that through other
    layers: it learns more slowly.

Edge masks here are over variables, ``mask[i, j]`` True letting variable i attend to j, and
every variable attends to itself. :class:`~skformer.layout.Layout` expands them to columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["DAG", "INVERSIONS"]

INVERSIONS = ("moral", "faithful")


class DAG:
    """A directed acyclic graph over the variables of the joint, as ``edge_masks``.

    Parameters
    ----------
    parents : mapping
        Each variable (index or name) -> its parent variables (a list of indexes or names; a
        single one may be given bare). Variables without parents may be left out.
    inversion : {"moral", "faithful"}, default="moral"
        How the graph becomes attention masks (see the module docstring).
    heads : None, int or "half", default=None
        How many attention heads of each block the graph restricts; the others attend to every
        variable, so the structure guides attention without cutting the direct routes. None:
        every head (or ``skformer.network.EDGE_HEADS`` where that is set); "half":
        ``n_heads // 2``; an int larger than ``n_heads`` restricts them all. Read when a new
        network is built (a warm start keeps its network's). On slcp, with its draws
        exchangeable, 2 of 4 heads gave the best C2ST measured; on gaussian_tree it cost a
        random conditional 0.01-0.02 (docs/missing_data.md), so it is not the default.

    Examples
    --------
    >>> import numpy as np
    >>> from skformer.graph import DAG
    >>> chain = DAG({1: [0], 2: [1]})
    >>> chain.parent_matrix(3).astype(int)
    array([[0, 0, 0],
           [1, 0, 0],
           [0, 1, 0]])
    >>> chain.mask(np.array([False, False, True]), 3).astype(int)  # the Markov blankets
    array([[1, 1, 0],
           [1, 1, 1],
           [0, 1, 1]])
    >>> faithful = DAG({1: [0], 2: [1]}, inversion="faithful")
    >>> faithful.mask(np.array([False, False, True]), 3).astype(int)  # z2 observed
    array([[1, 1, 1],
           [1, 1, 1],
           [0, 1, 1]])
    """

    def __init__(self, parents: Mapping, inversion: str = "moral", heads=None):
        if not isinstance(parents, Mapping):
            raise ValueError(f"parents must be a mapping variable -> parents; got "
                             f"{type(parents).__name__}.")
        if inversion not in INVERSIONS:
            raise ValueError(f"inversion must be one of {INVERSIONS}; got {inversion!r}.")
        if not (heads is None or heads == "half" or (
                isinstance(heads, (int, np.integer)) and not isinstance(heads, bool)
                and heads >= 0)):
            raise ValueError(f"heads must be None, 'half' or an int >= 0 (how many attention "
                             f"heads the graph restricts); got {heads!r}.")
        normalised = {}
        for child, ps in parents.items():
            if isinstance(ps, (str, int, np.integer)):
                ps = [ps]
            if not isinstance(ps, Sequence) and not isinstance(ps, np.ndarray):
                raise ValueError(f"the parents of {child!r} must be a list; got {ps!r}.")
            normalised[_key(child)] = [_key(p) for p in ps]
        self.parents = normalised
        self.inversion = inversion
        self.heads = heads if heads is None or heads == "half" else int(heads)

    def __repr__(self) -> str:
        extra = "" if self.heads is None else f", heads={self.heads!r}"
        return f"DAG({self.parents!r}, inversion={self.inversion!r}{extra})"

    def __eq__(self, other) -> bool:
        return (isinstance(other, DAG) and self.parents == other.parents
                and self.inversion == other.inversion
                and self.heads == other.heads)

    def __setstate__(self, state):
        # pickles of DAGs made before ``heads`` existed lack it: every head, as they had
        self.__dict__.update({"heads": None, **state})

    __hash__ = None

    def to_dict(self) -> dict:
        """JSON values: ``{"parents": [[child, [parents...]], ...], "inversion": ...}``, and
        ``"heads"`` when set."""
        d = {"parents": [[c, list(ps)] for c, ps in self.parents.items()],
             "inversion": self.inversion}
        if self.heads is not None:
            d["heads"] = self.heads
        return d

    @classmethod
    def from_dict(cls, d) -> DAG:
        if not isinstance(d, Mapping) or not isinstance(d.get("parents"), list) or not all(
                isinstance(p, list) and len(p) == 2 for p in d["parents"]):
            raise ValueError(f"a DAG description needs 'parents' as [child, parents] pairs; "
                             f"got {d!r}.")
        return cls({c: ps for c, ps in d["parents"]}, d.get("inversion", "faithful"),
                   d.get("heads"))

    # ------------------------------------------------------------------ the graph
    def parent_matrix(self, n_variables: int, names: Sequence[str] | None = None) -> np.ndarray:
        """``P[i, j]`` True when variable j is a parent of variable i; validated.

        Raises ValueError for unknown names, indexes out of range, a variable that is its own
        parent, and cycles.
        """
        P = np.zeros((n_variables, n_variables), dtype=bool)
        for child, ps in self.parents.items():
            i = _index(child, n_variables, names)
            for p in ps:
                j = _index(p, n_variables, names)
                if i == j:
                    raise ValueError(f"variable {child!r} cannot be its own parent.")
                P[i, j] = True
        cycle = _cycle(P)
        if cycle:
            shown = [names[v] if names is not None else v for v in cycle]
            raise ValueError(f"the DAG has a cycle: {' -> '.join(map(str, shown))}.")
        return P

    def masks(self, parents: np.ndarray, observed: torch.Tensor) -> torch.Tensor:
        """Attention masks (n, V, V) for condition masks ``observed`` (n, V) bool (True =
        observed), on ``observed``'s device; ``parents`` from :meth:`parent_matrix`."""
        device = observed.device
        P = torch.as_tensor(parents, device=device)
        V = P.shape[0]
        eye = torch.eye(V, dtype=torch.bool, device=device)
        if self.inversion == "moral":
            co_parents = (P.T.to(torch.float32) @ P.to(torch.float32)) > 0
            return (P | P.T | co_parents | eye).expand(observed.shape[0], V, V)
        # R[n, i, j]: a directed path j -> ... -> i whose nodes before i are all latent
        R = P[None] & ~observed[:, None, :]
        for _ in range(max(1, (V - 1).bit_length())):  # path lengths double each round
            Rf = R.to(torch.float32)
            R = R | (torch.bmm(Rf, Rf) > 0)
        # L[n, o, a]: a is a latent ancestor of the observed o, not cut off from it by another
        # observed variable
        L = observed[:, :, None] & R
        Lf = L.to(torch.float32)
        coupled = torch.einsum("noa,nob->nab", Lf, Lf) > 0
        return (P | eye)[None] | L.transpose(1, 2) | coupled

    def mask(self, observed: np.ndarray, n_variables: int,
             names: Sequence[str] | None = None) -> np.ndarray:
        """The attention mask (V, V) for one condition mask over variables."""
        P = self.parent_matrix(n_variables, names)
        obs = torch.as_tensor(np.asarray(observed, dtype=bool))[None]
        return self.masks(P, obs)[0].numpy()


def _key(v):
    if isinstance(v, (bool, np.bool_)):
        raise ValueError(f"variables are named by index or name; got {v!r}.")
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, str):
        return v
    raise ValueError(f"variables are named by index or name; got {v!r}.")


def _index(v, n: int, names) -> int:
    if isinstance(v, str):
        if names is None or v not in names:
            raise ValueError(f"the DAG names an unknown variable {v!r}"
                             + (f"; the variables are {list(names)}." if names else "."))
        return list(names).index(v)
    if not 0 <= v < n:
        raise ValueError(f"the DAG names variable {v}, outside the {n} variables.")
    return v


def _cycle(P: np.ndarray) -> list[int]:
    """A cycle of the graph (child -> parent edges), or [] when there is none."""
    V = P.shape[0]
    state = [0] * V  # 0 new, 1 on the path, 2 done
    path: list[int] = []

    def visit(v) -> list[int]:
        state[v] = 1
        path.append(v)
        for p in np.flatnonzero(P[v]):
            if state[p] == 1:
                return path[path.index(p):] + [int(p)]
            if state[p] == 0:
                found = visit(int(p))
                if found:
                    return found
        path.pop()
        state[v] = 2
        return []

    for v in range(V):
        if state[v] == 0:
            found = visit(v)
            if found:
                return found
    return []


