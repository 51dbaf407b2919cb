"""One fitted model seen through one condition mask and one edge mask.

:class:`Conditional` is what ``SimformerEstimator.condition(mask)`` returns: a thin numpy
adapter over a :class:`~skformer.model.SimformerModel`. It validates users' arrays, turns them
into tensors on the model's device, calls the model and returns numpy arrays of the latent
columns. It never changes the estimator that made it.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from skformer._utils import (
    MAX_STANDARD_UNITS,
    as_float_tensor,
    check_fits_in_memory,
    make_generator,
    seed_from,
    to_numpy,
)
from skformer.dynamics.solvers import ODE_SOLVERS, SOLVERS, network_calls
from skformer.guidance import parse_constraints, sample_satisfying
from skformer.model import SimformerModel, fold_into

__all__ = ["Conditional"]


def resolve_bounds(bounds, layout, observed_columns=()) -> dict[int, tuple[float, float]]:
    """``{column: (low, high)}`` (column indexes, column names or variable names) -> bounds per
    column index (a column bounded twice gets the intersection), leaving out observed columns
    and bounds that bound nothing. Raises a ValueError for an unknown column, a malformed or
    empty interval."""
    if bounds is None:
        return {}
    if not isinstance(bounds, dict):
        raise ValueError("bounds must be a dict {column: (low, high)}; got "
                         f"{type(bounds).__name__}.")
    names = layout.column_names
    out = {}
    for key, spec in bounds.items():
        if isinstance(key, str) and key not in names and key in layout.names:
            columns = list(layout.groups[layout.names.index(key)])
        elif isinstance(key, str):
            if key not in names:
                raise ValueError(f"bounds names an unknown column or variable {key!r}; "
                                 f"columns: {names}.")
            columns = [names.index(key)]
        elif (isinstance(key, (int, np.integer)) and not isinstance(key, bool)
              and 0 <= key < len(names)):
            columns = [int(key)]
        else:
            raise ValueError(f"bounds column {key!r} is not one of the {len(names)} columns.")
        try:
            low, high = spec
            if not all(isinstance(v, (int, float, np.number))
                       and not isinstance(v, (bool, np.bool_)) for v in (low, high)):
                raise TypeError(spec)
            low, high = float(low), float(high)
        except (TypeError, ValueError) as err:
            raise ValueError(f"bounds of {key!r} must be (low, high), two numbers; got "
                             f"{spec!r}.") from err
        if np.isnan(low) or np.isnan(high) or not low < high:
            raise ValueError(f"bounds of {key!r} need low < high; got ({low}, {high}).")
        for c in columns:  # a column bounded twice (by its variable, say) gets both
            lo, hi = out.get(c, (-np.inf, np.inf))
            out[c] = (max(lo, low), min(hi, high))
            if not out[c][0] < out[c][1]:
                raise ValueError(f"the bounds of column {names[c]!r} leave no room: "
                                 f"({out[c][0]}, {out[c][1]}).")
    observed = set(np.asarray(observed_columns).tolist())
    return {c: b for c, b in out.items()
            if c not in observed and (np.isfinite(b[0]) or np.isfinite(b[1]))}


MAX_CALL_STEPS = 1_000_000
"""Most solver steps one call may ask for (``steps=``; the parameters stop at 10,000)."""

MASS_CACHE = 256
"""Observations whose mass inside the bounds a conditional keeps (:meth:`Conditional.log_prob`
with ``normalise=True``); the oldest is forgotten first."""

BYTES_PER_SAMPLED_ENTRY = 32
"""Memory that sampling holds per entry (row and column) at once: the rows' states, values,
noise and results in float32, and the float64 results (``check_fits_in_memory``)."""


def _by_name(values, names: list[str], what: str):
    """pandas input labelled by column names (a Series' index, a DataFrame's columns) ->
    numpy in the order of ``names``; unlabelled input (a default integer index) as it is."""
    if not hasattr(values, "to_numpy"):
        return values
    frame = getattr(values, "ndim", 1) == 2
    labels = list(values.columns if frame else values.index)
    if all(isinstance(label, (int, np.integer)) for label in labels) \
            and labels == list(range(len(labels))):
        return values.to_numpy()  # no names: by position, as an array
    labels = [str(label) for label in labels]
    if sorted(labels) != sorted(names) or len(set(labels)) != len(labels):
        raise ValueError(f"{what} is labelled {labels}, but this conditional's {what} columns "
                         f"are {names}: give those names (in any order) or an unlabelled array.")
    order = [labels.index(n) for n in names]
    array = values.to_numpy()
    return array[:, order] if frame else array[order]


def _check_flag(value, name: str) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False; got {value!r}.")


def _positive_int(value, name: str, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    if high is not None and value > high:
        raise ValueError(f"{name} must be at most {high:,}; got {value!r}.")
    return int(value)


class Conditional:
    """The conditional distribution of the latent columns given the observed ones.

    Parameters
    ----------
    model : SimformerModel
    condition_mask : ndarray of bool of shape (n_columns,)
        True = observed.
    edge_mask : ndarray of bool of shape (n_columns, n_columns) or None
    returned : ndarray of bool of shape (n_columns,), optional
        The latent columns to return; the others are sampled and dropped (marginalised).
    solver : str, default="dpm"
        Default solver of :meth:`sample` (see :mod:`skformer.dynamics.solvers`).
    sampling_steps, log_prob_steps : int, default=20
        Default solver steps of :meth:`sample` and :meth:`log_prob`.
    bounds : dict or None, default=None
        Known support of columns, ``{column: (low, high)}`` in data units (a column index, a
        column name or a variable name, which bounds all its columns; ``-np.inf`` / ``np.inf``
        for one side): the conditional is the model's truncated to it. Samples outside are
        redrawn and :meth:`log_prob` is ``-inf`` there. Bounds of observed columns do not
        apply. Columns that the model learnt in a box (``support="transform"``) stay in it
        without rejection, :meth:`log_prob` is ``-inf`` outside it, and observed values
        outside it are refused; bounds that contain that box add nothing.
    support : {"truncate", "fold"}, default="truncate"
        How ``bounds`` are kept (the estimator's ``support``): the model's conditional
        truncated to them, or its samples outside folded back in, reflected at the edge they
        crossed, with :meth:`log_prob` the density of the folded samples (the model's at the
        point plus at its mirror images across the edges near it). A model that learnt a box
        truncates the bounds left over.

    Attributes
    ----------
    condition_mask : ndarray of shape (n_columns,)
        Column condition mask, True = observed.
    edge_mask : ndarray of shape (n_columns, n_columns) or None
        Column attention mask, None = full attention.
    latent_columns, observed_columns : ndarray of int
        Indexes of the latent / observed columns of the joint vector, in order. Samples have
        one column per entry of ``latent_columns``; ``observed`` values one per entry of
        ``observed_columns``. Columns in neither are marginalised out (sampled, not returned).
    latent_names, observed_names : list of str
        Column names in the same order, for labelling plots.
    solver, sampling_steps, log_prob_steps, bounds
        The defaults above.
    """

    def __init__(self, model: SimformerModel, condition_mask: np.ndarray, edge_mask=None, *,
                 returned: np.ndarray | None = None, solver: str = "dpm",
                 sampling_steps: int = 20, log_prob_steps: int = 20, bounds=None,
                 support: str = "truncate"):
        self._model = model
        self.condition_mask = np.asarray(condition_mask, dtype=bool)
        self.edge_mask = edge_mask
        self.solver = solver
        self.sampling_steps = sampling_steps
        self.log_prob_steps = log_prob_steps
        keep = ~self.condition_mask if returned is None else ~self.condition_mask & returned
        self.latent_columns = np.flatnonzero(keep)
        self.observed_columns = np.flatnonzero(self.condition_mask)
        self._marginalised = np.flatnonzero(~self.condition_mask & ~keep)
        names = model.layout.column_names
        self.latent_names = [names[i] for i in self.latent_columns]
        self.observed_names = [names[i] for i in self.observed_columns]
        device = model.device
        self._condition = torch.as_tensor(self.condition_mask, device=device)
        self._edges = None if edge_mask is None else torch.as_tensor(edge_mask, device=device)
        self._returned = torch.as_tensor(self.latent_columns, device=device)
        self.bounds = bounds
        if support not in ("truncate", "fold"):
            raise ValueError(f"support must be 'truncate' or 'fold'; got {support!r}.")
        # a model that learnt a box keeps it; bounds left over truncate
        self.support = "truncate" if model.standardiser.bounded else support
        self._mass: dict = {}  # observation -> the model's untruncated draws (log_prob)
        # bounds that the model's own box already keeps (it models those columns in the
        # logit of their box) need no rejection
        box = model.standardiser.box()
        self._bounds = {c: (low, high) for c, (low, high)
                        in resolve_bounds(bounds, model.layout, self.observed_columns).items()
                        if not (c in box and low <= box[c][0] and box[c][1] <= high)}

    def __repr__(self) -> str:
        return (
            f"Conditional(latent={self.latent_names}, observed={self.observed_names}, "
            f"edge_mask={'full' if self.edge_mask is None else 'custom'})"
        )

    @property
    def n_latent(self) -> int:
        return len(self.latent_columns)

    # ------------------------------------------------------------------ validation
    def _observed(self, observed) -> tuple[torch.Tensor, bool]:
        """Validate observed values -> tensor (n_observations, n_observed), and batched?"""
        k = len(self.observed_columns)
        device = self._model.device
        if observed is None:
            if k:
                raise ValueError(
                    f"observed values are required: this conditional observes {k} columns "
                    f"{self.observed_names}."
                )
            return torch.zeros(1, 0, device=device, dtype=torch.float64), False
        observed = _by_name(observed, self.observed_names, "observed")
        obs = as_float_tensor(observed, device, torch.float64, "observed")
        batched = obs.ndim == 2
        if obs.ndim == 1:
            obs = obs[None]
        elif obs.ndim != 2 and obs.numel() == k:
            obs, batched = obs.reshape(1, k), False
        if obs.ndim != 2 or obs.shape[1] != k:
            raise ValueError(
                f"observed must have shape ({k},) or (n_observations, {k}) for the observed "
                f"columns {self.observed_names}; got shape {tuple(obs.shape)}."
            )
        if obs.shape[0] == 0:
            raise ValueError("observed holds no observation (0 rows).")
        if torch.isinf(obs).any():
            raise ValueError("observed holds infinite values; NaN marks a value not observed.")
        self._check_range(obs.nan_to_num(0.0), self.observed_columns, "observed")
        self._check_box(obs)
        return obs, batched

    def _check_box(self, obs: torch.Tensor) -> None:
        """Refuse observed values outside the box that the model learnt their column in."""
        st = self._model.standardiser
        cols = torch.as_tensor(self.observed_columns, device=self._model.device)
        out = ~st.inside(obs, cols) & ~torch.isnan(obs) & st.boxed(cols)
        if bool(out.any()):
            j = int(out.nonzero()[0, 1])
            c = int(self.observed_columns[j])
            raise ValueError(
                f"observed holds values outside the box of column {self.observed_names[j]!r}, "
                f"{st.box()[c]}: the model was fitted with that support (bounds) and knows "
                "nothing outside it.")

    def _joint_rows(self, observed: torch.Tensor, latent: torch.Tensor | None = None,
                    density: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-width rows (n, columns) in data units and their column states: (columns,)
        bool when nothing is NaN, else (n, columns) ``uint8``.

        A NaN in ``observed`` (or in ``latent`` values of a density) means "not there": the
        entry is marginalised. Where the model learnt that column missing (it was missing in
        training) the network leaves it out (``MISSING``); otherwise, when sampling, an
        observed NaN is drawn as a latent entry and not returned. Densities need the first.
        """
        from skformer.network import LATENT, MISSING, OBSERVED

        m = self._model
        n = observed.shape[0] if latent is None else max(observed.shape[0], latent.shape[0])
        rows = torch.full((n, m.n_columns), float("nan"), dtype=torch.float64, device=m.device)
        rows[:, torch.as_tensor(self.observed_columns, device=m.device)] = observed
        given = self._condition.clone()
        if latent is not None:
            rows[:, torch.as_tensor(self.latent_columns, device=m.device)] = latent
            given[torch.as_tensor(self.latent_columns, device=m.device)] = True
        nan = torch.isnan(rows) & given
        if not bool(nan.any()):
            return rows, self._condition
        learnt = m.missing_seen.expand(n, -1)
        if density and bool((nan & ~learnt).any()):
            names = sorted({m.layout.column_names[j] for j in nan.nonzero()[:, 1].tolist()
                            if not bool(m.missing_seen[j])})
            raise ValueError(
                f"NaN (not there) in {names}, but this model never saw those columns missing "
                "in training, so it cannot leave them out of a density; sample() marginalises "
                "observed ones by sampling, or fit on data with missing values."
            )
        states = torch.where(self._condition, OBSERVED, LATENT).to(torch.uint8).expand(n, -1)
        states = torch.where(nan & learnt, MISSING, torch.where(nan, LATENT, states))
        self._check_whole_variables(nan, learnt)
        return rows, states.to(torch.uint8)

    def _check_whole_variables(self, nan: torch.Tensor, learnt: torch.Tensor) -> None:
        """An entry the model never saw missing can only be marginalised by sampling it as a
        latent one, and the model learnt latent variables, not latent parts of variables: a
        variable must then be NaN in all its columns."""
        m = self._model
        drawn = nan & ~learnt
        for name, g in zip(m.layout.names, m.layout.groups, strict=True):
            g = list(g)
            if bool((drawn[:, g].any(1) & ~nan[:, g].all(1)).any()):
                raise ValueError(
                    f"observed is NaN in part of the variable {name!r} "
                    f"({[m.layout.column_names[c] for c in g]}), which this model never saw "
                    "missing in training: it learnt conditionals of whole variables, so it can "
                    "leave out only all of them. Fit on data with missing values to "
                    "marginalise single columns."
                )

    def _check_range(self, values: torch.Tensor, columns: np.ndarray, what: str) -> None:
        """Refuse values so far from the training data that the network's float32 arithmetic
        cannot take them (:data:`~skformer._utils.MAX_STANDARD_UNITS`)."""
        m = self._model
        z = m.standardiser(values.double(), torch.as_tensor(columns, device=m.device))
        far = ~(z.abs() <= MAX_STANDARD_UNITS)
        if bool(far.any()):
            column = self._model.layout.column_names[int(columns[int(far.nonzero()[0, -1])])]
            raise ValueError(
                f"{what} holds values so far outside the training data (e.g. in column "
                f"{column!r}: more than {MAX_STANDARD_UNITS:g} of its standard deviations from "
                "its mean) that the network's float32 arithmetic cannot take them."
            )

    def _values(self, values, n_obs: int) -> torch.Tensor:
        values = _by_name(values, self.latent_names, "values")
        v = as_float_tensor(values, self._model.device, torch.float64)
        if v.ndim == 1:
            v = v[None]
        if v.ndim != 2 or v.shape[1] != self.n_latent:
            raise ValueError(
                f"values must have shape (n, {self.n_latent}) for the latent columns "
                f"{self.latent_names}; got shape {tuple(v.shape)}."
            )
        if v.shape[0] == 0:
            raise ValueError("values holds no row.")
        if torch.isinf(v).any():
            raise ValueError("values holds infinite values; NaN marks a value not there.")
        self._check_range(v.nan_to_num(0.0), self.latent_columns, "values")
        if n_obs not in (1, v.shape[0]):
            raise ValueError(
                f"observed has {n_obs} rows but values has {v.shape[0]}: give one observation "
                "for all rows or one per row."
            )
        return v

    def _check_rows(self, n: int, n_observations: int, name: str) -> None:
        """Refuse ``n`` samples for each of ``n_observations`` when they cannot fit in the
        device's memory at all."""
        m = self._model
        check_fits_in_memory(
            n * n_observations * m.n_columns * BYTES_PER_SAMPLED_ENTRY, m.device,
            f"{name}={n:,} for {n_observations:,} observation(s) of {m.n_columns} columns")

    def _solver(self, solver, allowed=SOLVERS) -> str:
        solver = self.solver if solver is None else solver
        if solver not in allowed:
            raise ValueError(f"solver must be one of {allowed}; got {solver!r}.")
        return solver

    # ------------------------------------------------------------------ sampling
    def network_calls(self, steps: int | None = None, solver: str | None = None) -> int:
        """Network evaluations per sample for ``steps`` and ``solver`` (defaults: this
        conditional's ``sampling_steps`` and ``solver``)."""
        steps = _positive_int(self.sampling_steps if steps is None else steps, "steps")
        return network_calls(self._solver(solver), steps)

    def sample(
        self,
        n_samples: int = 1,
        observed=None,
        *,
        random_state=None,
        steps: int | None = None,
        solver: str | None = None,
        constraints=None,
        iid: bool = False,
        prior=None,
        iid_method: str = "gauss",
    ) -> np.ndarray:
        """Draw samples of the latent columns given observed values.

        Parameters
        ----------
        n_samples : int
            Samples per observation.
        observed : array-like of shape (n_observed,) or (n_observations, n_observed)
            Values of the observed columns (``observed_columns`` order), in data units. A 2-D
            array samples every observation at once. Omit when nothing is observed.
        random_state : int, RandomState, Generator or None
            Seed for this call's noise. The same seed and the same ``observed`` give the same
            samples. A 2-D ``observed`` is one stream of draws: the samples of its first row
            differ from those of that row sampled alone with the same seed (both are exact
            draws of the same distribution).
        steps : int, optional
            Solver steps (default: ``sampling_steps``, the estimator's).
        solver : {"dpm", "heun", "euler", "sde"}, optional
            Probability-flow ODE with DPM-Solver++(3M), Heun or Euler, or the reverse SDE
            (Euler-Maruyama); see :mod:`skformer.dynamics.solvers`. Default: ``solver``, the
            estimator's.
        constraints : dict or list, optional
            Knowledge that some latent (or marginalised) columns only lie in a range:
            ``{column: (low, high)}`` with a column index of the joint vector or a column name
            (``-np.inf`` / ``np.inf`` for one-sided), and / or linear inequalities
            ``(weights, low, high)`` meaning ``low <= weights @ x <= high`` with one weight per
            column of the whole joint vector (``n_columns`` weights in the joint's column
            order, not only the latent ones; observed columns must have weight 0), given as a
            list of such triples. Sampling is guided towards the
            region (the gradient of a soft indicator of it, taken through the denoiser, is added
            to the score; Gloeckler et al. 2024, sec. 3.4) and samples still outside are
            rejected and redrawn, so every sample returned satisfies the constraints.
        iid : bool, default=False
            Take the rows of a 2-D ``observed`` as N independent trials of one experiment
            (shape (N, n_observed)) and sample the latent columns given all of them,
            p(latent | trial_1, ..., trial_N), from this model trained on single trials.
            The single-trial scores are composed with the prior's (see
            :mod:`skformer.dynamics.compose`); every network call then evaluates N + 1 rows
            per sample. NaN in a trial leaves that entry out, which needs a model that saw the
            column missing in training.
        prior : torch.distributions.Distribution, optional
            With ``iid``: the prior of the latent columns (data units, ``latent_columns``
            order) when it is a known Gaussian: a Normal or MultivariateNormal (or an
            Independent of one). Default: the model's own, the marginal of the latent columns
            it learnt in training, which is also the only choice for bounded priors (a
            uniform prior's exact edges do not match the learnt posteriors' and the mismatch
            grows with N; see :mod:`skformer.dynamics.compose`).
        iid_method : {"gauss", "fnpe"}, default="gauss"
            With ``iid``: how scores compose. "gauss": Gaussian-corrected composition, exact
            for Gaussian posteriors (precisions estimated from 1024 draws per trial and
            4096 of the prior);
            "fnpe": the plain sum of scores, exact only at noise level 0.

        Returns
        -------
        ndarray of shape (n_samples, n_latent), or (n_observations, n_samples, n_latent) for a
        2-D ``observed`` (with ``iid``: (n_samples, n_latent)).

        Examples
        --------
        >>> import numpy as np
        >>> from skformer import SimformerEstimator
        >>> rng = np.random.default_rng(0)
        >>> theta = rng.normal(size=(400, 1))
        >>> X = np.hstack([theta, theta + 0.5 * rng.normal(size=(400, 1))])
        >>> est = SimformerEstimator(max_epochs=2, d_model=16, n_layers=1,
        ...                          posterior_latent=[0], posterior_observed=[1],
        ...                          random_state=0).fit(X)
        >>> trials = np.array([[0.9], [1.2], [1.0], [1.1]])
        >>> est.posterior().sample(100, trials, iid=True, random_state=0).shape
        (100, 1)
        """
        n_samples = _positive_int(n_samples, "n_samples")
        steps = _positive_int(self.sampling_steps if steps is None else steps, "steps",
                              MAX_CALL_STEPS)
        solver = self._solver(solver)
        _check_flag(iid, "iid")
        if iid:
            self._check_rows(n_samples, 1, "n_samples")
            return self._sample_iid(n_samples, observed, random_state, steps, solver,
                                    constraints, prior, iid_method)
        if prior is not None:
            raise ValueError("prior is used only with iid=True.")
        obs, batched = self._observed(observed)
        self._check_rows(n_samples, obs.shape[0], "n_samples")
        m = self._model
        st = m.standardiser
        centre, slope = st.affine()
        warp = st.to_affine if st.bounded else None
        guide = None if constraints is None else parse_constraints(
            constraints, m.layout.column_names, self.observed_columns, centre, slope, warp)
        gen = make_generator(seed_from(random_state), m.device)
        rows, states = self._joint_rows(obs)
        folding = self.support == "fold"
        x = m.sample(states, rows, n_samples, edges=self._edges, steps=steps,
                     solver=solver, generator=gen, guide=guide,
                     support=None if folding else self._support(centre, slope, warp),
                     fold=self._fold_box(centre, slope) if folding else None)
        out = self._clip(to_numpy(x[..., self._returned]))  # float32 rounding at the edges
        return out if batched else out[0]

    def _sample_iid(self, n_samples, observed, random_state, steps, solver, constraints,
                    prior, iid_method) -> np.ndarray:
        """:meth:`sample` with ``iid=True``."""
        states, rows = self._iid_inputs(observed, constraints, prior, iid_method)
        m = self._model
        gen = make_generator(seed_from(random_state), m.device)

        def draw(k):
            return m.sample_iid(states, rows, k, edges=self._edges, steps=steps,
                                solver=solver, generator=gen, method=iid_method, prior=prior)

        zero = torch.zeros(m.n_columns, device=m.device)
        if self.support == "fold":  # sample_iid gives data units
            fold = self._fold_box(zero, torch.ones_like(zero))
            x = fold_into(draw(n_samples), fold)
        else:
            support = self._support(zero, torch.ones_like(zero))
            x = (draw(n_samples) if support is None
                 else sample_satisfying(draw, support, n_samples))
        out = to_numpy(x[:, self._returned])
        if not np.isfinite(out).all():
            cause = ("the prior given (its score is not finite there: check its parameters)"
                     if prior is not None else "the composition of the trials' scores")
            raise ValueError(f"iid sampling gave non-finite values, from {cause}.")
        return self._clip(out)

    def _iid_inputs(self, observed, constraints, prior, iid_method
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated trials -> their column states and full-width rows (:meth:`_iid_rows`)."""
        from skformer.dynamics.compose import IID_METHODS

        if iid_method not in IID_METHODS:
            raise ValueError(f"iid_method must be one of {IID_METHODS}; got {iid_method!r}.")
        if constraints is not None:
            raise ValueError("constraints are not available with iid=True.")
        if not len(self.observed_columns):
            raise ValueError("iid trials need observed columns: this conditional observes "
                             "none.")
        if observed is not None and np.size(observed) == 0:
            raise ValueError("observed holds no trial (N = 0): iid=True needs at least one "
                             f"row of the {len(self.observed_columns)} observed columns.")
        obs, _ = self._observed(observed)
        m = self._model
        nan = torch.isnan(obs)
        if bool(nan.all(1).any()):
            raise ValueError(f"trials {nan.all(1).nonzero().flatten().tolist()} hold no value "
                             "(all NaN): leave them out.")
        cols = torch.as_tensor(self.observed_columns, device=m.device)
        unlearnt = nan & ~m.missing_seen[cols]
        if bool(unlearnt.any()):
            names = sorted({self.observed_names[j] for j in unlearnt.nonzero()[:, 1].tolist()})
            raise ValueError(
                f"NaN in the trials' {names}, which this model never saw missing in training: "
                "with iid=True an entry can only be left out by a model that learnt it "
                "missing. Fill it, drop the trial, or fit on data with missing values."
            )
        if self._marginalised.size and prior is not None:
            raise ValueError("prior= covers the returned latent columns only; this conditional "
                             "also marginalises others: leave prior=None.")
        return self._iid_rows(obs)

    def _iid_rows(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trials (N, n_observed) -> their column states (uint8, NaN = ``MISSING``) and
        full-width rows in data units."""
        from skformer.network import LATENT, MISSING, OBSERVED

        m = self._model
        cols = torch.as_tensor(self.observed_columns, device=m.device)
        rows = torch.zeros(obs.shape[0], m.n_columns, dtype=torch.float64, device=m.device)
        rows[:, cols] = obs.nan_to_num(0.0)
        states = torch.full(rows.shape, LATENT, dtype=torch.uint8, device=m.device)
        states[:, cols] = torch.where(torch.isnan(obs), MISSING, OBSERVED).to(torch.uint8)
        return states, rows

    # ------------------------------------------------------------------ densities
    def log_prob(
        self,
        values,
        observed=None,
        *,
        steps: int | None = None,
        solver: str = "dpm",
        divergence: str = "auto",
        n_probes: int = 16,
        random_state=0,
        normalise: bool = True,
        mass_draws: int = 4000,
    ) -> np.ndarray:
        """Log density of latent values given observed values, by the probability-flow ODE.

        Parameters
        ----------
        values : array-like of shape (n, n_latent) or (n_latent,)
            Latent values in data units (``latent_columns`` order).
        observed : array-like of shape (n_observed,) or (n, n_observed)
            One observation for all rows, or one per row.
        steps : int, optional
            ODE steps (default: ``log_prob_steps``, the estimator's); the solver's error falls
            as ``steps**-2`` or faster.
        solver : {"dpm", "heun", "euler"}, default="dpm"
            The ODE solver that carries each row to noise and integrates the divergence along
            the way (see :func:`skformer.dynamics.solvers.log_density`).
        divergence : {"auto", "exact", "hutchinson"}, default="auto"
            Exact trace of the denoiser's Jacobian (one backward pass over ``n_latent`` copies),
            or Hutchinson's estimator with ``n_probes`` Rademacher probes. "auto": exact up to
            16 latent columns.
        random_state : int, default=0
            Seed of the Hutchinson probes and of the draws that measure the mass inside the
            bounds (fixed by default, so results are deterministic). One set of probes serves
            every row, and each observation's draws are seeded alike, so a row's log density
            never depends on the other rows passed with it.
        normalise : bool, default=True
            With ``bounds`` on latent columns that the model does not keep itself (the default
            ``support="truncate"``, one-sided bounds, bounds set after the fit): the model's
            conditional truncated to the bounds is renormalised, so the density inside
            integrates to one (a folded density, ``support="fold"``, integrates to one as it
            is; this flag does not apply to it). Its mass inside, per observation, is the share of
            ``mass_draws`` of its (untruncated) samples that fall inside, over the columns
            present in the row (a NaN entry is left out); it is kept for the next calls with
            the same observation. False: the model's density as it is inside (it integrates
            to the mass inside, less than one), -inf outside either way.
        mass_draws : int, default=4000
            Samples per observation that measure the mass inside the bounds (with
            ``support="fold"``: how deep the model's mass spills over each edge, which sets
            the mirror images that count) (the standard
            error of its log is about ``sqrt((1 - p) / (p * mass_draws))`` for a mass ``p``:
            0.016 at p = 0.5).

        Returns
        -------
        ndarray of shape (n,)
        """
        if len(self._marginalised):
            raise ValueError(
                "log_prob needs every latent column: this conditional marginalises "
                f"{self._marginalised.tolist()}; observe them or build the conditional with "
                "condition() to include them."
            )
        if divergence not in ("auto", "exact", "hutchinson"):
            raise ValueError(
                f"divergence must be 'auto', 'exact' or 'hutchinson'; got {divergence!r}."
            )
        steps = _positive_int(self.log_prob_steps if steps is None else steps, "steps",
                              MAX_CALL_STEPS)
        if steps < 2:
            raise ValueError(f"log_prob needs steps >= 2; got {steps}.")
        solver = self._solver(solver, ODE_SOLVERS)
        n_probes = _positive_int(n_probes, "n_probes")
        _check_flag(normalise, "normalise")
        mass_draws = _positive_int(mass_draws, "mass_draws")
        obs, _ = self._observed(observed)
        v = self._values(values, obs.shape[0])
        m = self._model
        probes = None
        exact = divergence == "exact" or (divergence == "auto" and self.n_latent <= 16)
        m.check_attention(self.n_latent if exact else n_probes, backward=True,
                          what="this log density")
        if not exact:
            gen = make_generator(seed_from(random_state), m.device)
            signs = torch.randint(0, 2, (n_probes, m.n_columns), generator=gen, device=m.device)
            probes = (2.0 * signs - 1.0) * (~self._condition).float()
        def density(obs, v):
            rows, states = self._joint_rows(obs, v, density=True)
            return to_numpy(m.log_prob(states, rows, edges=self._edges, steps=steps,
                                       solver=solver, probes=probes))

        if self._bounds and self.support == "fold":
            out = self._folded_log_prob(density, obs, v, mass_draws, random_state)
        else:
            out = density(obs, v)
        if self._bounds:
            out[~self._inside(to_numpy(v))] = -np.inf
            if normalise and self.support == "truncate":
                finite = np.isfinite(out)
                out[finite] -= self._log_mass(obs, to_numpy(v), mass_draws,
                                              random_state)[finite]
        st = m.standardiser
        if st.bounded:  # outside the model's own box (values there are read on its edge)
            cols = torch.as_tensor(self.latent_columns, device=m.device)
            # a NaN entry is left out (marginalised), not outside
            kept = (st.inside(v, cols) | ~st.boxed(cols) | torch.isnan(v)).all(1)
            out[~kept.cpu().numpy()] = -np.inf
        return out

    # ------------------------------------------------------------------ bounds
    def _support(self, mean: torch.Tensor, scale: torch.Tensor, warp=None):
        """The bounds of the non-observed columns (those the model's box does not keep
        already) as a region in the units that ``mean`` and ``scale`` standardise, after
        ``warp`` (None without such bounds)."""
        if not self._bounds:
            return None
        return parse_constraints(self._bounds, self._model.layout.column_names,
                                 self.observed_columns, mean, scale, warp)

    def _log_mass(self, obs: torch.Tensor, values: np.ndarray, draws: int,
                  random_state) -> np.ndarray:
        """Per row of ``values``: the log of the model's mass inside the bounds given the row's
        observation, over the bounded columns present in the row (not NaN), from ``draws``
        untruncated samples per distinct observation (kept in ``self._mass``)."""
        o = to_numpy(obs)
        inside_by_obs = [self._inside_columns(self._draws(row, draws, random_state))
                         for row in o]
        present = ~np.isnan(values[:, [j for j, _, _ in self._latent_bounds()]])
        group = np.arange(values.shape[0]) if len(o) > 1 else np.zeros(values.shape[0], int)
        # one share per (observation, columns present): rows that share both share it
        keys, where = np.unique(np.column_stack([group, present]), axis=0, return_inverse=True)
        share = np.array([inside_by_obs[k[0]][:, k[1:].astype(bool)].all(1).mean()
                          for k in keys])[where.reshape(-1)]
        if (share == 0).any():
            i = int(np.flatnonzero(share == 0)[0])
            raise ValueError(
                f"none of the {draws} draws given observation {i if len(o) > 1 else 0} fell "
                f"inside the bounds {self.bounds!r}: the model puts next to no mass there, so "
                "its truncated density cannot be normalised. Raise mass_draws, or pass "
                "normalise=False for the model's own density inside.")
        return np.log(share)

    def _draws(self, row: np.ndarray, draws: int, random_state) -> np.ndarray:
        """``draws`` of the model's untruncated samples of the latent columns (data units)
        given one observation ``row``, seeded by ``random_state``; kept in ``self._mass``."""
        m = self._model
        seed = seed_from(random_state)
        key = (row.tobytes(), draws, seed, self.sampling_steps, self.solver)
        if key not in self._mass:
            self._check_rows(draws, 1, "mass_draws")
            rows, states = self._joint_rows(torch.as_tensor(row[None], device=m.device))
            x = to_numpy(m.sample(states, rows, draws, edges=self._edges,
                                  steps=self.sampling_steps, solver=self.solver,
                                  generator=make_generator(seed, m.device))[0])
            self._mass[key] = x[:, self.latent_columns]
            while len(self._mass) > MASS_CACHE:
                del self._mass[next(iter(self._mass))]
        return self._mass[key]

    def _fold_box(self, mean: torch.Tensor, scale: torch.Tensor):
        """The bounds of the non-observed columns as ``(columns, low, high)`` in the units
        that ``mean`` and ``scale`` standardise (for :func:`~skformer.model.fold_into`), or
        None without bounds."""
        if not self._bounds:
            return None
        cols = sorted(self._bounds)
        low = torch.tensor([self._bounds[c][0] for c in cols], dtype=mean.dtype,
                           device=mean.device)
        high = torch.tensor([self._bounds[c][1] for c in cols], dtype=mean.dtype,
                            device=mean.device)
        idx = torch.as_tensor(cols, device=mean.device)
        return idx, (low - mean[idx]) / scale[idx], (high - mean[idx]) / scale[idx]

    def _folded_log_prob(self, density, obs: torch.Tensor, v: torch.Tensor, draws: int,
                         random_state) -> np.ndarray:
        """The log density of the folded samples at latent values ``v``: the log of the sum of
        the model's density at ``v`` and at its mirror images across the edges it is near.
        An edge counts for a value when its mirror lies no deeper beyond the edge than the
        model's mass spills there (the deepest of ``draws`` untruncated draws per
        observation); deeper mirrors hold less than one draw's share of the mass."""
        values = to_numpy(v)
        o = to_numpy(obs)
        bounded = self._latent_bounds()
        spill = {}  # observation index -> (bounded columns, 2) depth beyond low / high
        for k, row in enumerate(o):
            x = self._draws(row, draws, random_state)
            spill[k] = np.array([[np.max(low - x[:, j], initial=0.0),
                                  np.max(x[:, j] - high, initial=0.0)]
                                 for j, low, high in bounded]).reshape(len(bounded), 2)
        columns = [j for j, _, _ in bounded]
        images, owner = [], []
        for i, value in enumerate(values):
            depth = spill[i if len(o) > 1 else 0]
            choices = []
            for b, (j, low, high) in enumerate(bounded):
                here = [value[j]]  # a NaN entry compares False: no mirror
                if 0 <= value[j] - low < depth[b, 0]:
                    here.append(2 * low - value[j])
                if 0 <= high - value[j] < depth[b, 1]:
                    here.append(2 * high - value[j])
                choices.append(here)
            for combo in itertools.product(*choices):
                image = value.copy()
                image[columns] = combo
                images.append(image)
                owner.append(i)
        owner = np.asarray(owner)
        if len(o) > 1:
            obs = obs[torch.as_tensor(owner, device=obs.device)]
        dens = density(obs, torch.as_tensor(np.stack(images), device=v.device, dtype=v.dtype))
        out = np.full(values.shape[0], -np.inf)
        np.logaddexp.at(out, owner, dens)
        return out

    def _latent_bounds(self) -> list[tuple[int, float, float]]:
        """``(j, low, high)`` for each bounded latent column (j: its position in
        ``latent_columns``)."""
        return [(j, *self._bounds[c]) for j, c in enumerate(self.latent_columns)
                if c in self._bounds]

    def _inside_columns(self, values: np.ndarray) -> np.ndarray:
        """Boolean (n, bounded latent columns): each entry of latent ``values`` (data units)
        inside its column's bounds (a NaN has no value, so it is not outside)."""
        columns = [~((values[:, j] < low) | (values[:, j] > high))
                   for j, low, high in self._latent_bounds()]
        if not columns:
            return np.ones((values.shape[0], 0), dtype=bool)
        return np.stack(columns, axis=1)

    def _inside(self, values: np.ndarray) -> np.ndarray:
        """Boolean (n,): the rows of latent ``values`` (data units) inside the bounds."""
        return self._inside_columns(values).all(1)

    def _clip(self, values: np.ndarray) -> np.ndarray:
        """Latent ``values`` (data units) moved onto the bounds where they lie outside: the map
        climb can leave them, and rejection in float32 standard units a rounding error beyond."""
        for j, c in enumerate(self.latent_columns):
            if c in self._bounds:
                values[..., j] = np.clip(values[..., j], *self._bounds[c])
        return values

    # ------------------------------------------------------------------ mode
    def map(
        self,
        observed=None,
        *,
        n_init: int = 256,
        n_keep: int = 8,
        n_iter: int = 200,
        learning_rate: float = 0.01,
        random_state=None,
        iid: bool = False,
    ) -> np.ndarray:
        """Maximum a posteriori estimate of the latent columns given one observation.

        Draws ``n_init`` samples, keeps the ``n_keep`` with the highest (coarse, 8-step)
        log density, climbs each with Adam along the learned score while the smoothing noise
        anneals (:meth:`SimformerModel.climb <skformer.model.SimformerModel.climb>`), and
        returns the climber with the highest log density.

        Parameters
        ----------
        observed : array-like of shape (n_observed,)
        n_init, n_keep, n_iter : int
        learning_rate : float
            Adam step size, in standardised units.
        random_state : int, RandomState, Generator or None
        iid : bool, default=False
            Take the rows of a 2-D ``observed`` as iid trials (see :meth:`sample`): the
            ``n_init`` starts are drawn given all trials, the ``n_keep`` in the densest region
            (a Gaussian kernel density of the starts; the composed model has no log density)
            climb the composed score, and the climber in the densest region is returned.

        Returns
        -------
        ndarray of shape (n_latent,)
        """
        n_init, n_keep, n_iter = (_positive_int(v, name) for v, name in
                                  ((n_init, "n_init"), (n_keep, "n_keep"), (n_iter, "n_iter")))
        self._check_rows(n_init, 1, "n_init")
        number = isinstance(learning_rate, (int, float, np.number)) \
            and not isinstance(learning_rate, bool)
        if not (number and 0 < learning_rate < np.inf):
            raise ValueError(f"learning_rate must be a positive finite number; got "
                             f"{learning_rate!r}.")
        _check_flag(iid, "iid")
        if iid:
            return self._map_iid(observed, n_init, n_keep, n_iter, learning_rate, random_state)
        obs, batched = self._observed(observed)
        if batched and obs.shape[0] != 1:
            raise ValueError("map takes one observation, shape (n_observed,); for a set of "
                             "iid trials pass iid=True.")
        start = self.sample(n_init, observed, random_state=random_state)
        coarse = self.log_prob(start, observed, steps=8, normalise=False)  # only ranked
        best = start[np.argsort(coarse)[::-1][: min(n_keep, n_init)]]
        m = self._model
        rows, states = self._joint_rows(obs, density=True)
        climbed = to_numpy(m.climb(states, rows, torch.as_tensor(best, device=m.device),
                                   edges=self._edges, n_iter=n_iter,
                                   learning_rate=learning_rate))
        climbed = self._clip(climbed)
        final = self.log_prob(climbed, observed, normalise=False)
        return climbed[int(np.argmax(final))]

    def _map_iid(self, trials, n_init, n_keep, n_iter, learning_rate, random_state
                 ) -> np.ndarray:
        """:meth:`map` with ``iid=True``."""
        from scipy.stats import gaussian_kde

        if len(self._marginalised):
            raise ValueError("map with iid=True needs every latent column returned: this "
                             f"conditional marginalises {self._marginalised.tolist()}.")
        states, rows = self._iid_inputs(trials, None, None, "gauss")
        m = self._model
        gen = make_generator(seed_from(random_state), m.device)
        # one composed denoiser (its precisions estimated once) for the starts and the climb
        denoise, latent_row, z = m.iid_denoiser(states, rows, edges=self._edges,
                                                steps=self.sampling_steps, solver=self.solver,
                                                generator=gen)
        start = to_numpy(m.solve_composed(denoise, latent_row, z, n_init,
                                          steps=self.sampling_steps, solver=self.solver,
                                          generator=gen)[:, self._returned])
        kde = gaussian_kde(start.T)
        best = start[np.argsort(kde(start.T))[::-1][: min(n_keep, n_init)]]
        climbed = to_numpy(m.climb(states[:1], rows[:1], torch.as_tensor(best, device=m.device),
                                   edges=self._edges, n_iter=n_iter,
                                   learning_rate=learning_rate, denoise=denoise))
        climbed = self._clip(climbed)
        return climbed[int(np.argmax(kde(climbed.T)))]
